"""kube-scheduler's decisions for pending pods: where a pod may run, and why it cannot.

A pod is pending when its `spec.nodeName` is empty, its `schedulerName` is `default-scheduler` and it is not
being deleted. Pods are taken in order of priority, then creation time. For each pod the scheduler runs, as
the default plugin set does (https://kubernetes.io/docs/reference/scheduling/config/#scheduling-plugins):

- PreFilter `SchedulingGates` (https://kubernetes.io/docs/concepts/scheduling-eviction/pod-scheduling-readiness/):
  a gated pod stays Pending with PodScheduled=False reason SchedulingGated;
- PreFilter `VolumeBinding`: a PVC that does not exist (`persistentvolumeclaim "x" not found`), is being
  deleted, or is unbound with an Immediate StorageClass (`pod has unbound immediate PersistentVolumeClaims`);
- Filters, in the default order, stopping at the first that rejects a node (the framework's rule):
  `NodeUnschedulable` (`node(s) were unschedulable` for a cordoned node the pod does not tolerate),
  `TaintToleration` (NoSchedule and NoExecute taints:
  https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/; reason
  `node(s) had untolerated taint(s)`: since kubernetes/kubernetes#134740 (1.35, cherry-picked to 1.34) the
  scheduler no longer prints the taint's key and value, which older clusters showed as
  `node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }`), `NodeAffinity`
  (`spec.nodeSelector` and requiredDuringSchedulingIgnoredDuringExecution nodeSelectorTerms, ORed, with
  matchExpressions In/NotIn/Exists/DoesNotExist/Gt/Lt and matchFields on metadata.name:
  https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#node-affinity;
  reason `node(s) didn't match Pod's node affinity/selector`), `NodeResourcesFit` (the pod's effective
  requests, i.e. max(sum of containers, largest init container), against the node's allocatable minus
  the requests of the non-terminal pods bound to it: `Too many pods`, `Insufficient cpu`,
  `Insufficient memory`, `Insufficient ephemeral-storage`, `Insufficient <extended resource>`;
  https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/#how-pods-with-resource-requests-are-scheduled).
- Among the nodes left: the largest sum of matching preferredDuringScheduling weights, then the fewest
  untolerated PreferNoSchedule taints, then the least allocated (cpu and memory), then the name.

A pod that fits nowhere keeps phase Pending and gets condition PodScheduled=False, reason Unschedulable, and a
Warning Event `FailedScheduling` from `default-scheduler`, both with the message the real scheduler writes
(FitError.Error() in pkg/scheduler/framework/types.go, then the PostFilter plugins' messages):

    0/4 nodes are available: 1 node(s) had untolerated taint(s), 3 Insufficient nvidia.com/gpu. no new
    claims to deallocate, preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.

(one line).

The histogram is "<count> <reason>" sorted as strings. In the preemption part a node is "not helpful" when
its rejection is unresolvable (a taint, affinity, or a request larger than the node's whole allocatable:
NodeResourcesFit's Unresolvable), and otherwise "No preemption victims found for incoming pod".
"no new claims to deallocate" is the DynamicResources plugin's PostFilter note (DRA is on by default
since 1.34). A bound pod gets PodScheduled=True and a `Scheduled` Event
`Successfully assigned <ns>/<pod> to <node>`.

Retries: every change of a pod, node, PVC, PV or StorageClass makes the scheduler look at pending pods
again (the real one re-queues on the events that may help); the FailedScheduling Event is recorded again
(count + 1) when its message changes, or at most every 60 s.

Simplified: no preemption (the simulator never evicts lower-priority pods: its preemption message assumes
there are none), no pod (anti-)affinity or topology spread constraints (ignored), no host ports, no volume
node affinity or volume limits, no pod overhead, no DRA claims; a WaitForFirstConsumer PVC gets the
`volume.kubernetes.io/selected-node` annotation and the pod is bound at once (the real scheduler waits for the
volume to be provisioned before binding; here the kubelet waits for the PVC to be Bound).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.k8s_sim import quantity
from tests.k8s_sim.runtime import NODES, PODS, PVCS, STORAGECLASSES, Component, set_condition

SCHEDULER_NAME = "default-scheduler"
STANDARD = ("cpu", "memory", "ephemeral-storage")
UNTOLERATED_TAINT = "node(s) had untolerated taint(s)"
AFFINITY_MISMATCH = "node(s) didn't match Pod's node affinity/selector"
UNSCHEDULABLE_NODE = "node(s) were unschedulable"
NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_VICTIMS = "No preemption victims found for incoming pod"
DRA_NOTE = "no new claims to deallocate"
REPORT_EVERY_S = 60.0


def _amount(name: str, value: Any) -> int:
    try:
        return quantity.milli(value) if name == "cpu" else quantity.whole(value)
    except ValueError:
        return 0


def pod_requests(spec: dict[str, Any]) -> dict[str, int]:
    """The effective requests of a pod (resource.PodRequests): the containers' sum, or the largest init
    container's when larger; cpu in millicores, the rest in units."""
    total: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] += _amount(name, value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total[name], _amount(name, value))
    return {name: amount for name, amount in total.items() if amount > 0}


def allocatable(node: dict[str, Any]) -> dict[str, int]:
    status = node.get("status") or {}
    listed = status.get("allocatable") or status.get("capacity") or {}
    return {name: _amount(name, value) for name, value in listed.items()}


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """ToleratesTaint: same effect (or none given), same key (or none with Exists), Exists or equal value."""
    for toleration in tolerations or []:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        if key and key != taint.get("key"):
            continue
        if not key and operator != "Exists":
            continue
        if operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _requirement(labels: dict[str, str], requirement: dict[str, Any]) -> bool:
    key, operator = requirement.get("key"), requirement.get("operator")
    values = requirement.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return have > want if operator == "Gt" else have < want
    return False


def term_matches(node: dict[str, Any], term: dict[str, Any]) -> bool:
    """One NodeSelectorTerm: its matchExpressions (labels) and matchFields (metadata.name), ANDed; an empty
    term matches nothing."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = node["metadata"].get("labels") or {}
    name_field = {"metadata.name": node["metadata"]["name"]}
    return all(_requirement(labels, r) for r in expressions) and all(
        _requirement(name_field, r) for r in fields
    )


def node_matches(spec: dict[str, Any], node: dict[str, Any]) -> bool:
    """NodeAffinity's filter: the nodeSelector's labels and the required node affinity (terms ORed)."""
    labels = node["metadata"].get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms")
    if required is None:
        return True
    return any(term_matches(node, term) for term in required)


def untolerated_taint(spec: dict[str, Any], node: dict[str, Any], effects=("NoSchedule", "NoExecute")):
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in effects and not tolerates(spec.get("tolerations") or [], taint):
            return taint
    return None


def _preferred_weight(spec: dict[str, Any], node: dict[str, Any]) -> int:
    preferred = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution"
    ) or []
    return sum(int(p.get("weight", 0)) for p in preferred if term_matches(node, p.get("preference") or {}))


def is_terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class NodeUsage:
    def __init__(self) -> None:
        self.requested: Counter[str] = Counter()
        self.pods = 0

    def add(self, requests: dict[str, int]) -> None:
        self.requested.update(requests)
        self.pods += 1


class Scheduler(Component):
    interests = frozenset({"pods", "nodes", "persistentvolumeclaims", "persistentvolumes", "storageclasses"})

    def __init__(self, runtime) -> None:
        super().__init__(runtime)
        self._reported: dict[str, tuple[str, float]] = {}

    def usage(self) -> dict[str, NodeUsage]:
        usage: dict[str, NodeUsage] = {}
        for pod in self.store.iter(PODS):
            node = (pod.get("spec") or {}).get("nodeName")
            if node and not is_terminal(pod):
                usage.setdefault(node, NodeUsage()).add(pod_requests(pod["spec"]))
        return usage

    def sync(self) -> None:
        pending = [
            pod
            for pod in self.store.iter(PODS)
            if not (pod.get("spec") or {}).get("nodeName")
            and (pod.get("spec") or {}).get("schedulerName", SCHEDULER_NAME) == SCHEDULER_NAME
            and not pod["metadata"].get("deletionTimestamp")
            and not is_terminal(pod)
        ]
        live = {pod["metadata"]["uid"] for pod in pending}
        for uid in list(self._reported):
            if uid not in live:
                del self._reported[uid]
        if not pending:
            return
        nodes = sorted(self.store.iter(NODES), key=lambda n: n["metadata"]["name"])
        usage = self.usage()
        pending.sort(
            key=lambda p: (
                -int(p["spec"].get("priority") or 0),
                p["metadata"].get("creationTimestamp", ""),
                p["metadata"]["name"],
            )
        )
        for pod in pending:
            self.schedule_one(pod, nodes, usage)

    # -- one pod --------------------------------------------------------------------------------------

    def schedule_one(
        self, pod: dict[str, Any], nodes: list[dict[str, Any]], usage: dict[str, NodeUsage]
    ) -> None:
        spec = pod["spec"]
        if spec.get("schedulingGates"):
            self._unschedulable(
                pod, "SchedulingGated", "Scheduling is blocked due to non-empty scheduling gates", event=False
            )
            return
        if not nodes:
            self._unschedulable(pod, "Unschedulable", "no nodes available to schedule pods")
            return
        prefilter, waiting_claims = self._volumes(pod)
        if prefilter:
            everywhere = {node["metadata"]["name"]: True for node in nodes}
            message = f"0/{len(nodes)} nodes are available: {prefilter}. {self._postfilter(pod, everywhere)}"
            self._unschedulable(pod, "Unschedulable", message)
            return
        requests = pod_requests(spec)
        reasons: dict[str, list[str]] = {}
        unresolvable: dict[str, bool] = {}
        feasible = []
        for node in nodes:
            name = node["metadata"]["name"]
            why, hopeless = self.filter(spec, requests, node, usage.get(name) or NodeUsage())
            if why:
                reasons[name], unresolvable[name] = why, hopeless
            else:
                feasible.append(node)
        if not feasible:
            histogram = Counter(reason for why in reasons.values() for reason in why)
            parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
            postfilter = self._postfilter(pod, unresolvable)
            message = f"0/{len(nodes)} nodes are available: {', '.join(parts)}. {postfilter}"
            self._unschedulable(pod, "Unschedulable", message)
            return
        chosen = min(feasible, key=lambda node: self._score_key(spec, requests, node, usage))
        self.bind(pod, chosen, requests, usage, waiting_claims)

    @staticmethod
    def filter(
        spec: dict[str, Any], requests: dict[str, int], node: dict[str, Any], used: NodeUsage
    ) -> tuple[list[str], bool]:
        """The default filters in order: ([reasons], unresolvable); no reasons when the node fits."""
        node_spec = node.get("spec") or {}
        if node_spec.get("unschedulable") and not tolerates(
            spec.get("tolerations") or [], {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
        ):
            return [UNSCHEDULABLE_NODE], True
        if untolerated_taint(spec, node) is not None:
            return [UNTOLERATED_TAINT], True
        if not node_matches(spec, node):
            return [AFFINITY_MISMATCH], True
        capacity = allocatable(node)
        why: list[str] = []
        hopeless = False
        if used.pods + 1 > capacity.get("pods", 110):
            why.append("Too many pods")
        ordered = [r for r in STANDARD if r in requests] + sorted(r for r in requests if r not in STANDARD)
        for name in ordered:
            if name == "pods":
                continue
            want, have = requests[name], capacity.get(name, 0)
            if want > have - used.requested.get(name, 0):
                why.append(f"Insufficient {name}")
                hopeless = hopeless or want > have
        return why, hopeless

    @staticmethod
    def _postfilter(pod: dict[str, Any], unresolvable: dict[str, bool]) -> str:
        n = len(unresolvable)
        if pod["spec"].get("preemptionPolicy") == "Never":
            preemption = "preemption: not eligible due to preemptionPolicy=Never."
        else:
            histogram = Counter(NOT_HELPFUL if hopeless else NO_VICTIMS for hopeless in unresolvable.values())
            parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
            preemption = f"preemption: 0/{n} nodes are available: {', '.join(parts)}."
        return f"{DRA_NOTE}, {preemption}"

    @staticmethod
    def _score_key(
        spec: dict[str, Any], requests: dict[str, int], node: dict[str, Any], usage: dict[str, NodeUsage]
    ):
        name = node["metadata"]["name"]
        capacity = allocatable(node)
        used = (usage.get(name) or NodeUsage()).requested
        free = 0.0
        for resource in ("cpu", "memory"):
            have = capacity.get(resource, 0)
            if have:
                free += max(have - used.get(resource, 0) - requests.get(resource, 0), 0) / have
        prefer_no_schedule = sum(
            1
            for taint in (node.get("spec") or {}).get("taints") or []
            if taint.get("effect") == "PreferNoSchedule"
            and not tolerates(spec.get("tolerations") or [], taint)
        )
        return (-_preferred_weight(spec, node), prefer_no_schedule, -free, name)

    def _volumes(self, pod: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        """VolumeBinding's PreFilter: (rejection message or None, PVCs waiting for their first consumer)."""
        namespace = pod["metadata"]["namespace"]
        waiting = []
        for volume in pod["spec"].get("volumes") or []:
            claim_ref = volume.get("persistentVolumeClaim") or {}
            if not claim_ref:
                continue
            name = claim_ref.get("claimName", "")
            claim = self.store.peek(PVCS, namespace, name)
            if claim is None:
                return f'persistentvolumeclaim "{name}" not found', []
            if claim["metadata"].get("deletionTimestamp"):
                return f'persistentvolumeclaim "{name}" is being deleted', []
            if (claim.get("status") or {}).get("phase") == "Bound":
                continue
            class_name = (claim.get("spec") or {}).get("storageClassName")
            storage_class = self.store.peek(STORAGECLASSES, "", class_name) if class_name else None
            if storage_class and storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
                waiting.append(claim)
                continue
            return "pod has unbound immediate PersistentVolumeClaims", []
        return None, waiting

    # -- writing --------------------------------------------------------------------------------------

    def _unschedulable(self, pod: dict[str, Any], reason: str, message: str, event: bool = True) -> None:
        status = dict(pod.get("status") or {})
        conditions = [dict(c) for c in status.get("conditions") or []]
        set_condition(conditions, "PodScheduled", "False", reason, message, probe="null")
        status["conditions"] = conditions
        status.setdefault("phase", "Pending")
        self.runtime.write_status(PODS, pod, status)
        if not event:
            return
        uid = pod["metadata"]["uid"]
        last = self._reported.get(uid)
        current = time.time()
        if last is None or last[0] != message or current - last[1] >= REPORT_EVERY_S:
            self._reported[uid] = (message, current)
            self.runtime.record(pod, "Warning", "FailedScheduling", message, SCHEDULER_NAME)
            self.runtime.wake_in(REPORT_EVERY_S)

    def bind(
        self,
        pod: dict[str, Any],
        node: dict[str, Any],
        requests: dict[str, int],
        usage: dict[str, NodeUsage],
        waiting_claims: list[dict[str, Any]],
    ) -> None:
        """What a pods/binding does: spec.nodeName, and condition PodScheduled=True."""
        node_name = node["metadata"]["name"]
        for claim in waiting_claims:
            annotated = dict(claim)
            annotated["metadata"] = dict(claim["metadata"])
            annotations = dict(annotated["metadata"].get("annotations") or {})
            annotations["volume.kubernetes.io/selected-node"] = node_name
            annotated["metadata"]["annotations"] = annotations
            self.runtime.update(PVCS, annotated)
        bound = dict(pod)
        bound["spec"] = dict(pod["spec"], nodeName=node_name)
        written = self.runtime.update(PODS, bound)
        if written is None:
            return
        status = dict(written.get("status") or {})
        conditions = [dict(c) for c in status.get("conditions") or []]
        set_condition(conditions, "PodScheduled", "True", None, None, probe="null")
        status["conditions"] = conditions
        self.runtime.write_status(PODS, written, status)
        usage.setdefault(node_name, NodeUsage()).add(requests)
        self._reported.pop(pod["metadata"]["uid"], None)
        namespace = pod["metadata"]["namespace"]
        self.runtime.record(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {namespace}/{pod['metadata']['name']} to {node_name}",
            SCHEDULER_NAME,
        )
