"""ReplicaSet, Deployment, DaemonSet and StatefulSet controllers, and PodDisruptionBudget status.

Readiness comes from the pods' Ready condition (set by the kubelet stand-in); a pod is *available* when it
has been Ready for `minReadySeconds`. What each writes follows the real controllers (pkg/controller/...):

- **ReplicaSet** (https://kubernetes.io/docs/concepts/workloads/controllers/replicaset/): keeps
  `spec.replicas` pods (named `<rs>-<random>`, owned, with the template's labels); deletes the surplus,
  least useful first (unscheduled, pending, not ready, newest); replaces failed pods. Status `replicas`,
  `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`, `observedGeneration` (zeros omitted).
- **Deployment** (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/): a ReplicaSet per pod
  template, `<deployment>-<pod-template-hash>`, with the `pod-template-hash` label on it, its selector and
  its pods, and the `deployment.kubernetes.io/revision`, `desired-replicas`, `max-replicas` annotations.
  RollingUpdate as the real controller computes it (maxSurge rounded up, maxUnavailable down; scale the new
  ReplicaSet up within replicas+maxSurge; scale old ones down keeping replicas-maxUnavailable available,
  unhealthy pods first), Recreate (old ones to zero, then the new one). Status `replicas`,
  `updatedReplicas`, `readyReplicas`, `availableReplicas`, `unavailableReplicas`, `observedGeneration`, and
  the conditions `Available` (MinimumReplicasAvailable / MinimumReplicasUnavailable) and `Progressing`
  (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated while it progresses, NewReplicaSetAvailable
  when complete, and False/ProgressDeadlineExceeded "ReplicaSet "x" has timed out progressing." when
  `progressDeadlineSeconds` pass without progress: a rollout whose pods never become ready ends there, which
  is what `kubectl rollout status` and helm's kstatus wait read as a failure). Old ReplicaSets beyond
  `revisionHistoryLimit` are deleted.
- **DaemonSet** (https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/): one pod per eligible
  node (nodeSelector/required affinity, NoSchedule/NoExecute taints tolerated, counting the tolerations the
  controller adds: not-ready, unreachable, disk/memory/pid-pressure, unschedulable), bound there by a required
  node affinity on `metadata.name` that the scheduler honours; pods of changed templates are replaced one
  at a time (maxUnavailable 1). Status `desiredNumberScheduled`, `currentNumberScheduled`, `numberReady`,
  `numberAvailable`, `numberUnavailable`, `updatedNumberScheduled`, `numberMisscheduled`,
  `observedGeneration`.
- **StatefulSet** (https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/): pods
  `<sts>-<ordinal>` with `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
  `controller-revision-hash` labels, hostname/subdomain, a PVC `<template>-<sts>-<ordinal>` per
  volumeClaimTemplate; OrderedReady creates ordinal n+1 only when n is Running and Ready and removes the
  highest first; Parallel does not wait; RollingUpdate replaces pods of an old revision from the highest
  ordinal down, one at a time, above `partition`. Status `replicas`, `readyReplicas`, `currentReplicas`,
  `updatedReplicas`, `availableReplicas`, `currentRevision`, `updateRevision`, `collisionCount`,
  `observedGeneration`.
- **PodDisruptionBudget** status (disruption controller): `expectedPods`, `currentHealthy`, `desiredHealthy`,
  `disruptionsAllowed`, `observedGeneration`, condition DisruptionAllowed.

A pod create that the API refuses (admission, or a fault for controllers: faults.py) gets what the real
controllers write: a Warning Event `FailedCreate` on the owner ("Error creating: <message>"; the
StatefulSet's "create Pod <pod> in StatefulSet <sts> failed error: <message>"), no more creates in that
pass, and a retry after the default controller rate limiter's backoff (5 ms, doubling, capped at 1000 s).

Simplified: the pod-template-hash and revision names are an FNV-1a hash of the template's JSON (the real one
hashes the Go struct), no ControllerRevision objects, no pod slow-start batches, no pause/rollback
subresources, no adoption of orphan pods by label, no `terminatingReplicas`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from tests.k8s_sim import defaults
from tests.k8s_sim.resources import Resource
from tests.k8s_sim.runtime import (
    DAEMONSETS,
    DEPLOYMENTS,
    NODES,
    PODS,
    PVCS,
    REPLICASETS,
    STATEFULSETS,
    Component,
    Runtime,
    by_controller,
    condition,
    is_true,
    owner_reference,
    resource,
    set_condition,
)
from tests.k8s_sim.scheduler import node_matches, untolerated_taint
from tests.k8s_sim.store import Store, now, parse_time

PDBS = resource("policy", "poddisruptionbudgets")
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def safe_encode(text: str) -> str:
    """rand.SafeEncodeString: each byte mapped onto the alphabet without vowels."""
    return "".join(_SAFE[ord(c) % len(_SAFE)] for c in text)


def template_hash(template: dict[str, Any], collision: int = 0) -> str:
    data = json.dumps(template, sort_keys=True).encode() + (str(collision).encode() if collision else b"")
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return safe_encode(str(value))


def matches_selector(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions)."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            expression.get("values") or [],
        )
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def is_active(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not pod["metadata"].get(
        "deletionTimestamp"
    )


def live_with_owned(
    store: Store, owners: Resource, owned: Resource
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each object of `owners` not being deleted, with the objects of `owned` it is the controller of (those
    read before the first is yielded)."""
    by_owner = by_controller(store.iter(owned))
    for owner in list(store.iter(owners)):
        if not owner["metadata"].get("deletionTimestamp"):
            yield owner, by_owner.get(owner["metadata"]["uid"], [])


def delete_failed(runtime: Runtime, pods: Iterable[dict[str, Any]]) -> None:
    """Delete the Failed pods not being deleted yet (a workload controller replaces them)."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") == "Failed" and not pod["metadata"].get(
            "deletionTimestamp"
        ):
            runtime.delete(PODS, pod, propagation=None)


def ready_since(pod: dict[str, Any]) -> float | None:
    cond = condition(pod, "Ready")
    if cond is None or cond.get("status") != "True":
        return None
    return parse_time(cond.get("lastTransitionTime")) or time.time()


def is_available(pod: dict[str, Any], min_ready_seconds: int, runtime=None) -> bool:
    since = ready_since(pod)
    if since is None:
        return False
    if min_ready_seconds <= 0:
        return True
    due = since + min_ready_seconds
    if time.time() >= due:
        return True
    if runtime is not None:
        runtime.wake_at(due)
    return False


def _put(status: dict[str, Any], key: str, value: int) -> None:
    if value:
        status[key] = value
    else:
        status.pop(key, None)


def _pod_from_template(
    owner: dict[str, Any],
    template: dict[str, Any],
    name: dict[str, str],
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    template = copy.deepcopy(template)
    metadata = template.get("metadata") or {}
    pod_meta: dict[str, Any] = {
        **name,
        "labels": {**(metadata.get("labels") or {}), **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }
    if metadata.get("annotations"):
        pod_meta["annotations"] = dict(metadata["annotations"])
    return {"metadata": pod_meta, "spec": template.get("spec") or {}}


def _scale_value(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value or 0)


def fenceposts(deployment: dict[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as ResolveFenceposts computes them."""
    spec = deployment["spec"]
    replicas = int(spec.get("replicas", 1))
    strategy = spec.get("strategy") or {}
    if strategy.get("type") != "RollingUpdate":
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = _scale_value(rolling.get("maxSurge", "25%"), replicas, True)
    unavailable = _scale_value(rolling.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas)


CONTROLLER_BACKOFF_S = (0.005, 1000.0)  # workqueue.DefaultTypedControllerRateLimiter's per-item backoff


# -- ReplicaSet -------------------------------------------------------------------------------------------


class ReplicaSetController(Component):
    interests = frozenset({"replicasets", "pods"})

    def sync(self) -> None:
        for rs, pods in live_with_owned(self.store, REPLICASETS, PODS):
            self.sync_one(rs, pods)

    def sync_one(self, rs: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        spec = rs["spec"]
        wanted = int(spec.get("replicas", 1))
        delete_failed(self.runtime, pods)
        active = [p for p in pods if is_active(p)]
        if len(active) < wanted:
            for _ in range(wanted - len(active) if not self.runtime.create_held(rs) else 0):
                body = _pod_from_template(
                    rs, spec.get("template") or {}, {"generateName": f"{rs['metadata']['name']}-"}
                )
                created = self.runtime.create_pod(rs, body, "replicaset-controller", CONTROLLER_BACKOFF_S)
                if created is None:
                    break  # refused (FailedCreate): the rest waits for the retry
                active.append(created)
                self.runtime.record(
                    rs,
                    "Normal",
                    "SuccessfulCreate",
                    f"Created pod: {created['metadata']['name']}",
                    "replicaset-controller",
                )
        elif len(active) > wanted:

            def rank(pod: dict[str, Any]):
                phase = {"Pending": 0, "Unknown": 1, "Running": 2}.get(
                    (pod.get("status") or {}).get("phase"), 0
                )
                return (
                    bool(pod["spec"].get("nodeName")),
                    phase,
                    is_true(pod, "Ready"),
                    [-ord(c) for c in pod["metadata"].get("creationTimestamp", "")],
                )

            for pod in sorted(active, key=rank)[: len(active) - wanted]:
                self.runtime.delete(PODS, pod, propagation=None)
                self.runtime.record(
                    rs,
                    "Normal",
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    "replicaset-controller",
                )
                active.remove(pod)
        min_ready = int(spec.get("minReadySeconds", 0))
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        status: dict[str, Any] = dict(rs.get("status") or {})
        status["replicas"] = len(active)
        _put(
            status,
            "fullyLabeledReplicas",
            sum(
                1
                for p in active
                if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in template_labels.items())
            ),
        )
        _put(status, "readyReplicas", sum(1 for p in active if is_true(p, "Ready")))
        _put(status, "availableReplicas", sum(1 for p in active if is_available(p, min_ready, self.runtime)))
        status["observedGeneration"] = rs["metadata"].get("generation", 1)
        self.runtime.write_status(REPLICASETS, rs, status)


# -- Deployment -------------------------------------------------------------------------------------------


def _revision(rs: dict[str, Any]) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", "0"))
    except ValueError:
        return 0


def _strip_hash(template: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(template)
    labels = (stripped.get("metadata") or {}).get("labels")
    if labels:
        labels.pop("pod-template-hash", None)
    return stripped


class DeploymentController(Component):
    interests = frozenset({"deployments", "replicasets", "pods"})

    def sync(self) -> None:
        for deployment, sets in live_with_owned(self.store, DEPLOYMENTS, REPLICASETS):
            self.sync_one(deployment, sets)

    def sync_one(self, deployment: dict[str, Any], sets: list[dict[str, Any]]) -> None:
        spec = deployment["spec"]
        replicas = int(spec.get("replicas", 1))
        template = copy.deepcopy(spec.get("template") or {})
        defaults.pod_spec(template.setdefault("spec", {}))
        status = copy.deepcopy(deployment.get("status") or {})
        conditions = status.setdefault("conditions", [])
        new_rs = next((rs for rs in sets if _strip_hash(rs["spec"].get("template") or {}) == template), None)
        old_sets = sorted(
            (rs for rs in sets if rs is not new_rs),
            key=lambda rs: rs["metadata"].get("creationTimestamp", ""),
        )
        max_revision = max((_revision(rs) for rs in sets), default=0)
        surge, max_unavailable = fenceposts(deployment)
        if new_rs is None:
            new_rs = self._create_rs(deployment, template, max_revision + 1, sets)
            if new_rs is None:
                return
            set_condition(
                conditions,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                f'Created new replica set "{new_rs["metadata"]["name"]}"',
                update_time=True,
            )
            self._touch(conditions, "Progressing")
        elif _revision(new_rs) < max_revision:
            new_rs = self._annotate(new_rs, max_revision + 1, replicas, surge)
            set_condition(
                conditions,
                "Progressing",
                "True",
                "FoundNewReplicaSet",
                f'Found new replica set "{new_rs["metadata"]["name"]}"',
                update_time=True,
            )
        strategy = (spec.get("strategy") or {}).get("type", "RollingUpdate")
        if strategy == "Recreate":
            active_old = [rs for rs in old_sets if int(rs["spec"].get("replicas", 0)) > 0]
            for rs in active_old:
                self._scale(deployment, rs, 0)
            old_pods = sum(int((rs.get("status") or {}).get("replicas", 0)) for rs in old_sets)
            if not active_old and old_pods == 0:
                new_rs = self._scale(deployment, new_rs, replicas)
        else:
            new_rs = self._rolling(deployment, new_rs, old_sets, replicas, surge, max_unavailable)
        self._cleanup(deployment, old_sets)
        self._status(
            deployment,
            status,
            new_rs,
            [rs for rs in sets if rs is not new_rs] if new_rs else sets,
            replicas,
            max_unavailable,
        )

    def _create_rs(self, deployment, template, revision, sets) -> dict[str, Any] | None:
        collision = 0
        names = {rs["metadata"]["name"] for rs in sets}
        while True:
            pod_hash = template_hash(template, collision)
            rs_name = f"{deployment['metadata']['name']}-{pod_hash}"
            if rs_name not in names:
                break
            collision += 1
        spec = deployment["spec"]
        rs_template = copy.deepcopy(template)
        rs_template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = pod_hash
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        surge, _ = fenceposts(deployment)
        replicas = int(spec.get("replicas", 1))
        body = {
            "metadata": {
                "name": rs_name,
                "labels": dict(rs_template["metadata"]["labels"]),
                "annotations": {
                    "deployment.kubernetes.io/desired-replicas": str(replicas),
                    "deployment.kubernetes.io/max-replicas": str(replicas + surge),
                    "deployment.kubernetes.io/revision": str(revision),
                },
                "ownerReferences": [owner_reference(deployment)],
            },
            "spec": {
                "replicas": 0,
                "selector": selector,
                "template": rs_template,
                **({"minReadySeconds": spec["minReadySeconds"]} if spec.get("minReadySeconds") else {}),
            },
        }
        created = self.runtime.create(REPLICASETS, deployment["metadata"]["namespace"], body)
        if created is not None:
            self.runtime.record(
                deployment,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled up replica set {rs_name} from 0 to 0",
                "deployment-controller",
            )
        return created

    def _annotate(self, rs, revision, replicas, surge) -> dict[str, Any]:
        rs = copy.deepcopy(rs)
        annotations = rs["metadata"].setdefault("annotations", {})
        annotations["deployment.kubernetes.io/revision"] = str(revision)
        annotations["deployment.kubernetes.io/desired-replicas"] = str(replicas)
        annotations["deployment.kubernetes.io/max-replicas"] = str(replicas + surge)
        return self.runtime.update(REPLICASETS, rs) or rs

    def _scale(self, deployment, rs, count: int) -> dict[str, Any]:
        current = int(rs["spec"].get("replicas", 0))
        if current == count:
            return rs
        updated = copy.deepcopy(rs)
        updated["spec"]["replicas"] = count
        surge, _ = fenceposts(deployment)
        replicas = int(deployment["spec"].get("replicas", 1))
        annotations = updated["metadata"].setdefault("annotations", {})
        annotations["deployment.kubernetes.io/desired-replicas"] = str(replicas)
        annotations["deployment.kubernetes.io/max-replicas"] = str(replicas + surge)
        written = self.runtime.update(REPLICASETS, updated) or updated
        verb = "up" if count > current else "down"
        self.runtime.record(
            deployment,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {verb} replica set {rs['metadata']['name']} from {current} to {count}",
            "deployment-controller",
        )
        return written

    def _rolling(self, deployment, new_rs, old_sets, replicas, surge, max_unavailable) -> dict[str, Any]:
        all_sets = [new_rs, *old_sets]
        total = sum(int(rs["spec"].get("replicas", 0)) for rs in all_sets)
        new_count = int(new_rs["spec"].get("replicas", 0))
        if new_count > replicas:
            new_rs = self._scale(deployment, new_rs, replicas)
        elif new_count < replicas:
            allowed = replicas + surge - total
            step = max(min(allowed, replicas - new_count), 0)
            if step:
                new_rs = self._scale(deployment, new_rs, new_count + step)
        # Scale old ReplicaSets down, keeping replicas - maxUnavailable available.
        old_count = sum(int(rs["spec"].get("replicas", 0)) for rs in old_sets)
        if old_count == 0:
            return new_rs
        all_count = int(new_rs["spec"].get("replicas", 0)) + old_count
        min_available = replicas - max_unavailable
        new_unavailable = int(new_rs["spec"].get("replicas", 0)) - int(
            (new_rs.get("status") or {}).get("availableReplicas", 0)
        )
        max_scaled_down = all_count - min_available - new_unavailable
        if max_scaled_down <= 0:
            return new_rs
        remaining = max_scaled_down
        for rs in old_sets:  # unhealthy replicas first
            if remaining <= 0:
                break
            count = int(rs["spec"].get("replicas", 0))
            unhealthy = count - int((rs.get("status") or {}).get("availableReplicas", 0))
            cut = min(remaining, max(unhealthy, 0), count)
            if cut > 0:
                self._scale(deployment, rs, count - cut)
                rs["spec"]["replicas"] = count - cut
                remaining -= cut
        available = sum(int((rs.get("status") or {}).get("availableReplicas", 0)) for rs in all_sets)
        budget = min(available - min_available, remaining)
        for rs in old_sets:
            if budget <= 0:
                break
            count = int(rs["spec"].get("replicas", 0))
            cut = min(count, budget)
            if cut > 0:
                self._scale(deployment, rs, count - cut)
                budget -= cut
        return new_rs

    def _cleanup(self, deployment, old_sets) -> None:
        limit = int(deployment["spec"].get("revisionHistoryLimit", 10))
        idle = [
            rs
            for rs in old_sets
            if int(rs["spec"].get("replicas", 0)) == 0 and not (rs.get("status") or {}).get("replicas")
        ]
        for rs in idle[: max(len(idle) - limit, 0)]:
            self.runtime.delete(REPLICASETS, rs)

    @staticmethod
    def _touch(conditions, kind) -> None:
        for cond in conditions:
            if cond["type"] == kind:
                cond["lastUpdateTime"] = now()

    def _status(self, deployment, status, new_rs, old_sets, replicas, max_unavailable) -> None:
        all_sets = ([new_rs] if new_rs else []) + list(old_sets)
        previous = deployment.get("status") or {}

        def total(key: str, sets) -> int:
            return sum(int((rs.get("status") or {}).get(key, 0)) for rs in sets)

        status["observedGeneration"] = deployment["metadata"].get("generation", 1)
        _put(status, "replicas", total("replicas", all_sets))
        _put(status, "updatedReplicas", total("replicas", [new_rs]) if new_rs else 0)
        _put(status, "readyReplicas", total("readyReplicas", all_sets))
        available = total("availableReplicas", all_sets)
        _put(status, "availableReplicas", available)
        spec_total = sum(int(rs["spec"].get("replicas", 0)) for rs in all_sets)
        _put(status, "unavailableReplicas", max(spec_total - available, 0))
        conditions = status.setdefault("conditions", [])
        if available >= replicas - max_unavailable:
            self._set(
                conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        else:
            self._set(
                conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        # syncRolloutStatus: complete, progressing, or timed out.
        rs_name = new_rs["metadata"]["name"] if new_rs else deployment["metadata"]["name"]
        progressing = condition({"status": status}, "Progressing")
        complete_already = (
            status.get("replicas", 0) == status.get("updatedReplicas", 0)
            and progressing is not None
            and progressing.get("reason") == "NewReplicaSetAvailable"
        )
        deadline = deployment["spec"].get("progressDeadlineSeconds")
        if deadline is not None and not complete_already:
            done = (
                status.get("updatedReplicas", 0) == replicas
                and status.get("replicas", 0) == replicas
                and status.get("availableReplicas", 0) == replicas
            )
            old_before = int(previous.get("replicas", 0)) - int(previous.get("updatedReplicas", 0))
            old_now = int(status.get("replicas", 0)) - int(status.get("updatedReplicas", 0))
            moved = (
                status.get("updatedReplicas", 0) > int(previous.get("updatedReplicas", 0))
                or old_now < old_before
                or status.get("readyReplicas", 0) > int(previous.get("readyReplicas", 0))
                or available > int(previous.get("availableReplicas", 0))
            )
            if done:
                self._set(
                    conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{rs_name}" has successfully progressed.',
                )
            elif moved:
                transition = (
                    progressing.get("lastTransitionTime")
                    if progressing and progressing.get("status") == "True"
                    else None
                )
                conditions[:] = [c for c in conditions if c["type"] != "Progressing"]
                stamp = now()
                conditions.append(
                    {
                        "type": "Progressing",
                        "status": "True",
                        "lastUpdateTime": stamp,
                        "lastTransitionTime": transition or stamp,
                        "reason": "ReplicaSetUpdated",
                        "message": f'ReplicaSet "{rs_name}" is progressing.',
                    }
                )
            elif progressing is not None and progressing.get("reason") != "ProgressDeadlineExceeded":
                since = parse_time(progressing.get("lastUpdateTime")) or time.time()
                due = since + int(deadline)
                if time.time() > due:
                    self._set(
                        conditions,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        f'ReplicaSet "{rs_name}" has timed out progressing.',
                    )
                    self.runtime.record(
                        deployment,
                        "Warning",
                        "ProgressDeadlineExceeded",
                        f'ReplicaSet "{rs_name}" has timed out progressing.',
                        "deployment-controller",
                    )
                else:
                    self.runtime.wake_at(due + 0.5)
        annotations = deployment["metadata"].get("annotations") or {}
        revision = str(_revision(new_rs)) if new_rs else None
        if revision and annotations.get("deployment.kubernetes.io/revision") != revision:
            updated = copy.deepcopy(deployment)
            updated["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = revision
            deployment = self.runtime.update(DEPLOYMENTS, updated) or deployment
        self.runtime.write_status(DEPLOYMENTS, deployment, status)

    @staticmethod
    def _set(conditions, kind, status, reason, message) -> None:
        """SetDeploymentCondition: unchanged when status and reason are the same; the condition moves last."""
        current = next((c for c in conditions if c["type"] == kind), None)
        if current is not None and current.get("status") == status and current.get("reason") == reason:
            return
        stamp = now()
        new = {
            "type": kind,
            "status": status,
            "lastUpdateTime": stamp,
            "lastTransitionTime": stamp,
            "reason": reason,
            "message": message,
        }
        if current is not None and current.get("status") == status:
            new["lastTransitionTime"] = current.get("lastTransitionTime", stamp)
        conditions[:] = [c for c in conditions if c["type"] != kind] + [new]


# -- DaemonSet --------------------------------------------------------------------------------------------

DAEMON_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


class DaemonSetController(Component):
    interests = frozenset({"daemonsets", "pods", "nodes"})

    def sync(self) -> None:
        nodes = sorted(self.store.iter(NODES), key=lambda n: n["metadata"]["name"])
        for ds, pods in live_with_owned(self.store, DAEMONSETS, PODS):
            self.sync_one(ds, pods, nodes)

    @staticmethod
    def _pod_spec(ds: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy((ds["spec"].get("template") or {}).get("spec") or {})
        tolerations = spec.setdefault("tolerations", [])
        for extra in DAEMON_TOLERATIONS:
            if extra not in tolerations:
                tolerations.append(dict(extra))
        if spec.get("hostNetwork"):
            tolerations.append(
                {
                    "key": "node.kubernetes.io/network-unavailable",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                }
            )
        return spec

    def sync_one(self, ds: dict[str, Any], pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
        pod_spec = self._pod_spec(ds)
        revision = template_hash(ds["spec"].get("template") or {})
        eligible = {
            n["metadata"]["name"]
            for n in nodes
            if node_matches(pod_spec, n) and untolerated_taint(pod_spec, n) is None
        }
        delete_failed(self.runtime, pods)
        active = [p for p in pods if is_active(p)]
        by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for pod in active:
            by_node[self._target(pod)].append(pod)
        misscheduled = 0
        for node_name, node_pods in by_node.items():
            if node_name not in eligible:
                misscheduled += len(node_pods)
                for pod in node_pods:
                    self.runtime.delete(PODS, pod, propagation=None)
            for pod in node_pods[1:]:
                self.runtime.delete(PODS, pod, propagation=None)
        for node_name in sorted(eligible):
            if not by_node.get(node_name) and not self.runtime.create_held(ds):
                self._create(ds, pod_spec, node_name, revision)
        # Rolling update: replace one outdated pod at a time, when all are available.
        min_ready = int(ds["spec"].get("minReadySeconds", 0))
        current = [by_node[n][0] for n in eligible if by_node.get(n)]
        outdated = [
            p
            for p in current
            if (p["metadata"].get("labels") or {}).get("controller-revision-hash") != revision
        ]
        strategy = (ds["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate")
        if outdated and strategy == "RollingUpdate":
            unavailable = [p for p in current if not is_available(p, min_ready, self.runtime)]
            if not unavailable or all(p in outdated for p in unavailable):
                self.runtime.delete(
                    PODS, sorted(outdated, key=lambda p: p["metadata"]["name"])[0], propagation=None
                )
        status = dict(ds.get("status") or {})
        status["desiredNumberScheduled"] = len(eligible)
        status["currentNumberScheduled"] = len([n for n in eligible if by_node.get(n)])
        status["numberMisscheduled"] = misscheduled
        status["numberReady"] = sum(1 for p in current if is_true(p, "Ready"))
        status["observedGeneration"] = ds["metadata"].get("generation", 1)
        status["updatedNumberScheduled"] = len(current) - len(outdated)
        available = sum(1 for p in current if is_available(p, min_ready, self.runtime))
        _put(status, "numberAvailable", available)
        _put(status, "numberUnavailable", len(eligible) - available)
        self.runtime.write_status(DAEMONSETS, ds, status)

    @staticmethod
    def _target(pod: dict[str, Any]) -> str:
        terms = (
            ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution"
            )
            or {}
        ).get("nodeSelectorTerms") or []
        for term in terms:
            for field in term.get("matchFields") or []:
                if field.get("key") == "metadata.name" and field.get("values"):
                    return field["values"][0]
        return pod["spec"].get("nodeName") or ""

    def _create(self, ds, pod_spec, node_name, revision) -> None:
        spec = copy.deepcopy(pod_spec)
        affinity = spec.setdefault("affinity", {})
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}
                ]
            }
        }
        template = dict(ds["spec"].get("template") or {}, spec=spec)
        body = _pod_from_template(
            ds,
            template,
            {"generateName": f"{ds['metadata']['name']}-"},
            {
                "controller-revision-hash": revision,
                "pod-template-generation": str(ds["metadata"].get("generation", 1)),
            },
        )
        created = self.runtime.create_pod(ds, body, "daemonset-controller", CONTROLLER_BACKOFF_S)
        if created is not None:
            self.runtime.record(
                ds,
                "Normal",
                "SuccessfulCreate",
                f"Created pod: {created['metadata']['name']}",
                "daemonset-controller",
            )


# -- StatefulSet ------------------------------------------------------------------------------------------


class StatefulSetController(Component):
    interests = frozenset({"statefulsets", "pods", "persistentvolumeclaims"})

    def sync(self) -> None:
        for sts, pods in live_with_owned(self.store, STATEFULSETS, PODS):
            self.sync_one(sts, pods)

    def sync_one(self, sts: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        spec = sts["spec"]
        name = sts["metadata"]["name"]
        replicas = int(spec.get("replicas", 1))
        revision = f"{name}-{template_hash(spec.get('template') or {})}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        min_ready = int(spec.get("minReadySeconds", 0))
        by_ordinal: dict[int, dict[str, Any]] = {}
        for pod in pods:
            try:
                ordinal = int(pod["metadata"]["name"].rsplit("-", 1)[1])
            except (IndexError, ValueError):
                continue
            by_ordinal[ordinal] = pod
        delete_failed(self.runtime, list(by_ordinal.values()))
        blocked = False
        for ordinal in range(replicas):
            pod = by_ordinal.get(ordinal)
            if pod is None:
                if blocked or self.runtime.create_held(sts):
                    break
                self._ensure_claims(sts, ordinal)
                created = self._create(sts, ordinal, revision)
                if created is not None:
                    by_ordinal[ordinal] = created
                if ordered:
                    blocked = True
                continue
            healthy = (
                is_active(pod)
                and (pod.get("status") or {}).get("phase") == "Running"
                and is_available(pod, min_ready, self.runtime)
            )
            if ordered and not healthy:
                blocked = True
        # Scale down: the highest ordinal first.
        surplus = sorted((o for o in by_ordinal if o >= replicas), reverse=True)
        for ordinal in surplus:
            pod = by_ordinal[ordinal]
            if is_active(pod):
                self.runtime.delete(PODS, pod, propagation=None)
            if ordered:
                break
        # Rolling update: from the highest ordinal down, one at a time, when all are healthy.
        strategy = spec.get("updateStrategy") or {}
        partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
        present = [by_ordinal[o] for o in sorted(by_ordinal) if o < replicas]
        all_healthy = len(present) == replicas and all(is_active(p) and is_true(p, "Ready") for p in present)
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and all_healthy:
            for ordinal in sorted(by_ordinal, reverse=True):
                pod = by_ordinal[ordinal]
                if (
                    ordinal >= partition
                    and ordinal < replicas
                    and (pod["metadata"].get("labels") or {}).get("controller-revision-hash") != revision
                ):
                    self.runtime.delete(PODS, pod, propagation=None)
                    break
        present = [p for o, p in by_ordinal.items() if o < replicas and is_active(p)]
        updated = [
            p
            for p in present
            if (p["metadata"].get("labels") or {}).get("controller-revision-hash") == revision
        ]
        status = dict(sts.get("status") or {})
        status["observedGeneration"] = sts["metadata"].get("generation", 1)
        status["replicas"] = len(present)
        _put(status, "readyReplicas", sum(1 for p in present if is_true(p, "Ready")))
        _put(status, "availableReplicas", sum(1 for p in present if is_available(p, min_ready, self.runtime)))
        _put(status, "updatedReplicas", len(updated))
        status["updateRevision"] = revision
        if len(updated) == len(present) == replicas or not status.get("currentRevision"):
            status["currentRevision"] = (
                revision if len(updated) == len(present) else status.get("currentRevision", revision)
            )
        current_revision = status["currentRevision"]
        _put(
            status,
            "currentReplicas",
            sum(
                1
                for p in present
                if (p["metadata"].get("labels") or {}).get("controller-revision-hash") == current_revision
            ),
        )
        status["collisionCount"] = 0
        self.runtime.write_status(STATEFULSETS, sts, status)

    def _ensure_claims(self, sts: dict[str, Any], ordinal: int) -> None:
        name, namespace = sts["metadata"]["name"], sts["metadata"]["namespace"]
        selector_labels = (sts["spec"].get("selector") or {}).get("matchLabels") or {}
        for template in sts["spec"].get("volumeClaimTemplates") or []:
            claim_name = f"{template['metadata']['name']}-{name}-{ordinal}"
            if self.store.peek(PVCS, namespace, claim_name) is not None:
                continue
            metadata = copy.deepcopy(template.get("metadata") or {})
            metadata["name"] = claim_name
            metadata["labels"] = {**(metadata.get("labels") or {}), **selector_labels}
            self.runtime.create(
                PVCS, namespace, {"metadata": metadata, "spec": copy.deepcopy(template.get("spec") or {})}
            )

    def _create(self, sts: dict[str, Any], ordinal: int, revision: str) -> dict[str, Any] | None:
        name = sts["metadata"]["name"]
        pod_name = f"{name}-{ordinal}"
        template = copy.deepcopy(sts["spec"].get("template") or {})
        spec = template.setdefault("spec", {})
        spec["hostname"] = pod_name
        if sts["spec"].get("serviceName"):
            spec["subdomain"] = sts["spec"]["serviceName"]
        volumes = spec.setdefault("volumes", [])
        for claim in sts["spec"].get("volumeClaimTemplates") or []:
            claim_name = claim["metadata"]["name"]
            volumes[:] = [v for v in volumes if v.get("name") != claim_name]
            volumes.append(
                {"name": claim_name, "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}-{ordinal}"}}
            )
        if not volumes:
            spec.pop("volumes")
        body = _pod_from_template(
            sts,
            template,
            {"name": pod_name},
            {
                "apps.kubernetes.io/pod-index": str(ordinal),
                "controller-revision-hash": revision,
                "statefulset.kubernetes.io/pod-name": pod_name,
            },
        )
        created = self.runtime.create_pod(
            sts,
            body,
            "statefulset-controller",
            CONTROLLER_BACKOFF_S,
            lambda error: f"create Pod {pod_name} in StatefulSet {name} failed error: {error}",
        )
        if created is not None:
            self.runtime.record(
                sts,
                "Normal",
                "SuccessfulCreate",
                f"create Pod {pod_name} in StatefulSet {name} successful",
                "statefulset-controller",
            )
        return created


# -- PodDisruptionBudget ----------------------------------------------------------------------------------


class DisruptionController(Component):
    interests = frozenset({"poddisruptionbudgets", "pods"})

    def sync(self) -> None:
        for pdb in list(self.store.iter(PDBS)):
            spec = pdb.get("spec") or {}
            selector = spec.get("selector")
            namespace = pdb["metadata"]["namespace"]
            pods = [
                p
                for p in self.store.iter(PODS, namespace)
                if is_active(p) and matches_selector(selector, p["metadata"].get("labels") or {})
            ]
            expected = len(pods)
            healthy = sum(1 for p in pods if is_true(p, "Ready"))
            if spec.get("minAvailable") is not None:
                desired = _scale_value(spec["minAvailable"], expected, True)
            elif spec.get("maxUnavailable") is not None:
                desired = max(expected - _scale_value(spec["maxUnavailable"], expected, True), 0)
            else:
                desired = expected
            allowed = max(healthy - desired, 0)
            status = dict(pdb.get("status") or {})
            status.update(
                observedGeneration=pdb["metadata"].get("generation", 1),
                expectedPods=expected,
                currentHealthy=healthy,
                desiredHealthy=desired,
                disruptionsAllowed=allowed,
            )
            conditions = [dict(c) for c in status.get("conditions") or []]
            if allowed > 0:
                set_condition(conditions, "DisruptionAllowed", "True", "SufficientPods", "")
            else:
                set_condition(conditions, "DisruptionAllowed", "False", "InsufficientPods", "")
            for cond in conditions:
                cond["observedGeneration"] = pdb["metadata"].get("generation", 1)
            status["conditions"] = conditions
            self.runtime.write_status(PDBS, pdb, status)
