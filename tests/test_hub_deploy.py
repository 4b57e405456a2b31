"""The hub_deploy job against real parts: the Kubernetes API simulator (its own, for this module), the
Keycloak stand-in, SeaweedFS's filer, the catalog service, the CNCF registry, and the real helm installing
tests/reference/z2jh/jupyterhub-4.4.0.tgz with the rendered values.

The hub itself does not run here (the simulator's pods run no process), so its health endpoint is a small
HTTP server of the test standing in for the proxy's `/hub/health` (THINKUBE_HUB_HEALTH_URL).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import yaml

from tests.fixtures.catalog import sample_image
from tests.fixtures.kubernetes import RunningSimulator, simulator_or_fail
from tests.fixtures.network import free_port
from tests.fixtures.tools import tool_env
from thinkube_pipelines.defs.hub.assets import RELEASE, VALUES, hub_assets
from thinkube_pipelines.defs.hub.resources import HubDeployment
from thinkube_pipelines.hub import settings as hs
from thinkube_pipelines.hub.preflight import PreflightError, preflight
from thinkube_pipelines.hub.prepuller import NAME as PULLER
from thinkube_pipelines.hub.release import ReleaseError, deploy_release
from thinkube_pipelines.hub.render import render_release
from thinkube_pipelines.hub.settings import HELM_ENV, OIDC_CLIENT_SECRET_ENV, HubSettings
from thinkube_pipelines.hub.volumes import volume_manifests
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.kubernetes.apply import apply_manifests
from thinkube_pipelines.kubernetes.cluster import KubernetesCluster

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "tests" / "reference" / "z2jh" / "jupyterhub-4.4.0.tgz"
CLIENT_SECRET = "hub-oidc-s3cr3t-" + uuid.uuid4().hex
CSI_DRIVER = "seaweedfs-csi-driver"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with simulator_or_fail(tmp_path_factory.mktemp("hub-deploy-sim")) as simulator:
        yield simulator


def create_default_storage_class(sim: RunningSimulator) -> None:
    """The cluster's default StorageClass, which the chart's hub database claim (hub-db-dir) uses."""
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": "local-path",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }
    response = requests.post(f"{sim.url}/apis/storage.k8s.io/v1/storageclasses", json=body, timeout=10)
    assert response.status_code in (201, 409), response.text


def create_csi_driver(sim: RunningSimulator) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": CSI_DRIVER},
        "spec": {"attachRequired": False, "podInfoOnMount": True},
    }
    response = requests.post(f"{sim.url}/apis/storage.k8s.io/v1/csidrivers", json=body, timeout=10)
    assert response.status_code in (201, 409), response.text


@pytest.fixture(scope="module")
def catalog(catalog_server, tmp_path_factory: pytest.TempPathFactory):
    server = catalog_server(f"sqlite:///{tmp_path_factory.mktemp('hub-catalog') / 'catalog.db'}")
    for name, default in (("jupyter-ml-cpu", True), ("jupyter-ml-gpu", False)):
        image = sample_image(name, default=default)
        if name == "jupyter-ml-cpu":
            image["metadata"].update(gpu_required=False, cpu_limit=4, mem_limit="8G")
        response = requests.post(
            f"{server.base_url}/api/v1/images", json=image, headers=server.auth_headers, timeout=10
        )
        assert response.status_code in (200, 201), response.text
    return server


@pytest.fixture(scope="module")
def empty_catalog(catalog_server, tmp_path_factory: pytest.TempPathFactory):
    return catalog_server(f"sqlite:///{tmp_path_factory.mktemp('hub-empty-catalog') / 'catalog.db'}")


class Health:
    """A stand-in for the hub's /hub/health behind the proxy: answers 200 while `healthy`."""

    def __init__(self) -> None:
        self.healthy = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                ok = outer.healthy and self.path == "/hub/health"
                self.send_response(200 if ok else 503)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hub/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def health() -> Iterator[Health]:
    stand_in = Health()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture
def hub_env(
    sim: RunningSimulator,
    oidc_provider,
    seaweedfs,
    catalog,
    registry,
    helm_bin: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The environment of a hub deploy to a fresh namespace of the simulator (helm's state under tmp)."""
    namespace = f"hub-{uuid.uuid4().hex[:8]}"
    env = {
        hs.NAMESPACE_ENV: namespace,
        hs.PUBLIC_URL_ENV: "https://jupyter.example.org",
        hs.OIDC_ISSUER_ENV: oidc_provider.issuer,
        hs.CATALOG_URL_ENV: catalog.base_url,
        hs.REGISTRY_URL_ENV: registry.url,
        hs.FILER_URL_ENV: seaweedfs.filer_url,
        hs.CHART_PATH_ENV: str(CHART),
        hs.HELM_TIMEOUT_ENV: "100",
        hs.BUDGET_ENV: "110",
        OIDC_CLIENT_SECRET_ENV: CLIENT_SECRET,
        HELM_ENV: str(helm_bin),
        "KUBECONFIG": str(sim.kubeconfig),
    }
    for key, value in tool_env(tmp_path / "tools", sim.kubeconfig).items():
        monkeypatch.setenv(key, value)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    create_csi_driver(sim)
    create_default_storage_class(sim)
    return env


def api(sim: RunningSimulator):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(sim.kubeconfig))


def count_objects(sim: RunningSimulator) -> dict[str, int]:
    paths = {
        "namespaces": "/api/v1/namespaces",
        "persistentvolumes": "/api/v1/persistentvolumes",
        "persistentvolumeclaims": "/api/v1/persistentvolumeclaims",
        "clusterroles": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "secrets": "/api/v1/secrets",
        "deployments": "/apis/apps/v1/deployments",
    }
    return {k: len(requests.get(f"{sim.url}{p}", timeout=10).json()["items"]) for k, p in paths.items()}


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- preflight -----------------------------------------------------------------------------------------


def test_preflight_passes_and_creates_the_namespace(sim: RunningSimulator, hub_env: dict[str, str]):
    settings = HubSettings.from_env()
    with api(sim) as client:
        report = preflight(settings, client, cluster="sim")
    assert report.namespace_created
    assert {c.dependency for c in report.checks} == {
        "Keycloak", "SeaweedFS CSI driver", "SeaweedFS filer", "catalog", "Harbor", "namespace"
    }  # fmt: skip
    assert sorted(report.jupyter_images) == ["jupyter-ml-cpu", "jupyter-ml-gpu"]
    requests.get(f"{sim.url}/api/v1/namespaces/{settings.namespace}", timeout=10).raise_for_status()


@pytest.mark.parametrize(
    ("dependency", "breaks"),
    [
        ("Keycloak", "issuer"),
        ("Keycloak", "lying"),
        ("SeaweedFS CSI driver", "csi"),
        ("SeaweedFS filer", "filer"),
        ("catalog", "empty"),
        ("catalog", "down"),
        ("Harbor", "registry"),
    ],
)
def test_preflight_names_each_missing_dependency_and_applies_nothing(
    sim: RunningSimulator,
    hub_env: dict[str, str],
    oidc_provider,
    empty_catalog,
    monkeypatch: pytest.MonkeyPatch,
    dependency: str,
    breaks: str,
):
    changes = {
        "issuer": {hs.OIDC_ISSUER_ENV: closed_url() + "/realms/thinkube"},
        "lying": {hs.OIDC_ISSUER_ENV: oidc_provider.lying_issuer},
        "csi": {hs.CSI_DRIVER_ENV: "absent.csi.example.org"},
        "filer": {hs.FILER_URL_ENV: closed_url()},
        "empty": {hs.CATALOG_URL_ENV: empty_catalog.base_url},
        "down": {hs.CATALOG_URL_ENV: closed_url()},
        "registry": {hs.REGISTRY_URL_ENV: closed_url()},
    }[breaks]
    for key, value in changes.items():
        monkeypatch.setenv(key, value)
    settings = HubSettings.from_env()
    before = count_objects(sim)
    with api(sim) as client, pytest.raises(PreflightError) as failed:
        preflight(settings, client, cluster="sim", timeout_s=3)
    assert [f.dependency for f in failed.value.failures] == [dependency]
    message = str(failed.value)
    assert dependency in message and "expected" in message and "nothing was applied" in message
    assert next(iter(changes.values())).split("/realms")[0] in message or breaks == "csi"
    assert count_objects(sim) == before
    missing = requests.get(f"{sim.url}/api/v1/namespaces/{settings.namespace}", timeout=10)
    assert missing.status_code == 404


def test_a_failed_preflight_runs_nothing_downstream(
    sim: RunningSimulator, hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(hs.CSI_DRIVER_ENV, "absent.csi.example.org")
    before = count_objects(sim)
    result = run_hub_deploy(raise_on_error=False)
    assert not result.success
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == set()
    failed = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "SeaweedFS CSI driver" in failed[0].event_specific_data.error.message
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert started == {"hub__preflight"}
    assert count_objects(sim) == before


# -- volumes -------------------------------------------------------------------------------------------


def test_volumes_applied_twice_change_nothing(sim: RunningSimulator, hub_env: dict[str, str]):
    settings = HubSettings.from_env()
    manifests = volume_manifests(settings)
    requests.post(
        f"{sim.url}/api/v1/namespaces", json={"metadata": {"name": settings.namespace}}, timeout=10
    ).raise_for_status()
    with api(sim) as client:
        first = apply_manifests(client, manifests, cluster="sim")
        claims = f"{sim.url}/api/v1/namespaces/{settings.namespace}/persistentvolumeclaims"
        pvs = {m["metadata"]["name"] for m in manifests if m["kind"] == "PersistentVolume"}

        def versions() -> dict[str, str]:
            items = requests.get(claims, timeout=10).json()["items"] + [
                requests.get(f"{sim.url}/api/v1/persistentvolumes/{n}", timeout=10).json() for n in pvs
            ]
            return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}

        def bound() -> bool:
            return all(
                i["status"].get("phase") == "Bound" for i in requests.get(claims, timeout=10).json()["items"]
            )

        from tests.fixtures.kubernetes import wait_until

        wait_until(bound, timeout_s=20)
        before = versions()
        second = apply_manifests(client, manifests, cluster="sim")
        assert versions() == before
    assert [a.outcome for a in first] == ["created"] * 6
    assert [a.outcome for a in second] == ["unchanged"] * 6
    pv = requests.get(f"{sim.url}/api/v1/persistentvolumes/{settings.namespace}-notebooks", timeout=10).json()
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["csi"]["driver"] == CSI_DRIVER
    assert any(e["manager"] == "thinkube-pipelines" for e in pv["metadata"]["managedFields"])


def test_a_conflicting_field_is_reported_not_forced(sim: RunningSimulator, hub_env: dict[str, str]):
    from thinkube_pipelines.kubernetes.cluster import KubernetesError

    settings = HubSettings.from_env()
    [pv] = [m for m in volume_manifests(settings) if m["kind"] == "PersistentVolume"][:1]
    with api(sim) as client:
        apply_manifests(client, [pv], cluster="sim")
        # an operator edits the capacity (an Update: the field is now theirs)
        requests.patch(
            f"{sim.url}/api/v1/persistentvolumes/{pv['metadata']['name']}?fieldManager=operator",
            json={"spec": {"capacity": {"storage": "1Ti"}}},
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=10,
        ).raise_for_status()
        with pytest.raises(KubernetesError, match=r"409.*conflict with \"operator\".*capacity.*not forced"):
            apply_manifests(client, [pv], cluster="sim")
    current = requests.get(f"{sim.url}/api/v1/persistentvolumes/{pv['metadata']['name']}", timeout=10).json()
    assert current["spec"]["capacity"]["storage"] == "1Ti"


# -- the job and the release ---------------------------------------------------------------------------


def run_hub_deploy(*, raise_on_error: bool = True, health_url: str | None = None, instance=None):
    images = load_image_definitions(REPO / "images")
    hub = HubDeployment(
        cluster=KubernetesCluster(kubeconfig=dg.EnvVar("KUBECONFIG")),
        oidc_client_secret=dg.EnvVar(OIDC_CLIENT_SECRET_ENV),
        helm=dg.EnvVar(HELM_ENV),
        health_url=health_url,
    )
    return dg.materialize(
        hub_assets(images),
        resources={"hub": hub},
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def test_without_the_client_secret_a_hub_deploy_fails_at_its_start_and_image_runs_do_not_need_it(
    sim: RunningSimulator, hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    """The hub resource as the code location makes it (defs/resources.py): the secret is optional in the
    configuration (an image run resolves every resource's configuration and must not need it), and a hub step
    fails before it does anything, naming the variable."""
    from thinkube_pipelines.defs.resources import _hub

    monkeypatch.delenv(OIDC_CLIENT_SECRET_ENV)
    hub = _hub()
    assert hub.oidc_client_secret is None
    result = dg.materialize(
        hub_assets(load_image_definitions(REPO / "images")),
        resources={"hub": hub},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    said = "\n".join(str(e.event_specific_data) for e in result.all_events if e.is_failure)
    assert f"{OIDC_CLIENT_SECRET_ENV} is not set" in said, said
    assert not result.get_asset_materialization_events()
    namespaces = requests.get(f"{sim.url}/api/v1/namespaces", timeout=10).json()["items"]
    assert hub_env[hs.NAMESPACE_ENV] not in {n["metadata"]["name"] for n in namespaces}


def _with_tolerations(values: dict[str, Any]) -> dict[str, Any]:
    """The simulator's nodes are all tainted (a kubeadm control plane, GPU nodes): the core pods tolerate
    the GPU taint here, as the helm tests' do."""
    values = json.loads(json.dumps(values))
    scheduling = values.setdefault("scheduling", {})
    scheduling.setdefault("corePods", {}).setdefault("tolerations", []).append(GPU_TOLERATION)
    return values


def test_the_hub_deploy_job_materializes_and_no_secret_leaks(
    sim: RunningSimulator,
    hub_env: dict[str, str],
    health: Health,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    import thinkube_pipelines.hub.render as render

    original = render.chart_values if hasattr(render, "chart_values") else None
    if original is not None:  # the simulator's tainted nodes: the core pods tolerate the GPU taint
        monkeypatch.setattr(render, "chart_values", lambda *a, **k: _with_tolerations(original(*a, **k)))
    namespace = hub_env[hs.NAMESPACE_ENV]
    # the pre-puller's pods never get every image here (a 10+ GB pull that outlasts the deploy): were it in
    # helm's --wait, the release would time out and be rolled back
    sim.script(
        [{"containers": {"pause": {"ready": False}}}],
        namespace=namespace,
        selector=f"app.kubernetes.io/name={PULLER}",
    )
    try:
        result = run_hub_deploy(health_url=health.url)
    finally:
        sim.reset()
    assert result.success
    events = {e.asset_key: e for e in result.get_asset_materialization_events()}
    assert set(events) >= {VALUES, RELEASE}
    release = result.asset_materializations_for_node("hub__jupyterhub_release")[0].metadata
    assert release["status"].value == "deployed" and release["revision"].value == 1
    assert 0 < release["duration_s"].value <= 110
    assert release["helm_s"].value > 0
    # each object applied once: the volumes by their step, the rest by the release's
    volumes = result.asset_materializations_for_node("hub__seaweedfs_volumes")[0].metadata
    assert (
        sorted(a.split()[0] for a in volumes["applied"].value)
        == ["PersistentVolume"] * 3 + ["PersistentVolumeClaim"] * 3
    )
    assert [a.split()[0] for a in release["manifests_applied"].value] == [
        "Secret",  # first: the chart's hub reads it
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",  # last: its pods start pulling at once, and nothing waits for them
    ]
    assert len(release["manifests_applied_by_volumes"].value) == 6
    hub = requests.get(f"{sim.url}/apis/apps/v1/namespaces/{namespace}/deployments/hub", timeout=10).json()
    assert hub["status"]["availableReplicas"] == 1
    # the pre-puller: applied beside the release, reported, not waited for (no node had every image yet)
    assert release["image_puller"].value == {
        "name": PULLER, "desired": 3, "scheduled": 3, "ready": 0, "updated": 3
    }  # fmt: skip
    puller = requests.get(
        f"{sim.url}/apis/apps/v1/namespaces/{namespace}/daemonsets/{PULLER}", timeout=10
    ).json()
    assert any(e["manager"] == "thinkube-pipelines" for e in puller["metadata"]["managedFields"])
    pulls = puller["spec"]["template"]["spec"]["initContainers"]
    offered = result.asset_materializations_for_node("hub__jupyterhub_values")[0].metadata["images"].value
    assert sorted(c["image"].rpartition("/")[2] for c in pulls) == sorted(offered)  # name@digest each
    pods = requests.get(
        f"{sim.url}/api/v1/namespaces/{namespace}/pods",
        params={"labelSelector": f"app.kubernetes.io/name={PULLER}"},
        timeout=10,
    ).json()["items"]
    # every GPU node, none on the (tainted) control plane
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-node-1", "gpu-node-2", "gpu-node-3"]
    # helm's release holds no DaemonSet: its --wait covered the chart's objects only
    manifest = subprocess.run(
        [hub_env[HELM_ENV], "get", "manifest", "jupyterhub", "-n", namespace],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kinds = {o["kind"] for o in yaml.safe_load_all(manifest) if o}
    assert "Deployment" in kinds and "DaemonSet" not in kinds
    secret = requests.get(f"{sim.url}/api/v1/namespaces/{namespace}/secrets/jupyterhub-oidc", timeout=10)
    assert secret.status_code == 200
    # no secret anywhere: metadata, the event log, the captured output, the rendered values
    captured = capfd.readouterr()
    everything = json.dumps(
        [
            {k: str(v.value) for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()
        ]
    )
    everything += "".join(str(e) for e in result.all_events) + captured.out + captured.err
    assert CLIENT_SECRET not in everything
    import base64

    assert base64.b64encode(CLIENT_SECRET.encode()).decode() not in everything
    values = result.asset_materializations_for_node("hub__jupyterhub_values")[0].metadata["values"].value
    assert CLIENT_SECRET not in json.dumps(values)


def _settings_and_values(sim: RunningSimulator, catalog) -> tuple[HubSettings, dict[str, Any]]:
    from thinkube_pipelines.catalog.client import CatalogClient

    settings = HubSettings.from_env()
    with CatalogClient(settings.catalog_url) as client:
        images = client.jupyter_images()
    values = _with_tolerations(render_release(settings, images).values)
    requests.post(
        f"{sim.url}/api/v1/namespaces", json={"metadata": {"name": settings.namespace}}, timeout=10
    ).raise_for_status()
    return settings, values


def test_a_failed_rollout_is_rolled_back(
    sim: RunningSimulator, hub_env: dict[str, str], catalog, health: Health, monkeypatch: pytest.MonkeyPatch
):
    settings, values = _settings_and_values(sim, catalog)
    first = deploy_release(settings, values, health_url=health.url)
    assert (first.revision, first.status) == (1, "deployed")
    monkeypatch.setenv(hs.HELM_TIMEOUT_ENV, "8")
    settings = HubSettings.from_env()
    sim.script(
        [{"fault": "ErrImagePull", "message": 'failed to pull image "quay.io/jupyterhub/k8s-hub:broken"'}],
        namespace=settings.namespace,
        image=r"k8s-hub:broken$",
    )
    try:
        broken = json.loads(json.dumps(values))
        broken["hub"]["image"] = {"name": "quay.io/jupyterhub/k8s-hub", "tag": "broken"}
        with pytest.raises(ReleaseError, match="after the rollback: revision 3 is deployed") as failed:
            deploy_release(settings, broken, health_url=health.url)
        assert "history: 1 superseded, 2 failed, 3 deployed" in str(failed.value)
    finally:
        sim.reset()


def test_a_deploy_past_its_budget_fails(
    sim: RunningSimulator, hub_env: dict[str, str], catalog, health: Health, monkeypatch: pytest.MonkeyPatch
):
    settings, values = _settings_and_values(sim, catalog)
    monkeypatch.setenv(hs.BUDGET_ENV, "60")
    monkeypatch.setenv(hs.HEALTH_TIMEOUT_ENV, "4")
    settings = HubSettings.from_env()
    health.healthy = False
    try:
        with pytest.raises(ReleaseError, match=r"did not answer 200 at .*/hub/health within"):
            deploy_release(settings, values, health_url=health.url)
    finally:
        health.healthy = True
