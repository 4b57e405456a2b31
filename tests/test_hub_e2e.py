"""End to end, for real (issue 9, point 3; DESIGN.md "Real parts"): the hub as the hub_deploy job renders it,
logging users in through the Keycloak stand-in and spawning their pods in the Kubernetes simulator.

One hub for the module (module-scoped `e2e`):

- the release is A's `render_release(settings, images, discovery)`: settings from the environment pointing
  at the test services (the stand-in's realm, a real catalog service with a GPU and a CPU Jupyter image,
  the simulator), the images from the catalog, the realm's discovery document, as the job has them; its
  manifests (the SeaweedFS volumes and the hub's node-reader RBAC) are applied to the simulator
  server-side, as the job applies them;
- the hub is configured from those values the way the chart configures it: `helm template` of the
  reference chart gives the hub's Secret (the chart's values.yaml), ConfigMap (the chart's own
  `jupyterhub_config.py` and `z2jh.py`) and Deployment (args, env, mounts, our profile callable as an extra
  file); tests/fixtures/jupyterhub.py mounts them under a folder standing for the pod's root and runs the
  hub venv's `jupyterhub` (exactly the hub image's packages: tests/fixtures/hub.py) with the chart's args,
  and configurable-http-proxy with the chart's proxy command. What differs from the pod, and only that:
  copies of `jupyterhub_config.py` and `z2jh.py` with their base path `/usr/local/etc/jupyterhub` changed
  to that folder; loopback addresses for the hub and proxy Services (a drop-in file in the chart's own
  `jupyterhub_config.d/`); KubeSpawner finds the simulator through KUBECONFIG (no service-account token);
  the OAuth client secret, which the kubelet would read from the operator's Secret, comes from the test;
- users log in with a real HTTP session through the stand-in's dev login form (oidc-provider
  devInteractions: sign-in, then consent), to GenericOAuthenticator's callback on the proxy.

Not done here (the issue's "goal beyond that"): the spawned pod's `jupyterhub-singleuser` is not run as a
local process, so the hub never proxies into a JupyterLab; the spawn is checked up to the scheduled pod.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from tests.fixtures.catalog import CatalogServer, CatalogStartError, sample_image, start_catalog
from tests.fixtures.hub import HubVenv, run_hub_python
from tests.fixtures.jupyterhub import ChartHubError, Ports, RunningHub, chart_objects, start_chart_hub
from tests.fixtures.kubernetes import RunningSimulator, wait_until
from tests.fixtures.network import free_ports
from tests.fixtures.oidc import running_oidc_provider
from thinkube_pipelines.catalog.client import CatalogClient
from thinkube_pipelines.catalog.contract import ImageUpsert
from thinkube_pipelines.hub import settings as hub_settings
from thinkube_pipelines.hub.profiles import slug_for
from thinkube_pipelines.hub.render import VALUES_FILE, RenderedRelease, render_release, write_release
from thinkube_pipelines.hub.settings import HubSettings
from thinkube_pipelines.hub.values import MOUNT_PATHS, SCRATCH_PATH
from thinkube_pipelines.hub.volumes import claim_name

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "tests" / "reference" / "z2jh" / "jupyterhub-4.4.0.tgz"
GPU_IMAGE = "jupyter-ml-gpu"
CPU_IMAGE = "jupyter-ml-cpu"
GPU_DIGEST = "sha256:" + "3f2a9c1e" * 8
CPU_DIGEST = "sha256:" + "0b5e77aa" * 8
REGISTRY = "harbor.example.org"
USER, ADMIN, OUTSIDER = "hub-user", "hub-admin", "outsider"  # the stand-in's dev-login users
PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU = "nvidia.com/gpu"
TIMEOUT = 30  # seconds for one HTTP request through the hub (a loaded 2-core machine)


def catalog_payloads() -> list[dict[str, Any]]:
    return [
        sample_image(GPU_IMAGE, default=True, metadata={"digest": GPU_DIGEST}),
        sample_image(
            CPU_IMAGE,
            display_name="ML (CPU)",
            description="The same tools without a GPU.",
            metadata={"gpu_required": False, "digest": CPU_DIGEST, "cpu_limit": 4, "mem_limit": "8G"},
        ),
    ]


@dataclass
class E2E:
    hub: RunningHub
    settings: HubSettings
    release: RenderedRelease
    sim: RunningSimulator
    catalog: CatalogServer
    catalog_dir: Path

    @property
    def url(self) -> str:
        return self.hub.url

    def api(self, path: str) -> Any:
        response = requests.get(f"{self.sim.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()


def _simulator_post(sim: RunningSimulator, path: str, body: dict[str, Any]) -> None:
    requests.post(f"{sim.url}{path}", json=body, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def e2e(hub_venv, helm_bin, k8s_cluster: RunningSimulator, tmp_path_factory) -> Iterator[E2E]:
    from kubernetes import config as kube_config

    from thinkube_pipelines.kubernetes.apply import apply_manifests

    root = tmp_path_factory.mktemp("hub-e2e")
    ports = Ports(*free_ports(3))
    public_url = f"http://127.0.0.1:{ports.proxy}"
    namespace = f"hub-e2e-{uuid.uuid4().hex[:8]}"
    with running_oidc_provider(hub_redirect=f"{public_url}/hub/oauth_callback") as oidc:
        catalog_dir = root / "catalog"
        try:
            catalog = start_catalog(catalog_dir, f"sqlite:///{root / 'catalog.db'}")
        except CatalogStartError as error:
            pytest.fail(str(error), pytrace=False)
        pvs: list[str] = []
        e2e: E2E | None = None
        failure = ""
        try:
            writer = CatalogClient(base_url=catalog.base_url, token=catalog.token)
            for payload in catalog_payloads():
                writer.upsert(ImageUpsert.model_validate(payload))
            settings = HubSettings.from_env(
                {
                    hub_settings.PUBLIC_URL_ENV: public_url,
                    hub_settings.OIDC_ISSUER_ENV: oidc.issuer,
                    hub_settings.CATALOG_URL_ENV: catalog.base_url,
                    hub_settings.NAMESPACE_ENV: namespace,
                    hub_settings.CHART_PATH_ENV: str(CHART),
                    hub_settings.FILER_URL_ENV: "http://seaweedfs-filer.seaweedfs:8888",
                    hub_settings.REGISTRY_URL_ENV: f"https://{REGISTRY}",
                }
            )
            discovery = requests.get(f"{oidc.issuer}/.well-known/openid-configuration", timeout=10).json()
            images = CatalogClient(base_url=catalog.base_url).jupyter_images()
            release = render_release(settings, images, discovery)
            write_release(release, root / "release")

            _simulator_post(k8s_cluster, "/api/v1/namespaces", {"metadata": {"name": namespace}})
            pvs = [m["metadata"]["name"] for m in release.manifests if m["kind"] == "PersistentVolume"]
            api = kube_config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
            try:
                apply_manifests(api, release.manifests, cluster="sim")
            finally:
                api.close()
            claims = f"{k8s_cluster.url}/api/v1/namespaces/{namespace}/persistentvolumeclaims"

            def bound() -> bool:
                items = requests.get(claims, timeout=10).json()["items"]
                return len(items) == 3 and all(i["status"].get("phase") == "Bound" for i in items)

            wait_until(bound, timeout_s=30)

            objects = chart_objects(
                helm_bin, CHART, root / "release" / VALUES_FILE, settings.release, namespace, root
            )
            client_secret = {settings.oidc_client_secret_key: oidc.clients[settings.oidc_client_id]}
            hub = start_chart_hub(
                hub_venv,
                objects,
                root / "hub",
                namespace=namespace,
                ports=ports,
                kubeconfig=k8s_cluster.kubeconfig,
                secrets={settings.oidc_client_secret_name: client_secret},
            )
            e2e = E2E(hub, settings, release, k8s_cluster, catalog, catalog_dir)
            yield e2e
        except ChartHubError as error:
            failure = str(error)
        finally:
            if e2e is not None:
                e2e.hub.stop()
                e2e.catalog.stop()
            catalog.stop()
            requests.delete(f"{k8s_cluster.url}/api/v1/namespaces/{namespace}", timeout=10)
            for name in pvs:
                requests.delete(f"{k8s_cluster.url}/api/v1/persistentvolumes/{name}", timeout=10)
    if failure:
        pytest.fail(failure, pytrace=False)


# -- a browser, as far as these pages need one --------------------------------------------------------


class Forms(HTMLParser):
    """The forms of a page: action, method, inputs (name, type, value, checked) and selects (options,
    the selected one)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._select: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "inputs": []})
            self.forms[-1]["selects"] = {}
        elif not self.forms:
            return
        elif tag == "input":
            self.forms[-1]["inputs"].append(
                {"name": a.get("name", ""), "type": a.get("type", "text"), "value": a.get("value", "")}
                | {"checked": "checked" in a}
            )
        elif tag == "select":
            self._select = {"options": [], "selected": None}
            self.forms[-1]["selects"][a.get("name", "")] = self._select
        elif tag == "option" and self._select is not None:
            self._select["options"].append(a.get("value", ""))
            if "selected" in a or self._select["selected"] is None:
                self._select["selected"] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def forms_of(html: str) -> list[dict[str, Any]]:
    parser = Forms()
    parser.feed(html)
    return parser.forms


def _submit(session: requests.Session, page: requests.Response, data: dict[str, str]) -> requests.Response:
    [form] = forms_of(page.text)
    response = session.post(urljoin(page.url, form["action"]), data=data, timeout=TIMEOUT)
    return response


def log_in(e2e: E2E, user: str) -> tuple[requests.Session, requests.Response]:
    """Sign in as `user` through the hub's login: the hub sends the browser to the realm's authorize
    endpoint, the stand-in's login form, its consent page, then back to the hub's OAuth callback."""
    session = requests.Session()
    page = session.get(f"{e2e.url}/hub/oauth_login?next=%2Fhub%2Fhome", timeout=TIMEOUT)
    assert page.url.startswith(e2e.settings.oidc_issuer), page.url
    assert 'name="login"' in page.text, page.text[:2000]
    page = _submit(session, page, {"prompt": "login", "login": user, "password": "any"})
    if 'name="prompt" value="consent"' in page.text:
        page = _submit(session, page, {"prompt": "consent"})
    return session, page


def spawn_form(page: requests.Response) -> dict[str, Any]:
    forms = [f for f in forms_of(page.text) if any(i["name"] == "profile" for i in f["inputs"])]
    assert len(forms) == 1, page.text[:3000]
    return forms[0]


def gpu_nodes(e2e: E2E) -> dict[str, tuple[str, int]]:
    """The simulator's schedulable GPU nodes: name -> (product, allocatable GPUs)."""
    nodes = {}
    for node in e2e.api("/api/v1/nodes")["items"]:
        count = int((node["status"].get("allocatable") or {}).get(GPU, "0"))
        if count and not node["spec"].get("unschedulable"):
            nodes[node["metadata"]["name"]] = (node["metadata"]["labels"].get(PRODUCT_LABEL, ""), count)
    return nodes


def escaped_username(venv: HubVenv, name: str) -> str:
    """What KubeSpawner 7 makes of `name` for `{escaped_username}` (kubespawner.slugs.escape_slug)."""
    result = run_hub_python(
        venv, ["-c", f"from kubespawner.slugs import escape_slug; print(escape_slug({name!r}))"]
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# -- the tests ---------------------------------------------------------------------------------------------


def test_hub_answers_health_through_the_proxy(e2e: E2E):
    response = requests.get(f"{e2e.url}/hub/health", timeout=TIMEOUT)
    assert response.status_code == 200
    log = e2e.hub.hub_log.read_text()
    assert "Loading extra config: thinkube-profiles" in log
    assert "Loading pass-through config section hub.config.GenericOAuthenticator" in log
    # the chart's idle culler, a managed service of the hub, runs and reaches the hub's API
    wait_until(lambda: "(jupyterhub-idle-culler@127.0.0.1)" in e2e.hub.hub_log.read_text(), timeout_s=30)


def test_user_of_an_allowed_group_logs_in(e2e: E2E):
    session, page = log_in(e2e, USER)
    assert page.status_code == 200, page.text[:2000]
    assert page.url == f"{e2e.url}/hub/home"
    assert USER in page.text
    # the hub's own session now: no detour through the realm
    again = session.get(f"{e2e.url}/hub/home", timeout=TIMEOUT, allow_redirects=False)
    assert again.status_code == 200
    # a member of the allowed group only, not of the admin group
    assert session.get(f"{e2e.url}/hub/admin", timeout=TIMEOUT).status_code == 403


def test_admin_group_makes_an_admin(e2e: E2E):
    session, page = log_in(e2e, ADMIN)
    assert page.status_code == 200, page.text[:2000]
    assert session.get(f"{e2e.url}/hub/admin", timeout=TIMEOUT).status_code == 200


def test_user_outside_the_allowed_groups_is_refused(e2e: E2E):
    session, page = log_in(e2e, OUTSIDER)
    assert page.status_code == 403, page.text[:2000]
    assert page.url.startswith(f"{e2e.url}/hub/oauth_callback")
    assert "not currently authorized" in page.text or "Forbidden" in page.text
    home = session.get(f"{e2e.url}/hub/home", timeout=TIMEOUT, allow_redirects=False)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]


def test_spawn_page_lists_a_profile_per_catalog_image_with_gpu_choices(e2e: E2E):
    session, _ = log_in(e2e, USER)
    page = session.get(f"{e2e.url}/hub/spawn", timeout=TIMEOUT)
    assert page.status_code == 200, page.text[:3000]
    form = spawn_form(page)
    profiles = [i["value"] for i in form["inputs"] if i["name"] == "profile"]
    assert sorted(profiles) == sorted([slug_for(GPU_IMAGE), slug_for(CPU_IMAGE)])
    checked = [i["value"] for i in form["inputs"] if i["name"] == "profile" and i["checked"]]
    assert checked == [slug_for(GPU_IMAGE)]  # the catalog's default
    assert "ML (GPU)" in page.text and "ML (CPU)" in page.text

    nodes = gpu_nodes(e2e)
    products: dict[str, int] = {}
    for product, count in nodes.values():
        products[product] = max(products.get(product, 0), count)
    gpu = slug_for(GPU_IMAGE)
    counts = form["selects"][f"profile-option-{gpu}--gpus"]
    assert counts["options"] == [str(n) for n in range(1, max(products.values()) + 1)]
    assert counts["selected"] == "1"
    choice = form["selects"][f"profile-option-{gpu}--gpu_product"]
    assert choice["options"] == ["any", *sorted(products)]
    assert choice["selected"] == "any"
    # the CPU image offers no GPU choice
    cpu = slug_for(CPU_IMAGE)
    assert not any(name.startswith(f"profile-option-{cpu}--gpu") for name in form["selects"])
    assert form["selects"][f"profile-option-{cpu}--cpu"]["selected"] == "4"


def test_spawn_a_gpu_profile_schedules_the_pod_on_a_gpu_node(e2e: E2E, hub_venv: HubVenv):
    session, _ = log_in(e2e, USER)
    page = session.get(f"{e2e.url}/hub/spawn", timeout=TIMEOUT)
    form = spawn_form(page)
    gpu = slug_for(GPU_IMAGE)
    nodes = gpu_nodes(e2e)
    # the product with the fewest GPUs per node, and more than one of them: both choices matter
    product, most = min(((p, c) for p, c in nodes.values()), key=lambda pc: (pc[1], pc[0]))
    count = min(3, most)
    data = {i["name"]: i["value"] for i in form["inputs"] if i["type"] == "hidden"}
    data["profile"] = gpu
    prefix = f"profile-option-{gpu}--"
    data |= {name: s["selected"] for name, s in form["selects"].items() if name.startswith(prefix)}
    data[f"{prefix}gpus"] = str(count)
    data[f"{prefix}gpu_product"] = product
    response = session.post(urljoin(page.url, form["action"]), data=data, timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:3000]
    assert "/hub/spawn-pending/" in response.url, response.url

    namespace = e2e.settings.namespace
    pods_path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=component%3Dsingleuser-server"

    def scheduled() -> dict[str, Any] | None:
        pods = e2e.api(pods_path)["items"]
        return pods[0] if pods and pods[0]["spec"].get("nodeName") else None

    pod = wait_until(scheduled, timeout_s=60, interval_s=0.5)
    spec = pod["spec"]
    assert spec["nodeName"] in nodes and spec["nodeName"] != "control-plane-1"
    assert nodes[spec["nodeName"]][0] == product
    assert spec.get("nodeSelector") == {PRODUCT_LABEL: product}
    [container] = spec["containers"]
    assert container["image"] == f"{REGISTRY}/library/{GPU_IMAGE}@{GPU_DIGEST}"
    assert container["resources"]["limits"][GPU] == str(count)
    # the image's cpu_limit, the form's default (KubeSpawner sends a number, which a real API server
    # stores as the quantity "8"; the simulator keeps it as sent)
    assert float(container["resources"]["limits"]["cpu"]) == 8
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert not spec.get("affinity", {}).get("nodeAffinity")

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for volume in ("notebooks", "datasets", "models"):
        assert volumes[volume]["persistentVolumeClaim"]["claimName"] == claim_name(volume)
    notebooks = mounts[MOUNT_PATHS["notebooks"]]
    assert notebooks["name"] == "notebooks"
    assert notebooks["subPath"] == escaped_username(hub_venv, USER)  # "hub-2duser": the user's own folder
    assert mounts[MOUNT_PATHS["datasets"]]["name"] == "datasets"
    assert not mounts[MOUNT_PATHS["datasets"]].get("readOnly")
    assert mounts[MOUNT_PATHS["models"]]["name"] == "models" and mounts[MOUNT_PATHS["models"]]["readOnly"]
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": e2e.settings.scratch_size}
    assert mounts[SCRATCH_PATH]["name"] == "scratch"
    assert not any("hostPath" in v for v in spec["volumes"])


def test_catalog_down_the_spawn_page_names_it_and_the_hub_stays_up(e2e: E2E):
    session, _ = log_in(e2e, ADMIN)  # a user with no pending spawn: the spawn page itself
    base_url, token = e2e.catalog.base_url, e2e.catalog.token
    port = int(base_url.rsplit(":", 1)[1])
    e2e.catalog.stop()
    try:
        page = session.get(f"{e2e.url}/hub/spawn", timeout=TIMEOUT)
        assert page.status_code == 503, page.text[:3000]
        assert f"{base_url}/api/v1/images/jupyter" in page.text
        assert "unreachable" in page.text
        assert not [f for f in forms_of(page.text) if any(i["name"] == "profile" for i in f["inputs"])]
        assert requests.get(f"{e2e.url}/hub/health", timeout=TIMEOUT).status_code == 200
        assert e2e.hub.hub.poll() is None
    finally:
        e2e.catalog = start_catalog(e2e.catalog_dir, e2e.catalog.database_url, token=token, port=port)
    # the catalog back: the same hub offers the profiles again, nothing restarted
    page = session.get(f"{e2e.url}/hub/spawn", timeout=TIMEOUT)
    assert page.status_code == 200, page.text[:3000]
    assert len([i for i in spawn_form(page)["inputs"] if i["name"] == "profile"]) == 2


def test_nothing_secret_in_the_hub_log(e2e: E2E):
    log = e2e.hub.hub_log.read_text()
    assert "jupyterhub-secret" not in log
    assert not re.search(r"client_secret=[^&\s]", log)
