"""The image graph's materializations in the `cluster` environment, chosen by configuration alone: every
build a BuildKit Job and every check a Job in the API simulator's GPU cluster, the real registry, and
thinkube-control registration through the same simulator.

`resources_for_environment("cluster")` picks the Kubernetes builder and runner (THINKUBE_BUILDER unset) from
the environment a run pod would have: KUBECONFIG (the simulator's), THINKUBE_JOBS_NAMESPACE, the registry
settings. The simulator's exec hook (tests/fixtures/buildkit_hook.py) carries out the build container with
the local buildah builder from the Job's own spec (context blob, buildctl arguments, pushed name) and the
check container with the buildah runner, so the rest of the chain finds real images in the real registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from kubernetes import client as k8s

from tests.fixtures.buildah import HOST_CA_BUNDLE
from tests.fixtures.buildkit_hook import hook_env, oras_shim
from tests.test_builder_kubernetes import BUILD_SELECTOR, CHECK_SELECTOR, GPU_NODES, docker_config_secret
from tests.test_image_pipeline import check_results, failure_message, materialization
from thinkube_pipelines.builders.kubernetes import KubernetesBuilder, KubernetesRunner
from thinkube_pipelines.defs.images.assets import image_assets
from thinkube_pipelines.defs.resources import resources_for_environment
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.images.lock import PLATFORM, LockInputs, render_lock, sha256_text
from thinkube_pipelines.kubernetes.common import GPU_RESOURCE
from thinkube_pipelines.registry.client import RegistryClient

ROOT = "tk-kube"
GPU_CHILD = "tk-kube-gpu"

ROOT_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN ln -sf /usr/bin/python3 /usr/local/bin/python \\
 && printf '#!/bin/sh\\necho jupyterhub-singleuser stand-in\\n' > /usr/local/bin/jupyterhub-singleuser \\
 && chmod 0755 /usr/local/bin/jupyterhub-singleuser \\
 && sleep {build_seconds} && echo build {nonce}
"""
BUILD_SECONDS = 2
"""The root's RUN step lasts this long, and names a nonce so that no layer cache skips it: log lines that
arrive during the build arrive this long before its end."""
GPU_DOCKERFILE = """\
ARG PARENT_IMAGE
FROM ${PARENT_IMAGE}
COPY gpu-check /usr/local/bin/gpu-check
RUN chmod 0755 /usr/local/bin/gpu-check
"""
GPU_CHECK_FAILING = """\
#!/bin/sh
# No GPU on this machine: what the real gpu-check says and does where torch sees no CUDA device.
echo "torch 2.4.1+cu121, built for CUDA 12.1"
echo "gpu-check: FAIL: no CUDA device (torch.cuda.is_available() is False)" >&2
exit 1
"""
GPU_CHECK_PASSING = """\
#!/bin/sh
# What the real gpu-check prints on a GPU (the simulator's nodes have none to offer this container).
echo "torch 2.4.1+cu121, built for CUDA 12.1"
echo "1 CUDA device(s)"
echo "  cuda:0  NVIDIA H100 80GB HBM3  compute capability 9.0  79.1 GiB"
echo "  cuda:0  1024x1024 matmul matches the CPU (max abs error 3.1e-05)"
echo "gpu-check: OK"
"""


def write_images(root: Path, gpu_check: str = GPU_CHECK_FAILING) -> Path:
    """A root image (the Debian base, a python and a jupyterhub-singleuser stand-in: the smoke check's
    needs, nothing to download) and a GPU child whose gpu-check is `gpu_check` (by default one that fails,
    as the real one does without a GPU)."""
    images = root / "images"
    base = (
        "docker.io/library/python:3.11-slim-bookworm"
        "@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91"
    )
    folder = images / ROOT
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(
        ROOT_DOCKERFILE.replace("{build_seconds}", str(BUILD_SECONDS)).replace("{nonce}", uuid.uuid4().hex)
    )
    (folder / "requirements.txt").write_text("")
    (folder / "requirements.lock").write_text(
        render_lock(LockInputs("3.11", PLATFORM, sha256_text(b""), ()), "")
    )
    (folder / "image.yaml").write_text(
        f"name: {ROOT}\ndisplay_name: Kubernetes test root\ndescription: Built by a BuildKit Job.\n"
        f"gpu_required: false\ncpu_limit: 1\nmem_limit: 1G\nbase:\n  image: {base}\n  python: '3.11'\n"
    )
    child = images / GPU_CHILD
    child.mkdir()
    (child / "Dockerfile").write_text(GPU_DOCKERFILE)
    (child / "gpu-check").write_text(gpu_check)
    (child / "gpu-check").chmod(0o755)
    (child / "requirements.txt").write_text("")
    inputs = LockInputs(
        "3.11",
        PLATFORM,
        sha256_text(b""),
        ((ROOT, sha256_text((folder / "requirements.lock").read_bytes())),),
    )
    (child / "requirements.lock").write_text(render_lock(inputs, ""))
    (child / "image.yaml").write_text(
        f"name: {GPU_CHILD}\ndisplay_name: Kubernetes test GPU child\ndescription: Needs a GPU.\n"
        f"gpu_required: true\ncpu_limit: 1\nmem_limit: 1G\nparent: {ROOT}\n"
    )
    load_image_definitions(images)  # the definitions and their locks are sound
    return images


@pytest.fixture
def cluster_env(monkeypatch, tmp_path, k8s_cluster, k8s_namespace, k8s_core, registry, registry_debian_base):
    """The environment of a run pod of the cluster, pointing at the simulator and the test registry."""
    for name in [n for n in os.environ if n.startswith("THINKUBE_") and "TEST" not in n]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    monkeypatch.setenv("THINKUBE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("THINKUBE_JOBS_NAMESPACE", k8s_namespace)
    monkeypatch.setenv("THINKUBE_REGISTRY_URL", registry.url)
    monkeypatch.setenv("THINKUBE_REGISTRY_FLAVOR", "distribution")
    monkeypatch.setenv("THINKUBE_REGISTRY_PROJECT", f"k8s{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("THINKUBE_REGISTRY_USERNAME", registry.username)
    monkeypatch.setenv("THINKUBE_REGISTRY_PASSWORD", registry.password)
    monkeypatch.setenv("THINKUBE_BASE_MIRROR", registry_debian_base)
    monkeypatch.setenv("THINKUBE_REGISTRATION", "thinkube-control")
    monkeypatch.setenv("THINKUBE_CONTROL_NAMESPACE", k8s_namespace)
    docker_config_secret(k8s_core, k8s_namespace, registry)
    return monkeypatch


@pytest.fixture
def hooks(k8s_sim, buildah_storage, registry, tmp_path):
    """The init container's own script (with an `oras` stand-in), build containers built by buildah, check
    containers run by buildah, here."""
    command = [sys.executable, "-m", "tests.fixtures.buildkit_hook"]
    env = hook_env(buildah_storage, str(HOST_CA_BUNDLE) if HOST_CA_BUNDLE.is_file() else None)
    env["PATH"] = os.environ["PATH"]
    if shutil.which("buildah") is None:
        pytest.fail("buildah not found: install the Debian package buildah", pytrace=False)
    shim = oras_shim(tmp_path / "oras-bin")
    k8s_sim.hook(
        r"oras-project/oras", ["env"], env={**env, "PATH": f"{shim}:{env['PATH']}"}, container="context"
    )
    k8s_sim.hook(r"moby/buildkit", [*command, "build"], env=env, container="buildkit")
    k8s_sim.hook("^" + re.escape(registry.host) + "/", [*command, "run"], env=env, container="check")
    return k8s_sim


def materialize(images: Path, *keys: str, instance=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        image_assets(load_image_definitions(images)),
        selection=[dg.AssetKey(k.split("/")) for k in keys] if keys else None,
        resources=resources_for_environment("cluster"),
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def scheduled_nodes(k8s_core: k8s.CoreV1Api, namespace: str, prefix: str) -> set[str]:
    return {
        e.message.rsplit(" ", 1)[1]
        for e in k8s_core.list_namespaced_event(namespace).items
        if e.reason == "Scheduled" and e.involved_object.name.startswith(prefix)
    }


def test_the_cluster_environment_picks_the_kubernetes_builder_and_runner_by_configuration(cluster_env):
    resources = resources_for_environment("cluster")
    builder, runner = resources["builder"], resources["runner"]
    assert isinstance(builder, KubernetesBuilder) and isinstance(runner, KubernetesRunner)
    assert builder.node_selector == "nvidia.com/gpu.present=true"
    assert builder.tolerations == "nvidia.com/gpu:NoSchedule"
    assert builder.registry_secret == "thinkube-registry-docker-config"
    cluster_env.setenv("THINKUBE_JOB_NODE_SELECTOR", "")  # empty: any node
    cluster_env.setenv("THINKUBE_JOB_TOLERATIONS", "nvidia.com/gpu,dedicated=builds:NoSchedule")
    cluster_env.setenv("THINKUBE_BUILD_RESOURCES", "memory=16Gi/64Gi")
    cluster_env.setenv("THINKUBE_JOB_SCHEDULE_TIMEOUT_S", "120")
    cluster_env.setenv("THINKUBE_BUILD_CACHE", "none")
    with resources_for_environment("cluster")["builder"].process_config_and_initialize_cm() as builder:
        assert builder.placement().node_selector == {}
        assert [t.key for t in builder.placement().tolerations] == ["nvidia.com/gpu", "dedicated"]
        assert builder.resources().memory_limit == "64Gi"
        assert builder.schedule_timeout_s == 120 and builder.registry_cache is False
        assert builder.namespace() == os.environ["THINKUBE_JOBS_NAMESPACE"]
    cluster_env.setenv("THINKUBE_BUILDER", "buildah")  # a local builder in the run's own pod, if wanted
    assert type(resources_for_environment("cluster")["builder"]).__name__ == "BuildahBuilder"
    cluster_env.setenv("THINKUBE_BUILDER", "kubernetes")
    cluster_env.setenv("THINKUBE_BUILD_RESOURCES", "gpu=1")
    builder = resources_for_environment("cluster")["builder"]
    with (
        pytest.raises(ValueError, match="THINKUBE_BUILD_RESOURCES: resources 'gpu=1'"),
        builder.process_config_and_initialize_cm(),
    ):
        pass


def test_the_graph_builds_checks_publishes_and_registers_through_kubernetes_jobs(
    cluster_env, hooks, tmp_path, k8s_core, k8s_batch, registry, k8s_namespace
):
    images = write_images(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    keys = [f"{ROOT}/{part}" for part in ("source", "build", "published", "catalog_entry")]
    result = materialize(images, *keys, instance=instance)
    assert result.success, failure_message(result)

    build = materialization(result, f"{ROOT}/build").metadata
    digest = build["digest"].value
    project = os.environ["THINKUBE_REGISTRY_PROJECT"]
    client = RegistryClient(registry.url, registry.username, registry.password)
    assert client.digest_of(f"{project}/{ROOT}", build["build_tag"].value) == digest  # pushed by the Job
    assert client.digest_of(f"{project}/{ROOT}", "latest") == digest  # published
    assert check_results(result)[f"{ROOT}/build"].passed  # the smoke check ran as a Job
    assert "STEP" in build["log_tail"].value  # the build's own log, streamed from the Job's pod
    records = instance.all_logs(result.run_id)
    [step] = [r for r in records if "STEP 1/3: FROM " in (r.user_message or "")]  # a milestone
    [built] = [
        r
        for r in records
        if r.is_dagster_event
        and r.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and r.dagster_event.asset_key == dg.AssetKey([ROOT, "build"])
    ]
    assert built.timestamp - step.timestamp > 1.0, "log lines must arrive during the build, not at its end"

    # Both Jobs ran on GPU nodes, and are gone: they succeeded.
    assert scheduled_nodes(k8s_core, k8s_namespace, "build-tk-kube-") <= GPU_NODES
    assert scheduled_nodes(k8s_core, k8s_namespace, "smoke-tk-kube-") <= GPU_NODES
    assert scheduled_nodes(k8s_core, k8s_namespace, "build-tk-kube-") and scheduled_nodes(
        k8s_core, k8s_namespace, "smoke-"
    )
    assert not k8s_batch.list_namespaced_job(k8s_namespace, label_selector=BUILD_SELECTOR).items
    assert not k8s_batch.list_namespaced_job(k8s_namespace, label_selector=CHECK_SELECTOR).items

    # Registered in thinkube-control: its discovery ConfigMap, in the same cluster.
    [configmap] = k8s_core.list_namespaced_config_map(
        k8s_namespace, label_selector="thinkube.io/image-manifest=true"
    ).items
    [entry] = json.loads(configmap.data["manifest.json"])["images"]
    assert entry["digest"] == digest and entry["name"] == ROOT


def test_a_build_killed_by_oom_fails_the_step_naming_job_pod_node_and_nothing_is_published(
    cluster_env, k8s_sim, tmp_path, k8s_core, k8s_batch, k8s_namespace
):
    images = write_images(tmp_path)
    k8s_sim.script(
        [
            {
                "containers": {
                    "buildkit": {"fault": "OOMKilled", "durationSeconds": 0.2, "logs": ["#7 [2/2] RUN make"]}
                }
            }
        ],
        namespace=k8s_namespace,
        selector=BUILD_SELECTOR,
    )
    result = materialize(images, f"{ROOT}/build", f"{ROOT}/published")
    assert not result.success
    message = failure_message(result)
    [job] = k8s_batch.list_namespaced_job(k8s_namespace, label_selector=BUILD_SELECTOR).items  # kept
    assert f"at build Job {k8s_namespace}/{job.metadata.name}" in message
    assert re.search(
        r"pod build-tk-kube-\S+ on node gpu-node-\d: container buildkit OOMKilled \(exit code 137\)", message
    )
    assert "memory limit (32Gi)" in message
    assert not [
        e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] in ("build", "published")
    ]
    # The retry policy (kubernetes/build_job.py): an OOM kill fails the Job at once, no second pod.
    [failed] = [c for c in job.status.conditions if c.type == "Failed"]
    assert (failed.status, failed.reason) == ("True", "PodFailurePolicy")
    pods = k8s_core.list_namespaced_pod(
        k8s_namespace, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}"
    ).items
    assert len(pods) == 1


def test_a_build_no_gpu_node_can_take_fails_quoting_the_scheduler_and_builds_nothing(
    cluster_env, k8s_sim, tmp_path, k8s_batch, k8s_namespace
):
    """Builds must land on a node of a GPU product the cluster does not have: the scheduler leaves the pod
    Pending, and the step fails with its FailedScheduling message once the scheduling timeout passes."""
    cluster_env.setenv(
        "THINKUBE_JOB_NODE_SELECTOR", "nvidia.com/gpu.present=true,nvidia.com/gpu.product=NVIDIA-B200"
    )
    cluster_env.setenv("THINKUBE_JOB_SCHEDULE_TIMEOUT_S", "2")
    images = write_images(tmp_path)
    result = materialize(images, f"{ROOT}/build")
    assert not result.success
    message = failure_message(result)
    assert "was not scheduled within 2 s: FailedScheduling: 0/4 nodes are available: " in message
    assert "1 node(s) had untolerated taint(s)" in message  # the control plane
    assert "3 node(s) didn't match Pod's node affinity/selector" in message  # the GPU nodes of other products
    assert not k8s_batch.list_namespaced_job(k8s_namespace, label_selector=BUILD_SELECTOR).items  # deleted
    assert not [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "build"]


def gpu_test_pods(k8s_core: k8s.CoreV1Api, namespace: str) -> list[k8s.V1Pod]:
    return k8s_core.list_namespaced_pod(
        namespace, label_selector=f"{CHECK_SELECTOR},thinkube.io/check=gpu"
    ).items


def test_a_failing_gpu_test_blocks_publish(
    cluster_env, hooks, tmp_path, k8s_core, k8s_batch, k8s_namespace, registry
):
    images = write_images(tmp_path)
    result = materialize(images)
    assert not result.success
    published = {"/".join(e.asset_key.path) for e in result.get_asset_materialization_events()}
    assert f"{ROOT}/published" in published  # the root has no GPU test
    assert f"{GPU_CHILD}/build" in published and f"{GPU_CHILD}/published" not in published
    assert f"{GPU_CHILD}/catalog_entry" not in published
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    assert checks[(f"{GPU_CHILD}/build", "smoke")].passed  # gpu-check is there; only the GPU test fails
    gpu = checks[(f"{GPU_CHILD}/build", "gpu")]
    assert not gpu.passed and "no CUDA device" in gpu.description
    message = failure_message(result)
    assert f"{GPU_CHILD}: the gpu check failed, nothing is published" in message
    assert "gpu-check: FAIL: no CUDA device" in message

    # The GPU test's Job: exactly one GPU, the GPU taint tolerated, on a GPU node; kept, as it failed.
    [job] = k8s_batch.list_namespaced_job(
        k8s_namespace, label_selector=f"{CHECK_SELECTOR},thinkube.io/check=gpu"
    ).items
    [pod] = gpu_test_pods(k8s_core, k8s_namespace)
    [container] = pod.spec.containers
    assert container.command == ["gpu-check"]
    assert container.resources.limits[GPU_RESOURCE] == "1"
    assert container.resources.requests.get(GPU_RESOURCE, "1") == "1"
    assert any(t.key == GPU_RESOURCE and t.effect == "NoSchedule" for t in pod.spec.tolerations)
    assert pod.spec.node_name in GPU_NODES
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == job.metadata.name
    # Nothing of the GPU child under its moving tag: the gate held.
    client = RegistryClient(registry.url, registry.username, registry.password)
    project = os.environ["THINKUBE_REGISTRY_PROJECT"]
    assert client.digest_of(f"{project}/{GPU_CHILD}", "latest") is None


def test_a_passing_gpu_test_publishes_and_runs_once_per_digest(
    cluster_env, hooks, tmp_path, k8s_core, k8s_batch, k8s_namespace, registry
):
    images = write_images(tmp_path, GPU_CHECK_PASSING)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(images, instance=instance)
    assert result.success, failure_message(result)
    gpu = next(c for c in result.get_asset_check_evaluations() if c.check_name == "gpu")
    assert gpu.passed
    assert gpu.metadata["devices"].value == [
        "cuda:0  NVIDIA H100 80GB HBM3  compute capability 9.0  79.1 GiB"
    ]
    assert "gpu-check: OK" in gpu.description
    digest = materialization(result, f"{GPU_CHILD}/build").metadata["digest"].value
    client = RegistryClient(registry.url, registry.username, registry.password)
    project = os.environ["THINKUBE_REGISTRY_PROJECT"]
    assert client.digest_of(f"{project}/{GPU_CHILD}", "latest") == digest
    # It ran as a Job with one GPU, which succeeded and was deleted.
    ran = [e for e in k8s_core.list_namespaced_event(k8s_namespace).items if e.reason == "Scheduled"]
    assert len([e for e in ran if e.involved_object.name.startswith("gpu-")]) == 1
    assert not k8s_batch.list_namespaced_job(k8s_namespace, label_selector=CHECK_SELECTOR).items

    again = materialize(images, instance=instance)  # the same digest: no second GPU test
    assert again.success, failure_message(again)
    gpu = next(c for c in again.get_asset_check_evaluations() if c.check_name == "gpu")
    assert gpu.passed and gpu.metadata["passed_in_run"].value == result.run_id
    ran = [e for e in k8s_core.list_namespaced_event(k8s_namespace).items if e.reason == "Scheduled"]
    assert len([e for e in ran if e.involved_object.name.startswith("gpu-")]) == 1


def test_with_the_gpu_test_turned_off_the_image_is_published_with_a_warning(
    cluster_env, hooks, tmp_path, k8s_core, k8s_namespace
):
    cluster_env.setenv("THINKUBE_GPU_TEST", "false")
    images = write_images(tmp_path)  # its gpu-check would fail: it must not run
    result = materialize(images)
    assert result.success, failure_message(result)
    gpu = next(c for c in result.get_asset_check_evaluations() if c.check_name == "gpu")
    assert not gpu.passed and gpu.severity == dg.AssetCheckSeverity.WARN
    assert "not run (THINKUBE_GPU_TEST=false)" in gpu.description
    assert materialization(result, f"{GPU_CHILD}/published")
    assert not gpu_test_pods(k8s_core, k8s_namespace)
    cluster_env.setenv("THINKUBE_GPU_TEST", "ture")
    with pytest.raises(ValueError, match="THINKUBE_GPU_TEST='ture': expected 'true' or 'false'"):
        resources_for_environment("cluster")


def test_an_evicted_build_pod_is_retried_by_its_job_and_the_image_is_published(
    cluster_env, hooks, tmp_path, k8s_core, k8s_namespace, registry, capsys
):
    """The first build pod is evicted (node-pressure eviction) a second into its build; the Job's policy
    ignores the disruption and its next pod builds the image for real."""
    hooks.script(
        [{"evictAfterSeconds": 1.0}, {}], namespace=k8s_namespace, selector=BUILD_SELECTOR, repeat=True
    )
    images = write_images(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(images, f"{ROOT}/build", f"{ROOT}/published", instance=instance)
    assert result.success, failure_message(result)
    build = materialization(result, f"{ROOT}/build").metadata
    assert "STEP" in build["log_tail"].value
    pods = {
        e.involved_object.name
        for e in k8s_core.list_namespaced_event(k8s_namespace).items
        if e.reason == "Scheduled"
    }
    assert len([p for p in pods if p.startswith("build-tk-kube-")]) == 2
    captured = capsys.readouterr().out  # the step's captured stdout: every line of the build's log
    [evicted] = [
        line for line in captured.splitlines() if line.startswith("[kubernetes]") and "Evicted" in line
    ]
    assert (
        "The node was low on resource: memory." in evicted
        and "without counting it toward backoffLimit" in evicted
    )
    client = RegistryClient(registry.url, registry.username, registry.password)
    project = os.environ["THINKUBE_REGISTRY_PROJECT"]
    assert client.digest_of(f"{project}/{ROOT}", "latest") == build["digest"].value
