"""Figure 4: the Kubernetes builder's own overhead per build, against the API simulator.

`KubernetesBuilder.build` (thinkube_pipelines/builders/kubernetes.py) runs against services this benchmark
starts on free ports and stops by their process handles: the Kubernetes API simulator (tests/k8s_sim, seed
`gpu-cluster`, started as the tests' fixture starts it) and a CNCF registry with htpasswd auth (the
builder pushes the context there and asks it for the pushed digest). The build pods are *scripted*: the
simulator's kubelet runs the `buildkit` container for `RUN_S` seconds, printing `LOG_LINES` lines evenly
over the run, and ends it with BuildKit's metadata (`containerimage.digest`) as its termination message;
that digest is an image pushed beforehand and tagged as each build's target, which the builder checks
against the registry.

Each build has a fresh context (the jupyter-ml-gpu folder plus a one-line nonce file, so that the upload is
a real one) and a fresh build key (so a fresh Job). Measured, interleaved after one warm-up of each:

- baseline: the very Job the builder created in the warm-up (same pod template, same script), under a new
  name, created with the kubernetes client, watched until Complete, its pod read for the termination
  message, then deleted: what any Job-based builder pays on this cluster;
- `KubernetesBuilder.build(request)`, wall time, with the time of each of its observable steps (its own
  `[kubernetes]` lines, the first log line it streamed, and its public `create_job`, `follower` and
  `delete_job` methods timed by a subclass that changes nothing else; its pods/log requests counted).

Between runs the benchmark waits until the namespace holds no Job and no pod (not timed).
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.timing import REPO, Sample, log

RUN_S = 1.0
"""How long the scripted `buildkit` container runs (T)."""
LOG_LINES = 20
IMAGE = "jupyter-ml-gpu"
"""Whose folder is the build context (the GPU image: the one built on the cluster's GPU nodes)."""
NAMESPACE = "bench-builds"
BUILD_SELECTOR = "app.kubernetes.io/component=image-build"
BUILD_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 60.0
LOG_PREFIX = "[kubernetes] "

BUILDER_PHASES = [
    ("upload", "context upload: blob and its `context-<hex>` manifest (registry, htpasswd)"),
    ("create", "Job create: kubeconfig, list the key's Jobs, POST the Job"),
    ("pod", "the Job controller creates the pod, the scheduler binds it to a GPU node; the builder sees it"),
    ("start", "init container run, `buildkit` started, its log stream opened, first line received"),
    (
        "run",
        "first log line to the end of the `buildkit` log stream, i.e. the container's exit (scripted: T)",
    ),
    ("complete", "log stream ended -> Job complete -> seen by the watch, log streams drained"),
    ("check", "result: termination message read, digest asked of the registry"),
    ("cleanup", "DELETE the succeeded Job"),
    ("return", "the rest, to `build` returning"),
]
BASELINE_PHASES = [
    ("create", "POST the Job"),
    ("complete", "watch until the Job is complete (pod start, T, completion)"),
    ("check", "list the Job's pod, read its termination message"),
    ("cleanup", "DELETE the Job"),
]


@dataclass
class Run:
    """One measured build or bare Job: its wall time and the seconds of each phase."""

    wall_s: float
    phases: dict[str, float]
    lines_in_order: bool = True
    log_requests: int = 0
    """pods/log requests the builder sent (builds only); 2 containers (`context`, `buildkit`) to follow."""


@dataclass
class KubernetesBuilderResults:
    run_s: float
    log_lines: int
    context_bytes: int
    repetitions: int
    kubelet_step_s: float
    baseline: list[Run] = field(default_factory=list)
    builder: list[Run] = field(default_factory=list)

    def sample(self, which: str) -> Sample:
        runs = self.baseline if which == "baseline" else self.builder
        return Sample(which, [run.wall_s for run in runs])

    def overhead(self, which: str) -> Sample:
        """Wall time minus the scripted run T."""
        return Sample(which, [wall - self.run_s for wall in self.sample(which).times])

    def phase_median(self, which: str, phase: str) -> float:
        runs = self.baseline if which == "baseline" else self.builder
        return statistics.median(run.phases[phase] for run in runs)

    def phase_spread(self, which: str, phase: str) -> str:
        runs = self.baseline if which == "baseline" else self.builder
        values = [run.phases[phase] for run in runs]
        return f"{min(values):.3f}-{max(values):.3f} s"


# -- the builder, timed ------------------------------------------------------------------------------------


def _timed_builder_class():
    """A KubernetesBuilder whose public Job methods note the time (in `Marks.current`), the manifest it
    sent and its pods/log requests; nothing else differs."""
    from thinkube_pipelines.builders.kubernetes import KubernetesBuilder

    class TimedBuilder(KubernetesBuilder):
        def create_job(self, api, manifest, cluster):
            Marks.current.manifest = copy.deepcopy(manifest)
            job = super().create_job(api, manifest, cluster)
            Marks.current.note("create_end")
            return job

        def follower(self, api, job, cluster, on_line, **extra):
            follower = super().follower(api, job, cluster, on_line, **extra)
            follow, read_log = follower.follow, follower.core.read_namespaced_pod_log

            def counted_read_log(*args, **kwargs):
                marks, container = Marks.current, kwargs.get("container") or ""
                marks.log_requests.append(container)  # list.append: thread-safe
                response = read_log(*args, **kwargs)
                stream = response.stream

                def timed_stream(*stream_args, **stream_kwargs):
                    yield from stream(*stream_args, **stream_kwargs)
                    if container == "buildkit":
                        marks.note("log_end")  # the first end: the container exited

                response.stream = timed_stream
                return response

            follower.core.read_namespaced_pod_log = counted_read_log

            def timed_follow():
                try:
                    return follow()
                finally:
                    Marks.current.note("followed")

            follower.follow = timed_follow
            return follower

        def delete_job(self, api, namespace, name, cluster):
            Marks.current.note("delete_start")
            try:
                return super().delete_job(api, namespace, name, cluster)
            finally:
                Marks.current.note("delete_end")

    return TimedBuilder


class Marks:
    """Seconds since the start of one build at which each step was first seen, the log lines it streamed,
    the Job manifest it sent."""

    current: Marks

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.at: dict[str, float] = {}
        self.lines: list[str] = []
        self.manifest: dict[str, Any] | None = None
        self.log_requests: list[str] = []
        """The container of each pods/log request (follow) the builder sent: one each when each stream is read
        once."""

    def note(self, name: str) -> None:
        if name not in self.at:
            self.at[name] = time.perf_counter() - self.started

    def on_line(self, line: str) -> None:
        if line.startswith(LOG_PREFIX):
            text = line[len(LOG_PREFIX) :]
            if text.startswith("build context "):
                self.note("context")
            elif " scheduled on node " in text:
                self.note("scheduled")
            return
        self.lines.append(line)
        self.note("first_line")


def _builder_phases(marks: Marks, wall: float) -> dict[str, float]:
    at = marks.at
    needed = ("context", "create_end", "scheduled", "first_line", "log_end", "followed", "delete_start",
              "delete_end")  # fmt: skip
    missing = [m for m in needed if m not in at]
    if missing:
        raise RuntimeError(f"the build did not show {', '.join(missing)} (marks: {at})")
    return {
        "upload": at["context"],
        "create": at["create_end"] - at["context"],
        "pod": at["scheduled"] - at["create_end"],
        "start": at["first_line"] - at["scheduled"],
        "run": at["log_end"] - at["first_line"],
        "complete": at["followed"] - at["log_end"],
        "check": at["delete_start"] - at["followed"],
        "cleanup": at["delete_end"] - at["delete_start"],
        "return": wall - at["delete_end"],
    }


# -- the baseline: a bare Job ----------------------------------------------------------------------------


def _bare_job(api, manifest: dict[str, Any], digest: str) -> Run:
    """Create the Job, watch it until complete, read the pod's termination message, delete the Job."""
    from kubernetes.client import BatchV1Api, CoreV1Api

    batch, core = BatchV1Api(api), CoreV1Api(api)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    started = time.perf_counter()
    created = json.loads(batch.create_namespaced_job(namespace, manifest, _preload_content=False).data)
    t_created = time.perf_counter() - started
    uid, version = created["metadata"]["uid"], created["metadata"]["resourceVersion"]
    done = False
    while not done:
        response = batch.list_namespaced_job(
            namespace,
            field_selector=f"metadata.name={name}",
            watch=True,
            resource_version=version,
            timeout_seconds=60,
            _preload_content=False,
        )
        try:
            buffer = b""
            for chunk in response.stream(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    job = event.get("object") or {}
                    version = (job.get("metadata") or {}).get("resourceVersion") or version
                    conditions = (job.get("status") or {}).get("conditions") or []
                    if any(
                        c.get("type") in ("SuccessCriteriaMet", "Complete") and c.get("status") == "True"
                        for c in conditions
                    ):
                        done = True
                        break
                if done:
                    break
        finally:
            response.release_conn()
        if time.perf_counter() - started > BUILD_TIMEOUT_S:
            raise RuntimeError(f"bare Job {namespace}/{name}: not complete after {BUILD_TIMEOUT_S:.0f} s")
    t_complete = time.perf_counter() - started
    pods = json.loads(
        core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/controller-uid={uid}", _preload_content=False
        ).data
    )
    messages = [
        ((status.get("state") or {}).get("terminated") or {}).get("message")
        for pod in pods.get("items") or []
        for status in (pod.get("status") or {}).get("containerStatuses") or []
        if status.get("name") == "buildkit"
    ]
    reported = [json.loads(m).get("containerimage.digest") for m in messages if m]
    if digest not in reported:
        raise RuntimeError(f"bare Job {namespace}/{name}: its pod reported {reported}, not {digest}")
    t_checked = time.perf_counter() - started
    batch.delete_namespaced_job(name, namespace, propagation_policy="Background", _preload_content=False)
    wall = time.perf_counter() - started
    return Run(
        wall,
        {
            "create": t_created,
            "complete": t_complete - t_created,
            "check": t_checked - t_complete,
            "cleanup": wall - t_checked,
        },
    )


# -- setup ---------------------------------------------------------------------------------------------------


def _docker_config_secret(registry) -> dict[str, Any]:
    import base64

    from thinkube_pipelines.builders.kubernetes import DEFAULT_REGISTRY_SECRET

    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    config = json.dumps({"auths": {registry.host: {"auth": auth}}})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": DEFAULT_REGISTRY_SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def _settle(core, batch, namespace: str) -> None:
    """Until the namespace holds no Job and no pod (the deleted ones' garbage collected)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        jobs = json.loads(batch.list_namespaced_job(namespace, _preload_content=False).data)
        pods = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)
        if not jobs.get("items") and not pods.get("items"):
            return
        if time.monotonic() > deadline:
            names = [o["metadata"]["name"] for o in (jobs.get("items") or []) + (pods.get("items") or [])]
            raise RuntimeError(f"namespace {namespace} still holds {names} after {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def run_kubernetes_builder(repetitions: int) -> KubernetesBuilderResults:
    from kubernetes import config as k8s_config
    from kubernetes.client import BatchV1Api, CoreV1Api

    from tests.fixtures.kubernetes import FIXTURE_SEED, start_simulator
    from tests.fixtures.registry import push_test_image, start_registry
    from thinkube_pipelines.builders.base import BuildContext, BuildRequest, RegistryAccess, RegistryAuth
    from thinkube_pipelines.kubernetes.cluster import KubernetesCluster
    from thinkube_pipelines.registry.client import RegistryClient

    root = Path(tempfile.mkdtemp(prefix="thinkube-bench-k8s-"))
    registry = simulator = None
    try:
        registry = start_registry(root / "registry", username="thinkube", log_level="warn")
        log(f"registry: {registry.url} (pid {registry.process.pid})")
        simulator = start_simulator(root / "k8s-sim")
        log(f"Kubernetes API simulator: {simulator.url} (pid {simulator.process.pid}), seed {FIXTURE_SEED}")
        api = k8s_config.new_client_from_config(config_file=str(simulator.kubeconfig))
        core, batch = CoreV1Api(api), BatchV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        core.create_namespaced_secret(NAMESPACE, _docker_config_secret(registry))

        repository = f"library/{IMAGE}"
        digest = push_test_image(registry, repository, "bench-result", content=b"bench\n")
        client = RegistryClient(registry.url, registry.username, registry.password)
        logs = [f"#{i} [{i}/{LOG_LINES}] RUN step {i}" for i in range(1, LOG_LINES + 1)]
        simulator.script(
            [
                {
                    "containers": {
                        "buildkit": {
                            "durationSeconds": RUN_S,
                            "logs": logs,
                            "terminationMessage": json.dumps({"containerimage.digest": digest}),
                        }
                    }
                }
            ],
            namespace=NAMESPACE,
            selector=BUILD_SELECTOR,
        )
        folder = shutil.copytree(REPO / "images" / IMAGE, root / "context")
        access = RegistryAccess(
            auth=RegistryAuth(host=registry.host, username=registry.username, password=registry.password),
            tls_verify=False,
        )
        cluster = KubernetesCluster(kubeconfig=str(simulator.kubeconfig), namespace=NAMESPACE)
        builder = _timed_builder_class()(cluster=cluster)
        results = KubernetesBuilderResults(
            run_s=RUN_S,
            log_lines=LOG_LINES,
            context_bytes=0,
            repetitions=repetitions,
            kubelet_step_s=0.02,  # the simulator's default (`--kubelet-step-seconds`), as the tests run it
        )
        manifest: dict[str, Any] = {}

        def build_once() -> Run:
            nonce = uuid.uuid4().hex
            (folder / "bench-nonce").write_text(nonce + "\n")
            context = BuildContext.from_folder(folder)
            results.context_bytes = len(context.archive)
            key = nonce[:32]
            tag = f"build-{key}"
            client.tag(repository, digest, tag)  # what the scripted BuildKit "pushed"
            request = BuildRequest(
                image_name=IMAGE,
                context=context,
                target=f"{registry.host}/{repository}:{tag}",
                labels={"org.thinkube.build-key": key},
                registry=access,
            )
            marks = Marks.current = Marks()
            result = builder.build(request, on_line=marks.on_line)
            wall = time.perf_counter() - marks.started
            if result.digest != digest:
                raise RuntimeError(f"the build returned {result.digest}, not {digest}")
            if not manifest and marks.manifest is not None:  # the warm-up's: the baseline's Job
                manifest.update(marks.manifest)
            run = Run(wall, _builder_phases(marks, wall), marks.lines == logs, len(marks.log_requests))
            _settle(core, batch, NAMESPACE)
            return run

        def bare_once() -> Run:
            job = copy.deepcopy(manifest)
            job["metadata"]["name"] = f"bare-{uuid.uuid4().hex[:12]}"
            run = _bare_job(api, job, digest)
            _settle(core, batch, NAMESPACE)
            return run

        warm_build = build_once()  # not counted; also gives the manifest the baseline reuses
        warm_bare = bare_once()
        log(f"kubernetes builder: warm-up build {warm_build.wall_s:.2f} s, bare Job {warm_bare.wall_s:.2f} s")
        for rep in range(repetitions):  # interleaved, so that a busy moment hits both alike
            results.baseline.append(bare_once())
            results.builder.append(build_once())
            log(
                f"kubernetes builder: repetition {rep + 1}/{repetitions}: bare Job "
                f"{results.baseline[-1].wall_s:.2f} s, build {results.builder[-1].wall_s:.2f} s "
                f"(T = {RUN_S:g} s)"
            )
        api.close()
        return results
    finally:
        if simulator is not None:
            simulator.stop()
            log(f"simulator stopped (pid {simulator.process.pid}, exit {simulator.process.returncode})")
        if registry is not None:
            registry.stop()
            log(f"registry stopped (pid {registry.process.pid})")
        shutil.rmtree(root, ignore_errors=True)
