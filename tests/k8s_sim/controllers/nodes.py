"""Node loss and the taint-based eviction that follows it (node lifecycle controller and taint manager).

`lose(node)` stands for a node whose kubelet stopped reporting (machine down, network cut), as
https://kubernetes.io/docs/concepts/architecture/nodes/#condition and
https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/#taint-based-evictions describe:

- its conditions become Unknown (`NodeStatusUnknown`, "Kubelet stopped posting node status."), and it gets
  the taints `node.kubernetes.io/unreachable:NoSchedule` and `node.kubernetes.io/unreachable:NoExecute`
  (with timeAdded), so nothing new is scheduled there;
- the kubelet stand-in stops running its pods (a hook's process is killed); their status stays as last
  reported, except the Ready condition, set to False (the node lifecycle controller's MarkPodsNotReady);
- the taint manager evicts every pod there that does not tolerate a NoExecute taint, once its
  `tolerationSeconds` have passed since the taint was added (300 s for the tolerations the
  DefaultTolerationSeconds admission plugin adds to every pod): condition DisruptionTarget=True reason
  `DeletionByTaintManager`, then a (graceful) delete. As on a real cluster, such a pod stays Terminating
  while its node is unreachable;
- with `out_of_service=True` the operator's taint `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`
  is added too (non-graceful node shutdown:
  https://kubernetes.io/docs/concepts/cluster-administration/node-shutdown/#non-graceful-node-shutdown): the
  taint manager evicts at once and PodGC (controllers/gc.py) force-deletes the terminating pods after marking
  them Failed.

`restore(node)` brings it back Ready without those taints; the kubelet stand-in takes up the pods still bound
there as a rebooted kubelet does (restartPolicy Never: containers `ContainerStatusUnknown`, exit 137, pod
Failed; otherwise they start again). Deleting the Node object is the other way to lose it: PodGC then removes
its pods. Simplified: everything happens at once (no 40 s node-monitor grace period, no eviction rate limits).
"""

from __future__ import annotations

import time
from typing import Any

from tests.k8s_sim.cluster import node_conditions
from tests.k8s_sim.runtime import NODES, PODS, Component, set_condition
from tests.k8s_sim.scheduler import is_terminal, tolerates
from tests.k8s_sim.store import now, parse_time

UNREACHABLE = "node.kubernetes.io/unreachable"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
TAINT_MANAGER = "taint-eviction-controller"


class NodeLifecycle(Component):
    interests = frozenset({"nodes", "pods"})

    def __init__(self, runtime) -> None:
        super().__init__(runtime)
        self.lost: set[str] = set()

    def is_lost(self, name: str) -> bool:
        return name in self.lost

    def lose(self, name: str, out_of_service: bool = False) -> dict[str, Any]:
        node = self.store.get(NODES, "", name)
        self.lost.add(name)
        stamp = now()
        taints = [
            t for t in node["spec"].get("taints") or [] if t.get("key") not in (UNREACHABLE, OUT_OF_SERVICE)
        ]
        taints += [
            {"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": stamp},
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp},
        ]
        if out_of_service:
            taints.append(
                {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute", "timeAdded": stamp}
            )
        node["spec"]["taints"] = taints
        written = self.runtime.update(NODES, node) or node
        status = dict(written.get("status") or {})
        status["conditions"] = node_conditions(ready=False)
        self.runtime.write_status(NODES, written, status)
        self.runtime.kick()
        return self.store.get(NODES, "", name)

    def restore(self, name: str) -> dict[str, Any]:
        node = self.store.get(NODES, "", name)
        self.lost.discard(name)
        node["spec"]["taints"] = [
            t for t in node["spec"].get("taints") or [] if t.get("key") not in (UNREACHABLE, OUT_OF_SERVICE)
        ]
        written = self.runtime.update(NODES, node) or node
        status = dict(written.get("status") or {})
        status["conditions"] = node_conditions(ready=True)
        self.runtime.write_status(NODES, written, status)
        self.runtime.kick()
        return self.store.get(NODES, "", name)

    def sync(self) -> None:
        current = time.time()
        nodes = {node["metadata"]["name"]: node for node in self.store.iter(NODES)}
        self.lost &= set(nodes)
        for pod in list(self.store.iter(PODS)):
            node_name = (pod.get("spec") or {}).get("nodeName")
            node = nodes.get(node_name or "")
            if node is None or is_terminal(pod):
                continue
            if node_name in self.lost:
                self._mark_not_ready(pod)
            if pod["metadata"].get("deletionTimestamp"):
                continue
            due = self._eviction_time(pod, node)
            if due is None:
                continue
            if due <= current:
                self._evict(pod)
            else:
                self.runtime.wake_at(due)

    @staticmethod
    def _eviction_time(pod: dict[str, Any], node: dict[str, Any]) -> float | None:
        """When the taint manager evicts `pod` from `node` (None: never)."""
        due: float | None = None
        for taint in (node.get("spec") or {}).get("taints") or []:
            if taint.get("effect") != "NoExecute":
                continue
            matching = [t for t in pod["spec"].get("tolerations") or [] if tolerates([t], taint)]
            added = parse_time(taint.get("timeAdded")) or time.time()
            if not matching:
                return added
            if all(t.get("tolerationSeconds") is not None for t in matching):
                seconds = min(max(int(t["tolerationSeconds"]), 0) for t in matching)
                when = added + seconds
                due = when if due is None else min(due, when)
        return due

    def _mark_not_ready(self, pod: dict[str, Any]) -> None:
        conditions = [dict(c) for c in (pod.get("status") or {}).get("conditions") or []]
        ready = next((c for c in conditions if c["type"] == "Ready"), None)
        if ready is None or ready.get("status") == "False":
            return
        set_condition(conditions, "Ready", "False", probe="null")
        self.runtime.write_status(PODS, pod, dict(pod["status"], conditions=conditions))

    def _evict(self, pod: dict[str, Any]) -> None:
        conditions = [dict(c) for c in (pod.get("status") or {}).get("conditions") or []]
        set_condition(
            conditions,
            "DisruptionTarget",
            "True",
            "DeletionByTaintManager",
            "Taint manager: deleting due to NoExecute taint",
            probe="null",
        )
        written = (
            self.runtime.write_status(PODS, pod, dict(pod.get("status") or {}, conditions=conditions)) or pod
        )
        self.runtime.record(
            written,
            "Normal",
            "TaintManagerEviction",
            f"Marking for deletion Pod {pod['metadata']['namespace']}/{pod['metadata']['name']}",
            TAINT_MANAGER,
        )
        self.runtime.delete(PODS, written, propagation=None)
