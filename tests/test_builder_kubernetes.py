"""The Kubernetes builder and runner against the API simulator's GPU cluster and a real registry.

The simulator (tests/k8s_sim) schedules the Jobs' pods as kube-scheduler does (a tainted control-plane node,
three GPU nodes tainted `nvidia.com/gpu:NoSchedule`), runs them with scripted outcomes (logs, exit codes,
OOMKilled, ImagePullBackOff, eviction) and runs the Job controller with the Jobs' podFailurePolicy. The
registry is the real CNCF registry of tests/fixtures/registry.py: the builder pushes the context there, and a
scripted build "succeeds" with the digest of an image pushed beforehand under the build tag, which the
builder checks against the registry. The build carried out for real (the exec hook and buildah) is in
tests/test_kubernetes_graph.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from dagster._core.errors import DagsterExecutionInterruptedError
from kubernetes import client as k8s

from tests.fixtures.kubernetes import wait_until
from tests.fixtures.registry import push_test_image
from thinkube_pipelines.builders import kubernetes as kube
from thinkube_pipelines.builders.base import (
    BuildContext,
    BuildError,
    BuildRequest,
    RegistryAccess,
    RegistryAuth,
    RunError,
    RunRequest,
)
from thinkube_pipelines.builders.kubernetes import (
    DEFAULT_REGISTRY_SECRET,
    KubernetesBuilder,
    KubernetesRunner,
    parse_node_selector,
    parse_resources,
    parse_tolerations,
)
from thinkube_pipelines.kubernetes.build_job import (
    BUILDKIT_CONTAINER,
    CONTEXT_CONTAINER,
    default_build_resources,
)
from thinkube_pipelines.kubernetes.cluster import KubernetesCluster
from thinkube_pipelines.kubernetes.common import GPU_RESOURCE, Toleration
from thinkube_pipelines.registry.client import RegistryClient

BUILD_SELECTOR = "app.kubernetes.io/component=image-build"
CHECK_SELECTOR = "app.kubernetes.io/component=image-check"
GPU_NODES = {"gpu-node-1", "gpu-node-2", "gpu-node-3"}


# -- fixtures and helpers ---------------------------------------------------------------------------------


def docker_config_secret(k8s_core: k8s.CoreV1Api, namespace: str, registry) -> None:
    """The Secret the build pods mount (type kubernetes.io/dockerconfigjson), as the operator creates it."""
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    config = json.dumps({"auths": {registry.host: {"auth": auth}}})
    k8s_core.create_namespaced_secret(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DEFAULT_REGISTRY_SECRET},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
        },
    )


@pytest.fixture
def namespace(k8s_namespace, k8s_core, registry) -> str:
    docker_config_secret(k8s_core, k8s_namespace, registry)
    return k8s_namespace


def builder(k8s_cluster, namespace: str, **settings) -> KubernetesBuilder:
    cluster = KubernetesCluster(kubeconfig=str(k8s_cluster.kubeconfig), namespace=namespace)
    return KubernetesBuilder(cluster=cluster, **settings)


def runner(k8s_cluster, namespace: str, **settings) -> KubernetesRunner:
    cluster = KubernetesCluster(kubeconfig=str(k8s_cluster.kubeconfig), namespace=namespace)
    return KubernetesRunner(cluster=cluster, **settings)


def access(registry) -> RegistryAccess:
    return RegistryAccess(
        auth=RegistryAuth(host=registry.host, username=registry.username, password=registry.password),
        tls_verify=False,
    )


def context_of(tmp_path: Path, text: str = "hello") -> BuildContext:
    folder = tmp_path / f"context-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "Dockerfile").write_text(f"FROM scratch\n# {text}\n")
    return BuildContext.from_folder(folder)


class Build:
    """One build request with a fresh image name and key; `pushed` pushes an image under its build tag (what
    a scripted build then reports), `script` scripts its pods."""

    def __init__(self, registry, tmp_path: Path, sim, namespace: str):
        self.registry = registry
        self.sim = sim
        self.namespace = namespace
        self.image = f"tk-k8s-{uuid.uuid4().hex[:8]}"
        self.key = hashlib.sha256(self.image.encode()).hexdigest()[:32]
        self.repository = f"library/{self.image}"
        self.tag = f"build-{self.key}"
        self.request = BuildRequest(
            image_name=self.image,
            context=context_of(tmp_path, self.image),
            target=f"{registry.host}/{self.repository}:{self.tag}",
            build_args={"BASE_IMAGE": f"{registry.host}/library/base@sha256:{'a' * 64}"},
            labels={"org.thinkube.build-key": self.key},
            registry=access(registry),
        )

    def push(self) -> str:
        return push_test_image(self.registry, self.repository, self.tag, content=self.image.encode())

    def script(self, *outcomes: dict, repeat: bool = True) -> None:
        self.sim.script(
            list(outcomes),
            namespace=self.namespace,
            selector=f"{BUILD_SELECTOR},thinkube.io/image={self.image}",
            repeat=repeat,
        )

    def succeed(self, digest: str, logs: list[str] | None = None, duration_s: float = 0.3, **more) -> dict:
        return {
            "containers": {
                BUILDKIT_CONTAINER: {
                    "durationSeconds": duration_s,
                    "logs": logs or ["#1 [internal] load build definition from Dockerfile", "#2 DONE 0.1s"],
                    "terminationMessage": json.dumps(
                        {"containerimage.digest": digest, "image.name": self.request.target}
                    ),
                }
            },
            **more,
        }


@pytest.fixture
def build(registry, tmp_path, k8s_sim, namespace) -> Build:
    return Build(registry, tmp_path, k8s_sim, namespace)


def jobs(k8s_batch: k8s.BatchV1Api, namespace: str, selector: str = BUILD_SELECTOR) -> list[k8s.V1Job]:
    return k8s_batch.list_namespaced_job(namespace, label_selector=selector).items


def pods_of(k8s_core: k8s.CoreV1Api, namespace: str, job: str) -> list[k8s.V1Pod]:
    return k8s_core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items


def events(k8s_core: k8s.CoreV1Api, namespace: str, reason: str) -> list[k8s.CoreV1Event]:
    return [e for e in k8s_core.list_namespaced_event(namespace).items if e.reason == reason]


def condition(job: k8s.V1Job, kind: str):
    return next((c for c in job.status.conditions or [] if c.type == kind and c.status == "True"), None)


# -- settings ---------------------------------------------------------------------------------------------


def test_settings_parse_as_documented():
    assert parse_node_selector("nvidia.com/gpu.present=true, nvidia.com/gpu.product=NVIDIA-L40S") == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-L40S",
    }
    assert parse_node_selector("") == {}
    assert parse_tolerations("nvidia.com/gpu:NoSchedule,dedicated=builds:NoExecute,spot") == (
        Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
        Toleration(key="dedicated", operator="Equal", value="builds", effect="NoExecute"),
        Toleration(key="spot", operator="Exists"),
    )
    resources = parse_resources("memory=16Gi/64Gi,cpu=4", default_build_resources())
    assert (resources.memory_request, resources.memory_limit) == ("16Gi", "64Gi")
    assert (resources.cpu_request, resources.cpu_limit) == ("4", "4")
    assert resources.ephemeral_storage_limit == default_build_resources().ephemeral_storage_limit
    for bad, parse in (
        ("gpu.present", parse_node_selector),
        ("nvidia.com/gpu:Sometimes", parse_tolerations),
        ("disk=1Gi", lambda t: parse_resources(t, default_build_resources())),
        ("memory=lots", lambda t: parse_resources(t, default_build_resources())),
    ):
        with pytest.raises(ValueError, match=r"expected|quantity"):
            parse(bad)


# -- builds -----------------------------------------------------------------------------------------------


def test_build_lands_on_a_gpu_node_without_a_gpu_streams_its_logs_and_returns_the_registry_digest(
    k8s_cluster, build, k8s_core, k8s_batch, namespace, registry
):
    digest = build.push()
    logs = [f"#{i} [stage {i}/5] RUN step {i}" for i in range(1, 6)]
    build.script(build.succeed(digest, logs, duration_s=0.5))
    seen: list[str] = []
    pods_while_running: list[k8s.V1Pod] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == logs[0]:  # the Job runs: look at its pod as the cluster has it
            pods_while_running.extend(
                k8s_core.list_namespaced_pod(namespace, label_selector=BUILD_SELECTOR).items
            )

    result = builder(k8s_cluster, namespace).build(build.request, on_line=on_line)

    assert result.digest == digest
    assert (
        RegistryClient(registry.url, registry.username, registry.password).digest_of(
            build.repository, build.tag
        )
        == digest
    )
    assert [line for line in seen if not line.startswith("[kubernetes]")] == logs  # in order, each once
    assert result.log_tail[-len(logs) :] == tuple(logs)
    (pod,) = pods_while_running
    assert pod.spec.node_name in GPU_NODES
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    [buildkit] = pod.spec.containers
    assert GPU_RESOURCE not in (buildkit.resources.limits or {}) and GPU_RESOURCE not in (
        buildkit.resources.requests or {}
    )
    assert any(f"scheduled on node {pod.spec.node_name}" in line for line in seen)
    [assigned] = [
        e for e in events(k8s_core, namespace, "Scheduled") if e.involved_object.name == pod.metadata.name
    ]
    assert (
        assigned.message == f"Successfully assigned {namespace}/{pod.metadata.name} to {pod.spec.node_name}"
    )
    # The succeeded Job is deleted, and its pods with it.
    wait_until(
        lambda: (
            not jobs(k8s_batch, namespace)
            and not pods_of(k8s_core, namespace, pod.metadata.labels["job-name"])
        )
    )


def test_builds_never_land_on_the_control_plane(
    k8s_cluster, registry, tmp_path, k8s_sim, namespace, k8s_core
):
    """Five builds with the default placement: GPU nodes only. Without placement (no selector, no
    toleration) the pod fits nowhere: the control plane's taint is never tolerated."""
    nodes = set()
    for _ in range(5):
        one = Build(registry, tmp_path, k8s_sim, namespace)
        one.script(one.succeed(one.push(), duration_s=0.05))
        lines: list[str] = []
        builder(k8s_cluster, namespace).build(one.request, on_line=lines.append)
        nodes |= {line.rsplit(" ", 1)[1] for line in lines if " scheduled on node " in line}
    assert nodes and nodes <= GPU_NODES
    assert "control-plane-1" not in {
        e.message.rsplit(" ", 1)[1] for e in events(k8s_core, namespace, "Scheduled")
    }

    bare = Build(registry, tmp_path, k8s_sim, namespace)
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, node_selector="", tolerations="", schedule_timeout_s=1).build(
            bare.request
        )
    assert "0/4 nodes are available: 4 node(s) had untolerated taint(s)." in str(failed.value)


def test_no_gpu_node_can_take_it_fails_naming_the_schedulers_reason(k8s_cluster, build, k8s_batch, namespace):
    placement = "nvidia.com/gpu.present=true,nvidia.com/gpu.product=NVIDIA-B200"
    started = time.monotonic()
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, node_selector=placement, schedule_timeout_s=1).build(build.request)
    message = str(failed.value)
    assert time.monotonic() - started < 15
    assert message.startswith(f"image {build.image}: the build never started: pod build-tk-k8s-")
    assert (
        "was not scheduled within 1 s: FailedScheduling: 0/4 nodes are available: 1 node(s) had untolerated "
        "taint(s), 3 node(s) didn't match Pod's node affinity/selector. no new claims to deallocate, "
        "preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."
    ) in message
    assert "the Job was deleted" in message
    assert failed.value.step.startswith(f"build Job {namespace}/build-tk-k8s-")
    wait_until(lambda: not jobs(k8s_batch, namespace))


def test_a_build_larger_than_any_gpu_node_names_the_missing_resource(k8s_cluster, build, namespace):
    with pytest.raises(BuildError, match=r"3 Insufficient memory") as failed:
        builder(k8s_cluster, namespace, build_resources="memory=4Ti/4Ti", schedule_timeout_s=1).build(
            build.request
        )
    assert "1 node(s) had untolerated taint(s)" in str(failed.value)


def test_oom_killed_build_fails_at_once_naming_pod_node_and_limit_and_its_job_is_kept(
    k8s_cluster, build, k8s_core, k8s_batch, namespace
):
    build.script(
        {
            "containers": {
                BUILDKIT_CONTAINER: {"fault": "OOMKilled", "durationSeconds": 0.2, "logs": ["#5 RUN pip"]}
            }
        }
    )
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, build_resources="memory=8Gi/24Gi").build(build.request)
    message = str(failed.value)
    (job,) = jobs(k8s_batch, namespace)
    (pod,) = pods_of(k8s_core, namespace, job.metadata.name)  # not retried: the policy fails the Job at once
    assert condition(job, "Failed").reason == "PodFailurePolicy"
    assert f"pod {pod.metadata.name} on node {pod.spec.node_name}" in message
    assert pod.spec.node_name in GPU_NODES
    assert (
        "container buildkit OOMKilled (exit code 137): it used more than its memory limit (24Gi)" in message
    )
    assert "PodFailurePolicy: Container buildkit for pod" in message
    assert f"kubectl -n {namespace} logs job/{job.metadata.name}" in message
    assert failed.value.step == f"build Job {namespace}/{job.metadata.name}"
    assert failed.value.log_tail == ("#5 RUN pip",)


def test_an_evicted_build_pod_is_reported_and_retried_by_the_job(
    k8s_cluster, build, k8s_core, k8s_batch, namespace
):
    digest = build.push()
    build.script(
        {
            "evictAfterSeconds": 0.3,
            "containers": {BUILDKIT_CONTAINER: {"durationSeconds": 30, "logs": ["#1 first"]}},
        },
        build.succeed(digest, ["#1 second"]),
    )
    lines: list[str] = []
    result = builder(k8s_cluster, namespace, backoff_limit=0).build(build.request, on_line=lines.append)
    assert result.digest == digest
    evicted = [line for line in lines if "Evicted" in line]
    assert len(evicted) == 1 and "The node was low on resource: memory." in evicted[0]
    assert "a disruption: Kubernetes replaces the pod without counting it toward backoffLimit" in evicted[0]
    assert "#1 first" in lines and "#1 second" in lines
    created = [e for e in events(k8s_core, namespace, "SuccessfulCreate") if e.involved_object.kind == "Job"]
    assert len(created) == 2  # backoffLimit 0, and still a second pod: the eviction did not count


def test_evicted_then_oom_killed_names_both_and_keeps_the_job(k8s_cluster, build, k8s_batch, namespace):
    build.script(
        {"evictAfterSeconds": 0.2, "containers": {BUILDKIT_CONTAINER: {"durationSeconds": 30}}},
        {"containers": {BUILDKIT_CONTAINER: {"fault": "OOMKilled", "durationSeconds": 0.1}}},
    )
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace).build(build.request)
    message = str(failed.value)
    assert "OOMKilled (exit code 137)" in message
    assert (
        "Earlier pods: pod build-" in message and "Evicted: The node was low on resource: memory." in message
    )
    (job,) = jobs(k8s_batch, namespace)
    assert condition(job, "Failed").reason == "PodFailurePolicy"


def test_a_failing_context_fetch_is_retried_up_to_the_backoff_limit(
    k8s_cluster, build, k8s_core, k8s_batch, namespace
):
    build.script(
        {
            "containers": {
                CONTEXT_CONTAINER: {
                    "exitCode": 1,
                    "logs": ["sha256sum: WARNING: 1 computed checksum did NOT match"],
                }
            }
        }
    )
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, backoff_limit=1).build(build.request)
    (job,) = jobs(k8s_batch, namespace)
    assert condition(job, "Failed").reason == "BackoffLimitExceeded"
    assert len(pods_of(k8s_core, namespace, job.metadata.name)) == 2
    message = str(failed.value)
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in message
    assert "container context Error (exit code 1)" in message


def test_an_image_that_cannot_be_pulled_fails_naming_image_pull_back_off(
    k8s_cluster, build, k8s_batch, namespace
):
    build.script({"containers": {BUILDKIT_CONTAINER: {"fault": "ErrImagePull"}}})
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, start_timeout_s=1).build(build.request)
    message = str(failed.value)
    assert "container buildkit ImagePullBackOff: Back-off pulling image" in message
    assert "moby/buildkit" in message and "the Job was deleted" in message
    wait_until(lambda: not jobs(k8s_batch, namespace))


def test_a_missing_registry_secret_fails_naming_the_failed_mount(k8s_cluster, build, namespace):
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, registry_secret="no-such-secret", start_timeout_s=1).build(
            build.request
        )
    assert (
        'FailedMount: MountVolume.SetUp failed for volume "docker-config" : secret "no-such-secret" not found'
        in str(failed.value)
    )


def test_a_build_past_its_deadline_fails_with_deadline_exceeded_and_is_kept(
    k8s_cluster, build, k8s_batch, namespace
):
    build.script({"containers": {BUILDKIT_CONTAINER: {"durationSeconds": 30, "logs": ["#3 RUN compile"]}}})
    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace, active_deadline_s=1).build(build.request)
    assert "DeadlineExceeded: Job was active longer than specified deadline" in str(failed.value)
    (job,) = jobs(k8s_batch, namespace)
    assert condition(job, "Failed").reason == "DeadlineExceeded"


def test_a_digest_the_registry_does_not_serve_fails_and_keeps_the_job(
    k8s_cluster, build, k8s_batch, namespace
):
    build.push()
    build.script(build.succeed("sha256:" + "0" * 64))
    with pytest.raises(BuildError, match=r"BuildKit reported sha256:0000.*but the registry serves sha256:"):
        builder(k8s_cluster, namespace).build(build.request)
    assert len(jobs(k8s_batch, namespace)) == 1


def test_a_failed_job_is_kept_and_the_next_attempt_gets_a_job_of_its_own(
    k8s_cluster, build, k8s_batch, namespace
):
    build.script({"containers": {BUILDKIT_CONTAINER: {"exitCode": 1, "logs": ["ERROR: failed to solve"]}}},
                 build.succeed(build.push()), repeat=True)  # fmt: skip
    with pytest.raises(
        BuildError, match="container buildkit Error \\(exit code 1\\): ERROR: failed to solve"
    ):
        builder(k8s_cluster, namespace).build(build.request)
    (failed,) = jobs(k8s_batch, namespace)
    lines: list[str] = []
    builder(k8s_cluster, namespace).build(build.request, on_line=lines.append)
    assert any("(attempt 2: earlier Jobs of this key failed and are kept)" in line for line in lines)
    (kept,) = jobs(k8s_batch, namespace)
    assert kept.metadata.name == failed.metadata.name and condition(kept, "Failed")


def test_a_second_build_of_the_same_key_follows_the_running_job(
    k8s_cluster, build, k8s_core, k8s_batch, namespace
):
    digest = build.push()
    build.script(build.succeed(digest, ["#1 only once"], duration_s=2.0))
    results, lines = [], [[], []]
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                builder(k8s_cluster, namespace).build(build.request, on_line=lines[i].append)
            )
        )
        for i in range(2)
    ]
    threads[0].start()
    wait_until(lambda: jobs(k8s_batch, namespace))
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert [r.digest for r in results] == [digest, digest]
    assert (
        len([e for e in events(k8s_core, namespace, "SuccessfulCreate") if e.involved_object.kind == "Job"])
        == 1
    )
    assert any("it builds this very key" in line for line in lines[1])


def test_an_interrupted_step_deletes_its_job_and_pods(k8s_cluster, build, k8s_core, k8s_batch, namespace):
    """Dagster terminates a run by raising DagsterExecutionInterruptedError in the step."""
    build.script({"containers": {BUILDKIT_CONTAINER: {"durationSeconds": 60, "logs": ["#1 long"]}}})
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "#1 long":
            raise DagsterExecutionInterruptedError()

    with pytest.raises(DagsterExecutionInterruptedError):
        builder(k8s_cluster, namespace).build(build.request, on_line=on_line)
    assert any(line.startswith("[kubernetes] cancelled: deleted Job") for line in lines)
    wait_until(
        lambda: (
            not jobs(k8s_batch, namespace)
            and not k8s_core.list_namespaced_pod(namespace, label_selector=BUILD_SELECTOR).items
        )
    )


def test_the_context_is_pushed_by_digest_kept_from_gc_and_fetched_by_the_init_container(
    k8s_cluster, build, k8s_core, namespace, registry
):
    build.script({"containers": {BUILDKIT_CONTAINER: {"exitCode": 1}}})
    with pytest.raises(BuildError):
        builder(k8s_cluster, namespace).build(build.request)
    (pod,) = k8s_core.list_namespaced_pod(namespace, label_selector=BUILD_SELECTOR).items
    env = {e.name: e.value for e in pod.spec.init_containers[0].env}
    digest = build.request.context.digest
    assert env["CONTEXT_BLOB"] == f"{registry.host}/{build.repository}@{digest}"
    assert env["ORAS_FLAGS"] == "--plain-http"
    client = RegistryClient(registry.url, registry.username, registry.password)
    assert client.blob(build.repository, digest) == build.request.context.archive
    kept = client.manifest(build.repository, "context-" + digest.removeprefix("sha256:"))
    assert kept.layer_digests == (digest,)


def test_a_context_over_the_limit_is_refused_before_anything_is_sent(
    k8s_cluster, build, namespace, registry, monkeypatch
):
    monkeypatch.setattr(kube, "MAX_CONTEXT_BYTES", 1024)
    mark = registry.mark()
    with pytest.raises(
        BuildError, match=r"the build context is \d+ bytes; a Kubernetes build takes at most 1024"
    ):
        builder(k8s_cluster, namespace).build(build.request)
    assert registry.blob_uploads(since=mark) == 0


def test_transient_api_errors_are_retried(k8s_cluster, build, namespace, k8s_sim):
    digest = build.push()
    build.script(build.succeed(digest))
    k8s_sim.fault(r"/apis/batch/v1/namespaces/[^/]+/jobs$", verbs=("create",), status=500, count=1)
    k8s_sim.fault(r"/api/v1/namespaces/[^/]+/pods", verbs=("list",), status=429, count=2)
    assert builder(k8s_cluster, namespace).build(build.request).digest == digest


# -- checks -----------------------------------------------------------------------------------------------


def check_request(registry, digest: str, gpus: int = 0, argv=("python", "-c", "print('ok')"), timeout_s=60.0):
    return RunRequest(
        image=f"{registry.host}/library/tk-check@{digest}",
        argv=list(argv),
        gpus=gpus,
        timeout_s=timeout_s,
        registry=access(registry),
    )


DIGEST = "sha256:" + "c" * 64


def test_the_smoke_check_runs_without_a_gpu_and_returns_exit_code_and_output(
    k8s_cluster, k8s_sim, namespace, registry, k8s_batch
):
    k8s_sim.script(
        [{"logs": ["imported 3 modules", '{"failed_imports": {}}'], "durationSeconds": 0.2}],
        namespace=namespace,
        selector=CHECK_SELECTOR,
    )
    result = runner(k8s_cluster, namespace).run(check_request(registry, DIGEST))
    assert result.returncode == 0
    assert result.output == 'imported 3 modules\n{"failed_imports": {}}\n'
    wait_until(lambda: not jobs(k8s_batch, namespace, CHECK_SELECTOR))  # passed: deleted


def test_the_gpu_test_asks_for_exactly_one_gpu_and_a_failure_is_its_exit_code(
    k8s_cluster, k8s_sim, namespace, registry, k8s_batch, k8s_core
):
    k8s_sim.script(
        [
            {
                "exitCode": 1,
                "logs": ["gpu-check: FAIL: torch.cuda.is_available() is False"],
                "durationSeconds": 0.1,
            }
        ],
        namespace=namespace,
        selector=CHECK_SELECTOR,
    )
    result = runner(k8s_cluster, namespace, node_selector="", tolerations="").run(
        check_request(registry, DIGEST, gpus=1, argv=("gpu-check",))
    )
    assert (result.returncode, result.output) == (1, "gpu-check: FAIL: torch.cuda.is_available() is False\n")
    (job,) = jobs(k8s_batch, namespace, CHECK_SELECTOR)  # failed: kept
    (pod,) = pods_of(k8s_core, namespace, job.metadata.name)
    [container] = pod.spec.containers
    assert container.resources.limits[GPU_RESOURCE] == "1"
    assert (
        GPU_RESOURCE not in (container.resources.requests or {})
        or container.resources.requests[GPU_RESOURCE] == "1"
    )
    assert [t.to_dict() for t in pod.spec.tolerations if t.key == GPU_RESOURCE] == [
        {
            "key": GPU_RESOURCE,
            "operator": "Exists",
            "effect": "NoSchedule",
            "value": None,
            "toleration_seconds": None,
        }
    ]
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.spec.node_name in GPU_NODES
    assert container.command == ["gpu-check"]
    assert job.metadata.labels["thinkube.io/check"] == "gpu"


def test_a_check_that_needs_more_gpus_than_any_node_has_is_a_run_error(k8s_cluster, namespace, registry):
    with pytest.raises(
        RunError,
        match=r"FailedScheduling: 0/4 nodes are available: 1 node\(s\) had untolerated taint\(s\), "
        r"3 Insufficient nvidia.com/gpu",
    ):
        runner(k8s_cluster, namespace, schedule_timeout_s=1).run(check_request(registry, DIGEST, gpus=9))


def test_a_check_past_its_time_limit_is_124_and_its_job_deleted(
    k8s_cluster, k8s_sim, namespace, registry, k8s_batch
):
    k8s_sim.script(
        [{"logs": ["still importing"], "durationSeconds": 60}], namespace=namespace, selector=CHECK_SELECTOR
    )
    result = runner(k8s_cluster, namespace).run(check_request(registry, DIGEST, timeout_s=0.5))
    assert result.returncode == 124
    assert result.output.startswith("still importing\n")
    wait_until(lambda: not jobs(k8s_batch, namespace, CHECK_SELECTOR))


def test_a_build_on_a_lost_node_is_replaced_on_another_gpu_node(k8s_cluster, build, k8s_sim, namespace):
    """Non-graceful node shutdown: the operator taints the dead node out-of-service, the taint manager evicts
    the pod (DisruptionTarget), PodGC force-deletes it; the Job's policy ignores the disruption."""
    digest = build.push()
    build.script(
        {"containers": {BUILDKIT_CONTAINER: {"durationSeconds": 60, "logs": ["#1 on the doomed node"]}}},
        build.succeed(digest, ["#1 on another node"]),
    )
    lines: list[str] = []
    lost: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if " scheduled on node " in line and not lost:
            lost.append(line.rsplit(" ", 1)[1])
        if line == "#1 on the doomed node":
            k8s_sim.lose_node(lost[0], out_of_service=True)

    result = builder(k8s_cluster, namespace, backoff_limit=0).build(build.request, on_line=on_line)
    assert result.digest == digest
    nodes = [line.rsplit(" ", 1)[1] for line in lines if " scheduled on node " in line]
    assert len(nodes) == 2 and nodes[1] != lost[0] and set(nodes) <= GPU_NODES
    assert any("DeletionByTaintManager" in line or "DisruptionTarget" in line for line in lines), lines


def test_an_interrupted_check_deletes_its_job(k8s_cluster, k8s_sim, namespace, registry, k8s_batch):
    k8s_sim.script(
        [{"logs": ["importing"], "durationSeconds": 60}], namespace=namespace, selector=CHECK_SELECTOR
    )

    def on_line(line: str) -> None:
        if line == "importing":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner(k8s_cluster, namespace).run(check_request(registry, DIGEST), on_line=on_line)
    wait_until(lambda: not jobs(k8s_batch, namespace, CHECK_SELECTOR))


def test_a_pod_the_job_controller_cannot_create_fails_naming_failed_create(
    k8s_cluster, build, k8s_core, k8s_batch, namespace
):
    """A pod the API refuses (PodSecurity admission, a ResourceQuota) never appears: the Job controller
    records a FailedCreate Warning event on the Job. The simulator admits every pod, so the test suspends
    the Job (no pods) and records the event the controller would."""
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line.startswith("[kubernetes] created build Job"):
            [job] = jobs(k8s_batch, namespace)
            k8s_batch.patch_namespaced_job(job.metadata.name, namespace, {"spec": {"suspend": True}})
            forbidden = (
                f'Error creating: pods "{job.metadata.name}-x" is forbidden: violates PodSecurity '
                '"restricted:latest": seccompProfile (container "buildkit" must not set type to "Unconfined")'
            )
            involved = {"kind": "Job", "name": job.metadata.name, "namespace": namespace}
            k8s_core.create_namespaced_event(
                namespace,
                {
                    "metadata": {"name": f"{job.metadata.name}.failedcreate"},
                    "involvedObject": {**involved, "apiVersion": "batch/v1", "uid": job.metadata.uid},
                    "reason": "FailedCreate",
                    "message": forbidden,
                    "type": "Warning",
                    "source": {"component": "job-controller"},
                    "count": 1,
                },
            )

    with pytest.raises(BuildError) as failed:
        builder(k8s_cluster, namespace).build(build.request, on_line=on_line)
    message = str(failed.value)
    assert "the Job controller cannot create its pod: FailedCreate: Error creating: pods" in message
    assert 'violates PodSecurity "restricted:latest"' in message
