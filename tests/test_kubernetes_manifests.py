"""Every manifest in deploy/ and every Job the code location renders validates strictly against the real
Kubernetes schemas (kubernetes-validate), for the oldest and newest supported minor; and the Jobs do what
a user of the cluster notices: builds never take a GPU, the GPU test takes exactly one, no secret leaks."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from thinkube_pipelines.defs.resources import (
    DEFAULT_THINKUBE_CONTROL_NAMESPACE,
    REGISTRATION_ENV,
    REGISTRATIONS,
    THINKUBE_CONTROL_NAMESPACE_ENV,
)
from thinkube_pipelines.hub.settings import (
    HEALTH_URL_ENV,
    HELM_ENV,
    HUB_CATALOG_URL_ENV,
    OIDC_CLIENT_SECRET_ENV,
    HubConfigError,
    HubSettings,
)
from thinkube_pipelines.kubernetes import validation
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


def dagster_values() -> dict:
    return yaml.safe_load((DEPLOY / "dagster-values.yaml").read_text())


def code_location(values: dict) -> dict:
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


RELEASE = "dagster"
"""The release name of deploy/README.md's `helm upgrade --install dagster dagster/dagster`; with the chart
named `dagster` too, the chart's full name and its ServiceAccount are `dagster`; the user-deployments
subchart's full name is `dagster-dagster-user-deployments`."""
USER_DEPLOYMENTS = f"{RELEASE}-dagster-user-deployments"


def run_worker_job(values: dict) -> dict:
    """The Job the K8sRunLauncher creates for a run of the code location, built by dagster-k8s itself
    (K8sContainerContext, construct_dagster_k8s_job) from what the chart hands it. The chart's part is
    transcribed from its templates (dagster-io/dagster helm/dagster): the instance's run launcher config
    (templates/helpers/instance/_run-launcher.tpl: the chart's ServiceAccount, job_namespace,
    image_pull_policy, env_secrets, run_k8s_config's keys in snake case) and, while
    includeConfigInLaunchedRuns is on, the code location's container context
    (charts/dagster-user-deployments/templates/helpers/_helpers.tpl, k8sContainerContext: its env
    ConfigMap and Secrets, resources, namespace, the user-deployments ServiceAccount, env given as a list),
    merged as K8sContainerContext.create_for_run merges them: the code location's last."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s_config = {
        snake: launcher["runK8sConfig"][camel]
        for camel, snake in (
            ("containerConfig", "container_config"),
            ("podSpecConfig", "pod_spec_config"),
            ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
            ("jobSpecConfig", "job_spec_config"),
            ("jobMetadata", "job_metadata"),
        )
        if launcher.get("runK8sConfig", {}).get(camel)
    }
    context = K8sContainerContext().merge(
        K8sContainerContext(
            image_pull_policy=launcher.get("imagePullPolicy", "Always"),
            service_account_name=RELEASE,
            env_config_maps=[c["name"] for c in launcher.get("envConfigMaps", [])],
            env_secrets=[s["name"] for s in launcher.get("envSecrets", [])],
            namespace=launcher.get("jobNamespace"),
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config),
        )
    )
    deployment = code_location(values)
    if deployment.get("includeConfigInLaunchedRuns", {"enabled": True})["enabled"]:
        k8s = {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_config_maps": [f"{USER_DEPLOYMENTS}-{deployment['name']}-user-env"]
            + [c["name"] for c in deployment.get("envConfigMaps", [])],
            "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
            "namespace": "thinkube-pipelines",
            "service_account_name": f"{USER_DEPLOYMENTS}-user-deployments",
            "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
        }
        if deployment.get("resources"):
            k8s["resources"] = deployment["resources"]
        if isinstance(deployment.get("env"), list):
            k8s["env"] = deployment["env"]
        context = context.merge(K8sContainerContext.create_from_config({"k8s": k8s}))
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(
            job_image=image,
            dagster_home="/opt/dagster/dagster_home",
            instance_config_map=f"{RELEASE}-instance",
            postgres_password_secret=values["global"]["postgresqlSecretName"],
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=f"dagster-run-{RUN_ID}",
        pod_name=f"dagster-run-{RUN_ID}",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/run-id": RUN_ID},
    )
    manifest = ApiClient().sanitize_for_serialization(job)
    manifest["metadata"]["namespace"] = context.namespace
    return manifest


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
        validation.validate(obj, version, strict=True), name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(rendered()))
def test_rendered_jobs_validate_strictly(version, name):
    validation.validate(rendered()[name], version, strict=True)


def test_an_invalid_manifest_is_refused():
    job = build_job_manifest(build_spec())
    pod_spec(job)["containers"][0]["resourcez"] = {}
    with pytest.raises(validation.ManifestError):
        validation.validate(job, KUBERNETES_VERSIONS[0], strict=True)


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
    documents.append(dagster_values())
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
    values = dagster_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql"
    deployment = code_location(values)
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "thinkube_pipelines.definitions"]
    pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    accounts = [obj["metadata"]["name"] for _, obj in deploy_objects() if obj["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] in accounts
    readme = (DEPLOY / "README.md").read_text()
    for secret in [values["global"]["postgresqlSecretName"], *(s["name"] for s in deployment["envSecrets"])]:
        assert f"`{secret}`" in readme


CHART_SCHEMA = Path(__file__).resolve().parent / "reference" / "dagster-helm" / "values.schema.json"
"""The Dagster chart's values schema (README.md beside it: which revision, and why not 1.13.27's)."""
KUBERNETES_DEFINITIONS = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"


def chart_values_validator() -> jsonschema.Draft7Validator:
    """A validator of a values file against the chart's schema, as helm applies it, with two differences.
    Helm validates the values merged over the chart's own values.yaml, which supplies the required keys:
    here `required` is dropped, except for a user deployment (a list item: a list in our values replaces the
    chart's whole). And an object whose keys the schema names refuses any other key (a
    misspelt key would otherwise pass and be ignored by the chart's templates). The Kubernetes types the
    schema references on the web resolve to the definitions kubernetes-validate ships, for 1.30."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    schema = json.loads(CHART_SCHEMA.read_text())

    def adapt(node, name=None):
        if isinstance(node, dict):
            if name != "UserDeployment":
                node.pop("required", None)
            external = str(node.get("$ref", "")).startswith("https://")
            if node.get("properties") and "additionalProperties" not in node and not external:
                node["additionalProperties"] = False
            for key, value in node.items():
                if key == "allOf":  # if type is X then config requires x: kept as it is
                    continue
                definition = key in schema["definitions"] and value is schema["definitions"][key]
                adapt(value, key if definition else None)
        elif isinstance(node, list):
            for item in node:
                adapt(item)

    adapt(schema)
    definitions = validation.definitions("1.30.0", strict=False)["$defs"]
    kubernetes = Resource.from_contents({"definitions": definitions, "$defs": definitions}, DRAFT7)
    return jsonschema.Draft7Validator(
        schema, registry=Registry().with_resource(KUBERNETES_DEFINITIONS, kubernetes)
    )


def test_the_dagster_values_validate_against_the_charts_schema():
    values = dagster_values()
    errors = sorted(chart_values_validator().iter_errors(values), key=lambda e: list(e.absolute_path))
    assert [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors] == []


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (
            ("dagster-user-deployments", "deployments", 0, "includeConfigInLaunchedRun"),
            {"enabled": False},
            "not allowed",
        ),
        (("runLauncher", "config", "k8sRunLauncher", "runK8sConfig", "podSpec"), {}, "not valid under any"),
        (("runLauncher", "type"), "KubernetesRunLauncher", "is not one of"),
        (
            ("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator", "maxConcurrentRuns"),
            "4",
            "not valid",
        ),
        (("dagster-user-deployments", "deployments", 0, "port"), None, "is a required property"),
        (
            ("dagster-user-deployments", "deployments", 0, "env", 0, "valueFrom"),
            {"secretKeyRef": "x"},
            "not valid under any",
        ),
        (("global", "postgresqlSecretname"), "x", "not allowed"),
        (
            ("runLauncher", "config"),
            {"celeryK8sRunLauncher": None},
            "'k8sRunLauncher' is a required property",
        ),
    ],
)
def test_the_chart_schema_refuses_what_the_chart_would_not_take(path, value, complaint):
    values = dagster_values()
    node = values
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    messages = [e.message for e in chart_values_validator().iter_errors(values)]
    assert any(complaint in m for m in messages), messages


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_run_pods_act_as_the_pipelines_account_with_the_code_locations_settings(version):
    values = dagster_values()
    job = run_worker_job(values)
    validation.validate(job, version, strict=True)
    pod = pod_spec(job)
    assert pod["serviceAccountName"] == "thinkube-pipelines"
    assert job["metadata"]["namespace"] == "thinkube-pipelines"
    assert job["spec"]["ttlSecondsAfterFinished"] == 7 * 24 * 3600
    [worker] = pod["containers"]
    assert worker["image"] == "harbor.example.org/thinkube/thinkube-pipelines:0.1.0"
    # Every setting of the code server, and its Secrets, reach the run (which resolves the EnvVars).
    deployment = code_location(values)
    assert [e for e in worker["env"] if e["name"].startswith("THINKUBE_")] == deployment["env"]
    secrets = [e["secretRef"]["name"] for e in worker["envFrom"] if "secretRef" in e]
    assert secrets == [s["name"] for s in deployment["envSecrets"]]
    assert (
        worker["resources"]
        == values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    )
    assert pod["securityContext"] == deployment["podSecurityContext"]
    assert worker["securityContext"] == deployment["securityContext"]


def test_with_include_config_in_launched_runs_the_code_servers_account_would_win():
    """Why includeConfigInLaunchedRuns is off: dagster-k8s merges the code location's container context
    last, so the chart's user-deployments ServiceAccount (and the code server's resources) replace ours."""
    values = dagster_values()
    code_location(values)["includeConfigInLaunchedRuns"] = {"enabled": True}
    job = run_worker_job(values)
    assert pod_spec(job)["serviceAccountName"] == f"{USER_DEPLOYMENTS}-user-deployments"
    [worker] = pod_spec(job)["containers"]
    assert worker["resources"] == code_location(values)["resources"]


def test_the_registration_settings_are_the_code_locations():
    env = {e["name"]: e["value"] for e in code_location(dagster_values())["env"]}
    assert env[REGISTRATION_ENV] in REGISTRATIONS
    assert env[THINKUBE_CONTROL_NAMESPACE_ENV] == DEFAULT_THINKUBE_CONTROL_NAMESPACE
    readme = (DEPLOY.parent / "README.md").read_text()
    for name in env:
        assert f"`{name}`" in readme, f"{name} is not in the README's settings table"


HUB_SECRET = "thinkube-hub-oidc-client"
"""The Secret of dagster-values.yaml's envSecrets that holds the hub deploy's OAuth client secret."""


def test_the_hub_deploys_settings_are_the_code_locations():
    """Every setting the hub deploy requires is in the code location's env (which run pods share); its
    OAuth client secret only through a Secret; the health asked in-cluster; helm the image's own."""
    values = dagster_values()
    deployment = code_location(values)
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert OIDC_CLIENT_SECRET_ENV not in env
    assert HUB_SECRET in [s["name"] for s in deployment["envSecrets"]]
    assert f"`{HUB_SECRET}` | `{OIDC_CLIENT_SECRET_ENV}` |" in (DEPLOY / "README.md").read_text()

    settings = HubSettings.from_env(env)
    # Each of those settings is needed: without it, the deploy would not start.
    for name in ("THINKUBE_HUB_PUBLIC_URL", "THINKUBE_OIDC_ISSUER", "THINKUBE_SEAWEEDFS_FILER_URL"):
        with pytest.raises(HubConfigError, match=name):
            HubSettings.from_env({key: value for key, value in env.items() if key != name})
    # The hub (in its own namespace) reaches the catalog service of catalog.yaml by its in-cluster name.
    (catalog,) = [obj for _, obj in deploy_objects() if obj["kind"] == "Service"]
    service = f"http://{catalog['metadata']['name']}.{catalog['metadata']['namespace']}.svc"
    assert settings.hub_catalog_url == env[HUB_CATALOG_URL_ENV] == service
    assert env[HEALTH_URL_ENV] == f"http://proxy-public.{settings.namespace}.svc/hub/health"
    assert HELM_ENV not in env, "the image's helm, on PATH"


PACKAGE = DEPLOY.parent / "thinkube_pipelines"
BUILDS_CODE = PACKAGE / "builders" / "kubernetes.py"
REGISTRATION_CODE = PACKAGE / "kubernetes" / "cluster.py"
API_CLIENT = re.compile(r"(?P<name>[\w.]+) = (?P<api>CoreV1Api|BatchV1Api)\(")
API_CALL = re.compile(
    r"(?P<partial>partial\(\s*)?\b(?:self\.)?(?P<client>core|batch)\.(?P<method>\w+)(?=\s*[(,)])"
)
METHOD = re.compile(r"(?P<action>read|list|create|replace|patch|delete)_namespaced_(?P<resource>\w+)")
RESOURCES = {
    ("batch", "job"): ("batch", "jobs"),
    ("core", "pod"): ("", "pods"),
    ("core", "pod_log"): ("", "pods/log"),
    ("core", "event"): ("", "events"),
    ("core", "config_map"): ("", "configmaps"),
}
VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}


def api_rights(path: Path) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> RBAC verbs, from the official client's calls in `path` (its CoreV1Api is
    always named `core`, its BatchV1Api `batch`): read_namespaced_X is get, replace_ update, and so on; a
    list method handed over with functools.partial is the follower's watch (`_watch` lists, then watches
    from that resourceVersion), so it needs list and watch. Any other method fails: add it here and its
    right to deploy/."""
    text = path.read_text()
    for client in API_CLIENT.finditer(text):
        assert client["name"] in ("core", "self.core", "batch", "self.batch"), client.group(0)
    rights: dict[tuple[str, str], set[str]] = {}
    for call in API_CALL.finditer(text):
        method = METHOD.fullmatch(call["method"])
        resource = method and RESOURCES.get((call["client"], method["resource"]))
        assert resource, f"{path.name}: {call['client']}.{call['method']} is not in RESOURCES"
        verbs = {VERBS[method["action"]]}
        if call["partial"]:
            assert method["action"] == "list", call.group(0)
            verbs.add("watch")
        rights.setdefault(resource, set()).update(verbs)
    return rights


def role_rights(name: str) -> dict[tuple[str, str], set[str]]:
    [role] = [o for _, o in deploy_objects() if o["kind"] == "Role" and o["metadata"]["name"] == name]
    rights: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rights.setdefault((group, resource), set()).update(rule["verbs"])
    return rights


def bound_to(role: str) -> list[tuple[str, str]]:
    """(namespace of the binding, ServiceAccount) pairs bound to the Role `role`."""
    return [
        (o["metadata"]["namespace"], f"{s['namespace']}/{s['name']}")
        for _, o in deploy_objects()
        if o["kind"] == "RoleBinding"
        and o["roleRef"] == {"apiGroup": RBAC_GROUP, "kind": "Role", "name": role}
        for s in o["subjects"]
    ]


RBAC_GROUP = "rbac.authorization.k8s.io"


def test_the_build_role_grants_exactly_what_the_builder_and_runner_call():
    wanted = {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"list"},
    }
    assert api_rights(BUILDS_CODE) == wanted
    assert role_rights("thinkube-pipelines-builds") == wanted
    assert bound_to("thinkube-pipelines-builds") == [
        ("thinkube-pipelines", "thinkube-pipelines/thinkube-pipelines")
    ]


def test_the_registration_role_grants_exactly_what_ensure_config_map_calls():
    wanted = {("", "configmaps"): {"get", "create", "update"}}
    assert api_rights(REGISTRATION_CODE) == wanted
    assert role_rights("thinkube-pipelines-registration") == wanted
    # In the namespace the code location is configured with, for the run pods' account.
    env = {e["name"]: e.get("value") for e in code_location(dagster_values())["env"]}
    namespace = env[THINKUBE_CONTROL_NAMESPACE_ENV]
    [role] = [
        o
        for _, o in deploy_objects()
        if o["kind"] == "Role" and o["metadata"]["name"] == "thinkube-pipelines-registration"
    ]
    assert role["metadata"]["namespace"] == namespace == DEFAULT_THINKUBE_CONTROL_NAMESPACE
    assert bound_to("thinkube-pipelines-registration") == [
        (namespace, "thinkube-pipelines/thinkube-pipelines")
    ]
    # Its own file: applied only where thinkube-control (and so its namespace) exists.
    assert {
        o["metadata"]["namespace"]
        for o in yaml.safe_load_all((DEPLOY / "rbac-thinkube-control.yaml").read_text())
    } == {namespace}


def test_no_other_code_calls_the_kubernetes_api():
    """Every Kubernetes API call of the package is in the two files whose rights the Roles above grant."""
    client = re.compile(r"^\s*(from|import) (kubernetes|dagster_k8s)\b", re.MULTILINE)
    callers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if client.search(path.read_text())
    }
    assert callers == {
        "builders/kubernetes.py",
        "kubernetes/cluster.py",
        "kubernetes/apply.py",  # the hub deploy's server-side apply (test_the_hub_deploy_rights_...)
        "hub/preflight.py",  # CSIDriver and namespace (test_the_hub_deploy_rights_...)
        "defs/hub/assets.py",  # an ApiClient for the two above, no call of its own
    }


def test_the_rights_scan_sees_every_kind_of_call(tmp_path):
    code = tmp_path / "code.py"
    code.write_text(
        "core = CoreV1Api(api)\ncore.read_namespaced_pod_log(n, ns)\nbatch.delete_namespaced_job(n, ns)\n"
        "x = partial(self.core.list_namespaced_pod, ns)\ncore.patch_namespaced_config_map(n, ns, b)\n"
        'selector = "batch.kubernetes.io/controller-uid=x"\n'
    )
    assert api_rights(code) == {
        ("", "pods/log"): {"get"},
        ("batch", "jobs"): {"delete"},
        ("", "pods"): {"list", "watch"},
        ("", "configmaps"): {"patch"},
    }
    for call in (
        "core.list_namespaced_secret(ns)",
        "core.list_node()",
        "core.delete_collection_namespaced_pod(ns)",
    ):
        code.write_text(call)
        with pytest.raises(AssertionError, match=re.escape(call.split("(")[0])):
            api_rights(code)
    code.write_text("v1 = CoreV1Api(api)\n")
    with pytest.raises(AssertionError, match="v1 = CoreV1Api"):
        api_rights(code)


def test_no_role_grants_a_wildcard_or_escalation():
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


# -- the hub deploy -------------------------------------------------------------------------------------

HUB_CHART = Path(__file__).resolve().parent / "reference" / "z2jh" / "jupyterhub-4.4.0.tgz"
HUB_NAMESPACE = "jupyterhub"
WRITE = {"get", "create", "patch"}
"""What applying an object needs: helm 4 and our apply read it, then PATCH it server-side (create if new)."""


def cluster_role_rights(name: str) -> dict[tuple[str, str], set[str]]:
    [role] = [o for _, o in deploy_objects() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name]
    return _rights(role["rules"])


def _rights(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    rights: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rights.setdefault((group, resource), set()).update(rule["verbs"])
    return rights


def _holds(granted: dict[tuple[str, str], set[str]], needed: dict[tuple[str, str], set[str]]) -> list[str]:
    return [
        f"{g or 'core'}/{r}: {sorted(v - granted.get((g, r), set()))}"
        for (g, r), v in needed.items()
        if v - granted.get((g, r), set())
    ]


def _resource(api_version: str, kind: str) -> tuple[str, str]:
    group = api_version.rpartition("/")[0]
    plural = {"NetworkPolicy": "networkpolicies", "Ingress": "ingresses"}.get(kind, kind.lower() + "s")
    return group, plural


def test_the_hub_deploy_rights_cover_the_chart_with_our_values_and_nothing_escalates(helm_bin, tmp_path):
    """The simulator does not enforce RBAC, so this compares, statically, what the hub deploy makes with
    what deploy/rbac.yaml grants its account: every object `helm template` renders from the chart and the
    rendered values (applied in the hub namespace), every rule of the chart's Roles (RBAC refuses a Role
    holding rights its creator lacks), the manifests applied beside the chart (the volumes, the hub's node
    reader, whose rules the account must hold cluster-wide) and the preflight's reads."""
    import subprocess

    from tests.fixtures.catalog import sample_image
    from tests.fixtures.tools import tool_env
    from thinkube_pipelines.catalog.contract import CatalogItem
    from thinkube_pipelines.hub.render import render_release
    from thinkube_pipelines.hub.settings import HubSettings
    from thinkube_pipelines.kubernetes.apply import APPLIED_KINDS

    settings = HubSettings(
        namespace=HUB_NAMESPACE,
        public_url="https://jupyter.example.org",
        oidc_issuer="https://keycloak.example.org/realms/thinkube",
        filer_url="http://seaweedfs-filer.seaweedfs:8888",
    )
    rendered = render_release(settings, [CatalogItem.model_validate(sample_image())])
    values = tmp_path / "values.yaml"
    values.write_text(rendered.values_yaml())
    template = subprocess.run(
        [str(helm_bin), "template", settings.release, str(HUB_CHART), "-n", HUB_NAMESPACE, "-f", str(values)],
        env=tool_env(tmp_path / "tools"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    chart = [o for o in yaml.safe_load_all(template.stdout) if o]
    namespaced = role_rights("thinkube-pipelines-hub-deploy")
    cluster = cluster_role_rights("thinkube-pipelines")

    # every chart object is namespaced (the user-scheduler's ClusterRole is off in our values) and writable
    kinds = {(o["apiVersion"], o["kind"]) for o in chart}
    assert not {k for _, k in kinds} & {"ClusterRole", "ClusterRoleBinding", "PriorityClass"}, kinds
    needed = {_resource(*k): WRITE | {"list", "watch", "delete"} for k in kinds}
    assert _holds(namespaced, needed) == []
    # the chart's Roles: their rules are held in the namespace (no escalate/bind anywhere)
    for role in (o for o in chart if o["kind"] == "Role"):
        assert _holds(namespaced, _rights(role["rules"])) == [], role["metadata"]["name"]
    # the chart's image pullers are off (helm's --wait would wait for every node's pulls)
    assert "DaemonSet" not in {k for _, k in kinds}
    # the manifests applied beside the chart (our image pre-puller among them, in the hub namespace), and
    # the OAuth client Secret
    [puller] = [m for m in rendered.manifests if m["kind"] == "DaemonSet"]
    assert puller["metadata"]["namespace"] == HUB_NAMESPACE
    assert _holds(namespaced, {("apps", "daemonsets"): WRITE}) == []
    for manifest in [*rendered.manifests, {"apiVersion": "v1", "kind": "Secret", "metadata": {}}]:
        kind = APPLIED_KINDS[(manifest["apiVersion"], manifest["kind"])]
        granted = namespaced if kind.namespaced else cluster
        assert _holds(granted, {(kind.group, kind.resource): WRITE}) == [], manifest["kind"]
        if manifest["kind"] == "ClusterRole":
            assert _holds(cluster, _rights(manifest["rules"])) == [], "the node reader's rules"
    # the preflight
    assert (
        _holds(cluster, {("storage.k8s.io", "csidrivers"): {"get"}, ("", "namespaces"): {"get", "create"}})
        == []
    )
    # and nothing more cluster-wide than the above
    assert cluster == {
        ("", "persistentvolumes"): WRITE,
        ("", "namespaces"): {"get", "create"},
        ("storage.k8s.io", "csidrivers"): {"get"},
        ("rbac.authorization.k8s.io", "clusterroles"): WRITE,
        ("rbac.authorization.k8s.io", "clusterrolebindings"): WRITE,
        ("", "nodes"): {"get", "list", "watch"},
    }
