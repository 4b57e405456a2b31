"""Garbage collection: owner references, the TTL-after-finished controller, PodGC.

**Garbage collector** (https://kubernetes.io/docs/concepts/architecture/garbage-collection/): an object
whose owners (by ownerReferences uid) are all gone is deleted (background); references to owners that are
gone are dropped when another owner remains. Cascading deletion follows the DELETE's propagationPolicy
(https://kubernetes.io/docs/tasks/administer-cluster/use-cascading-deletion/):

- Background: the owner goes at once, its dependents right after (this collector);
- Foreground: the owner stays with `deletionTimestamp` and the `foregroundDeletion` finalizer until its
  dependents are gone (they are deleted, and those with blockOwnerDeletion hold it), then goes;
- Orphan: the `orphan` finalizer; the dependents lose their ownerReference to it, then it goes.

What a DELETE without a policy means is the resource's default: Orphan for batch/v1 Jobs (with the API's
warning, see app.py), Background for everything else.

**TTL-after-finished** (https://kubernetes.io/docs/concepts/workloads/controllers/ttlafterfinished/): a Job
that finished (Complete or Failed) `ttlSecondsAfterFinished` ago is deleted with propagationPolicy
Foreground and its uid as precondition, as the real controller does, so its pods go first. The finish time
is the real controller's (jobFinishTime): the lastTransitionTime of the first Complete or Failed condition
that is True, a metav1.Time of one-second resolution, so the Job goes when that second plus the TTL has
passed: with a TTL of 1 s, anywhere from at once to one second after it finished.

**PodGC** (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-garbage-collection): a pod
bound to a node that no longer exists, or being deleted on a node tainted `node.kubernetes.io/out-of-service`,
is marked Failed (condition DisruptionTarget=True reason `DeletionByPodGC` for the first) and force-deleted.
Simplified: no 40 s quarantine, no terminated-pod threshold.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from typing import Any

from tests.k8s_sim.resources import RESOURCES, Resource
from tests.k8s_sim.runtime import JOBS, NODES, PODS, Component, set_condition
from tests.k8s_sim.scheduler import is_terminal
from tests.k8s_sim.store import Event, parse_time

_BY_KEY = {(r.group, r.plural): r for r in RESOURCES}


class GarbageCollector(Component):
    def wants(self, event: Event) -> bool:
        metadata = event.obj.get("metadata") or {}
        return (
            event.type == "DELETED"
            or bool(metadata.get("deletionTimestamp"))
            or (event.type == "ADDED" and bool(metadata.get("ownerReferences")))
        )

    def sync(self) -> None:
        index: dict[str, tuple[Resource, dict[str, Any]]] = {}
        for (group, plural, _, _), obj in list(self.store.objects.items()):
            index[obj["metadata"]["uid"]] = (_BY_KEY[(group, plural)], obj)
        dependents: dict[str, list[tuple[Resource, dict[str, Any]]]] = defaultdict(list)
        for res, obj in index.values():
            refs = obj["metadata"].get("ownerReferences") or []
            if not refs:
                continue
            for ref in refs:
                dependents[ref.get("uid", "")].append((res, obj))
            alive = [ref for ref in refs if ref.get("uid") in index]
            if not alive:
                if not obj["metadata"].get("deletionTimestamp"):
                    self.runtime.delete(res, obj, propagation="Background")
            elif len(alive) < len(refs):
                updated = copy.deepcopy(obj)
                updated["metadata"]["ownerReferences"] = alive
                self.runtime.update(res, updated)
        for uid, (res, obj) in index.items():
            metadata = obj["metadata"]
            if not metadata.get("deletionTimestamp"):
                continue
            finalizers = list(metadata.get("finalizers") or [])
            if "orphan" in finalizers:
                for dep_res, dep in dependents.get(uid, []):
                    updated = copy.deepcopy(dep)
                    updated["metadata"]["ownerReferences"] = [
                        ref for ref in dep["metadata"].get("ownerReferences") or [] if ref.get("uid") != uid
                    ]
                    if not updated["metadata"]["ownerReferences"]:
                        del updated["metadata"]["ownerReferences"]
                    self.runtime.update(dep_res, updated)
                self._drop_finalizer(res, obj, "orphan")
            elif "foregroundDeletion" in finalizers:
                blocking = []
                for dep_res, dep in dependents.get(uid, []):
                    if dep["metadata"]["uid"] not in index:
                        continue
                    if not dep["metadata"].get("deletionTimestamp"):
                        self.runtime.delete(
                            dep_res,
                            dep,
                            propagation="Foreground" if dependents.get(dep["metadata"]["uid"]) else None,
                        )
                    if any(
                        ref.get("uid") == uid and ref.get("blockOwnerDeletion")
                        for ref in dep["metadata"].get("ownerReferences") or []
                    ) and (
                        self.store.peek(
                            dep_res, dep["metadata"].get("namespace", ""), dep["metadata"]["name"]
                        )
                        is not None
                    ):
                        blocking.append(dep)
                if not blocking:
                    self._drop_finalizer(res, obj, "foregroundDeletion")

    def _drop_finalizer(self, res: Resource, obj: dict[str, Any], finalizer: str) -> None:
        current = self.store.peek(res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if current is None:
            return
        updated = copy.deepcopy(current)
        updated["metadata"]["finalizers"] = [
            f for f in current["metadata"].get("finalizers") or [] if f != finalizer
        ]
        self.runtime.update(res, updated)


class TTLAfterFinished(Component):
    interests = frozenset({"jobs"})

    def sync(self) -> None:
        current = time.time()
        for job in list(self.store.iter(JOBS)):
            ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
            if ttl is None or job["metadata"].get("deletionTimestamp"):
                continue
            finished = next(
                (
                    parse_time(c.get("lastTransitionTime"))
                    for c in (job.get("status") or {}).get("conditions") or []
                    if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                ),
                None,
            )
            if finished is None:  # not finished (or, as the real controller logs, no transition time)
                continue
            due = finished + int(ttl)
            if due <= current:
                self.runtime.delete(JOBS, job, propagation="Foreground")
            else:
                self.runtime.wake_at(due)


class PodGC(Component):
    interests = frozenset({"pods", "nodes"})

    def sync(self) -> None:
        nodes = {node["metadata"]["name"]: node for node in self.store.iter(NODES)}
        for pod in list(self.store.iter(PODS)):
            node_name = (pod.get("spec") or {}).get("nodeName")
            if not node_name:
                continue
            node = nodes.get(node_name)
            if node is None:
                self._collect(pod, "DeletionByPodGC", "PodGC: node no longer exists")
            elif pod["metadata"].get("deletionTimestamp") and any(
                t.get("key") == "node.kubernetes.io/out-of-service" and t.get("effect") == "NoExecute"
                for t in (node.get("spec") or {}).get("taints") or []
            ):
                self._collect(pod, None, None)

    def _collect(self, pod: dict[str, Any], reason: str | None, message: str | None) -> None:
        if not is_terminal(pod):
            status = copy.deepcopy(pod.get("status") or {})
            status["phase"] = "Failed"
            conditions = status.setdefault("conditions", [])
            if reason is not None:
                set_condition(conditions, "DisruptionTarget", "True", reason, message, probe="null")
            pod = self.runtime.write_status(PODS, pod, status) or pod
        self.runtime.delete(PODS, pod, propagation=None, grace=0)
