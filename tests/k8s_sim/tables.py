"""Table answers (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), what `kubectl get` prints.

https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables: a get or list
asked for as a Table is answered with `{"kind": "Table", "apiVersion": "meta.k8s.io/v1", "columnDefinitions":
[...], "rows": [{"cells": [...], "object": ...}]}`; `includeObject` says what each row carries (`Metadata`,
the default: a PartialObjectMetadata; `Object`: the object; `None`). The columns and cells are the real
server's printers' (k8s.io/kubernetes/pkg/printers/internalversion/printers.go) for Pod, Deployment,
ReplicaSet, StatefulSet, DaemonSet, Job, Service, ConfigMap, Secret, Namespace, Node,
PersistentVolumeClaim and Event, with their `-o wide` columns (priority 1); other kinds get the default table
(Name, Created At). Ages are written as the real `duration.HumanDuration` writes them.

Simplified: the Pod status column covers the common reasons (phase, waiting/terminated reasons, init
containers, Terminating), not every rule of the real printer; watches are not served as Tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.k8s_sim.resources import Resource
from tests.k8s_sim.store import parse_time


def wants_table(accept: str | None) -> bool:
    for entry in (accept or "").split(","):
        params = dict(p.strip().split("=", 1) for p in entry.split(";")[1:] if "=" in p)
        if (
            params.get("as") == "Table"
            and params.get("g") == "meta.k8s.io"
            and params.get("v") in ("v1", None)
        ):
            return True
    return False


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(stamp: str | None) -> str:
    moment = parse_time(stamp)
    return "<unknown>" if moment is None else human_duration(time.time() - moment)


def _column(name: str, kind: str = "string", priority: int = 0, description: str = "", fmt: str = "") -> dict:
    return {"name": name, "type": kind, "format": fmt, "description": description, "priority": priority}


NAME = _column("Name", fmt="name", description="Name must be unique within a namespace.")
AGE = _column(
    "Age",
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def _containers(spec: dict[str, Any]) -> tuple[str, str]:
    containers = spec.get("containers") or []
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def _selector(selector: dict[str, Any] | None) -> str:
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        op = expression.get("operator")
        if op == "In":
            parts.append(f"{expression['key']} in ({values})")
        elif op == "NotIn":
            parts.append(f"{expression['key']} notin ({values})")
        elif op == "Exists":
            parts.append(expression["key"])
        else:
            parts.append(f"!{expression['key']}")
    return ",".join(parts) or "<none>"


def _pod_status(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    init_specs = (pod.get("spec") or {}).get("initContainers") or []
    initializing = False
    for index, container in enumerate(status.get("initContainerStatuses") or []):
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated:
            reason = "Init:" + (
                terminated.get("reason")
                or (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode')}"
                )
            )
        elif waiting and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(init_specs)}"
        initializing = True
        break
    if not initializing:
        running = False
        for container in reversed(status.get("containerStatuses") or []):
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated:
                reason = (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode')}"
                )
            elif state.get("running") and container.get("ready"):
                running = True
        if reason == "Completed" and running:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            reason = "Running" if ready else "NotReady"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return reason


def _pod(pod: dict[str, Any]) -> list[Any]:
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    last = max(
        (
            parse_time(((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt")) or 0
            for c in statuses
        ),
        default=0,
    )
    restart_cell = (
        f"{restarts} ({human_duration(time.time() - last)} ago)" if restarts and last else str(restarts)
    )
    gates = spec.get("readinessGates") or []
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        _pod_status(pod),
        restart_cell,
        _age(pod["metadata"].get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{len(gates)}" if gates else "<none>",
    ]


def _deployment(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(obj["metadata"].get("creationTimestamp")),
        names,
        images,
        _selector(spec.get("selector")),
    ]


def _replica_set(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [
        obj["metadata"]["name"],
        spec.get("replicas", 0),
        status.get("replicas", 0),
        status.get("readyReplicas", 0),
        _age(obj["metadata"].get("creationTimestamp")),
        names,
        images,
        _selector(spec.get("selector")),
    ]


def _stateful_set(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        _age(obj["metadata"].get("creationTimestamp")),
        names,
        images,
    ]


def _daemon_set(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    names, images = _containers(template)
    node_selector = ",".join(f"{k}={v}" for k, v in sorted((template.get("nodeSelector") or {}).items()))
    return [
        obj["metadata"]["name"],
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        node_selector or "<none>",
        _age(obj["metadata"].get("creationTimestamp")),
        names,
        images,
        _selector(spec.get("selector")),
    ]


def _job(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(((spec.get("template") or {}).get("spec")) or {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Complete") == "True":
        state = "Complete"
    elif conditions.get("Failed") == "True":
        state = "Failed"
    elif obj["metadata"].get("deletionTimestamp"):
        state = "Terminating"
    elif conditions.get("FailureTarget") == "True":
        state = "FailureTarget"
    elif conditions.get("SuccessCriteriaMet") == "True":
        state = "SuccessCriteriaMet"
    elif conditions.get("Suspended") == "True":
        state = "Suspended"
    else:
        state = "Running"
    completions = spec.get("completions")
    succeeded = status.get("succeeded", 0)
    if completions is not None:
        completion_cell = f"{succeeded}/{completions}"
    else:
        parallelism = spec.get("parallelism", 1)
        completion_cell = f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"
    start, end = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    duration = "" if start is None else human_duration((end or time.time()) - start)
    return [
        obj["metadata"]["name"],
        state,
        completion_cell,
        duration,
        _age(obj["metadata"].get("creationTimestamp")),
        names,
        images,
        _selector(spec.get("selector")),
    ]


def _service(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    kind = spec.get("type") or "ClusterIP"
    external = ",".join(spec.get("externalIPs") or [])
    if kind == "LoadBalancer":
        ingress = [
            i.get("ip") or i.get("hostname") for i in (status.get("loadBalancer") or {}).get("ingress") or []
        ]
        external = ",".join(filter(None, ingress + (spec.get("externalIPs") or []))) or "<pending>"
    elif kind == "ExternalName":
        external = spec.get("externalName") or ""
    ports = []
    for port in spec.get("ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        ports.append(f"{text}/{port.get('protocol', 'TCP')}")
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [
        obj["metadata"]["name"],
        kind,
        spec.get("clusterIP") or "<none>",
        external or "<none>",
        ",".join(ports) or "<none>",
        _age(obj["metadata"].get("creationTimestamp")),
        selector or "<none>",
    ]


def _config_map(obj: dict[str, Any]) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], count, _age(obj["metadata"].get("creationTimestamp"))]


def _secret(obj: dict[str, Any]) -> list[Any]:
    return [
        obj["metadata"]["name"],
        obj.get("type") or "Opaque",
        len(obj.get("data") or {}),
        _age(obj["metadata"].get("creationTimestamp")),
    ]


def _namespace(obj: dict[str, Any]) -> list[Any]:
    return [
        obj["metadata"]["name"],
        (obj.get("status") or {}).get("phase") or "Active",
        _age(obj["metadata"].get("creationTimestamp")),
    ]


def _node(obj: dict[str, Any]) -> list[Any]:
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = obj["metadata"].get("labels") or {}
    roles = sorted(
        key.split("/", 1)[1] for key in labels if key.startswith("node-role.kubernetes.io/") and "/" in key
    )
    if labels.get("kubernetes.io/role"):
        roles.append(labels["kubernetes.io/role"])
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        obj["metadata"]["name"],
        state,
        ",".join(roles) or "<none>",
        _age(obj["metadata"].get("creationTimestamp")),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _claim(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    if obj["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    bound = phase == "Bound"
    modes = {
        "ReadWriteOnce": "RWO",
        "ReadOnlyMany": "ROX",
        "ReadWriteMany": "RWX",
        "ReadWriteOncePod": "RWOP",
    }
    return [
        obj["metadata"]["name"],
        phase,
        spec.get("volumeName") or "",
        (status.get("capacity") or {}).get("storage", "") if bound else "",
        ",".join(modes.get(m, m) for m in status.get("accessModes") or []) if bound else "",
        spec.get("storageClassName") or "",
        spec.get("volumeAttributesClassName") or "<unset>",
        _age(obj["metadata"].get("creationTimestamp")),
        spec.get("volumeMode") or "",
    ]


def _event(obj: dict[str, Any]) -> list[Any]:
    """printEvent (core/v1 fields; events.k8s.io/v1 names them regarding, note, deprecated*)."""
    involved = obj.get("involvedObject") or obj.get("regarding") or {}
    first_stamp = obj.get("firstTimestamp") or obj.get("deprecatedFirstTimestamp")
    first = _age(first_stamp) if first_stamp else _age(obj.get("eventTime"))
    last_stamp = obj.get("lastTimestamp") or obj.get("deprecatedLastTimestamp")
    last = _age(last_stamp) if last_stamp else first
    count = obj.get("count") or obj.get("deprecatedCount") or 0
    series = obj.get("series")
    if series:
        last, count = _age(series.get("lastObservedTime")), series.get("count", 0)
    elif not count:
        count = 1
    kind = (involved.get("kind") or "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingController") or ""
    host = source.get("host") or obj.get("reportingInstance") or ""
    return [
        last,
        obj.get("type", ""),
        obj.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        f"{component}, {host}" if host else component,
        (obj.get("message") or obj.get("note") or "").strip(),
        first,
        count,
        obj["metadata"]["name"],
    ]


def _default(obj: dict[str, Any]) -> list[Any]:
    return [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp")]


_S, _I = "string", "integer"
PRINTERS: dict[str, tuple[list[dict], Callable[[dict[str, Any]], list[Any]]]] = {
    "Pod": (
        [
            NAME,
            _column("Ready"),
            _column("Status"),
            _column("Restarts"),
            AGE,
            _column("IP", priority=1),
            _column("Node", priority=1),
            _column("Nominated Node", priority=1),
            _column("Readiness Gates", priority=1),
        ],
        _pod,
    ),
    "Deployment": (
        [
            NAME,
            _column("Ready"),
            _column("Up-to-date", _I),
            _column("Available", _I),
            AGE,
            _column("Containers", priority=1),
            _column("Images", priority=1),
            _column("Selector", priority=1),
        ],
        _deployment,
    ),
    "ReplicaSet": (
        [
            NAME,
            _column("Desired", _I),
            _column("Current", _I),
            _column("Ready", _I),
            AGE,
            _column("Containers", priority=1),
            _column("Images", priority=1),
            _column("Selector", priority=1),
        ],
        _replica_set,
    ),
    "StatefulSet": (
        [NAME, _column("Ready"), AGE, _column("Containers", priority=1), _column("Images", priority=1)],
        _stateful_set,
    ),
    "DaemonSet": (
        [
            NAME,
            _column("Desired", _I),
            _column("Current", _I),
            _column("Ready", _I),
            _column("Up-to-date", _I),
            _column("Available", _I),
            _column("Node Selector"),
            AGE,
            _column("Containers", priority=1),
            _column("Images", priority=1),
            _column("Selector", priority=1),
        ],
        _daemon_set,
    ),
    "Job": (
        [
            NAME,
            _column("Status"),
            _column("Completions"),
            _column("Duration"),
            AGE,
            _column("Containers", priority=1),
            _column("Images", priority=1),
            _column("Selector", priority=1),
        ],
        _job,
    ),
    "Service": (
        [
            NAME,
            _column("Type"),
            _column("Cluster-IP"),
            _column("External-IP"),
            _column("Port(s)"),
            AGE,
            _column("Selector", priority=1),
        ],
        _service,
    ),
    "Event": (
        [
            _column("Last Seen"),
            _column("Type"),
            _column("Reason"),
            _column("Object"),
            _column("Subobject", priority=1),
            _column("Source", priority=1),
            _column("Message"),
            _column("First Seen", priority=1),
            _column("Count", _I, priority=1),
            _column("Name", priority=1),
        ],
        _event,
    ),
    "ConfigMap": ([NAME, _column("Data", _I), AGE], _config_map),
    "Secret": ([NAME, _column("Type"), _column("Data", _I), AGE], _secret),
    "Namespace": ([NAME, _column("Status"), AGE], _namespace),
    "Node": (
        [
            NAME,
            _column("Status"),
            _column("Roles"),
            AGE,
            _column("Version"),
            _column("Internal-IP", priority=1),
            _column("External-IP", priority=1),
            _column("OS-Image", priority=1),
            _column("Kernel-Version", priority=1),
            _column("Container-Runtime", priority=1),
        ],
        _node,
    ),
    "PersistentVolumeClaim": (
        [
            NAME,
            _column("Status"),
            _column("Volume"),
            _column("Capacity"),
            _column("Access Modes"),
            _column("StorageClass"),
            _column("VolumeAttributesClass"),
            AGE,
            _column("VolumeMode", priority=1),
        ],
        _claim,
    ),
}
DEFAULT = (
    [
        NAME,
        _column(
            "Created At",
            "date",
            description="CreationTimestamp is a timestamp representing the "
            "server time when this object was created.",
        ),
    ],
    _default,
)


def table(
    resource: Resource,
    objects: list[dict[str, Any]],
    include: str | None,
    resource_version: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Table of `objects` (a list's items, or the one object of a get)."""
    columns, printer = PRINTERS.get(resource.kind, DEFAULT)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer(obj)}
        if include in (None, "", "Metadata"):
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        elif include == "Object":
            row["object"] = {"kind": resource.kind, "apiVersion": resource.api_version, **obj}
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version, **(extra or {})},
        "columnDefinitions": columns,
        "rows": rows,
    }
