"""Figure 2: the real pipeline of jupyter-base, end to end, with services started here and stopped here.

A CNCF registry with htpasswd auth, the catalog service (SQLite), the Debian base published to that
registry, a Dagster home and a buildah storage in a temporary folder. The four assets are materialized
with the real CLI and the environment `make demo` gives it (the Makefile's PIPELINE_ENV), in a plain
environment. Measured: the cold build, no-change reruns, and the event log records of the build step,
each against the same CLI materializing one trivial asset.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from bench.timing import BIN, REPO, log, plain_env, tail
from bench.trivial_defs import TRIVIAL_ASSET, TRIVIAL_STEP
from tests.fixtures.catalog import CatalogServer, start_catalog
from tests.fixtures.registry import RunningRegistry, start_registry
from thinkube_pipelines.builders.debian_base import DEFAULT_REPOSITORY_NAME, DEFAULT_TAG, publish_debian_base
from thinkube_pipelines.defs.images.keys import STAGES
from thinkube_pipelines.registry.client import RegistryClient

IMAGE = "jupyter-base"
BUILD_STEP = "jupyter_base"
"""The step of the jupyter-base chain (one multi-asset: source, build and its smoke check, published,
catalog_entry); its event log records are what a build writes."""
REGISTRY_USER = "thinkube"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
COLD_TIMEOUT_S = 2400.0
RUN_TIMEOUT_S = 600.0
CATALOG_START_S = 60.0
#: Where the benchmarks publish the Debian base in their registry, from the download cache `make` fills.
BASE_REPOSITORY = f"library/{DEFAULT_REPOSITORY_NAME}"
BASE_CACHE = REPO / ".state" / "cache"


@dataclass
class RunFacts:
    """One CLI materialization: wall time, what the services received, what the instance recorded."""

    wall_s: float
    run_id: str
    status: str
    events_by_step: dict[str, int]
    blob_uploads: int = 0
    manifest_puts: int = 0
    catalog_writes: int = 0
    catalog_revision: int | None = None
    build_duration_s: float | None = None
    reused: bool | None = None


@dataclass
class PipelineResults:
    trivial: list[RunFacts] = field(default_factory=list)
    cold: RunFacts | None = None
    reruns: list[RunFacts] = field(default_factory=list)
    base_publish_s: float = 0.0
    storage_driver: str = ""


class Services:
    """The registry and catalog this benchmark starts; `stop()` stops each by its own process handle."""

    def __init__(self, root: Path):
        self.root = root
        self.registry: RunningRegistry | None = None
        self.catalog: CatalogServer | None = None
        self.catalog_db = root / "catalog" / "catalog.db"
        self.base_publish_s = 0.0

    @property
    def catalog_url(self) -> str:
        assert self.catalog is not None
        return self.catalog.base_url

    @property
    def catalog_token(self) -> str:
        assert self.catalog is not None and self.catalog.token is not None
        return self.catalog.token

    def start(self) -> None:
        self.registry = start_registry(self.root / "registry", username=REGISTRY_USER, log_level="warn")
        log(f"registry: {self.registry.url} (pid {self.registry.process.pid}), user {REGISTRY_USER}")
        self.catalog = start_catalog(
            self.catalog_db.parent, f"sqlite:///{self.catalog_db}", ready_timeout_s=CATALOG_START_S
        )
        log(f"catalog: {self.catalog.base_url} (pid {self.catalog.process.pid}), SQLite {self.catalog_db}")

    def start_with_debian_base(self) -> str:
        """`start()`, then publish the Debian base to the registry, timed in `base_publish_s`; returns the
        base's reference by digest (for THINKUBE_BASE_MIRROR). Every benchmark that builds needs both."""
        self.start()
        registry = self.registry
        assert registry is not None
        started = time.perf_counter()
        client = RegistryClient(registry.url, registry.username, registry.password)
        digest = publish_debian_base(client, BASE_REPOSITORY, DEFAULT_TAG, cache_dir=BASE_CACHE, on_line=None)
        self.base_publish_s = time.perf_counter() - started
        return f"{registry.host}/{BASE_REPOSITORY}@{digest}"

    def _read(self, query: str, *params: object) -> int | None:
        if not self.catalog_db.exists():
            return None
        with closing(sqlite3.connect(f"file:{self.catalog_db}?mode=ro", uri=True)) as db:
            row = db.execute(query, params).fetchone()
        return row[0] if row else None

    def catalog_writes(self) -> int:
        """Writes the catalog committed so far: its generation, which every committed write bumps (a POST
        the catalog answers `unchanged` writes nothing and does not count)."""
        return self._read("SELECT generation FROM catalog_state") or 0

    def catalog_revision(self, name: str) -> int | None:
        """The item's write counter in the database (1 after its insert, +1 per update)."""
        return self._read("SELECT revision FROM images WHERE name = ?", name)

    def stop(self) -> None:
        if self.catalog is not None:
            self.catalog.stop()
            log(f"catalog stopped (pid {self.catalog.process.pid}, exit {self.catalog.process.returncode})")
        if self.registry is not None:
            self.registry.stop()
            log(f"registry stopped (pid {self.registry.process.pid})")


def _instance(home: Path):
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _run_ids(home: Path) -> list[str]:
    with _instance(home) as instance:
        return [run.run_id for run in instance.get_runs()]


def _facts(home: Path, before: list[str], wall_s: float) -> RunFacts:
    import dagster as dg

    with _instance(home) as instance:
        new = [run for run in instance.get_runs() if run.run_id not in before]
        if len(new) != 1:
            raise RuntimeError(f"expected one new run in {home}, found {len(new)}")
        run = new[0]
        events = Counter(entry.step_key or "(run)" for entry in instance.all_logs(run.run_id))
        facts = RunFacts(wall_s, run.run_id, run.status.value, dict(events))
        event = instance.get_latest_materialization_event(dg.AssetKey([IMAGE, "build"]))
        if event is not None and event.run_id == run.run_id and event.asset_materialization is not None:
            metadata = event.asset_materialization.metadata
            if "build_duration_s" in metadata:
                facts.build_duration_s = metadata["build_duration_s"].value
            if "reused" in metadata:
                facts.reused = metadata["reused"].value
        return facts


def _materialize(argv: list[str], env: dict[str, str], cwd: Path, out: Path, timeout_s: float) -> float:
    """Run one `dagster asset materialize`, printing progress (the last build STEP) while it runs."""
    with out.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            last_note = started
            while process.poll() is None:
                now = time.perf_counter()
                if now - started > timeout_s:
                    raise RuntimeError(f"{' '.join(argv)}: no end after {timeout_s:.0f} s\n{tail(out)}")
                if now - last_note > 30:
                    steps = re.findall(r"STEP \d+/\d+: .{0,60}", out.read_text(errors="replace"))
                    log(f"  ... {now - started:.0f} s, {steps[-1] if steps else 'starting'}")
                    last_note = now
                time.sleep(0.05)
            wall = time.perf_counter() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}:\n{tail(out, 60)}")
    return wall


def _materialize_argv(module: str, selection: str) -> list[str]:
    return [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        module,
        "--select",
        selection,
        "-d",
        str(REPO),
    ]


def _cleanup_buildah(state: Path) -> None:
    """Remove working containers left in the benchmark's buildah storage, then unmount it."""
    from thinkube_pipelines.builders.buildah import BuildahRunner

    runner = BuildahRunner(
        storage_root=str(state / "containers" / "root"), run_root=str(state / "containers" / "run")
    )
    for args in (("rm", "--all"), ("umount", "--all")):
        try:
            subprocess.run(runner.buildah_argv(*args), capture_output=True, check=False, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"buildah {' '.join(args)}: {exc}")


def run_pipeline(reruns: int, trivial_runs: int) -> PipelineResults:
    results = PipelineResults()
    root = Path(tempfile.mkdtemp(prefix="thinkube-bench-pipeline-"))
    services = Services(root)
    state = root / "state"
    try:
        services.start_with_debian_base()
        registry = services.registry
        assert registry is not None
        results.base_publish_s = services.base_publish_s
        log(
            f"Debian base published as {registry.host}/{BASE_REPOSITORY}:{DEFAULT_TAG} "
            f"in {results.base_publish_s:.1f} s"
        )

        images = shutil.copytree(REPO / "images", root / "images")  # what runs cannot change under us
        home = root / "dagster-home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        (root / "home").mkdir()
        settings = {
            "DAGSTER_HOME": str(home),
            "THINKUBE_IMAGES_DIR": str(images),
            "THINKUBE_STATE_DIR": str(state),
            "THINKUBE_REGISTRY_URL": registry.url,
            "THINKUBE_REGISTRY_USERNAME": registry.username,
            "THINKUBE_REGISTRY_PASSWORD": registry.password,
            "THINKUBE_CATALOG_URL": services.catalog_url,
            "THINKUBE_CATALOG_TOKEN": services.catalog_token,
            "THINKUBE_BASE_MIRROR": f"{registry.host}/{BASE_REPOSITORY}:{DEFAULT_TAG}",
        }
        if HOST_CA_BUNDLE.is_file():
            settings["THINKUBE_BUILD_CA_BUNDLE"] = str(HOST_CA_BUNDLE)
        env = plain_env(root / "home", **settings)
        # As `make demo` does: the instance lets one image build step run at a time.
        subprocess.run(
            [str(BIN / "dagster"), "instance", "concurrency", "set", "image_builds", "1"],
            env=env, cwd=root, capture_output=True, check=True, timeout=120,
        )  # fmt: skip

        from thinkube_pipelines.builders.buildah import fastest_storage_driver

        state.mkdir()
        results.storage_driver = fastest_storage_driver(str(state / "containers"))

        trivial_argv = _materialize_argv("bench.trivial_defs", TRIVIAL_ASSET)
        _materialize(trivial_argv, env, root, root / "trivial-warmup.log", RUN_TIMEOUT_S)  # not counted
        for i in range(trivial_runs):
            before = _run_ids(home)
            wall = _materialize(trivial_argv, env, root, root / f"trivial-{i}.log", RUN_TIMEOUT_S)
            results.trivial.append(_facts(home, before, wall))
            log(
                f"trivial run {i + 1}/{trivial_runs}: {wall:.2f} s, "
                f"{results.trivial[-1].events_by_step.get(TRIVIAL_STEP)} events in its step"
            )

        chain_argv = _materialize_argv(
            "thinkube_pipelines.definitions", ",".join(f"{IMAGE}/{s}" for s in STAGES)
        )

        def measured(label: str, timeout_s: float) -> RunFacts:
            mark, writes = registry.mark(), services.catalog_writes()
            before = _run_ids(home)
            wall = _materialize(chain_argv, env, root, root / f"{label}.log", timeout_s)
            facts = _facts(home, before, wall)
            facts.blob_uploads = registry.blob_uploads(since=mark)
            facts.manifest_puts = registry.manifest_puts(since=mark)
            facts.catalog_writes = services.catalog_writes() - writes
            facts.catalog_revision = services.catalog_revision(IMAGE)
            log(
                f"{label}: {wall:.1f} s, {facts.blob_uploads} blob uploads, "
                f"{facts.manifest_puts} manifest PUTs, {facts.catalog_writes} catalog writes, "
                f"{facts.events_by_step.get(BUILD_STEP)} events in {BUILD_STEP}"
            )
            return facts

        log(f"cold build of {IMAGE}: a real buildah build ({results.storage_driver} storage), minutes ...")
        results.cold = measured("cold", COLD_TIMEOUT_S)
        for i in range(reruns):
            log(f"no-change rerun {i + 1}/{reruns} ...")
            results.reruns.append(measured(f"rerun-{i}", RUN_TIMEOUT_S))
        return results
    finally:
        try:
            services.stop()
        finally:
            if state.exists():
                _cleanup_buildah(state)
            shutil.rmtree(root, ignore_errors=True)
            if root.exists():
                log(f"could not remove all of {root} (left for inspection)")
