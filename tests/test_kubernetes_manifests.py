"""Every manifest in deploy/ and every Job the code location renders validates strictly against the real
Kubernetes schemas (kubernetes-validate), for the oldest and newest supported minor; and the Jobs do what
a user of the cluster notices: builds never take a GPU, the GPU test takes exactly one, no secret leaks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from thinkube_pipelines.kubernetes.build_job import (
    BUILDKIT_CONTAINER,
    CONTEXT_CONTAINER,
    MAX_CONTEXT_BYTES,
    BuildJobSpec,
    build_job_manifest,
)
from thinkube_pipelines.kubernetes.common import GPU_RESOURCE, Placement
from thinkube_pipelines.kubernetes.run_job import RunJobSpec, run_job_manifest

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""Oldest and newest supported minor: 1.30 is the first with `appArmorProfile` in the securityContext
(BuildKit's rootless Job needs it), 1.37 the newest whose schemas kubernetes-validate ships."""

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HOST = "harbor.example.org"
REPO = f"{HOST}/thinkube/jupyter-ml-gpu"
SECRET = "s3cr3t-robot-password"
CONTEXT_DIGEST = "sha256:" + "b" * 64
RUN_ID = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


def build_spec(**overrides) -> BuildJobSpec:
    fields = {
        "namespace": "thinkube-pipelines",
        "image_name": "jupyter-ml-gpu",
        "build_key": "3f2a9c1e" * 4,
        "run_id": RUN_ID,
        "target": f"{REPO}:build-{'3f2a9c1e' * 4}",
        "context_blob": f"{REPO}@{CONTEXT_DIGEST}",
        "context_size": 20480,
        "build_args": {"BASE_IMAGE": f"{HOST}/thinkube/jupyter-base@sha256:{'a' * 64}"},
        "image_labels": {"org.thinkube.build-key": "3f2a9c1e" * 4},
        "cache_ref": f"{REPO}:buildcache",
        "registry_secret": "thinkube-registry-docker-config",
        "ca_configmap": "thinkube-registry-ca",
    }
    return BuildJobSpec(**{**fields, **overrides})


def run_spec(gpus: int, **overrides) -> RunJobSpec:
    fields = {
        "namespace": "thinkube-pipelines",
        "image_name": "jupyter-ml-gpu" if gpus else "jupyter-ml-cpu",
        "check": "gpu" if gpus else "smoke",
        "run_id": RUN_ID,
        "image": f"{REPO}@sha256:{'c' * 64}",
        "argv": ("gpu-check",) if gpus else ("python", "-c", "import jupyterlab"),
        "gpus": gpus,
        "timeout_s": 600,
    }
    return RunJobSpec(**{**fields, **overrides})


def rendered() -> dict[str, dict]:
    return {
        "build (GPU image)": build_job_manifest(build_spec()),
        "build (CPU image, no CA, no cache)": build_job_manifest(
            build_spec(image_name="jupyter-ml-cpu", ca_configmap=None, cache_ref=None)
        ),
        "GPU test": run_job_manifest(run_spec(1)),
        "smoke check": run_job_manifest(run_spec(0)),
    }


def deploy_objects() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document and "kind" in document:
                found.append((f"{path.name}#{index}", document))
    return found


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container(job: dict, name: str) -> dict:
    pod = pod_spec(job)
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_deploy_manifests_validate_strictly(version):
    objects = deploy_objects()
    kinds = {obj["kind"] for _, obj in objects}
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"} <= kinds
    for name, obj in objects:
        kubernetes_validate.validate(obj, version, strict=True), name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(rendered()))
def test_rendered_jobs_validate_strictly(version, name):
    kubernetes_validate.validate(rendered()[name], version, strict=True)


def test_an_invalid_manifest_is_refused():
    job = build_job_manifest(build_spec())
    pod_spec(job)["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)


def test_build_job_never_requests_a_gpu_and_lands_on_gpu_nodes():
    for name, job in rendered().items():
        if not name.startswith("build"):
            continue
        pod = pod_spec(job)
        for c in pod["containers"] + pod["initContainers"]:
            assert GPU_RESOURCE not in c["resources"].get("limits", {})
            assert GPU_RESOURCE not in c["resources"].get("requests", {})
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        resources = container(job, BUILDKIT_CONTAINER)["resources"]
        for kind in ("cpu", "memory", "ephemeral-storage"):
            assert kind in resources["requests"] and kind in resources["limits"]


def test_build_placement_is_configurable():
    job = build_job_manifest(build_spec(placement=Placement(node_selector={"role": "build"}, tolerations=())))
    assert pod_spec(job)["nodeSelector"] == {"role": "build"}
    assert pod_spec(job)["tolerations"] == []


def test_build_runs_buildkit_rootless_as_its_example_does():
    job = build_job_manifest(build_spec())
    buildkit = container(job, BUILDKIT_CONTAINER)
    assert (
        buildkit["image"].startswith("docker.io/moby/buildkit:v") and "-rootless@sha256:" in buildkit["image"]
    )
    assert buildkit["command"] == ["buildctl-daemonless.sh"]
    security = buildkit["securityContext"]
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert security["appArmorProfile"] == {"type": "Unconfined"}
    assert (security["runAsUser"], security["runAsGroup"]) == (1000, 1000)
    env = {e["name"]: e.get("value") for e in buildkit["env"]}
    assert env["BUILDKITD_FLAGS"] == "--oci-worker-no-process-sandbox"
    assert env["DOCKER_CONFIG"] == "/home/user/.docker"
    assert {"name": "buildkitd", "mountPath": "/home/user/.local/share/buildkit"} in buildkit["volumeMounts"]
    args = buildkit["args"]
    pairs = list(itertools.pairwise(args))
    assert ("--frontend", "dockerfile.v0") in pairs
    assert ("--local", "context=/workspace/context") in pairs
    assert ("--local", "dockerfile=/workspace/context") in pairs
    assert ("--opt", "platform=linux/amd64") in pairs
    assert ("--opt", f"build-arg:BASE_IMAGE={HOST}/thinkube/jupyter-base@sha256:{'a' * 64}") in pairs
    assert ("--output", f"type=image,name={REPO}:build-{'3f2a9c1e' * 4},push=true") in pairs
    assert ("--import-cache", f"type=registry,ref={REPO}:buildcache") in pairs
    assert ("--export-cache", f"type=registry,ref={REPO}:buildcache,mode=max") in pairs
    # The digest comes back in the pod's status: the metadata file is the termination message.
    assert ("--metadata-file", buildkit["terminationMessagePath"]) in pairs
    assert buildkit["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_context_digest_is_checked_in_the_init_container():
    job = build_job_manifest(build_spec())
    init = container(job, CONTEXT_CONTAINER)
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["CONTEXT_BLOB"] == f"{REPO}@{CONTEXT_DIGEST}"
    assert env["CONTEXT_DIGEST"] == CONTEXT_DIGEST
    script = init["command"][-1]
    assert 'oras blob fetch --registry-config "$DOCKER_CONFIG/config.json"' in script
    assert '"$CONTEXT_BLOB"' in script
    check = script.index("sha256sum -c")
    assert '"${CONTEXT_DIGEST#sha256:}' in script and check < script.index("tar -x")
    assert init["image"].startswith("ghcr.io/oras-project/oras:v") and "@sha256:" in init["image"]
    # The build container reads the unpacked context, read-only.
    assert {"name": "workspace", "mountPath": "/workspace", "readOnly": True} in container(
        job, BUILDKIT_CONTAINER
    )["volumeMounts"]


def test_a_context_must_be_named_by_digest_and_fit_the_limit():
    with pytest.raises(ValueError, match="by digest"):
        build_spec(context_blob=f"{REPO}:context")
    with pytest.raises(ValueError):
        build_spec(context_size=MAX_CONTEXT_BYTES + 1)
    with pytest.raises(ValueError, match="host/repository:tag"):
        build_spec(target=f"{REPO}@sha256:{'d' * 64}")


def test_job_lifetime_and_labels_let_a_cancelled_run_find_its_jobs():
    for name, job in rendered().items():
        spec = job["spec"]
        assert spec["activeDeadlineSeconds"] > 0, name
        assert spec["ttlSecondsAfterFinished"] >= 24 * 3600, name  # a failed Job's logs stay readable
        assert "backoffLimit" in spec, name
        labels = job["metadata"]["labels"]
        assert labels["thinkube.io/dagster-run-id"] == RUN_ID
        assert labels["thinkube.io/image"] in ("jupyter-ml-gpu", "jupyter-ml-cpu")
        assert spec["template"]["metadata"]["labels"] == labels
        assert len(job["metadata"]["name"]) <= 63
    build = rendered()["build (GPU image)"]
    assert build["metadata"]["labels"]["thinkube.io/build-key"] == "3f2a9c1e" * 4
    rules = build["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["containerName"] == BUILDKIT_CONTAINER


def test_the_gpu_test_asks_for_exactly_one_gpu_and_tolerates_the_taint():
    job = run_job_manifest(run_spec(1, placement=Placement(node_selector={}, tolerations=())))
    check = container(job, "check")
    assert check["resources"]["limits"][GPU_RESOURCE] == "1"
    assert GPU_RESOURCE not in check["resources"]["requests"]
    assert check["image"] == f"{REPO}@sha256:{'c' * 64}"
    assert check["command"] == ["gpu-check"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod_spec(job)["tolerations"]
    assert pod_spec(job)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600 + 900
    security = check["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    assert pod_spec(job)["automountServiceAccountToken"] is False


def test_the_smoke_check_takes_no_gpu_and_sees_none():
    check = container(run_job_manifest(run_spec(0)), "check")
    assert GPU_RESOURCE not in check["resources"]["limits"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in check["env"]


def test_the_runner_refuses_a_tag():
    with pytest.raises(ValueError, match="digest"):
        run_spec(0, image=f"{REPO}:latest")


def _secret_like_values(node, path=""):
    """Literal values of keys or env variables that name a password, a token or a secret."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node and _secretish(node["name"]):
            found.append(f"{path}.{node['name']}")
        for key, value in node.items():
            if (
                _secretish(key)
                and isinstance(value, str | int)
                and not isinstance(value, bool)
                and not key.endswith(("SecretName", "secretName"))
            ):
                found.append(f"{path}.{key}")
            found += _secret_like_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += _secret_like_values(item, f"{path}[{index}]")
    return found


def _secretish(name: str) -> bool:
    return any(word in name.lower() for word in ("password", "token", "secret", "dockerconfigjson"))


def test_no_secret_value_in_any_manifest():
    documents = list(rendered().values()) + [obj for _, obj in deploy_objects()]
    documents.append(yaml.safe_load((DEPLOY / "dagster-values.yaml").read_text()))
    for document in documents:
        assert _secret_like_values(document) == []
        assert SECRET not in json.dumps(document)
    assert _secret_like_values({"env": [{"name": "X_PASSWORD", "value": SECRET}]}) == [".env[0].X_PASSWORD"]
    for _, obj in deploy_objects():
        assert obj["kind"] != "Secret", "deploy/ names Secrets, it never holds one"
    # The specs have no field that could carry a credential: they refuse one.
    with pytest.raises(ValueError, match="password"):
        build_spec(password=SECRET)
    # Credentials reach the build only as a Secret volume, the catalog's only through secretKeyRef.
    volumes = {v["name"]: v for v in pod_spec(rendered()["build (GPU image)"])["volumes"]}
    assert volumes["docker-config"]["secret"]["secretName"] == "thinkube-registry-docker-config"


def test_the_dagster_values_use_the_k8s_run_launcher_and_an_existing_postgres_secret():
    values = yaml.safe_load((DEPLOY / "dagster-values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql"
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "thinkube_pipelines.definitions"]
    pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    accounts = [obj["metadata"]["name"] for _, obj in deploy_objects() if obj["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] in accounts
    readme = (DEPLOY / "README.md").read_text()
    for secret in [values["global"]["postgresqlSecretName"], *(s["name"] for s in deployment["envSecrets"])]:
        assert f"`{secret}`" in readme


def test_the_build_role_grants_exactly_what_a_build_needs():
    [role] = [
        o for _, o in deploy_objects() if o["kind"] == "Role" and o["metadata"]["name"].endswith("builds")
    ]
    grants = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert grants == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"get", "list", "watch"},
    }
    for _, obj in deploy_objects():
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_the_catalog_deployment_reads_its_database_from_a_secret_and_has_probes():
    [deployment] = [o for _, o in deploy_objects() if o["kind"] == "Deployment"]
    [catalog] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in catalog["env"]}
    assert env["THINKUBE_CATALOG_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "thinkube-catalog"
    for probe in ("readinessProbe", "livenessProbe"):
        assert catalog[probe]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert catalog["resources"]["limits"] and catalog["resources"]["requests"]
