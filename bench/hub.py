"""Figure 5: the hub deploy's own time, and the hub's profile callable per spawn-page load.

Services this benchmark starts on free ports and stops by their process handles: the Kubernetes API
simulator (tests/k8s_sim, seed `gpu-cluster`, with the SeaweedFS CSIDriver object registered), the Keycloak
stand-in (tests/oidc), SeaweedFS (`weed server`, its filer), the catalog service on SQLite holding
`IMAGES` Jupyter images (`GPU_IMAGES` of them GPU images) and a CNCF registry with htpasswd auth (Harbor's
place). The hub deploy's settings point at them, as tests/test_hub_deploy.py's do.

a. The deploy's own work, outside helm: what the four hub_deploy assets (thinkube_pipelines/defs/hub/
   assets.py) do before `helm upgrade` runs, in their order, with the same library calls: `preflight` (each
   dependency asked; the namespace created), the SeaweedFS volumes applied server-side, the values rendered
   (the catalog's images and the realm's discovery document read, `render_release`: typed models, the
   chart's schema, kubernetes-validate --strict of the manifests for two Kubernetes versions), then the
   release's own manifests (all but the volumes) and the OAuth Secret applied and the values written to a
   private file for helm (`write_values_file`). Each asset makes its own API client from the kubeconfig,
   as here, and each runs in a process of its own: the schema caches of
   thinkube_pipelines/kubernetes/validation.py are emptied before each deploy, so that each pays the
   schema loads its values step pays. Dagster's own time (process start, event log) and helm's are not in
   it. Two kinds, interleaved:
   - first deploy: a fresh namespace, so the preflight creates it and every object is created;
   - redeploy: the same settings again at once (every object unchanged), what a deploy after a catalog
     change pays before helm.
   Between the two the image puller's pods are left to become ready, and after each pair the namespace is
   deleted and its end awaited, both untimed: the simulator's kubelet runs in its API server's process, so
   pods starting there slow its API, which no real cluster's pods do to its API server.
   Baseline: `helm template` of the reference chart (tests/reference/z2jh/jupyterhub-4.4.0.tgz) with the
   values the first deploy rendered, written to a file beforehand: rendering the same chart values alone.
   After one warm-up of each (not counted; its time is kept: the first deploy in this process pays the
   imports and the schema loads that each Dagster step, a process of its own, pays).

b. The profile callable (thinkube_pipelines/hub/profiles.py) where it runs: in the hub image's packages
   (tests/fixtures/hub.py's virtual environment), driven by bench/hub_spawn_page.py: KubeSpawner (mock
   mode, kubeconfig: the simulator) with `install(c)`, `profile_list(spawner)` per spawn-page load, against
   a bare aiohttp GET of the same catalog endpoint in the same process and event loop (baseline).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests
import yaml

from bench.timing import REPO, Sample, log, run_timed

IMAGES = 20
GPU_IMAGES = 8
CONCURRENCY = 50
"""Spawn-page loads at once in one event loop (a hub serving many users)."""
SPAWN_REPETITIONS = 30
SPAWN_WARMUP = 3
BURSTS = 9
NODES_CACHE_S = 600
"""The callable's node cache in the "cached" measurements (a hit costs the same whatever its period)."""
CHART = REPO / "tests" / "reference" / "z2jh" / "jupyterhub-4.4.0.tgz"
CSI_DRIVER = "seaweedfs-csi-driver"
SECRET = "bench-oidc-" + uuid.uuid4().hex
NAMESPACE_PREFIX = "bench-hub"

DEPLOY_PHASES = [
    ("client", "kubeconfig read and API client, once in each of the three steps that talk to the cluster"),
    ("preflight: Keycloak", "GET the realm's discovery document, issuer and endpoints checked"),
    ("preflight: SeaweedFS CSI driver", "GET the CSIDriver object"),
    ("preflight: SeaweedFS filer", "GET the filer's /"),
    ("preflight: catalog", "GET /api/v1/images/jupyter through `CatalogClient`, items validated"),
    ("preflight: Harbor", "GET /v2/ (its 401 challenge counts as an answer)"),
    ("preflight: namespace", "GET the namespace; POST it when missing (first deploy)"),
    ("preflight: rest", "the preflight's own time around its checks"),
    ("volumes apply", "3 PersistentVolumes + 3 claims: a GET and a server-side apply PATCH each"),
    (
        "render: catalog read",
        "the images again (`CatalogClient.jupyter_images`), as the values step reads them",
    ),
    ("render: discovery read", "the realm's discovery document again, for the OAuth endpoints"),
    (
        "render: typed models",
        "`build_values`: settings and images -> the values' pydantic models -> plain data",
    ),
    ("render: chart schema", "`validate_values`: the values against the z2jh 4.4.0 schema (jsonschema)"),
    (
        "render: kubernetes-validate",
        "`validate_manifests`: 8 manifests, --strict, Kubernetes 1.30 and 1.37 (each version's schemas "
        "loaded once)",
    ),
    ("render: rest", "the rest of `render_release`"),
    (
        "release apply",
        "the OAuth Secret, the node reader's ClusterRole and binding, the image puller DaemonSet: a GET and "
        "an apply PATCH each",
    ),
    ("values file", "`write_values_file`: the values as YAML in a private (0700) folder, the file 0600"),
]


@dataclass
class DeployRun:
    wall_s: float
    phases: dict[str, float]
    created: int = 0
    unchanged: int = 0


@dataclass
class HubResults:
    repetitions: int
    images: int = IMAGES
    gpu_images: int = GPU_IMAGES
    helm_version: str = ""
    template_objects: int = 0
    values_bytes: int = 0
    template: list[float] = field(default_factory=list)
    first: list[DeployRun] = field(default_factory=list)
    again: list[DeployRun] = field(default_factory=list)
    warmup: dict[str, float] = field(default_factory=dict)
    definitions_parse_s: dict[str, float] = field(default_factory=dict)
    """kubernetes-validate's `_definitions.json` of each Kubernetes version render.py checks against:
    the seconds one `json.load` of it takes (median of 5), and its size under `definitions_bytes`."""
    definitions_bytes: dict[str, int] = field(default_factory=dict)
    spawn: dict[str, Any] = field(default_factory=dict)
    """What bench/hub_spawn_page.py measured (its JSON)."""
    concurrency: int = CONCURRENCY
    spawn_repetitions: int = SPAWN_REPETITIONS
    bursts: int = BURSTS

    def sample(self, which: str) -> Sample:
        if which == "template":
            return Sample(which, list(self.template))
        runs = self.first if which == "first" else self.again
        return Sample(which, [run.wall_s for run in runs])

    def phase_median(self, which: str, phase: str) -> float:
        runs = self.first if which == "first" else self.again
        return statistics.median(run.phases.get(phase, 0.0) for run in runs)


# -- the deploy, timed -----------------------------------------------------------------------------------


class Phases:
    """Seconds per phase of one deploy (added up when a phase recurs)."""

    current: Phases

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timing(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)


@contextmanager
def _instrumented():
    """`build_values`, `validate_values` and `validate_manifests` timed into `Phases.current` (wrappers
    that change nothing else), for the render's breakdown."""
    from thinkube_pipelines.hub import render, values

    patched = [
        (values, "build_values", "render: typed models"),
        (values, "validate_values", "render: chart schema"),
        (render, "validate_manifests", "render: kubernetes-validate"),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patched]

    def wrap(function, phase):
        def timed(*args, **kwargs):
            with Phases.current.timing(phase):
                return function(*args, **kwargs)

        return timed

    try:
        for (module, name, phase), (_, _, original) in zip(patched, originals, strict=True):
            setattr(module, name, wrap(original, phase))
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def _write_values_file(values: dict[str, Any]) -> None:
    """What `deploy_release` does before it runs helm: the values in a private temporary file."""
    from thinkube_pipelines.hub.release import write_values_file

    with tempfile.TemporaryDirectory(prefix="thinkube-hub-") as private:
        write_values_file(values, Path(private))


def deploy_once(settings, cluster) -> tuple[DeployRun, dict[str, Any]]:
    """The hub_deploy assets' work before helm, in their order; the run and the rendered values."""
    from kubernetes.client import ApiClient

    from thinkube_pipelines.catalog.client import CatalogClient
    from thinkube_pipelines.defs.hub.assets import oidc_secret_manifest
    from thinkube_pipelines.hub.preflight import DISCOVERY_PATH, preflight
    from thinkube_pipelines.hub.render import release_manifests, render_release
    from thinkube_pipelines.hub.volumes import volume_manifests
    from thinkube_pipelines.kubernetes import validation
    from thinkube_pipelines.kubernetes.apply import apply_manifests

    phases = Phases.current = Phases()
    timeout = 5.0
    validation.clear_cache()  # each hub step is a process of its own: it loads the schemas it uses

    def client() -> tuple[Any, str]:
        with phases.timing("client"):
            configuration = cluster.configuration()
            return ApiClient(configuration), cluster.describe(configuration)

    started = time.perf_counter()
    # hub/preflight
    api, name = client()
    with api:
        checks_started = time.perf_counter()
        report = preflight(settings, api, cluster=name, timeout_s=timeout)
        preflight_s = time.perf_counter() - checks_started
    for check in report.checks:
        phases.add(f"preflight: {check.dependency}", check.duration_s)
    phases.add("preflight: rest", preflight_s - sum(c.duration_s for c in report.checks))
    # hub/seaweedfs_volumes
    api, name = client()
    with api, phases.timing("volumes apply"):
        applied = apply_manifests(api, volume_manifests(settings), cluster=name, timeout_s=cluster.timeout_s)
    # hub/jupyterhub_values
    with (
        phases.timing("render: catalog read"),
        CatalogClient(settings.catalog_url, timeout_s=timeout) as catalog,
    ):
        images = catalog.jupyter_images()
    with phases.timing("render: discovery read"):
        discovery = requests.get(settings.oidc_issuer + DISCOVERY_PATH, timeout=timeout)
        discovery.raise_for_status()
        document = discovery.json()
    render_started = time.perf_counter()
    before = sum(phases.seconds.get(p, 0.0) for p, _ in DEPLOY_PHASES if p.startswith("render: "))
    rendered = render_release(settings, images, document)
    inner = sum(phases.seconds.get(p, 0.0) for p, _ in DEPLOY_PHASES if p.startswith("render: ")) - before
    phases.add("render: rest", time.perf_counter() - render_started - inner)
    # hub/jupyterhub_release, before helm
    api, name = client()
    secret = oidc_secret_manifest(SimpleNamespace(settings=settings, oidc_client_secret=SECRET))
    with api, phases.timing("release apply"):
        applied += apply_manifests(
            api, [secret, *release_manifests(rendered.manifests)], cluster=name, timeout_s=cluster.timeout_s
        )
    with phases.timing("values file"):
        _write_values_file(rendered.values)
    wall = time.perf_counter() - started
    run = DeployRun(
        wall,
        dict(phases.seconds),
        created=sum(a.outcome == "created" for a in applied),
        unchanged=sum(a.outcome == "unchanged" for a in applied),
    )
    return run, rendered.values


# -- setup -------------------------------------------------------------------------------------------------


def _catalog_images() -> list[dict[str, Any]]:
    """`IMAGES` catalog entries, the first the default, `GPU_IMAGES` of them GPU images; digest-pinned."""
    from tests.fixtures.catalog import sample_image

    images = []
    for index in range(IMAGES):
        name = f"jupyter-bench-{index:02d}"
        gpu = index % 2 == 1 and index < 2 * GPU_IMAGES  # 1, 3, 5, ...: mixed with the CPU images
        images.append(
            sample_image(
                name,
                display_name=f"Bench image {index}",
                default=index == 0,
                metadata={
                    "gpu_required": gpu,
                    "cpu_limit": 8 if gpu else 4,
                    "mem_limit": "32G" if gpu else "8G",
                    "digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
                },
            )
        )
    return images


def _k8s_post(simulator, path: str, body: dict[str, Any]) -> None:
    response = requests.post(f"{simulator.url}{path}", json=body, timeout=10)
    if response.status_code not in (201, 409):
        raise RuntimeError(f"simulator: POST {path} answered {response.status_code}: {response.text}")


def _helm_version(helm: Path, env: dict[str, str]) -> str:
    import subprocess

    done = subprocess.run(
        [str(helm), "version", "--short"], env=env, capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


def run_hub(
    repetitions: int, *, spawn_repetitions: int = SPAWN_REPETITIONS, bursts: int = BURSTS
) -> HubResults:
    from tests.fixtures.catalog import start_catalog
    from tests.fixtures.hub import ensure_hub_venv
    from tests.fixtures.kubernetes import FIXTURE_SEED, start_simulator
    from tests.fixtures.oidc import running_oidc_provider
    from tests.fixtures.registry import start_registry
    from tests.fixtures.seaweedfs import run_seaweedfs
    from tests.fixtures.tools import tool_env, tool_path
    from thinkube_pipelines.kubernetes.cluster import KubernetesCluster

    root = Path(tempfile.mkdtemp(prefix="thinkube-bench-hub-"))
    helm = tool_path("helm")
    venv, made_s = ensure_hub_venv()
    log(f"hub venv: {venv.path} ({f'made in {made_s:.0f} s' if made_s else 'cached'})")
    try:
        with ExitStack() as services:
            simulator = start_simulator(root / "k8s-sim")
            services.callback(_stopped, "simulator", simulator)
            pid = simulator.process.pid
            log(f"Kubernetes API simulator: {simulator.url} (pid {pid}), seed {FIXTURE_SEED}")
            _k8s_post(
                simulator,
                "/apis/storage.k8s.io/v1/csidrivers",
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "CSIDriver",
                    "metadata": {"name": CSI_DRIVER},
                    "spec": {"attachRequired": False, "podInfoOnMount": True},
                },
            )
            registry = start_registry(root / "registry", username="thinkube", log_level="warn")
            services.callback(_stopped, "registry", registry)
            log(f"registry: {registry.url} (pid {registry.process.pid})")
            catalog = start_catalog(root / "catalog", f"sqlite:///{root / 'catalog.db'}")
            services.callback(_stopped, "catalog", catalog)
            log(f"catalog: {catalog.base_url} (pid {catalog.process.pid})")
            for image in _catalog_images():
                response = requests.post(
                    f"{catalog.base_url}/api/v1/images", json=image, headers=catalog.auth_headers, timeout=10
                )
                if response.status_code not in (200, 201):
                    raise RuntimeError(f"catalog: POST {image['name']} answered {response.status_code}")
            services.callback(log, "Keycloak stand-in stopped")
            oidc = services.enter_context(running_oidc_provider())
            log(f"Keycloak stand-in: {oidc.issuer}")
            services.callback(log, "SeaweedFS stopped")
            seaweedfs = services.enter_context(run_seaweedfs(root / "seaweedfs"))
            log(f"SeaweedFS filer: {seaweedfs.filer_url}")

            results = HubResults(repetitions=repetitions, spawn_repetitions=spawn_repetitions, bursts=bursts)
            base = {
                "public_url": "https://jupyter.example.org",
                "oidc_issuer": oidc.issuer,
                "catalog_url": catalog.base_url,
                "registry_url": registry.url,
                "filer_url": seaweedfs.filer_url,
                "chart_path": CHART,
                "csi_driver": CSI_DRIVER,
            }
            cluster = KubernetesCluster(kubeconfig=str(simulator.kubeconfig))
            helm_env = tool_env(root / "tools")
            results.helm_version = _helm_version(helm, helm_env)
            _deploys(results, repetitions, base, cluster, helm, helm_env, root)
            _definitions_parse(results)
            _spawn_page(results, venv, catalog.base_url, simulator.kubeconfig, root)
            return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stopped(name: str, service) -> None:
    service.stop()
    log(f"{name} stopped (pid {service.process.pid})")


def _settled(cluster, namespace: str, timeout_s: float = 120.0) -> None:
    """Wait, untimed, until the image puller's pods are ready on every node it wants: a redeploy comes
    minutes after a deploy, not while the simulator's in-process kubelet is still starting the new pods
    (which slows its API as no real cluster's pods slow its API server)."""
    from kubernetes.client import ApiClient, AppsV1Api

    from thinkube_pipelines.hub.prepuller import NAME

    with ApiClient(cluster.configuration()) as api:
        apps = AppsV1Api(api)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = apps.read_namespaced_daemon_set(NAME, namespace).status
            if status.desired_number_scheduled and status.number_ready == status.desired_number_scheduled:
                return
            time.sleep(0.2)
    raise RuntimeError(f"the image puller in {namespace} not ready {timeout_s:g} s after the deploy")


def _cleared(cluster, namespace: str, timeout_s: float = 120.0) -> None:
    """Delete a deploy's namespace and wait until it is gone, untimed: its image puller's pods (one per node,
    an init container per image) would otherwise keep the simulator's kubelet busy through the next
    repetitions, slowing the API as no real cluster's pods slow its API server."""
    from kubernetes.client import ApiClient, CoreV1Api
    from kubernetes.client.exceptions import ApiException

    with ApiClient(cluster.configuration()) as api:
        core = CoreV1Api(api)
        core.delete_namespace(namespace)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                core.read_namespace(namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(0.2)
    raise RuntimeError(f"namespace {namespace} still there {timeout_s:g} s after its deletion")


def _deploys(results: HubResults, repetitions: int, base, cluster, helm, helm_env, root: Path) -> None:
    from thinkube_pipelines.hub.settings import HubSettings

    namespaces = iter(range(1000))

    def settings() -> HubSettings:
        return HubSettings(namespace=f"{NAMESPACE_PREFIX}-{next(namespaces):03d}", **base)

    values_file = root / "template-values.yaml"
    out = root / "helm-template.out"

    def template() -> float:
        argv = [str(helm), "template", "jupyterhub", str(CHART), "-n", "jupyterhub", "-f", str(values_file)]
        return run_timed(argv, env=helm_env, cwd=root, log_file=out, timeout_s=120)

    with _instrumented():
        fresh = settings()
        warm_first, values = deploy_once(fresh, cluster)
        _settled(cluster, fresh.namespace)
        warm_again, _ = deploy_once(fresh, cluster)
        _check_outcomes("warm-up", warm_first, warm_again)
        _cleared(cluster, fresh.namespace)
        text = yaml.safe_dump(values, sort_keys=False)
        values_file.write_text(text)
        results.values_bytes = len(text.encode())
        warm_template = template()
        results.template_objects = sum(1 for doc in yaml.safe_load_all(out.read_text()) if doc)
        results.warmup = {"template": warm_template, "first": warm_first.wall_s, "again": warm_again.wall_s}
        log(
            f"hub deploy: warm-up helm template {warm_template:.2f} s ({results.template_objects} objects), "
            f"first deploy {warm_first.wall_s:.2f} s, redeploy {warm_again.wall_s:.2f} s"
        )
        for rep in range(repetitions):  # interleaved, so that a busy moment hits each kind alike
            results.template.append(template())
            fresh = settings()
            first, _ = deploy_once(fresh, cluster)
            _settled(cluster, fresh.namespace)
            again, _ = deploy_once(fresh, cluster)
            _check_outcomes(f"repetition {rep + 1}", first, again)
            _cleared(cluster, fresh.namespace)
            results.first.append(first)
            results.again.append(again)
            log(
                f"hub deploy: repetition {rep + 1}/{repetitions}: helm template "
                f"{results.template[-1]:.2f} s, "
                f"first deploy {first.wall_s:.2f} s, redeploy {again.wall_s:.2f} s"
            )


FIRST_CREATED = 10
"""A first deploy creates 6 volume objects (the volumes step), the ClusterRole, its binding, the image puller
DaemonSet and the Secret (the release step): each object applied once."""
APPLIED = 10


def _check_outcomes(which: str, first: DeployRun, again: DeployRun) -> None:
    if (first.created, first.unchanged, again.unchanged) != (FIRST_CREATED, APPLIED - FIRST_CREATED, APPLIED):
        raise RuntimeError(
            f"{which}: the first deploy created {first.created} objects and left {first.unchanged} "
            "unchanged, "
            f"the redeploy left {again.unchanged} unchanged; expected {FIRST_CREATED}, "
            f"{APPLIED - FIRST_CREATED} and {APPLIED}"
        )


def _definitions_parse(results: HubResults) -> None:
    """What one parse of kubernetes-validate's `_definitions.json` costs, per version render.py checks
    (`kubernetes_validate.validate` parses it on every call; validation.py once per process)."""
    import importlib.resources

    from kubernetes_validate.utils import all_versions, major_minor

    from thinkube_pipelines.hub.render import KUBERNETES_VERSIONS

    for desired in KUBERNETES_VERSIONS:  # the library's own choice of schema folder
        version = [v for v in all_versions() if major_minor(v) <= major_minor(desired)][-1]
        path = importlib.resources.files("kubernetes_validate").joinpath(
            f"kubernetes-json-schema/v{version}-local-strict/_definitions.json"
        )
        times = []
        for _ in range(5):
            started = time.perf_counter()
            with path.open() as handle:
                json.load(handle)
            times.append(time.perf_counter() - started)
        results.definitions_parse_s[desired] = statistics.median(times)
        results.definitions_bytes[desired] = len(path.read_bytes())


def _spawn_page(results: HubResults, venv, catalog_url: str, kubeconfig: Path, root: Path) -> None:
    from tests.fixtures.hub import run_hub_python
    from thinkube_pipelines.hub import profiles

    folder = root / "spawn-page"
    folder.mkdir()
    shutil.copy(Path(profiles.__file__), folder / "thinkube_profiles.py")
    shutil.copy(Path(__file__).with_name("hub_spawn_page.py"), folder / "driver.py")
    spec = {
        "repetitions": results.spawn_repetitions,
        "warmup": SPAWN_WARMUP,
        "concurrency": results.concurrency,
        "bursts": results.bursts,
        "images": IMAGES,
    }
    env = {
        profiles.CATALOG_URL_ENV: catalog_url,
        profiles.CATALOG_TIMEOUT_ENV: "10",
        profiles.NODES_CACHE_ENV: str(NODES_CACHE_S),
        "KUBECONFIG": str(kubeconfig),
    }
    log(
        f"spawn page: {results.spawn_repetitions} single loads of each kind, then {results.bursts} bursts of "
        f"{results.concurrency} at once, in the hub venv"
    )
    started = time.monotonic()
    done = run_hub_python(venv, [folder / "driver.py", json.dumps(spec)], env=env, cwd=folder, timeout_s=900)
    if done.returncode != 0:
        raise RuntimeError(f"the spawn-page driver failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    results.spawn = json.loads(done.stdout.strip().splitlines()[-1])
    single = results.spawn["single"]
    log(
        f"spawn page: done in {time.monotonic() - started:.0f} s; medians: bare GET "
        f"{1000 * statistics.median(single['bare']):.1f} ms, profile_list (nodes cached) "
        f"{1000 * statistics.median(single['cached']):.1f} ms"
    )
