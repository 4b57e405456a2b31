"""The hub's profile callable (thinkube_pipelines/hub/profiles.py), run where it runs: in the hub's packages.

Each test runs a small driver in the hub venv (tests/fixtures/hub.py: exactly the z2jh 4.4.0 hub image's
packages). The driver loads profiles.py the way the hub does (its source as `thinkube_profiles.py` on
sys.path, `install(c)` on a traitlets Config), makes a real `kubespawner.KubeSpawner` from that config
(kubeconfig: the Kubernetes API simulator's), and calls the installed `profile_list`, renders the spawn
form, or applies a user's choices and returns the pod manifest KubeSpawner would create. The catalogs
are real: this project's catalog service, and a small HTTP server answering what the real
thinkube-control answers (tests/thinkube_control/discovery.py `jupyter_list`) or a failure.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.catalog import sample_image
from tests.fixtures.hub import HubVenv, run_hub_python
from tests.fixtures.network import free_port
from thinkube_pipelines.hub import profiles

PROFILES_SOURCE = Path(profiles.__file__)
H100 = "NVIDIA-H100-80GB-HBM3"
L40S = "NVIDIA-L40S"
GIB = 1024**3

# The driver: argv[1] is a JSON spec {"mode", "calls", "config", "user_options"}; prints one JSON line.
DRIVER = r"""
import asyncio, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # where the hub mounts thinkube_profiles.py
import thinkube_profiles
from tornado import web
from traitlets.config import Config


def plain(value):
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if callable(value):
        return "<callable %s>" % getattr(getattr(value, "func", value), "__name__", "?")
    return value


def error(exc):
    return {"status": exc.status_code, "message": exc.log_message % exc.args}


async def main(spec):
    from kubespawner import KubeSpawner

    c = Config()
    for name, value in spec.get("config", {}).items():
        setattr(c.KubeSpawner, name, value)
    thinkube_profiles.install(c)
    user = type("User", (), {"name": "alice", "id": 7, "url": "/user/alice/", "escaped_name": "alice"})()
    spawner = KubeSpawner(_mock=True, config=c, user=user)
    out = {"installed": c.KubeSpawner.profile_list is thinkube_profiles.profile_list}
    if spec["mode"] == "profiles":
        out["calls"] = []
        for _ in range(spec.get("calls", 1)):
            started = time.monotonic()
            try:
                result = {"profiles": plain(await spawner.profile_list(spawner))}
            except web.HTTPError as exc:
                result = error(exc)
            result["seconds"] = time.monotonic() - started
            out["calls"].append(result)
    elif spec["mode"] == "burst":  # N spawn-page loads at once, each its own KubeSpawner, one event loop
        spawners = [KubeSpawner(_mock=True, config=c, user=user) for _ in range(spec["concurrent"])]
        results = await asyncio.gather(*(s.profile_list(s) for s in spawners), return_exceptions=True)
        out["calls"] = [
            {"profiles": len(r)} if isinstance(r, list) else {"error": repr(r)} for r in results
        ]
    elif spec["mode"] == "form":
        try:
            out["form"] = await spawner.get_options_form()
        except web.HTTPError as exc:
            out["error"] = error(exc)
    elif spec["mode"] == "spawn":
        spawner.user_options = spec["user_options"]
        try:
            await spawner.load_user_options()
            pod = await spawner.get_pod_manifest()
            out["pod"] = spawner.api.api_client.sanitize_for_serialization(pod)
        except web.HTTPError as exc:
            out["error"] = error(exc)
    print(json.dumps(out))


asyncio.run(main(json.loads(sys.argv[1])))
"""


class Hub:
    """Runs the driver in the hub venv with the profile module's settings."""

    def __init__(self, venv: HubVenv, root: Path, kubeconfig: Path | None):
        self.venv = venv
        self.root = root
        self.kubeconfig = kubeconfig
        root.mkdir(parents=True, exist_ok=True)
        (root / "thinkube_profiles.py").write_text(PROFILES_SOURCE.read_text())
        (root / "driver.py").write_text(DRIVER)

    def run(self, mode: str, catalog_url: str, *, timeout_s: float = 60, **spec: Any) -> dict[str, Any]:
        env = {
            profiles.CATALOG_URL_ENV: catalog_url,
            profiles.CATALOG_TIMEOUT_ENV: str(spec.pop("catalog_timeout", 3)),
            profiles.NODES_CACHE_ENV: str(spec.pop("nodes_cache", 30)),
        }
        if self.kubeconfig:
            env["KUBECONFIG"] = str(spec.pop("kubeconfig", self.kubeconfig))
        result = run_hub_python(
            self.venv,
            [self.root / "driver.py", json.dumps({"mode": mode, **spec})],
            env=env,
            cwd=self.root,
            timeout_s=timeout_s,
        )
        assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    def profiles(self, catalog_url: str, **spec: Any) -> list[dict[str, Any]]:
        """The profile list of one call; fails the test on an error answer."""
        call = self.run("profiles", catalog_url, **spec)["calls"][0]
        assert "profiles" in call, call
        return call["profiles"]

    def error(self, catalog_url: str, **spec: Any) -> dict[str, Any]:
        call = self.run("profiles", catalog_url, **spec)["calls"][0]
        assert "status" in call, f"expected an error, got {call}"
        return call


@pytest.fixture(scope="module")
def hub(hub_venv: HubVenv, k8s_cluster, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    return Hub(hub_venv, tmp_path_factory.mktemp("hub-profiles"), k8s_cluster.kubeconfig)


# --- catalogs ---------------------------------------------------------------------------------------


class StandIn:
    """A real HTTP server answering GET /api/v1/images/jupyter with `status` and `body` (bytes), or
    holding the request without an answer while `hang` is set."""

    def __init__(self) -> None:
        self.status, self.body, self.hang = 200, b"[]", False
        self.requests = 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.hang:
                    outer.release.wait(30)
                    return
                if self.path != profiles.CATALOG_PATH:
                    self.send_error(404)
                    return
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: Any, status: int = 200) -> str:
        self.status, self.hang = status, False
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.url

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.close()


def thinkube_control_item(name: str, display_name: str, default: bool) -> dict[str, Any]:
    """One item as thinkube-control serves it (discovery.py jupyter_list): no digest, no GPU facts."""
    return {
        "name": name,
        "display_name": display_name,
        "description": f"Jupyter notebook: {display_name}",
        "default": default,
        "metadata": {
            "image_size": None,
            "registry": "registry.thinkube.example",
            "repository": f"library/{name}",
            "tag": "latest",
        },
    }


CPU_DIGEST = "sha256:" + "c0ffee00" * 8
GPU_DIGEST = "sha256:" + "3f2a9c1e" * 8
TUNE_DIGEST = "sha256:" + "fe11a7e0" * 8


@pytest.fixture(scope="module")
def catalog(catalog_server, tmp_path_factory: pytest.TempPathFactory):
    """This project's catalog service with a CPU image (the default) and two GPU images."""
    server = catalog_server(f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalog.db'}")
    images = [
        sample_image(
            "jupyter-ml-cpu",
            display_name="ML (CPU)",
            description="<b>pandas</b> & scikit-learn",
            default=True,
            metadata={"gpu_required": False, "cpu_limit": 4, "mem_limit": "8G", "digest": CPU_DIGEST},
        ),
        sample_image("jupyter-ml-gpu", metadata={"digest": GPU_DIGEST}),
        sample_image(
            "jupyter-fine-tuning",
            display_name="Fine-tuning",
            metadata={"cpu_limit": 16, "mem_limit": "64Gi", "digest": TUNE_DIGEST},
        ),
    ]
    for image in images:
        response = requests.post(
            f"{server.base_url}/api/v1/images", json=image, headers=server.auth_headers, timeout=10
        )
        assert response.status_code in (200, 201), response.text
    return server


def by_slug(profile_list: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {profile["slug"]: profile for profile in profile_list}


# --- this project's catalog, the live cluster's GPUs ------------------------------------------------


def test_profiles_from_the_catalog_and_the_live_cluster(hub: Hub, catalog) -> None:
    out = hub.run("profiles", catalog.base_url, calls=2)
    assert out["installed"] is True
    first, second = (call["profiles"] for call in out["calls"])
    # KubeSpawner calls profile_list for the form and again at spawn: the two lists agree.
    assert first == second
    profile_list = by_slug(first)
    # The catalog's order (by name), the catalog's default.
    assert list(profile_list) == ["jupyter-fine-tuning", "jupyter-ml-cpu", "jupyter-ml-gpu"]
    assert [slug for slug, p in profile_list.items() if p["default"]] == ["jupyter-ml-cpu"]

    cpu = profile_list["jupyter-ml-cpu"]
    assert cpu["display_name"] == "ML (CPU)"
    assert cpu["description"] == "&lt;b&gt;pandas&lt;/b&gt; &amp; scikit-learn"  # no markup from the catalog
    assert cpu["kubespawner_override"] == {
        "image": f"harbor.example.org/library/jupyter-ml-cpu@{CPU_DIGEST}",
        "cpu_limit": 4.0,
        "mem_limit": 8 * GIB,
    }
    assert set(cpu["profile_options"]) == {profiles.CPU_OPTION, profiles.MEMORY_OPTION}
    cpus = cpu["profile_options"]["cpu"]["choices"]
    assert list(cpus) == ["1", "2", "4"]
    assert [key for key, choice in cpus.items() if choice["default"]] == ["4"]
    memory = cpu["profile_options"]["memory"]["choices"]
    assert [choice["display_name"] for choice in memory.values()] == ["1 GiB", "2 GiB", "4 GiB", "8 GiB"]
    assert [choice["display_name"] for choice in memory.values() if choice["default"]] == ["8 GiB"]

    gpu = profile_list["jupyter-ml-gpu"]
    override = gpu["kubespawner_override"]
    assert override["image"] == f"harbor.example.org/library/jupyter-ml-gpu@{GPU_DIGEST}"
    assert override["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
    assert override["tolerations"] == "<callable _with_gpu_toleration>"
    assert "node_selector" not in override  # any GPU node, unless a product is picked
    options = gpu["profile_options"]
    assert list(options) == ["gpu_product", "gpus", "cpu", "memory"]
    # gpu-cluster: gpu-node-1/2 with 8 H100, gpu-node-3 with 4 L40S; the control plane has none.
    products = options["gpu_product"]["choices"]
    assert list(products) == ["any", H100, L40S]
    assert products["any"] == {"display_name": "Any GPU node", "default": True}
    assert products[H100]["kubespawner_override"] == {"node_selector": {"nvidia.com/gpu.product": H100}}
    assert products[L40S]["display_name"] == f"{L40S} (up to 4 per node)"
    gpus = options["gpus"]["choices"]
    assert list(gpus) == [str(n) for n in range(1, 9)]
    assert [key for key, choice in gpus.items() if choice["default"]] == ["1"]
    assert list(options["cpu"]["choices"]) == ["1", "2", "4", "8"]
    tune = profile_list["jupyter-fine-tuning"]["profile_options"]
    assert list(tune["cpu"]["choices"]) == ["1", "2", "4", "8", "16"]
    assert [c["display_name"] for c in tune["memory"]["choices"].values()][-1] == "64 GiB"


def test_the_spawn_form_renders_each_profile(hub: Hub, catalog) -> None:
    form = hub.run("form", catalog.base_url)["form"]
    for slug in ("jupyter-ml-cpu", "jupyter-ml-gpu", "jupyter-fine-tuning"):
        assert f'value="{slug}"' in form
    assert 'name="profile-option-jupyter-ml-gpu--gpus"' in form
    assert f'<option value="{L40S}"' in form
    assert "<b>pandas</b>" not in form


def _cordon(url: str, node: str, cordoned: bool) -> None:
    response = requests.patch(
        f"{url}/api/v1/nodes/{node}",
        json={"spec": {"unschedulable": True if cordoned else None}},
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_concurrent_cold_loads_share_one_node_list(hub: Hub, catalog, k8s_cluster) -> None:
    """A burst of spawn-page loads with a cold node cache sends one node list, not one per load: counted
    by the simulator, where a delay-only rule on the node list (no other effect) keeps the first list under
    way while the others ask."""
    rule = k8s_cluster.fault(r"^/api/v1/nodes$", verbs=("list",), count=None, delay_s=1.0)
    try:
        out = hub.run("burst", catalog.base_url, concurrent=20)
        hits = next(r for r in k8s_cluster.control("GET", "faults") if r["id"] == rule["id"])["hits"]
    finally:
        k8s_cluster.control("DELETE", f"faults/{rule['id']}")
    assert out["calls"] == [{"profiles": 3}] * 20, out["calls"]
    assert hits == 1


def test_gpu_choices_follow_the_live_cluster(hub: Hub, catalog, k8s_cluster) -> None:
    """Cordon the L40S node: one product left, so no product choice; counts up to 8 still."""
    _cordon(k8s_cluster.url, "gpu-node-3", True)
    try:
        profile_list = by_slug(hub.profiles(catalog.base_url, nodes_cache=0.001))
    finally:
        _cordon(k8s_cluster.url, "gpu-node-3", False)
    options = profile_list["jupyter-ml-gpu"]["profile_options"]
    assert "gpu_product" not in options
    assert list(options["gpus"]["choices"]) == [str(n) for n in range(1, 9)]


# --- the pod KubeSpawner makes from a choice --------------------------------------------------------

Z2JH_CONFIG = {
    # What the z2jh chart configures (its tolerations as a list; a memory guarantee of 1G).
    "tolerations": [
        {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"}
    ],
    "mem_guarantee": "1G",
    "cpu_guarantee": 0.5,
    "namespace": "jupyterhub",
}


def spawn(hub: Hub, catalog, **user_options: str) -> dict[str, Any]:
    out = hub.run("spawn", catalog.base_url, config=Z2JH_CONFIG, user_options=user_options)
    assert "pod" in out, out
    return out["pod"]


def test_a_gpu_profile_makes_a_pod_with_the_gpu_limit_and_toleration(hub: Hub, catalog) -> None:
    pod = spawn(hub, catalog, profile="jupyter-ml-gpu")
    container = pod["spec"]["containers"][0]
    assert container["image"] == f"harbor.example.org/library/jupyter-ml-gpu@{GPU_DIGEST}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["cpu"] == 8.0
    tolerations = pod["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert Z2JH_CONFIG["tolerations"][0] in tolerations  # the chart's own kept
    assert not pod["spec"].get("nodeSelector")
    assert not pod["spec"].get("affinity")


def test_a_picked_product_and_count_select_the_node_kind(hub: Hub, catalog) -> None:
    pod = spawn(
        hub, catalog, profile="jupyter-ml-gpu", gpu_product=L40S, gpus="4", cpu="2", memory=str(2 * GIB)
    )
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": L40S}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["limits"]["cpu"] == 2.0
    assert container["resources"]["limits"]["memory"] == 2 * GIB
    assert container["resources"]["requests"]["memory"] == 1 * GIB  # the chart's guarantee, under it


def test_more_gpus_than_one_node_of_the_product_offers_fail_the_spawn(hub: Hub, catalog) -> None:
    out = hub.run(
        "spawn",
        catalog.base_url,
        config=Z2JH_CONFIG,
        user_options={"profile": "jupyter-ml-gpu", "gpu_product": L40S, "gpus": "8"},
    )
    assert out["error"] == {"status": 400, "message": f"8 GPUs asked, but one {L40S} node offers at most 4."}


def test_a_cpu_profile_asks_for_no_gpu(hub: Hub, catalog) -> None:
    pod = spawn(hub, catalog)  # no choice: the catalog's default image
    container = pod["spec"]["containers"][0]
    assert container["image"] == f"harbor.example.org/library/jupyter-ml-cpu@{CPU_DIGEST}"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert pod["spec"]["tolerations"] == Z2JH_CONFIG["tolerations"]
    assert container["resources"]["limits"]["memory"] == 8 * GIB


# --- thinkube-control's answer ----------------------------------------------------------------------


def test_thinkube_control_answer(hub: Hub, stand_in: StandIn) -> None:
    url = stand_in.answer(
        [
            thinkube_control_item("jupyter-ml-cpu", "ML (CPU)", True),
            thinkube_control_item("jupyter-agent-dev", "Agent dev", False),
        ]
    )
    profile_list = by_slug(hub.profiles(url))
    assert list(profile_list) == ["jupyter-ml-cpu", "jupyter-agent-dev"]
    assert profile_list["jupyter-ml-cpu"]["default"] is True
    assert profile_list["jupyter-agent-dev"] == {
        "display_name": "Agent dev",
        "description": "Jupyter notebook: Agent dev",
        "slug": "jupyter-agent-dev",
        "default": False,
        # no digest served: the tag; no limits or GPU facts: no options
        "kubespawner_override": {"image": "registry.thinkube.example/library/jupyter-agent-dev:latest"},
    }


def test_a_long_catalog_answer_is_read_whole(hub: Hub, stand_in: StandIn) -> None:
    """Hundreds of images (a body of many chunks) arrive whole, in order."""
    items = [thinkube_control_item(f"jupyter-{n:03d}", f"Image {n} " + "x" * 400, n == 0) for n in range(400)]
    profile_list = hub.profiles(stand_in.answer(items))
    assert [p["slug"] for p in profile_list] == [f"jupyter-{n:03d}" for n in range(400)]


# --- the spawn page's errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (200, [], "lists no Jupyter image"),  # thinkube-control's "none"
        (500, {"detail": "database exploded"}, "answered HTTP 500: database exploded"),
        (200, b"<html>not json</html>", "answered a malformed list: Expecting value"),
        (200, b"[" + b" " * profiles.MAX_CATALOG_BYTES + b"]", "answered more than 4194304 bytes"),
        (502, b"<html>\nBad gateway</html>", "answered HTTP 502: <html>"),
        (200, {"items": []}, "answered a malformed list: expected a JSON list of images, got dict"),
        (
            200,
            [{"name": "jupyter-x", "metadata": {"registry": "r.example"}}],
            "malformed list: item 0 ('jupyter-x'): 'metadata.repository' is missing",
        ),
        (
            200,
            [{"name": "jupyter-x", "metadata": {"registry": "r", "repository": "x", "digest": "sha256:12"}}],
            "'metadata.digest' is not a sha256 digest",
        ),
    ],
)
def test_a_bad_catalog_answer_is_the_spawn_page_message(
    hub: Hub, stand_in: StandIn, status: int, body: Any, problem: str
) -> None:
    url = stand_in.answer(body, status)
    error = hub.error(url)
    assert error["status"] == 503
    assert f"The image catalog at {url}/api/v1/images/jupyter" in error["message"]
    assert problem in error["message"]


def test_an_empty_catalog_service_is_the_spawn_page_message(hub: Hub, catalog_server, tmp_path: Path) -> None:
    server = catalog_server(f"sqlite:///{tmp_path / 'empty.db'}")
    error = hub.error(server.base_url)
    assert error["status"] == 503
    assert error["message"].startswith(
        f"The image catalog at {server.base_url}/api/v1/images/jupyter answered HTTP 503"
    )


def test_a_catalog_that_is_down_is_the_spawn_page_message(hub: Hub) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    error = hub.error(url)
    assert error["status"] == 503
    assert error["message"].startswith(f"The image catalog at {url}/api/v1/images/jupyter is unreachable:")


def test_a_catalog_that_never_answers_is_bounded_by_the_timeout(hub: Hub, stand_in: StandIn) -> None:
    stand_in.hang = True
    started = time.monotonic()
    error = hub.error(stand_in.url, catalog_timeout=1)
    assert (
        error["message"]
        == f"The image catalog at {stand_in.url}/api/v1/images/jupyter did not answer within 1 s."
    )
    assert 0.9 <= error["seconds"] < 3.0
    assert stand_in.requests == 1
    assert time.monotonic() - started < 60


def test_a_silent_listener_is_bounded_too(hub: Hub) -> None:
    """A socket that accepts and never reads: the connection opens, the answer never comes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        error = hub.error(url, catalog_timeout=1)
    assert "did not answer within 1 s" in error["message"]
    assert error["seconds"] < 3.0


def test_an_unreachable_kubernetes_api_is_the_spawn_page_message(hub: Hub, catalog, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        hub.kubeconfig.read_text().replace(_server_of(hub.kubeconfig), f"http://127.0.0.1:{free_port()}")
    )
    error = hub.error(catalog.base_url, kubeconfig=kubeconfig)
    assert error["status"] == 503
    assert error["message"].startswith(
        "The GPU choices need the cluster's nodes, and the Kubernetes API did not list them:"
    )


def _server_of(kubeconfig: Path) -> str:
    import yaml

    return yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]


def test_install_refuses_a_hub_without_a_catalog_url(hub_venv: HubVenv, tmp_path: Path) -> None:
    (tmp_path / "thinkube_profiles.py").write_text(PROFILES_SOURCE.read_text())
    result = run_hub_python(
        hub_venv,
        ["-c", "import thinkube_profiles, traitlets.config as t; thinkube_profiles.install(t.Config())"],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert f"{profiles.CATALOG_URL_ENV} must be the catalog's http(s) base URL" in result.stderr


def test_the_module_imports_only_the_standard_library_at_the_top() -> None:
    """The renderer imports it in the pipeline's environment; the hub's packages load inside functions."""
    import ast

    tree = ast.parse(PROFILES_SOURCE.read_text())
    top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = {alias.name.split(".")[0] for node in top for alias in node.names if isinstance(node, ast.Import)}
    names |= {node.module.split(".")[0] for node in top if isinstance(node, ast.ImportFrom) and node.module}
    import sys

    assert names - {"__future__"} <= set(sys.stdlib_module_names), names
