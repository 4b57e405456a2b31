"""The simulator's Job controller and garbage collection, through the official client.

Expected behaviour is https://kubernetes.io/docs/concepts/workloads/controllers/job/ (pods, parallelism and
completions, backoffLimit, activeDeadlineSeconds, pod failure policy, the FailureTarget/Failed and
SuccessCriteriaMet/Complete conditions of 1.31+, Indexed Jobs),
https://kubernetes.io/docs/concepts/workloads/controllers/ttlafterfinished/ and
https://kubernetes.io/docs/concepts/architecture/garbage-collection/ (cascading deletion, the default Orphan
policy of batch/v1 Jobs and its warning).
"""

from __future__ import annotations

from datetime import timedelta

import requests
from kubernetes import client, watch

from tests.fixtures.kubernetes import wait_until

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def job(name: str, **spec) -> dict:
    template_spec = spec.pop("template_spec", {})
    return {
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [GPU_TOLERATION],
                    "containers": [{"name": "main", "image": "busybox:1.36"}],
                    **template_spec,
                }
            },
            **spec,
        },
    }


def condition_of(found, kind):
    return next((c for c in (found.status.conditions or []) if c.type == kind and c.status == "True"), None)


def finished(batch, namespace, name):
    found = batch.read_namespaced_job(name, namespace)
    return found if condition_of(found, "Complete") or condition_of(found, "Failed") else None


def job_pods(core, namespace, name):
    return core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items


def test_a_job_runs_its_pods_to_completion(k8s_api, k8s_namespace):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    created = batch.create_namespaced_job(k8s_namespace, job("ok", completions=3, parallelism=2))
    done = wait_until(lambda: finished(batch, k8s_namespace, "ok"))
    assert done.status.succeeded == 3 and not done.status.failed and not done.status.active
    assert done.status.ready == 0 and done.status.terminating == 0
    assert done.status.start_time is not None and done.status.completion_time >= done.status.start_time
    kinds = [(c.type, c.reason, c.message) for c in done.status.conditions]
    assert kinds == [
        ("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
        ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
    ]
    pods = job_pods(core, k8s_namespace, "ok")
    assert len(pods) == 3 and all(p.status.phase == "Succeeded" for p in pods)
    uid = created.metadata.uid
    for found in pods:
        assert found.metadata.name.startswith("ok-") and len(found.metadata.name) == len("ok-") + 5
        assert found.metadata.labels == {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": "ok",
            "controller-uid": uid,
            "job-name": "ok",
        }
        (ref,) = found.metadata.owner_references
        assert (ref.api_version, ref.kind, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == (
            "batch/v1",
            "Job",
            "ok",
            uid,
            True,
            True,
        )
    reasons = [
        e.reason
        for e in core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=ok").items
    ]
    assert reasons.count("SuccessfulCreate") == 3 and "Completed" in reasons


def test_failed_pods_are_retried_with_backoff_until_one_succeeds(k8s_api, k8s_namespace, k8s_sim):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.script(
        [{"exitCode": 1, "logs": ["try 1"]}, {"exitCode": 1, "logs": ["try 2"]}, {"exitCode": 0}],
        namespace=k8s_namespace,
        selector="job-name=retry",
    )
    batch.create_namespaced_job(k8s_namespace, job("retry", backoffLimit=3))
    done = wait_until(lambda: finished(batch, k8s_namespace, "retry"), timeout_s=15)
    assert condition_of(done, "Complete") and done.status.succeeded == 1 and done.status.failed == 2
    pods = sorted(job_pods(core, k8s_namespace, "retry"), key=lambda p: p.metadata.creation_timestamp)
    assert sorted(p.status.phase for p in pods) == ["Failed", "Failed", "Succeeded"]


def test_backoff_limit_exceeded(k8s_api, k8s_namespace, k8s_sim):
    batch = client.BatchV1Api(k8s_api)
    k8s_sim.script([{"exitCode": 2}], namespace=k8s_namespace, selector="job-name=hopeless")
    batch.create_namespaced_job(k8s_namespace, job("hopeless", backoffLimit=1))
    done = wait_until(lambda: finished(batch, k8s_namespace, "hopeless"), timeout_s=15)
    assert done.status.failed == 2 and not done.status.succeeded and done.status.completion_time is None
    assert [(c.type, c.reason, c.message) for c in done.status.conditions] == [
        ("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
        ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
    ]


def test_active_deadline_seconds(k8s_api, k8s_namespace, k8s_sim):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.script([{"durationSeconds": 30}], namespace=k8s_namespace, selector="job-name=slow")
    batch.create_namespaced_job(k8s_namespace, job("slow", activeDeadlineSeconds=1))
    done = wait_until(lambda: finished(batch, k8s_namespace, "slow"), timeout_s=10)
    failed = condition_of(done, "Failed")
    assert (failed.reason, failed.message) == (
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    wait_until(lambda: all(p.status.phase == "Failed" for p in job_pods(core, k8s_namespace, "slow")))


def test_pod_failure_policy_fail_job_on_an_exit_code(k8s_api, k8s_namespace, k8s_sim):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.script([{"exitCode": 42}], namespace=k8s_namespace, selector="job-name=policy")
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        ]
    }
    batch.create_namespaced_job(k8s_namespace, job("policy", backoffLimit=6, podFailurePolicy=policy))
    done = wait_until(lambda: finished(batch, k8s_namespace, "policy"), timeout_s=10)
    (pod,) = job_pods(core, k8s_namespace, "policy")
    failed = condition_of(done, "Failed")
    assert failed.reason == "PodFailurePolicy"
    assert failed.message == (
        f"Container main for pod {k8s_namespace}/{pod.metadata.name} failed with exit code 42 "
        "matching FailJob rule at index 0"
    )
    assert condition_of(done, "FailureTarget").message == failed.message
    assert done.status.failed == 1


def test_oom_kill_fails_a_build_job_whose_policy_fails_on_any_error(k8s_api, k8s_namespace, k8s_sim):
    """The project's build Job policy: Ignore disruptions, FailJob when the build container exits non-zero."""
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.script(
        [{"fault": "OOMKilled", "durationSeconds": 0.1}], namespace=k8s_namespace, selector="job-name=build"
    )
    policy = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [0]},
            },
        ]
    }
    batch.create_namespaced_job(k8s_namespace, job("build", backoffLimit=3, podFailurePolicy=policy))
    done = wait_until(lambda: finished(batch, k8s_namespace, "build"), timeout_s=10)
    (pod,) = job_pods(core, k8s_namespace, "build")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    assert condition_of(done, "Failed").message == (
        f"Container main for pod {k8s_namespace}/{pod.metadata.name} failed with exit code 137 "
        "matching FailJob rule at index 1"
    )


def test_pod_failure_policy_ignores_an_eviction(k8s_api, k8s_namespace, k8s_sim):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.script(
        [{"evictAfterSeconds": 0.2, "containers": {"main": {"durationSeconds": 5}}}, {"exitCode": 0}],
        namespace=k8s_namespace,
        selector="job-name=evicted",
    )
    policy = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        ]
    }
    created = batch.create_namespaced_job(
        k8s_namespace, job("evicted", backoffLimit=0, podFailurePolicy=policy)
    )
    assert created.spec.pod_failure_policy.rules[0].on_pod_conditions[0].status == "True"  # defaulted
    assert created.spec.pod_replacement_policy == "Failed"
    done = wait_until(lambda: finished(batch, k8s_namespace, "evicted"), timeout_s=10)
    assert condition_of(done, "Complete") and done.status.succeeded == 1 and not done.status.failed
    pods = job_pods(core, k8s_namespace, "evicted")
    evicted = next(p for p in pods if p.status.phase == "Failed")
    assert evicted.status.reason == "Evicted"
    assert any(
        c.type == "DisruptionTarget" and c.reason == "TerminationByKubelet" for c in evicted.status.conditions
    )


def test_pod_failure_policy_count_and_pod_condition_fail_job(k8s_api, k8s_namespace, k8s_sim):
    batch = client.BatchV1Api(k8s_api)
    k8s_sim.script(
        [{"evictAfterSeconds": 0.1, "containers": {"main": {"durationSeconds": 5}}}],
        namespace=k8s_namespace,
        selector="job-name=strict",
    )
    policy = {
        "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    }
    batch.create_namespaced_job(k8s_namespace, job("strict", podFailurePolicy=policy))
    done = wait_until(lambda: finished(batch, k8s_namespace, "strict"), timeout_s=10)
    assert condition_of(done, "Failed").message.endswith(
        "has condition DisruptionTarget matching FailJob rule at index 0"
    )
    k8s_sim.script([{"exitCode": 5}], namespace=k8s_namespace, selector="job-name=counted")
    policy = {"rules": [{"action": "Count", "onExitCodes": {"operator": "In", "values": [5]}}]}
    batch.create_namespaced_job(k8s_namespace, job("counted", backoffLimit=1, podFailurePolicy=policy))
    done = wait_until(lambda: finished(batch, k8s_namespace, "counted"), timeout_s=10)
    assert condition_of(done, "Failed").reason == "BackoffLimitExceeded" and done.status.failed == 2


def test_ttl_after_finished_deletes_the_job_and_its_pods(k8s_api, k8s_namespace):
    """The Job goes once its finish time (the Complete condition's lastTransitionTime, whole seconds) plus
    the TTL has passed, Foreground: its pods first. A TTL of 1 s can end the Job at once (finished at
    x.9 s, it reads x s), before a poll could see it Complete: the test follows it on a watch instead."""
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    created = batch.create_namespaced_job(k8s_namespace, job("short-lived", ttlSecondsAfterFinished=1))
    seen = []
    for event in watch.Watch().stream(
        batch.list_namespaced_job,
        k8s_namespace,
        field_selector="metadata.name=short-lived",
        resource_version=created.metadata.resource_version,
        timeout_seconds=30,
    ):
        seen.append((event["type"], event["object"]))
        if event["type"] == "DELETED":
            break
    assert seen and seen[-1][0] == "DELETED", [kind for kind, _ in seen]
    done = next(found for _, found in seen if condition_of(found, "Complete"))
    finished_at = condition_of(done, "Complete").last_transition_time
    held = next(found for _, found in seen if found.metadata.deletion_timestamp)
    assert held.metadata.finalizers == ["foregroundDeletion"]
    assert held.metadata.deletion_timestamp >= finished_at + timedelta(seconds=1)
    assert not job_pods(core, k8s_namespace, "short-lived")  # Foreground: gone before the Job


def test_deleting_a_job_background_foreground_and_the_default_orphan(
    k8s_api, k8s_namespace, k8s_cluster, k8s_sim
):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.script([{"durationSeconds": None}], namespace=k8s_namespace)
    for name in ("bg", "fg", "orphan"):
        batch.create_namespaced_job(k8s_namespace, job(name))
        wait_until(
            lambda name=name: [p for p in job_pods(core, k8s_namespace, name) if p.status.phase == "Running"]
        )

    batch.delete_namespaced_job("bg", k8s_namespace, propagation_policy="Background")
    wait_until(lambda: not job_pods(core, k8s_namespace, "bg"))

    answer = requests.delete(
        f"{k8s_cluster.url}/apis/batch/v1/namespaces/{k8s_namespace}/jobs/fg",
        json={"propagationPolicy": "Foreground"},
        timeout=5,
    )
    held = answer.json()
    assert answer.status_code == 200 and held["kind"] == "Job"
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["foregroundDeletion"]
    wait_until(lambda: not batch.list_namespaced_job(k8s_namespace, field_selector="metadata.name=fg").items)
    assert not job_pods(core, k8s_namespace, "fg")

    answer = requests.delete(
        f"{k8s_cluster.url}/apis/batch/v1/namespaces/{k8s_namespace}/jobs/orphan", timeout=5
    )
    assert answer.status_code == 200
    assert "child pods are preserved by default when jobs are deleted" in answer.headers["Warning"]
    wait_until(lambda: all(not p.metadata.owner_references for p in job_pods(core, k8s_namespace, "orphan")))
    assert [p.status.phase for p in job_pods(core, k8s_namespace, "orphan")] == ["Running"]


def test_indexed_job(k8s_api, k8s_namespace):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(
        k8s_namespace, job("indexed", completions=3, parallelism=3, completionMode="Indexed")
    )
    done = wait_until(lambda: finished(batch, k8s_namespace, "indexed"))
    assert done.status.completed_indexes == "0-2" and done.status.succeeded == 3
    pods = job_pods(core, k8s_namespace, "indexed")
    indexes = sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1", "2"]
    for found in pods:
        index = found.metadata.labels["batch.kubernetes.io/job-completion-index"]
        assert (
            found.metadata.name.startswith(f"indexed-{index}-") and found.spec.hostname == f"indexed-{index}"
        )


def test_work_queue_job_completes_when_a_pod_succeeded_and_none_runs(k8s_api, k8s_namespace):
    batch = client.BatchV1Api(k8s_api)
    created = batch.create_namespaced_job(k8s_namespace, job("queue", parallelism=2))
    assert created.spec.completions is None and created.spec.parallelism == 2
    done = wait_until(lambda: finished(batch, k8s_namespace, "queue"))
    assert condition_of(done, "Complete") and done.status.succeeded == 2


def test_suspended_job_creates_no_pods(k8s_api, k8s_namespace):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(k8s_namespace, job("later", suspend=True))
    suspended = wait_until(
        lambda: condition_of(batch.read_namespaced_job("later", k8s_namespace), "Suspended")
    )
    assert suspended.reason == "JobSuspended" and not job_pods(core, k8s_namespace, "later")
    batch.patch_namespaced_job("later", k8s_namespace, {"spec": {"suspend": False}})
    done = wait_until(lambda: finished(batch, k8s_namespace, "later"))
    resumed = next(c for c in done.status.conditions if c.type == "Suspended")
    assert (resumed.status, resumed.reason) == ("False", "JobResumed")


def events_of(core, namespace, name, reason):
    return [
        e
        for e in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        if e.reason == reason
    ]


def test_a_refused_pod_create_is_a_failed_create_event_and_is_retried(k8s_api, k8s_namespace):
    """The ServiceAccount admission refuses the Job's pods until the account exists: the job controller's
    Warning FailedCreate Event "Error creating: <the API's message>", retries after its API backoff, and
    the Job neither counts a failed pod nor fails."""
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(
        k8s_namespace, job("needs-account", backoffLimit=0, template_spec={"serviceAccountName": "builder"})
    )
    (refused,) = wait_until(lambda: events_of(core, k8s_namespace, "needs-account", "FailedCreate"))
    assert (refused.type, refused.source.component, refused.involved_object.kind) == (
        "Warning",
        "job-controller",
        "Job",
    )
    assert refused.message == (
        f'Error creating: pods "needs-account-" is forbidden: error looking up service account '
        f'{k8s_namespace}/builder: serviceaccount "builder" not found'
    )
    waiting = batch.read_namespaced_job("needs-account", k8s_namespace)
    assert not waiting.status.conditions and not waiting.status.failed and not waiting.status.active
    assert not job_pods(core, k8s_namespace, "needs-account")

    core.create_namespaced_service_account(k8s_namespace, {"metadata": {"name": "builder"}})
    done = wait_until(lambda: finished(batch, k8s_namespace, "needs-account"), timeout_s=20)
    assert condition_of(done, "Complete") and done.status.succeeded == 1 and not done.status.failed
    (pod,) = job_pods(core, k8s_namespace, "needs-account")
    assert pod.spec.service_account_name == "builder"
    assert len(events_of(core, k8s_namespace, "needs-account", "SuccessfulCreate")) == 1


def test_an_api_fault_on_the_controllers_pod_create_is_retried(k8s_api, k8s_namespace, k8s_sim):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.fault(
        f"/namespaces/{k8s_namespace}/pods$",
        verbs=("create",),
        status=500,
        count=2,
        message="etcd is away",
        controllers=True,
    )
    batch.create_namespaced_job(k8s_namespace, job("unlucky", backoffLimit=0))
    done = wait_until(lambda: finished(batch, k8s_namespace, "unlucky"), timeout_s=20)
    assert condition_of(done, "Complete") and not done.status.failed
    (refused,) = events_of(core, k8s_namespace, "unlucky", "FailedCreate")
    assert (refused.type, refused.count) == ("Warning", 2)  # the same Event, aggregated
    assert refused.message == "Error creating: Internal error occurred: etcd is away"
    assert k8s_sim.control("GET", "")["faults"][0]["hits"] == 2


def test_a_fault_without_controllers_is_not_spent_by_them(k8s_api, k8s_namespace, k8s_sim):
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    k8s_sim.fault(f"/namespaces/{k8s_namespace}/pods$", verbs=("create",), status=500, count=1)
    batch.create_namespaced_job(k8s_namespace, job("untouched"))
    wait_until(lambda: finished(batch, k8s_namespace, "untouched"))
    assert not events_of(core, k8s_namespace, "untouched", "FailedCreate")
    assert k8s_sim.control("GET", "")["faults"][0]["hits"] == 0
