"""The Job controller (https://kubernetes.io/docs/concepts/workloads/controllers/job/), as of 1.31+.

- Pods come from `spec.template`, named `<job>-<random>` (Indexed: `<job>-<index>-<random>`, with the
  `batch.kubernetes.io/job-completion-index` annotation and label, `JOB_COMPLETION_INDEX` and hostname
  `<job>-<index>`), labelled with the template's labels (the API put `batch.kubernetes.io/controller-uid`,
  `batch.kubernetes.io/job-name`, `controller-uid`, `job-name` there), and owned by the Job
  (ownerReference controller=true, blockOwnerDeletion=true). Events SuccessfulCreate/SuccessfulDelete.
- At most `parallelism` pods run; NonIndexed Jobs need `completions` successes (a work queue, completions
  unset, is done when one pod succeeded and none is left running); Indexed Jobs one success per index.
- A failed pod (phase Failed; a pod deleted before finishing; without a podFailurePolicy a pod being deleted)
  counts toward `status.failed` unless the pod failure policy says Ignore
  (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy: rules in order, the
  first match decides; `onExitCodes` looks at terminated containers with a non-zero exit code, In/NotIn,
  optionally one container; `onPodConditions` at the pod's conditions; FailJob fails the Job at once with
  reason `PodFailurePolicy` and the message `Container <c> for pod <ns>/<pod> failed with exit code <n>
  matching FailJob rule at index <i>` or `Pod <ns>/<pod> has condition <type> matching FailJob rule at index
  <i>`; Count counts; Ignore neither counts nor fails).
- A pod create that the API refuses (admission: a ServiceAccount that does not exist; an injected fault
  for controllers) is the real controller's: a Warning Event `FailedCreate` "Error creating: <the API's
  message>" on the Job, the pods after it in that pass are not tried, and the Job is synced again after
  the API backoff (1 s, doubling, capped at 1 min: DefaultJobApiBackOff, MaxJobApiBackOff). It neither
  counts as a failed pod nor fails the Job.
- Replacement pods wait out the backoff: base * 2^(failures since the last success - 1), capped at 6 min
  (the real base is 10 s; the simulator's `--job-backoff-seconds`). With restartPolicy OnFailure, container
  restarts count toward the backoffLimit too.
- Failure: `failed > backoffLimit` (reason `BackoffLimitExceeded`, "Job has reached the specified backoff
  limit"), `activeDeadlineSeconds` passed since startTime (`DeadlineExceeded`, "Job was active longer than
  specified deadline"), or a FailJob rule. The Job first gets condition `FailureTarget`, its running pods are
  deleted, and once none is left it gets `Failed` with the same reason and message (a Warning Event too).
- Success: condition `SuccessCriteriaMet` (reason `CompletionsReached`, "Reached expected number of succeeded
  pods"), then, once no pod runs, `Complete` with the same reason and `completionTime` (Event Completed).
- Status as the real controller writes it: startTime, active/succeeded/failed (omitted when 0), ready,
  terminating, uncountedTerminatedPods {}, completedIndexes (Indexed), conditions with lastProbeTime and
  lastTransitionTime.
- `spec.suspend`: running pods are deleted, none are created, condition Suspended=True reason JobSuspended.

Simplified: no `batch.kubernetes.io/job-tracking` pod finalizer (counts are kept by the controller in
memory and in status), no successPolicy, no backoffLimitPerIndex/maxFailedIndexes, no FailIndex action,
podReplacementPolicy only decides whether terminating pods hold a place; the backoff counts
failures, not per-pod timestamps.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from tests.k8s_sim.runtime import (
    JOBS,
    PODS,
    Component,
    by_controller,
    is_true,
    owner_reference,
    set_condition,
)
from tests.k8s_sim.scheduler import is_terminal
from tests.k8s_sim.store import now, parse_time

COMPONENT = "job-controller"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
MAX_BACKOFF_S = 360.0
API_BACKOFF_S, MAX_API_BACKOFF_S = 1.0, 60.0  # DefaultJobApiBackOff, MaxJobApiBackOff


@dataclass
class Tracking:
    counted: set[str] = field(default_factory=set)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures_since_success: int = 0
    last_failure: float | None = None
    failure: tuple[str, str] | None = None
    completed_indexes: set[int] = field(default_factory=set)


def _is_failed(pod: dict[str, Any], policy: bool) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Failed":
        return True
    return not policy and bool(pod["metadata"].get("deletionTimestamp")) and phase != "Succeeded"


def match_pod_failure_policy(
    policy: dict[str, Any], pod: dict[str, Any]
) -> tuple[str | None, bool, str | None]:
    """(FailJob message, counts toward backoffLimit, action) for a failed pod (matchPodFailurePolicy)."""
    status = pod.get("status") or {}
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        message = None
        if rule.get("onExitCodes") is not None:
            requirement = rule["onExitCodes"]
            matched = None
            for statuses in (
                status.get("containerStatuses") or [],
                status.get("initContainerStatuses") or [],
            ):
                for container in statuses:
                    terminated = (container.get("state") or {}).get("terminated")
                    if not terminated:
                        continue
                    if requirement.get("containerName") not in (None, container.get("name")):
                        continue
                    code = int(terminated.get("exitCode", 0))
                    if code == 0:
                        continue
                    values = [int(v) for v in requirement.get("values") or []]
                    if (requirement.get("operator") == "In") == (code in values):
                        matched = (container["name"], code)
                        break
                if matched:
                    break
            if matched is None:
                continue
            message = (
                f"Container {matched[0]} for pod {namespace}/{name} failed with exit code {matched[1]} "
                f"matching {action} rule at index {index}"
            )
        elif rule.get("onPodConditions") is not None:
            hit = None
            for cond in status.get("conditions") or []:
                for pattern in rule["onPodConditions"]:
                    if cond.get("type") == pattern.get("type") and cond.get("status") == pattern.get(
                        "status", "True"
                    ):
                        hit = cond
                        break
                if hit:
                    break
            if hit is None:
                continue
            message = (
                f"Pod {namespace}/{name} has condition {hit['type']} matching {action} rule at index {index}"
            )
        else:
            continue
        if action == "Ignore":
            return None, False, "Ignore"
        if action == "Count":
            return None, True, "Count"
        if action == "FailJob":
            return message, True, "FailJob"
    return None, True, None


def _ranges(indexes: set[int]) -> str:
    parts, ordered, i = [], sorted(indexes), 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _index_of(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(INDEX_KEY)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class JobController(Component):
    interests = frozenset({"jobs", "pods"})

    def __init__(self, runtime) -> None:
        super().__init__(runtime)
        self.tracking: dict[str, Tracking] = {}

    def sync(self) -> None:
        owned = by_controller(self.store.iter(PODS))
        live = set()
        for job in list(self.store.iter(JOBS)):
            uid = job["metadata"]["uid"]
            live.add(uid)
            self.sync_job(job, owned.get(uid, []))
        for uid in list(self.tracking):
            if uid not in live:
                del self.tracking[uid]

    def sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        spec = job.get("spec") or {}
        status = copy.deepcopy(job.get("status") or {})
        conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
        if is_true(job, "Complete") or is_true(job, "Failed"):
            return
        track = self.tracking.setdefault(job["metadata"]["uid"], Tracking())
        if status.get("completedIndexes") and not track.completed_indexes:
            track.completed_indexes = {int(i) for i in _expand(status["completedIndexes"])}
        policy = spec.get("podFailurePolicy")
        current = time.time()
        succeeded, failed = int(status.get("succeeded", 0)), int(status.get("failed", 0))

        if spec.get("suspend"):
            for pod in pods:
                if not is_terminal(pod) and not pod["metadata"].get("deletionTimestamp"):
                    self._delete_pod(job, pod)
            set_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended", probe="now")
            status["active"] = 0
            self._write(job, status)
            return
        if any(c.get("type") == "Suspended" and c.get("status") == "True" for c in conditions):
            set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed", probe="now")
        status.setdefault("startTime", now())

        # Count what finished since the last pass, and what vanished before finishing.
        present = {pod["metadata"]["uid"] for pod in pods}
        finished = [
            pod
            for pod in pods
            if pod["metadata"]["uid"] not in track.counted
            and ((pod.get("status") or {}).get("phase") == "Succeeded" or _is_failed(pod, bool(policy)))
        ]
        for uid, last in list(track.seen.items()):
            if uid not in present:
                del track.seen[uid]
                if uid not in track.counted:
                    gone = copy.deepcopy(last)
                    if (gone.get("status") or {}).get("phase") != "Succeeded":
                        gone.setdefault("status", {})["phase"] = "Failed"
                    finished.append(gone)
        for pod in pods:
            track.seen[pod["metadata"]["uid"]] = pod
        for pod in finished:
            track.counted.add(pod["metadata"]["uid"])
            if (pod.get("status") or {}).get("phase") == "Succeeded":
                index = _index_of(pod)
                if spec.get("completionMode") == "Indexed" and index is not None:
                    if index in track.completed_indexes:
                        continue
                    track.completed_indexes.add(index)
                succeeded += 1
                track.failures_since_success = 0
                continue
            counts, message = True, None
            if policy:
                message, counts, _action = match_pod_failure_policy(policy, pod)
                if message and track.failure is None:
                    track.failure = ("PodFailurePolicy", message)
            if counts:
                failed += 1
                track.failures_since_success += 1
                track.last_failure = current

        active = [p for p in pods if not is_terminal(p) and not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in pods if not is_terminal(p) and p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in active if is_true(p, "Ready"))

        # Why the Job fails, if it does.
        if track.failure is None:
            for cond in conditions:
                if cond.get("type") == "FailureTarget" and cond.get("status") == "True":
                    track.failure = (cond.get("reason", ""), cond.get("message", ""))
        if track.failure is None and failed > int(spec.get("backoffLimit", 6)):
            track.failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if (
            track.failure is None
            and (spec.get("template") or {}).get("spec", {}).get("restartPolicy") == "OnFailure"
        ):
            restarts = sum(
                int(c.get("restartCount", 0))
                for p in active
                for c in ((p.get("status") or {}).get("containerStatuses") or [])
                + ((p.get("status") or {}).get("initContainerStatuses") or [])
            )
            limit = int(spec.get("backoffLimit", 6))
            if (limit == 0 and restarts > 0) or (limit > 0 and restarts >= limit):
                track.failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        deadline = spec.get("activeDeadlineSeconds")
        if track.failure is None and deadline is not None:
            started = parse_time(status.get("startTime")) or current
            if current >= started + float(deadline):
                track.failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
            else:
                self.runtime.wake_at(started + float(deadline))

        completions = spec.get("completions")
        indexed = spec.get("completionMode") == "Indexed"
        if indexed:
            complete = completions is not None and len(track.completed_indexes) >= int(completions)
        elif completions is not None:
            complete = succeeded >= int(completions)
        else:
            complete = succeeded > 0 and not active

        if track.failure is not None:
            reason, message = track.failure
            if not is_true(job, "FailureTarget"):
                set_condition(conditions, "FailureTarget", "True", reason, message, probe="now")
            for pod in active:
                self._delete_pod(job, pod)
            if not active and not terminating:
                set_condition(conditions, "Failed", "True", reason, message, probe="now")
                self.runtime.record(job, "Warning", reason, message, COMPONENT)
            active = []
        elif complete:
            if not is_true(job, "SuccessCriteriaMet"):
                set_condition(
                    conditions,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    probe="now",
                )
            for pod in active:
                self._delete_pod(job, pod)
            if not active and not terminating:
                set_condition(
                    conditions,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    probe="now",
                )
                status["completionTime"] = now()
                self.runtime.record(job, "Normal", "Completed", "Job completed", COMPONENT)
            active = []
        else:
            active = self._create_pods(job, spec, track, active, terminating, succeeded, current)

        for key, value in (("active", len(active)), ("succeeded", succeeded), ("failed", failed)):
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        status["ready"] = ready if active else 0
        status["terminating"] = len(terminating)
        status["uncountedTerminatedPods"] = {}
        if indexed:
            if track.completed_indexes:
                status["completedIndexes"] = _ranges(track.completed_indexes)
            status.setdefault("completedIndexes", "")
        if not conditions:
            status.pop("conditions", None)
        self._write(job, status)

    def _create_pods(
        self,
        job: dict[str, Any],
        spec: dict[str, Any],
        track: Tracking,
        active: list[dict[str, Any]],
        terminating: list[dict[str, Any]],
        succeeded: int,
        current: float,
    ) -> list[dict[str, Any]]:
        parallelism = int(spec.get("parallelism", 1))
        completions = spec.get("completions")
        holding = len(active) + (len(terminating) if spec.get("podReplacementPolicy") == "Failed" else 0)
        indexed = spec.get("completionMode") == "Indexed"
        if indexed:
            running = {_index_of(p) for p in active + terminating}
            todo = [
                i
                for i in range(int(completions or 0))
                if i not in track.completed_indexes and i not in running
            ]
            want = min(max(parallelism - holding, 0), len(todo))
        elif completions is not None:
            want = min(parallelism, int(completions) - succeeded) - holding
        else:
            want = 0 if succeeded else parallelism - holding
            todo = []
        if want <= 0:
            return active
        if track.failures_since_success and track.last_failure is not None:
            delay = min(
                self.runtime.job_backoff_base_s * 2 ** (track.failures_since_success - 1), MAX_BACKOFF_S
            )
            if current < track.last_failure + delay:
                self.runtime.wake_at(track.last_failure + delay)
                return active
        if self.runtime.create_held(job):
            return active
        for n in range(want):
            pod = self._new_pod(job, todo[n] if indexed else None)
            if pod is None:
                break  # refused (a FailedCreate Event): the rest waits for the retry, as slow start skips it
            active.append(pod)
            self.runtime.record(
                job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", COMPONENT
            )
        return active

    def _new_pod(self, job: dict[str, Any], index: int | None) -> dict[str, Any] | None:
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        metadata = template.get("metadata") or {}
        name = job["metadata"]["name"]
        pod_meta: dict[str, Any] = {
            "generateName": f"{name}-" if index is None else f"{name}-{index}-",
            "labels": dict(metadata.get("labels") or {}),
            "ownerReferences": [owner_reference(job)],
        }
        if metadata.get("annotations"):
            pod_meta["annotations"] = dict(metadata["annotations"])
        spec = template.get("spec") or {}
        if index is not None:
            pod_meta.setdefault("annotations", {})[INDEX_KEY] = str(index)
            pod_meta["labels"][INDEX_KEY] = str(index)
            spec.setdefault("hostname", f"{name}-{index}")
            for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                container.setdefault("env", []).append(
                    {
                        "name": "JOB_COMPLETION_INDEX",
                        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}},
                    }
                )
        return self.runtime.create_pod(
            job, {"metadata": pod_meta, "spec": spec}, COMPONENT, (API_BACKOFF_S, MAX_API_BACKOFF_S)
        )

    def _delete_pod(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        self.runtime.delete(PODS, pod, propagation=None)
        self.runtime.record(
            job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", COMPONENT
        )

    def _write(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        self.runtime.write_status(JOBS, job, status)


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, ranges.split(",")):
        if "-" in part:
            low, high = part.split("-", 1)
            out.extend(range(int(low), int(high) + 1))
        else:
            out.append(int(part))
    return out
