"""The real helm (4.3.1) and kubectl (1.37.1) against the Kubernetes API simulator (tests/k8s_sim).

What the deploy steps run, run for real: `kubectl apply --server-side` of deploy/'s manifests, `helm
install --wait` of a small chart (tests/charts/tiny: a Deployment, a Service, a ConfigMap) and of the
zero-to-jupyterhub chart the hub is deployed with (tests/reference/z2jh, 4.4.0), `helm upgrade --wait`
that succeeds, and upgrades whose new image can never be pulled (a kubelet script: ErrImagePull), so that
the rollout never completes and helm's wait fails, naming the Deployment.

What they need from the API server, and the simulator serves (see tests/k8s_sim/openapi.py, managed.py,
typed.py, patch.py, protobuf.py): the OpenAPI v3 documents (kubectl and helm check there that PATCH takes
`fieldValidation`; `kubectl explain` reads the schemas), server-side apply (`application/apply-patch+yaml`:
create-or-update, `metadata.managedFields`, 409 conflicts between field managers, `force`), strategic
merge patch (helm's `--server-side=false` three-way patches), protobuf bodies (kubectl's typed create,
helm's release Secrets), streaming-list watches (`sendInitialEvents`, which helm's kstatus watcher uses),
and the Deployment rollout with its Available/Progressing conditions.

Each test module run starts its own simulator (`gpu-cluster` seed: every node is tainted, so the charts'
pods carry a toleration for `nvidia.com/gpu`), so that deploy/'s fixed namespaces and cluster-scoped RBAC
do not meet other tests' objects.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fixtures.kubernetes import RunningSimulator, simulator_or_fail, wait_until
from tests.fixtures.tools import tool_env

REPO = Path(__file__).resolve().parents[1]
TINY_CHART = REPO / "tests" / "charts" / "tiny"
JUPYTERHUB_CHART = REPO / "tests" / "reference" / "z2jh" / "jupyterhub-4.4.0.tgz"
DEPLOY_MANIFESTS = [REPO / "deploy" / "rbac.yaml", REPO / "deploy" / "catalog.yaml"]
DEPLOY_ARGS = [a for path in DEPLOY_MANIFESTS for a in ("-f", str(path))]
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
COMMAND_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with simulator_or_fail(tmp_path_factory.mktemp("helm-kubectl-sim")) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def env(sim: RunningSimulator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tool_env(tmp_path_factory.mktemp("helm-kubectl-home"), sim.kubeconfig)


Tool = Callable[..., subprocess.CompletedProcess]


def run(binary: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{binary.name} {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def kubectl(kubectl_bin: Path, env: dict[str, str]) -> Tool:
    """`kubectl(*args, check=True)`: the real kubectl against this module's simulator (see `run`)."""
    return partial(run, kubectl_bin, env=env)


@pytest.fixture(scope="module")
def helm(helm_bin: Path, env: dict[str, str]) -> Tool:
    """`helm(*args, check=True)`: the real helm against this module's simulator (see `run`)."""
    return partial(run, helm_bin, env=env)


def get(sim: RunningSimulator, path: str) -> dict[str, Any]:
    response = requests.get(f"{sim.url}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The FieldsV1 of the managedFields entries of the main resource, by (manager, operation)."""
    return {
        (e["manager"], e["operation"]): e["fieldsV1"]
        for e in obj["metadata"].get("managedFields") or []
        if not e.get("subresource")
    }


@pytest.fixture
def namespace(kubectl: Tool) -> str:
    """A fresh namespace, created with `kubectl create namespace` (a protobuf body, as kubectl sends it)."""
    name = f"h-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    return name


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def release_secrets(sim: RunningSimulator, namespace: str, release: str) -> list[dict[str, Any]]:
    listed = get(sim, f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm%2Cname%3D{release}")
    return sorted(listed["items"], key=lambda s: int(s["metadata"]["labels"]["version"]))


def release_statuses(sim: RunningSimulator, namespace: str, release: str) -> list[str]:
    """The status of each revision of the release, oldest first (its release Secrets' `status` label)."""
    return [s["metadata"]["labels"]["status"] for s in release_secrets(sim, namespace, release)]


# -- OpenAPI ----------------------------------------------------------------------------------------------


def test_openapi_v3_documents_carry_paths_schemas_and_merge_keys(sim: RunningSimulator):
    root = get(sim, "/openapi/v3")
    url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/apps/v1?hash=")
    response = requests.get(f"{sim.url}{url}", timeout=10)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, immutable"
    document = response.json()
    assert document["openapi"] == "3.0.0"
    patch = document["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "apps",
        "version": "v1",
        "kind": "Deployment",
    }
    assert {"dryRun", "fieldManager", "fieldValidation", "force"} <= {p["name"] for p in patch["parameters"]}
    assert "application/apply-patch+yaml" in patch["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    assert schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "kind": "Deployment", "version": "v1"}
    ]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-list-type"] == "map"
    assert containers["x-kubernetes-list-map-keys"] == ["name"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    ports = schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"]
    assert ports["x-kubernetes-list-map-keys"] == ["containerPort", "protocol"]
    # v2: JSON when JSON is acceptable; 406 for a protobuf-only request (no protobuf encoder here)
    v2 = requests.get(f"{sim.url}/openapi/v2", headers={"Accept": "application/json"}, timeout=30).json()
    assert v2["swagger"] == "2.0"
    assert v2["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
    protobuf = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    assert requests.get(f"{sim.url}/openapi/v2", headers={"Accept": protobuf}, timeout=10).status_code == 406


def test_kubectl_explain_reads_the_v3_schema(kubectl: Tool):
    result = kubectl("explain", "deployment.spec.template.spec.containers.ports")
    assert "FIELD: ports <[]ContainerPort>" in result.stdout
    assert "containerPort\t<integer> -required-" in result.stdout


# -- kubectl apply --server-side of deploy/ ---------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(sim: RunningSimulator, kubectl: Tool) -> subprocess.CompletedProcess:
    """deploy/rbac.yaml and deploy/catalog.yaml applied once with `kubectl apply --server-side`."""
    for name in ("thinkube-pipelines", "jupyterhub"):
        kubectl("create", "namespace", name)
    return kubectl("apply", "--server-side", *DEPLOY_ARGS)


DEPLOY_OBJECTS = [
    "/api/v1/namespaces/thinkube-pipelines/serviceaccounts/thinkube-pipelines",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/thinkube-pipelines/roles/thinkube-pipelines-builds",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/thinkube-pipelines/rolebindings/thinkube-pipelines-builds",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/jupyterhub/roles/thinkube-pipelines-hub-deploy",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/jupyterhub/rolebindings/thinkube-pipelines-hub-deploy",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles/thinkube-pipelines",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/thinkube-pipelines",
    "/apis/apps/v1/namespaces/thinkube-pipelines/deployments/thinkube-catalog",
    "/api/v1/namespaces/thinkube-pipelines/services/thinkube-catalog",
]
CATALOG = "/apis/apps/v1/namespaces/thinkube-pipelines/deployments/thinkube-catalog"


def test_kubectl_server_side_apply_creates_deploy_objects_owned_by_kubectl(
    sim: RunningSimulator, deployed: subprocess.CompletedProcess
):
    lines = deployed.stdout.splitlines()
    assert "deployment.apps/thinkube-catalog serverside-applied" in lines
    assert "clusterrolebinding.rbac.authorization.k8s.io/thinkube-pipelines serverside-applied" in lines
    assert len(lines) == len(DEPLOY_OBJECTS)
    catalog = get(sim, CATALOG)
    owned = managers(catalog)[("kubectl", "Apply")]
    assert owned["f:spec"]["f:replicas"] == {}
    container = owned["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"catalog"}']
    assert container["."] == {} and "f:image" in container
    assert 'k:{"containerPort":8080,"protocol":"TCP"}' in container["f:ports"]
    # defaulted fields belong to nobody; the rollout's revision annotation to the controller
    assert "f:progressDeadlineSeconds" not in owned["f:spec"]
    controller = managers(catalog)[("kube-controller-manager", "Update")]
    assert "f:deployment.kubernetes.io/revision" in controller["f:metadata"]["f:annotations"]
    for path in DEPLOY_OBJECTS:
        assert ("kubectl", "Apply") in managers(get(sim, path)), path


def test_kubectl_server_side_reapply_changes_nothing(
    sim: RunningSimulator, deployed: subprocess.CompletedProcess, kubectl: Tool
):
    before = {path: get(sim, path)["metadata"]["resourceVersion"] for path in DEPLOY_OBJECTS}
    kubectl("apply", "--server-side", *DEPLOY_ARGS)
    after = {path: get(sim, path)["metadata"]["resourceVersion"] for path in DEPLOY_OBJECTS}
    assert after == before
    # kubectl diff --server-side: a server-side dry-run apply; exit 0 means no difference
    assert kubectl("diff", "--server-side", *DEPLOY_ARGS, check=False).returncode == 0


def test_kubectl_apply_by_another_field_manager_conflicts(
    sim: RunningSimulator,
    deployed: subprocess.CompletedProcess,
    kubectl: Tool,
    tmp_path: Path,
):
    catalog_yaml = (REPO / "deploy" / "catalog.yaml").read_text()
    assert "  replicas: 2\n" in catalog_yaml
    three = tmp_path / "catalog-3.yaml"
    three.write_text(catalog_yaml.replace("  replicas: 2\n", "  replicas: 3\n"))
    original = str(REPO / "deploy" / "catalog.yaml")
    scaler = ["apply", "--server-side", "--field-manager=scaler"]
    try:
        refused = kubectl(*scaler, "-f", str(three), check=False)
        assert refused.returncode == 1
        assert 'Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas' in refused.stderr
        assert get(sim, CATALOG)["spec"]["replicas"] == 2
        # the same values co-own without conflict; --force-conflicts takes the field over
        kubectl(*scaler, "-f", original)
        kubectl(*scaler, "--force-conflicts", "-f", str(three))
        catalog = get(sim, CATALOG)
        assert catalog["spec"]["replicas"] == 3
        assert "f:replicas" in managers(catalog)[("scaler", "Apply")]["f:spec"]
        assert "f:replicas" not in managers(catalog)[("kubectl", "Apply")]["f:spec"]
        back = kubectl("apply", "--server-side", "-f", original, check=False)
        assert back.returncode == 1
        assert 'conflict with "scaler": .spec.replicas' in back.stderr
        # the cause the real server writes, read through the API
        response = requests.patch(
            f"{sim.url}{CATALOG}?fieldManager=kubectl",
            data=json.dumps(yaml.safe_load_all(catalog_yaml).__next__()),
            headers={"Content-Type": "application/apply-patch+yaml"},
            timeout=10,
        )
        assert response.status_code == 409
        status = response.json()
        assert status["reason"] == "Conflict"
        assert status["details"]["causes"] == [
            {"reason": "FieldManagerConflict", "message": 'conflict with "scaler"', "field": ".spec.replicas"}
        ]
    finally:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", original)
    assert get(sim, CATALOG)["spec"]["replicas"] == 2


# -- helm ---------------------------------------------------------------------------------------------------


def tiny_values(tmp_path: Path, **values: Any) -> list[str]:
    return ["-f", values_file(tmp_path, {"tolerations": [GPU_TOLERATION], **values})]


def helm_web(
    helm: Tool, verb: str, namespace: str, tmp_path: Path, *args: str, check: bool = True, **values: Any
) -> subprocess.CompletedProcess:
    """`helm <verb> web tests/charts/tiny -n <namespace>` with the chart's values (the GPU toleration and
    `values`), then `args`: the release "web" that the helm tests install and upgrade."""
    return helm(
        verb, "web", str(TINY_CHART), "-n", namespace, *tiny_values(tmp_path, **values), *args, check=check
    )


def web_deployment(sim: RunningSimulator, namespace: str) -> dict[str, Any]:
    """The release "web"'s Deployment, as the API serves it now."""
    return get(sim, f"/apis/apps/v1/namespaces/{namespace}/deployments/web-web")


def test_helm_install_wait_of_the_tiny_chart(
    sim: RunningSimulator,
    helm: Tool,
    kubectl: Tool,
    namespace: str,
    tmp_path: Path,
):
    result = helm_web(helm, "install", namespace, tmp_path, "--wait", "--timeout", "60s")
    assert "STATUS: deployed" in result.stdout
    deployment = web_deployment(sim, namespace)
    assert deployment["status"]["availableReplicas"] == 2
    available = [c for c in deployment["status"]["conditions"] if c["type"] == "Available"]
    assert available[0]["status"] == "True"
    # helm 4 applies server-side: its objects carry helm's Apply entry
    assert ("helm", "Apply") in managers(deployment)
    assert get(sim, f"/api/v1/namespaces/{namespace}/configmaps/web-config")["data"] == {"message": "hello"}
    service = get(sim, f"/api/v1/namespaces/{namespace}/services/web-web")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    secrets = release_secrets(sim, namespace, "web")
    assert [s["metadata"]["name"] for s in secrets] == ["sh.helm.release.v1.web.v1"]
    assert secrets[0]["type"] == "helm.sh/release.v1"
    assert secrets[0]["metadata"]["labels"]["status"] == "deployed"
    listed = json.loads(helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"], r["revision"]) for r in listed] == [("web", "deployed", "1")]
    # kubectl get prints the server's Table (the real printers' columns)
    table = kubectl("get", "deployment,service", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:4] == ["deployment.apps/web-web", "2/2", "2", "2"]
    assert table[3].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table[4].split()[:2] == ["service/web-web", "ClusterIP"] and table[4].split()[4] == "80/TCP"


def test_helm_upgrade_wait_succeeds(sim: RunningSimulator, helm: Tool, namespace: str, tmp_path: Path):
    helm_web(helm, "install", namespace, tmp_path, "--wait")
    upgrade = helm_web(
        helm, "upgrade", namespace, tmp_path, "--wait", "--timeout", "60s",
        image="registry.example.com/tiny/web:1.1", message="bye",
    )  # fmt: skip
    assert "STATUS: deployed" in upgrade.stdout and "REVISION: 2" in upgrade.stdout
    deployment = web_deployment(sim, namespace)
    assert deployment["metadata"]["generation"] == 2
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.example.com/tiny/web:1.1"
    )
    status = deployment["status"]
    assert status["observedGeneration"] == 2
    assert status["updatedReplicas"] == status["availableReplicas"] == 2
    assert get(sim, f"/api/v1/namespaces/{namespace}/configmaps/web-config")["data"] == {"message": "bye"}
    assert release_statuses(sim, namespace, "web") == ["superseded", "deployed"]


def test_helm_upgrade_conflicts_with_a_field_another_manager_changed(
    sim: RunningSimulator,
    helm: Tool,
    kubectl: Tool,
    namespace: str,
    tmp_path: Path,
):
    """Server-side apply in helm 4: a field changed by `kubectl patch` since is another manager's; the
    upgrade that changes it conflicts, and `--force-conflicts` takes it back."""
    helm_web(helm, "install", namespace, tmp_path, "--wait")
    kubectl(
        "patch", "deployment", "web-web", "-n", namespace, "--type", "merge", "-p", '{"spec":{"replicas":3}}'
    )
    refused = helm_web(helm, "upgrade", namespace, tmp_path, "--wait", check=False, replicas=4)
    assert refused.returncode == 1
    assert (
        f"Error: UPGRADE FAILED: conflict occurred while applying object {namespace}/web-web apps/v1, "
        "Kind=Deployment: Apply failed with 1 conflict: "
        'conflict with "kubectl-patch" using apps/v1: .spec.replicas'
    ) in refused.stderr
    assert web_deployment(sim, namespace)["spec"]["replicas"] == 3
    helm_web(helm, "upgrade", namespace, tmp_path, "--wait", "--force-conflicts", replicas=4)
    deployment = web_deployment(sim, namespace)
    assert deployment["spec"]["replicas"] == deployment["status"]["availableReplicas"] == 4
    assert ("kubectl-patch", "Update") not in managers(deployment)


def _message(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads here are under 128 bytes)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def _protobuf_body(api_version: str, kind: str, raw: bytes = b"") -> bytes:
    """`k8s\\x00` + runtime.Unknown{typeMeta{apiVersion, kind}, raw}: how typed clients frame an object."""
    type_meta = _message(1, api_version.encode()) + _message(2, kind.encode())
    return b"k8s\x00" + _message(1, type_meta) + (_message(2, raw) if raw else b"")


PROTOBUF_REFUSED = (
    "the body of the request was in an unknown format - accepted media types include: application/json, "
    "application/yaml"
)


def test_kubectl_create_sends_protobuf_read_for_service_accounts_and_rbac(
    sim: RunningSimulator, kubectl: Tool, namespace: str
):
    """kubectl's object generators send protobuf bodies; those of ServiceAccounts and RBAC objects become the
    objects that `--dry-run=client -o json` prints (the same command's JSON)."""
    commands = [
        ["serviceaccount", "builder"],
        ["role", "reader", "--verb=get,list", "--resource=pods,deployments.apps", "--resource-name=x"],
        ["rolebinding", "reader", "--role=reader", f"--serviceaccount={namespace}:builder", "--user=alice"],
        ["clusterrole", f"{namespace}-health", "--verb=get", "--non-resource-url=/healthz"],
        ["clusterrole", f"{namespace}-agg", "--aggregation-rule=example.com/aggregate=true"],
        [
            "clusterrolebinding",
            f"{namespace}-health",
            f"--clusterrole={namespace}-health",
            f"--serviceaccount={namespace}:builder",
            "--group=devs",
        ],
    ]
    for command in commands:
        dry = kubectl("create", *command, "-n", namespace, "--dry-run=client", "-o", "json")
        expected = json.loads(dry.stdout)
        created = kubectl("create", *command, "-n", namespace, "-v=8")
        assert "Content-Type: application/vnd.kubernetes.protobuf" in created.stderr, command
        found = json.loads(kubectl("get", *command[:2], "-n", namespace, "-o", "json").stdout)
        assert found["metadata"]["name"] == command[1]
        for key in set(expected) | set(found):
            if key != "metadata":
                assert found.get(key) == expected.get(key), (command, key)  # "rules": null is no rules


def test_a_protobuf_body_of_a_kind_without_messages_is_refused_as_the_real_api_refuses(
    sim: RunningSimulator, kubectl: Tool, namespace: str, tmp_path: Path
):
    """415 with the real API's Status (never an object decoded in part): `kubectl create deployment` fails
    naming it, and the same Deployment goes through JSON."""
    create = ["create", "deployment", "web", "--image=nginx:1.27", "-n", namespace]
    refused = kubectl(*create, "-v=8", check=False)
    assert refused.returncode == 1
    assert "Content-Type: application/vnd.kubernetes.protobuf" in refused.stderr
    assert f"error: failed to create deployment: {PROTOBUF_REFUSED}" in refused.stderr
    assert "protobuf body: no protobuf message for apps/v1, Kind=Deployment" in sim.log_file.read_text()
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    assert requests.get(f"{sim.url}{path}", timeout=10).status_code == 404

    media = {"Content-Type": "application/vnd.kubernetes.protobuf"}
    secret = _message(1, _message(1, b"s")) + bytes([9 << 3, 1])  # metadata.name, and a field 9 (varint)
    for url, body in (
        (
            f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments",
            _protobuf_body("apps/v1", "Deployment"),
        ),
        (f"{sim.url}/api/v1/namespaces/{namespace}/secrets", _protobuf_body("v1", "Secret", secret)),
    ):
        answer = requests.post(url, data=body, headers=media, timeout=10)
        assert answer.status_code == 415
        assert answer.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": PROTOBUF_REFUSED,
            "reason": "UnsupportedMediaType",
            "code": 415,
        }
    assert requests.get(f"{sim.url}/api/v1/namespaces/{namespace}/secrets/s", timeout=10).status_code == 404

    manifest = tmp_path / "web.yaml"
    manifest.write_text(kubectl(*create, "--dry-run=client", "-o", "yaml").stdout)
    kubectl("apply", "-f", str(manifest), "-n", namespace)
    assert get(sim, path)["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"


def test_kubectl_scale_goes_through_the_scale_subresource(
    sim: RunningSimulator,
    helm: Tool,
    kubectl: Tool,
    namespace: str,
    tmp_path: Path,
):
    helm_web(helm, "install", namespace, tmp_path, "--wait")
    kubectl("scale", "deployment/web-web", "-n", namespace, "--replicas=3")
    url = f"/apis/apps/v1/namespaces/{namespace}/deployments/web-web"
    scale = get(sim, f"{url}/scale")
    assert (scale["kind"], scale["apiVersion"], scale["spec"]) == ("Scale", "autoscaling/v1", {"replicas": 3})
    assert scale["status"]["selector"] == "app.kubernetes.io/instance=web,app.kubernetes.io/name=tiny"
    wait_until(lambda: get(sim, url)["status"].get("availableReplicas") == 3, timeout_s=30)
    entry = next(e for e in get(sim, url)["metadata"]["managedFields"] if e.get("subresource") == "scale")
    assert (entry["operation"], entry["fieldsV1"]) == ("Update", {"f:spec": {"f:replicas": {}}})
    upgrade = helm_web(helm, "upgrade", namespace, tmp_path, check=False)
    assert f'conflict with "{entry["manager"]}" with subresource "scale" using apps/v1: .spec.replicas' in (
        upgrade.stderr
    )


def _broken_upgrade(
    sim: RunningSimulator, helm: Tool, namespace: str, tmp_path: Path, **values: Any
) -> subprocess.CompletedProcess:
    helm_web(helm, "install", namespace, tmp_path, "--wait")
    sim.script(
        [
            {
                "fault": "ErrImagePull",
                "message": 'failed to pull image "registry.example.com/tiny/web:missing"',
            }
        ],
        namespace=namespace,
        image=r"web:missing$",
    )
    timeout = values.pop("timeout", "60s")
    return helm_web(
        helm, "upgrade", namespace, tmp_path, "--wait", "--timeout", timeout, check=False,
        image="registry.example.com/tiny/web:missing", **values,
    )  # fmt: skip


def _assert_rollout_stuck(sim: RunningSimulator, namespace: str) -> None:
    deployment = web_deployment(sim, namespace)
    pods = get(sim, f"/api/v1/namespaces/{namespace}/pods")["items"]
    new = [p for p in pods if p["spec"]["containers"][0]["image"].endswith(":missing")]
    assert new, "the new ReplicaSet has a pod"
    waiting = new[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] in ("ErrImagePull", "ImagePullBackOff")
    # the old pods keep serving: maxUnavailable 25% of 2 rounds down to 0
    assert deployment["status"]["availableReplicas"] == 2
    assert deployment["status"].get("updatedReplicas") == 1
    assert release_statuses(sim, namespace, "web") == ["deployed", "failed"]


def test_helm_upgrade_wait_fails_when_the_rollout_exceeds_its_progress_deadline(
    scripts_reset: None,
    sim: RunningSimulator,
    helm: Tool,
    kubectl: Tool,
    namespace: str,
    tmp_path: Path,
):
    result = _broken_upgrade(sim, helm, namespace, tmp_path, progressDeadlineSeconds=3)
    assert result.returncode == 1
    assert (
        f"Error: UPGRADE FAILED: resource Deployment/{namespace}/web-web not ready. status: Failed, "
        "message: Progress deadline exceeded" in result.stderr
    )
    _assert_rollout_stuck(sim, namespace)
    deployment = web_deployment(sim, namespace)
    progressing = next(c for c in deployment["status"]["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
    listed = json.loads(helm("list", "-n", namespace, "--failed", "-o", "json").stdout)
    assert [(r["revision"], r["status"]) for r in listed] == [("2", "failed")]
    statuses = [line.split()[2] for line in kubectl("get", "pods", "-n", namespace).stdout.splitlines()[1:]]
    assert sorted(statuses) == ["ImagePullBackOff", "Running", "Running"]


def test_helm_upgrade_wait_times_out_when_the_new_image_is_never_pulled(
    scripts_reset: None,
    sim: RunningSimulator,
    helm: Tool,
    namespace: str,
    tmp_path: Path,
):
    result = _broken_upgrade(sim, helm, namespace, tmp_path, timeout="4s")
    assert result.returncode == 1
    assert f"resource Deployment/{namespace}/web-web not ready. status: InProgress" in result.stderr
    assert "context deadline exceeded" in result.stderr
    _assert_rollout_stuck(sim, namespace)


@pytest.fixture
def scripts_reset(sim: RunningSimulator) -> Iterator[None]:
    """Scripts registered by the test are removed after it."""
    try:
        yield
    finally:
        sim.reset()


def test_helm_client_side_upgrade_uses_strategic_merge_patches(
    sim: RunningSimulator, helm: Tool, namespace: str, tmp_path: Path
):
    """`--server-side=false`: helm's three-way strategic merge patches (containers merged by name)."""
    common = ["--server-side=false", "--wait", "--timeout", "60s"]
    helm_web(helm, "install", namespace, tmp_path, *common)
    deployment = web_deployment(sim, namespace)
    assert ("helm", "Update") in managers(deployment) and ("helm", "Apply") not in managers(deployment)
    helm_web(helm, "upgrade", namespace, tmp_path, *common, image="x/web:2")
    container = web_deployment(sim, namespace)["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in container] == [("web", "x/web:2")]
    assert container[0]["env"][0]["name"] == "MESSAGE"
    assert container[0]["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_helm_uninstall_removes_the_objects_and_the_release(
    sim: RunningSimulator, helm: Tool, namespace: str, tmp_path: Path
):
    helm_web(helm, "install", namespace, tmp_path, "--wait")
    helm("uninstall", "web", "-n", namespace, "--wait", "--timeout", "60s")
    for path in (
        f"/apis/apps/v1/namespaces/{namespace}/deployments/web-web",
        f"/api/v1/namespaces/{namespace}/services/web-web",
        f"/api/v1/namespaces/{namespace}/configmaps/web-config",
    ):
        assert requests.get(f"{sim.url}{path}", timeout=10).status_code == 404
    assert release_secrets(sim, namespace, "web") == []
    wait_until(lambda: not get(sim, f"/api/v1/namespaces/{namespace}/pods")["items"], timeout_s=30)


LOCAL_STORAGE_CLASS = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
"""


def test_helm_install_and_upgrade_wait_of_the_jupyterhub_chart(
    sim: RunningSimulator,
    helm: Tool,
    kubectl: Tool,
    namespace: str,
    tmp_path: Path,
):
    """The chart with its defaults (hub database on a PVC, user-scheduler, image pullers and their
    pre-upgrade hooks), its pods tolerating the GPU nodes' taint, on a cluster with a default StorageClass."""
    storage_class = tmp_path / "storage-class.yaml"
    storage_class.write_text(LOCAL_STORAGE_CLASS)
    kubectl("apply", "--server-side", "-f", str(storage_class))
    tolerations = {"tolerations": [GPU_TOLERATION]}
    values = {"scheduling": {"corePods": tolerations, "userPods": tolerations}}
    args = ["-n", namespace, "-f", values_file(tmp_path, values), "--wait", "--timeout", "120s"]
    install = helm("install", "hub", str(JUPYTERHUB_CHART), *args)
    assert "STATUS: deployed" in install.stdout
    for name in ("hub", "proxy", "user-scheduler"):
        deployment = get(sim, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        assert deployment["status"]["availableReplicas"] == deployment["spec"]["replicas"], name
    for name in ("hub", "proxy-api", "proxy-public"):
        get(sim, f"/api/v1/namespaces/{namespace}/services/{name}")
    claim = get(sim, f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/hub-db-dir")
    assert claim["status"]["phase"] == "Bound"
    puller = get(sim, f"/apis/apps/v1/namespaces/{namespace}/daemonsets/continuous-image-puller")
    assert puller["status"]["numberReady"] == puller["status"]["desiredNumberScheduled"] == 3  # the GPU nodes
    assert (
        "hub.config.JupyterHub.cookie_secret"
        in get(sim, f"/api/v1/namespaces/{namespace}/secrets/hub")["data"]
    )
    upgrade = helm("upgrade", "hub", str(JUPYTERHUB_CHART), *args)
    assert "REVISION: 2" in upgrade.stdout
    # the pre-upgrade hooks ran (the awaiter Job completed) and were deleted (hook-succeeded)
    events = get(sim, f"/api/v1/namespaces/{namespace}/events")["items"]
    awaited = {
        (e["involvedObject"]["kind"], e["reason"])
        for e in events
        if e["involvedObject"]["name"] == "hook-image-awaiter"
    }
    assert ("Job", "Completed") in awaited, awaited
    for path in ("apis/batch/v1/namespaces/{ns}/jobs", "apis/apps/v1/namespaces/{ns}/daemonsets"):
        names = [o["metadata"]["name"] for o in get(sim, "/" + path.format(ns=namespace))["items"]]
        assert not [n for n in names if n.startswith("hook-")], names
    assert release_statuses(sim, namespace, "hub") == ["superseded", "deployed"]


# -- the server side of apply and patch, through the API (what the binaries above rely on) -----------------


def _deployment(containers: list[dict[str, Any]], replicas: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": spec}


def _apply(sim: RunningSimulator, namespace: str, body: dict[str, Any], **params: str) -> requests.Response:
    return requests.patch(
        f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments/{body['metadata']['name']}",
        params=params,
        data=json.dumps(body),
        headers={"Content-Type": "application/apply-patch+yaml"},
        timeout=10,
    )


def _containers(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["name"], c.get("env")) for c in obj["spec"]["template"]["spec"]["containers"]]


def test_apply_merges_lists_by_key_and_prunes_what_the_applier_dropped(sim: RunningSimulator, namespace: str):
    first = _deployment(
        [{"name": "a", "image": "a:1", "env": [{"name": "A", "value": "1"}]}, {"name": "b", "image": "b:1"}],
        2,
    )
    created = _apply(sim, namespace, first, fieldManager="one")
    assert created.status_code == 201
    # another manager adds an env var to container a: merged by name, each owns its own item
    second = _deployment([{"name": "a", "image": "a:1", "env": [{"name": "B", "value": "2"}]}])
    merged = _apply(sim, namespace, second, fieldManager="two").json()
    assert _containers(merged) == [
        ("a", [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
        ("b", None),
    ]
    # "one" drops container b and env A: removed; B stays (owned by "two"); then replicas: back to default
    pruned = _apply(
        sim, namespace, _deployment([{"name": "a", "image": "a:1"}], 2), fieldManager="one"
    ).json()
    assert _containers(pruned) == [("a", [{"name": "B", "value": "2"}])]
    defaulted = _apply(
        sim, namespace, _deployment([{"name": "a", "image": "a:1"}]), fieldManager="one"
    ).json()
    assert defaulted["spec"]["replicas"] == 1
    owners = managers(defaulted)
    env = owners[("two", "Apply")]["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"a"}'][
        "f:env"
    ]
    assert env == {'k:{"name":"B"}': {".": {}, "f:name": {}, "f:value": {}}}
    assert owners[("one", "Apply")]["f:spec"]["f:selector"] == {}  # LabelSelector is an atomic map


def test_apply_answers_as_the_real_server_for_bad_requests(sim: RunningSimulator, namespace: str):
    unknown = _deployment([{"name": "a", "image": "a"}])
    unknown["spec"]["foo"] = 1
    response = _apply(sim, namespace, unknown, fieldManager="one")
    assert response.status_code == 400
    assert response.json()["message"] == (
        "failed to create typed patch object (apps/v1, Kind=Deployment): "
        ".spec.foo: field not declared in schema"
    )
    response = _apply(sim, namespace, _deployment([{"name": "a", "image": "a"}]))
    assert (response.status_code, response.json()["message"]) == (
        422,
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
    )
    dry = _apply(sim, namespace, _deployment([{"name": "a", "image": "a"}]), fieldManager="one", dryRun="All")
    assert dry.status_code == 201
    missing = requests.get(f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments/d", timeout=10)
    assert missing.status_code == 404
    _apply(sim, namespace, _deployment([{"name": "a", "image": "a"}]), fieldManager="one")
    response = requests.patch(
        f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments/d?force=true",
        json={},
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=10,
    )
    assert (response.status_code, response.json()["message"]) == (
        422,
        'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch',
    )


def test_an_update_makes_its_writer_an_owner_that_apply_conflicts_with(sim: RunningSimulator, namespace: str):
    _apply(sim, namespace, _deployment([{"name": "a", "image": "a"}], 2), fieldManager="one")
    url = f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments/d"
    current = requests.get(url, timeout=10).json()
    current["spec"]["replicas"] = 5
    assert requests.put(f"{url}?fieldManager=editor", json=current, timeout=10).status_code == 200
    edited = requests.get(url, timeout=10).json()
    assert managers(edited)[("editor", "Update")] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in managers(edited)[("one", "Apply")]["f:spec"]
    response = _apply(sim, namespace, _deployment([{"name": "a", "image": "a"}], 3), fieldManager="one")
    assert response.status_code == 409
    assert response.json()["message"] == (
        'Apply failed with 1 conflict: conflict with "editor" using apps/v1: .spec.replicas'
    )
    # managedFields: [{}] clears them (https://kubernetes.io/docs/reference/using-api/server-side-apply/)
    cleared = requests.patch(
        url,
        json={"metadata": {"managedFields": [{}]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert "managedFields" not in cleared.json()["metadata"]


def test_strategic_merge_patch_merges_containers_by_name(sim: RunningSimulator, namespace: str):
    _apply(sim, namespace, _deployment([{"name": "a", "image": "a:1"}]), fieldManager="one")
    url = f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments/d"

    def patch(body: dict[str, Any]) -> list[tuple[str, str]]:
        response = requests.patch(
            url, json=body, headers={"Content-Type": "application/strategic-merge-patch+json"}, timeout=10
        )
        assert response.status_code == 200, response.text
        return [(c["name"], c["image"]) for c in response.json()["spec"]["template"]["spec"]["containers"]]

    def spec(**fields: Any) -> dict[str, Any]:
        return {"spec": {"template": {"spec": fields}}}

    assert patch(spec(containers=[{"name": "c", "image": "c:1"}])) == [("a", "a:1"), ("c", "c:1")]
    order = [{"name": "c"}, {"name": "a"}]
    body = spec(containers=[{"name": "a", "image": "a:2"}], **{"$setElementOrder/containers": order})
    assert patch(body) == [("c", "c:1"), ("a", "a:2")]
    assert patch(spec(containers=[{"name": "c", "$patch": "delete"}])) == [("a", "a:2")]


def test_deletecollection_deletes_what_the_selector_matches(sim: RunningSimulator, namespace: str):
    for name, tier in (("one", "web"), ("two", "web"), ("three", "db")):
        body = {"metadata": {"name": name, "labels": {"tier": tier}}, "data": {}}
        requests.post(f"{sim.url}/api/v1/namespaces/{namespace}/configmaps", json=body, timeout=10)
    url = f"{sim.url}/api/v1/namespaces/{namespace}/configmaps"
    response = requests.delete(url, params={"labelSelector": "tier=web"}, timeout=10)
    assert response.status_code == 200
    assert response.json()["kind"] == "ConfigMapList"
    assert sorted(i["metadata"]["name"] for i in response.json()["items"]) == ["one", "two"]
    left = requests.get(url, params={"labelSelector": "tier"}, timeout=10).json()["items"]
    assert [i["metadata"]["name"] for i in left] == ["three"]
