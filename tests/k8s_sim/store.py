"""Generic object storage with the real API's bookkeeping, and the event history that watches read.

- One global resourceVersion counter (as etcd's revision): every write takes the next value, and a List's
  `metadata.resourceVersion` is the counter at the time of the list.
- metadata.uid (a UUID), creationTimestamp (RFC 3339, seconds) and generateName are set on create;
  metadata.generation starts at 1 and grows when anything but metadata and status changes, for kinds with a
  status subresource (`Resource.has_generation`).
- For kinds with a status subresource, status is dropped on create and kept from the stored object on an
  update of the main resource; `/status` updates change status only (as the real registry strategies do).
- Namespaced objects need their Namespace (404 `namespaces "x" not found` otherwise). Deleting a Namespace
  deletes its content and the Namespace at once (the real namespace controller does it asynchronously,
  with phase Terminating in between; not yet).
- Defaulting on create follows the real API's defaulting functions and the admission plugins that mutate
  objects (see `defaults.py`); Pods get `status.phase: Pending` and `status.qosClass`. Admission refuses a
  Pod whose ServiceAccount does not exist (403, `_admit_pod`), controllers' pods included.
- Deletion follows https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/ and
  https://kubernetes.io/docs/concepts/architecture/garbage-collection/: an object with finalizers gets a
  deletionTimestamp and stays until its finalizers are removed (an update that empties them deletes it);
  `propagationPolicy=Foreground` adds the `foregroundDeletion` finalizer and `Orphan` the `orphan`
  finalizer, which the garbage collector (controllers/gc.py) processes; a Pod bound to a node is deleted
  gracefully (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination): it gets
  `deletionTimestamp` = now + grace period and the kubelet stand-in removes it once its containers have
  stopped; an unbound or finished Pod, or `gracePeriodSeconds=0`, is removed at once.

The history of the last `history_size` events is kept for watches; a watch from an older resourceVersion
gets 410 Expired, as from a compacted etcd.

Controllers, the scheduler and the kubelet stand-in (runtime.py) run in the server's event loop and use
this class directly (`create`, `replace`, `update_status`, `delete`, `subscribe`), so that their writes
get resourceVersions and reach watches exactly as a client's do; their writes are `trusted` (not
validated again: they derive from objects that were).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.k8s_sim import defaults, errors, managed
from tests.k8s_sim.resources import RESOURCES, Resource, find
from tests.k8s_sim.validation import validate

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real API's utilrand alphabet


@dataclass(frozen=True)
class Event:
    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    obj: dict[str, Any]
    old: dict[str, Any] | None


_ZERO_STATUS: dict[str, dict[str, Any]] = {
    "DaemonSet": {
        "currentNumberScheduled": 0,
        "numberMisscheduled": 0,
        "desiredNumberScheduled": 0,
        "numberReady": 0,
    },
    "StatefulSet": {"replicas": 0, "availableReplicas": 0},
    "ReplicaSet": {"replicas": 0},
    "PodDisruptionBudget": {
        "disruptionsAllowed": 0,
        "currentHealthy": 0,
        "desiredHealthy": 0,
        "expectedPods": 0,
    },
    "Ingress": {"loadBalancer": {}},
    "Node": {
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            key: ""
            for key in (
                "machineID",
                "systemUUID",
                "bootID",
                "kernelVersion",
                "osImage",
                "containerRuntimeVersion",
                "kubeletVersion",
                "kubeProxyVersion",
                "operatingSystem",
                "architecture",
            )
        },
    },
}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(seconds: float) -> str:
    """An RFC 3339 time (seconds), as metav1.Time is written."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, or None."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _qos_class(spec: dict[str, Any]) -> str:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    requests_seen = guaranteed = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        if limits or requests:
            requests_seen = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                guaranteed = False
    if not requests_seen:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


class Store:
    def __init__(self, history_size: int = 10000, field_validation: str = "Strict") -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.revision = 1
        self.history: deque[Event] = deque(maxlen=history_size)
        self.subscribers: set[asyncio.Queue[Event]] = set()
        self.default_field_validation = field_validation
        self.cluster_ips = defaults.ClusterIPs()
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(find("", "v1", "namespaces"), "", {"metadata": {"name": name}})

    # -- reading ----------------------------------------------------------------------------------------

    @staticmethod
    def key(resource: Resource, namespace: str, name: str) -> Key:
        return (resource.group, resource.plural, namespace if resource.namespaced else "", name)

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get(self.key(resource, namespace, name))
        if obj is None:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        return copy.deepcopy(obj)

    def list(self, resource: Resource, namespace: str | None) -> list[dict[str, Any]]:
        """Objects of a resource (in `namespace`, or all when None), in etcd's key order."""
        found = [
            obj
            for (group, plural, ns, _), obj in self.objects.items()
            if (group, plural) == (resource.group, resource.plural) and (namespace is None or ns == namespace)
        ]
        found.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return [copy.deepcopy(o) for o in found]

    def iter(self, resource: Resource, namespace: str | None = None):
        """The stored objects themselves (no copies), for controllers that only read them."""
        for (group, plural, ns, _), obj in list(self.objects.items()):
            if (group, plural) == (resource.group, resource.plural) and (
                namespace is None or ns == namespace
            ):
                yield obj

    def peek(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object itself (no copy), or None."""
        return self.objects.get(self.key(resource, namespace, name))

    def require_namespace(self, resource: Resource, namespace: str) -> None:
        if resource.namespaced and (("", "namespaces", "", namespace) not in self.objects):
            raise errors.not_found("namespaces", "", "namespaces", namespace)

    # -- writing ----------------------------------------------------------------------------------------

    def _emit(
        self, event_type: str, resource: Resource, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), event_type, resource, copy.deepcopy(obj), old)
        self.history.append(event)
        for queue in list(self.subscribers):
            queue.put_nowait(event)

    def _next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def _prepare(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if (kind and kind != resource.kind) or (api_version and api_version != resource.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({resource.api_version})"
                if api_version != resource.api_version
                else f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
            )
        obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
        if resource.kind == "Secret" and isinstance(obj.get("stringData"), dict):
            # stringData is write-only: merged into data (base64), as the Secret strategy does.
            data = obj.setdefault("data", {}) or {}
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")
        if resource.namespaced:
            if metadata.get("namespace") and metadata["namespace"] != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        return obj

    def create(
        self,
        resource: Resource,
        namespace: str,
        body: Any,
        field_validation: str | None = None,
        dry_run: bool = False,
        trusted: bool = False,
        manager: str | None = None,
        applied: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """POST. `manager` is the field manager of the write (for trusted writes without one, the
        component's: see `_default_manager`); `applied`: managedFields were set by server-side apply."""
        obj = self._prepare(resource, namespace, body)
        metadata = obj["metadata"]
        requested_name = metadata.get("name") or metadata.get("generateName") or ""
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
        warnings = (
            [] if trusted else validate(resource, obj, field_validation or self.default_field_validation)
        )
        name = metadata["name"]
        self.require_namespace(resource, namespace)
        if resource.kind == "Pod":
            self._admit_pod(namespace, obj, requested_name)
        key = self.key(resource, namespace, name)
        if key in self.objects:
            raise errors.already_exists(resource.qualified, resource.group, resource.plural, name)
        for field in ("resourceVersion", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now()
        if resource.has_generation:
            metadata["generation"] = 1
        else:
            metadata.pop("generation", None)
        if resource.status and not trusted:
            obj.pop("status", None)
        self._default(resource, obj)
        if resource.status and "status" not in obj:
            # The Go status structs are not pointers: a new object is written with its zero status.
            obj["status"] = copy.deepcopy(_ZERO_STATUS.get(resource.kind, {}))
        if not applied:
            managed.update(resource, None, obj, manager or self._default_manager(resource, ""))
        if dry_run:
            return obj, warnings
        metadata["resourceVersion"] = self._next_revision()
        self.objects[key] = obj
        self._emit("ADDED", resource, obj, None)
        return copy.deepcopy(obj), warnings

    def _admit_pod(self, namespace: str, pod: dict[str, Any], requested_name: str) -> None:
        """The ServiceAccount admission plugin's check: the pod's ServiceAccount exists, else 403
        `pods "<name>" is forbidden: error looking up service account <ns>/<sa>: serviceaccount "<sa>" not
        found`, where <name> is the generateName of a pod without a name (mutating admission runs before
        the name is generated). Controllers' pod creates meet it too (their FailedCreate Events). The
        `default` account is taken as there: the real one appears a moment after its namespace (the
        ServiceAccount controller), and a pod created in between is refused; here a test need not wait."""
        spec = pod.get("spec") or {}
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        if account == "default" or ("", "serviceaccounts", namespace, account) in self.objects:
            return
        raise errors.forbidden(
            "pods",
            "",
            "pods",
            requested_name,
            f'error looking up service account {namespace}/{account}: serviceaccount "{account}" not found',
        )

    def _default(self, resource: Resource, obj: dict[str, Any]) -> None:
        kind = resource.kind
        if kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif kind == "Pod":
            defaults.pod(obj)
            status = obj.get("status") or {}
            status.setdefault("phase", "Pending")
            status["qosClass"] = _qos_class(obj["spec"])
            obj["status"] = status
        elif kind == "Job":
            defaults.job(obj, obj["metadata"]["uid"])
        elif kind in defaults.WORKLOADS:
            defaults.WORKLOADS[kind](obj)
        elif kind == "PersistentVolumeClaim":
            defaults.persistent_volume_claim(obj, self.default_storage_class())
        elif kind == "PersistentVolume":
            defaults.persistent_volume(obj)
        elif kind == "Service":
            defaults.service(obj, self.cluster_ips)
        elif kind == "CronJob":
            template = ((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
            if isinstance(template.get("template"), dict):
                defaults.pod_spec(template["template"].setdefault("spec", {}))

    def _default_update(self, resource: Resource, obj: dict[str, Any], current: dict[str, Any]) -> None:
        """Defaulting on update: the API's SetDefaults functions run on every write (the admission
        plugins that mutate on create do not; a Service keeps its allocated cluster IP)."""
        kind = resource.kind
        if kind == "Pod":
            defaults.pod_spec(obj.setdefault("spec", {}))
        elif kind == "Job":
            defaults.job(obj, current["metadata"]["uid"])
        elif kind in defaults.WORKLOADS:
            defaults.WORKLOADS[kind](obj)
        elif kind == "PersistentVolumeClaim":
            obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
        elif kind == "PersistentVolume":
            defaults.persistent_volume_spec(obj)
        elif kind == "Service":
            spec, previous = obj.setdefault("spec", {}), current.get("spec") or {}
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if field not in spec and field in previous:
                    spec[field] = previous[field]
            status = obj.get("status")
            defaults.service(obj, self.cluster_ips)
            if status is not None:
                obj["status"] = status

    def default_storage_class(self) -> str | None:
        """The DefaultStorageClass admission plugin's choice: the class annotated as the default."""
        classes = find("storage.k8s.io", "v1", "storageclasses")
        assert classes is not None
        for sc in self.iter(classes):
            annotations = sc["metadata"].get("annotations") or {}
            if annotations.get("storageclass.kubernetes.io/is-default-class") == "true":
                return sc["metadata"]["name"]
        return None

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: Any,
        field_validation: str | None = None,
        subresource: str = "",
        dry_run: bool = False,
        trusted: bool = False,
        manager: str | None = None,
        applied: bool = False,
        scale: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT: the whole object (or, with subresource "status", its status only).

        `manager` and `applied` as for `create`; `scale`: the write came through the scale subresource
        (its managedFields entry says so).

        An update that leaves an object being deleted (deletionTimestamp set) without finalizers deletes it.
        """
        obj = self._prepare(resource, namespace, body)
        metadata = obj["metadata"]
        if metadata.get("name") and metadata["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({metadata['name']}) does not match the name on the URL ({name})"
            )
        metadata["name"] = name
        key = self.key(resource, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        sent_version = metadata.get("resourceVersion")
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.qualified, resource.group, resource.plural, name)
        if subresource == "status":
            status = obj.get("status")
            applied_fields = metadata.get("managedFields") if applied else None
            obj = copy.deepcopy(current)
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = status
            if applied:
                # a server-side apply to /status: its managedFields (managed.py) come with the status
                if applied_fields is None:
                    obj["metadata"].pop("managedFields", None)
                else:
                    obj["metadata"]["managedFields"] = applied_fields
        elif resource.status:
            obj.pop("status", None)
            if "status" in current:
                obj["status"] = copy.deepcopy(current["status"])
        warnings = (
            [] if trusted else validate(resource, obj, field_validation or self.default_field_validation)
        )
        if subresource != "status":
            self._default_update(resource, obj, current)
        metadata = obj["metadata"]
        for field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if field in current["metadata"]:
                metadata[field] = current["metadata"][field]
            else:
                metadata.pop(field, None)
        if resource.has_generation and self._spec_changed(current, obj):
            metadata["generation"] = current["metadata"].get("generation", 1) + 1
        if not applied:
            managed.update(
                resource,
                current,
                obj,
                manager or self._default_manager(resource, subresource),
                "scale" if scale else subresource,
            )
        managed.keep_times(current, obj)
        if dry_run:
            return obj, warnings
        unchanged = {k: v for k, v in obj.items() if k != "metadata"} == {
            k: v for k, v in current.items() if k != "metadata"
        } and {k: v for k, v in metadata.items() if k != "resourceVersion"} == {
            k: v for k, v in current["metadata"].items() if k != "resourceVersion"
        }
        if unchanged:
            # The real API writes nothing (and keeps the resourceVersion) when an update changes nothing.
            return copy.deepcopy(current), warnings
        if (
            metadata.get("deletionTimestamp")
            and not metadata.get("finalizers")
            and not self._graceful(current)
        ):
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.objects[key] = obj
            return self._remove(resource, key, obj), warnings
        metadata["resourceVersion"] = self._next_revision()
        self.objects[key] = obj
        self._emit("MODIFIED", resource, obj, current)
        return copy.deepcopy(obj), warnings

    @staticmethod
    def _default_manager(resource: Resource, subresource: str) -> str:
        """The field manager of a controller's write (runtime.py): the kubelet writes Pod and Node status,
        kube-controller-manager everything else (the scheduler's binding included: simplified)."""
        if subresource == "status" and resource.kind in ("Pod", "Node"):
            return "kubelet"
        return "kube-controller-manager"

    @staticmethod
    def _spec_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
        ignored = ("metadata", "status", "kind", "apiVersion")
        return {k: v for k, v in old.items() if k not in ignored} != {
            k: v for k, v in new.items() if k not in ignored
        }

    def update_status(
        self, resource: Resource, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """For controllers: set an object's status (a `/status` PUT, no resourceVersion precondition)."""
        current = self.get(resource, namespace, name)
        current["status"] = status
        current["metadata"].pop("resourceVersion", None)
        return self.replace(resource, namespace, name, current, subresource="status", trusted=True)[0]

    def delete(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        precondition_version: str | None = None,
        precondition_uid: str | None = None,
        dry_run: bool = False,
        propagation: str | None = None,
        grace_seconds: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """DELETE: (the object, whether it is gone). See the module docstring for what stays behind.

        `propagation` is Foreground, Background or Orphan (None: the caller's default was already applied).
        """
        key = self.key(resource, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        if precondition_version and precondition_version != current["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.qualified, resource.group, resource.plural, name)
        if precondition_uid and precondition_uid != current["metadata"]["uid"]:
            raise errors.ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": Precondition failed: '
                f"UID in precondition: {precondition_uid}, UID in object meta: {current['metadata']['uid']}",
                {
                    "name": name,
                    **({"group": resource.group} if resource.group else {}),
                    "kind": resource.plural,
                },
            )
        obj = copy.deepcopy(current)
        metadata = obj["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        elif propagation == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        grace = self._grace(resource, current, grace_seconds)
        if dry_run:
            return obj, not finalizers and not grace
        if resource.kind == "Namespace":
            for other in RESOURCES:
                if other.namespaced:
                    for child in self.list(other, name):
                        self._remove(other, self.key(other, name, child["metadata"]["name"]), child)
            gone = self._remove(resource, key, current)
            gone["metadata"]["deletionTimestamp"] = now()
            gone["status"] = {"phase": "Terminating"}
            return gone, True
        if not finalizers and not grace:
            return self._remove(resource, key, current), True
        # Stays, being deleted: deletionTimestamp (now + grace for a Pod) and the finalizers.
        deadline = time.time() + (grace or 0)
        existing = parse_time(metadata.get("deletionTimestamp"))
        if existing is None or deadline < existing:
            metadata["deletionTimestamp"] = timestamp(deadline)
            metadata["deletionGracePeriodSeconds"] = grace or 0
        metadata["finalizers"] = finalizers
        if obj == current:
            return obj, False
        metadata["resourceVersion"] = self._next_revision()
        self.objects[key] = obj
        self._emit("MODIFIED", resource, obj, current)
        return copy.deepcopy(obj), False

    @staticmethod
    def _grace(resource: Resource, pod: dict[str, Any], grace_seconds: int | None) -> int:
        """The graceful-deletion period: only a Pod that is bound and not finished gets one (the pod
        registry's CheckGracefulDelete)."""
        if resource.kind != "Pod":
            return 0
        if not (pod.get("spec") or {}).get("nodeName"):
            return 0
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if grace_seconds is not None:
            return max(int(grace_seconds), 0)
        return int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    @staticmethod
    def _graceful(obj: dict[str, Any]) -> bool:
        """A Pod in its grace period: the kubelet (not an update emptying finalizers) ends its deletion."""
        return obj.get("kind") == "Pod" and bool(
            (obj.get("metadata") or {}).get("deletionGracePeriodSeconds")
        )

    def _remove(self, resource: Resource, key: Key, current: dict[str, Any]) -> dict[str, Any]:
        del self.objects[key]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        self._emit("DELETED", resource, gone, current)
        return gone

    def finish_deletion(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """For the kubelet: a Pod whose containers stopped leaves the store (unless a finalizer holds it)."""
        key = self.key(resource, namespace, name)
        current = self.objects.get(key)
        if current is None:
            return None
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionGracePeriodSeconds"):
                return current
            obj = copy.deepcopy(current)
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            obj["metadata"]["resourceVersion"] = self._next_revision()
            self.objects[key] = obj
            self._emit("MODIFIED", resource, obj, current)
            return obj
        return self._remove(resource, key, current)

    # -- watching ---------------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.subscribers.discard(queue)

    def events_since(self, resource_version: int) -> list[Event]:
        """The kept events after `resource_version`; 410 Expired when history before it was dropped."""
        if self.history and resource_version < self.history[0].resource_version - 1:
            raise errors.gone(
                f"too old resource version: {resource_version} ({self.history[0].resource_version - 1})"
            )
        return [e for e in self.history if e.resource_version > resource_version]
