"""Figure 3: the catalog service under load. `GET /api/v1/images/jupyter` (the hub asks it at every spawn)
with 500 active Jupyter images, 200 concurrent clients, on SQLite and on PostgreSQL, against a FastAPI
endpoint answering the same JSON as a constant, served the same way on the same machine.

Per database: the real service (`thinkube-catalog serve`, one process) on a fresh database, 500 images
registered through its API with the service token, its answer fetched once; then three servers side by
side, measured in turn with `wrk` (interleaved repetitions, one warm-up run each, not counted):

- baseline: `bench.constant_catalog --mode value`, the route returns that JSON as a Python constant,
  which FastAPI serializes on each request (the issue's "FastAPI endpoint returning the same JSON as a
  constant, in the same setup");
- reference, for information: `--mode bytes`, the same body pre-encoded, answered as is;
- the catalog.

Every server is started and stopped by its own process handle; every wait has a time limit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.constant_catalog import PATH
from bench.timing import REPO, log, tail
from tests.fixtures.catalog import CatalogServer, sample_image, start_catalog
from tests.fixtures.network import free_port
from tests.fixtures.processes import stop_process

TARGETS = ("baseline", "bytes", "catalog")
"""The servers measured for each database, in the order each repetition runs them."""
DATABASES = ("sqlite", "postgresql")
LOG_LEVEL = "warning"
"""uvicorn's log level for every server (the same for all: no access log line per request)."""
READY_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 180.0
IDLE_CPU_SHARE = 0.05
PROMPT_S = 2.0
"""A server has settled when its CPU is idle and it answers one request within this."""
ERROR_KINDS = ("status", "connect", "read", "write", "timeout")
"""wrk's error counters: answers with status 400 or above, and socket errors."""

# wrk's `done` hook: its own counters as one JSON line (latencies in microseconds).
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


@dataclass(frozen=True)
class CatalogLoadConfig:
    images: int = 500
    connections: int = 200
    duration_s: int = 30
    repetitions: int = 3
    warmup_s: int = 5
    threads: int = 1
    """wrk threads: one event loop drives 200 connections far faster than any of these servers answers,
    and leaves the second core of a 2-core machine to the server."""
    timeout_s: int = 30
    """wrk's request timeout. wrk leaves answers slower than this out of its latencies and counts them as
    timeouts: as long as a run, so that every answer received counts in p50/p99."""
    databases: tuple[str, ...] = DATABASES


@dataclass
class WrkRun:
    """One wrk run against one server: wrk's own counters, and the server's CPU time during the run."""

    requests: int
    duration_s: float
    bytes: int
    connections: int
    errors: dict[str, int]
    """wrk's counters (ERROR_KINDS): status (answers with status 400 or above), connect, read, write, and
    timeout (answers that came later than wrk's timeout, left out of its latencies)."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    """Latencies of the answers received within the run; infinite when none came."""
    server_cpu_s: float
    settle_s: float = 0.0
    """How long the server took to settle after the run (see `settle`)."""
    logged: int = 0
    """ERROR records in the server's log from the start of the run until it had settled after it: also
    the requests that failed after wrk had cut their connection."""

    @property
    def ok(self) -> int:
        return self.requests - self.errors.get("status", 0)

    @property
    def rps(self) -> float:
        """Successful answers a second."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def p99_bound_ms(self) -> float:
        """A lower bound on the p99 latency of every request sent in the run, answered or not.

        wrk's percentiles cover only the answers it received; the requests still waiting when the run
        ends are in none of them, so a server that answers few requests looks fast. But each of the C
        connections always has one request outstanding, so over a run of D seconds the requests' waits
        (those unanswered counted up to the end) add up to C*D, spread over N answered + C unanswered
        requests: a mean M = C*D/(N+C) (Little's law). No wait exceeds D, so the mean is at most
        0.99*p99 + 0.01*D, which gives p99 >= (M - 0.01*D) / 0.99."""
        mean = self.connections * self.duration_s / (self.requests + self.connections)
        return 1000 * max(0.0, (mean - 0.01 * self.duration_s) / 0.99)

    @property
    def p99_judged_ms(self) -> float:
        """wrk's p99 of the answers, or the lower bound over all requests where that is higher."""
        return max(self.p99_ms, self.p99_bound_ms)


@dataclass
class TargetRuns:
    label: str
    runs: list[WrkRun] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    """The first ERROR records of the server's log during the measured runs."""
    warmup_logged_errors: int = 0

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    def errors(self) -> dict[str, int]:
        return {kind: sum(run.errors.get(kind, 0) for run in self.runs) for kind in ERROR_KINDS}

    @property
    def error_count(self) -> int:
        return sum(self.errors().values())

    @property
    def logged(self) -> int:
        return sum(run.logged for run in self.runs)

    @property
    def cpu_ms_per_answer(self) -> float:
        answers = sum(run.ok for run in self.runs)
        return 1000 * sum(run.server_cpu_s for run in self.runs) / answers if answers else float("nan")


@dataclass
class DatabaseResults:
    database: str
    """"SQLite" or "PostgreSQL <version>"."""
    targets: dict[str, TargetRuns] = field(default_factory=dict)
    items: int = 0
    body_bytes: int = 0
    bodies_identical: bool | None = None
    populate_s: float = 0.0
    not_measured: str | None = None
    """Why this database could not be measured (setup failed), if so."""


@dataclass
class CatalogLoadResults:
    config: CatalogLoadConfig
    wrk_version: str
    databases: list[DatabaseResults]


# -- wrk ---------------------------------------------------------------------------------------------


def wrk_binary() -> str:
    """The wrk binary; RuntimeError naming the package when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(
            "the catalog load benchmark needs `wrk` (Debian package `wrk`, listed in system-packages.txt: "
            "`make setup` installs it, or apt-get install -y wrk)"
        )
    return found


def wrk_version() -> str:
    done = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (done.stdout + done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_cpu_idle(process: subprocess.Popen, deadline: float) -> None:
    """Until `process` burns under 5% of a core for half a second (or exits, or `deadline`)."""
    before = _cpu_seconds(process.pid)
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        now = _cpu_seconds(process.pid)
        if now - before < IDLE_CPU_SHARE * 0.5:
            return
        before = now


def settle(server: Server, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
    """Wait until `server` is done with the requests it accepted before wrk cut their connections (they are
    still served, or stuck), so that they neither steal from the next run nor hide their errors: its CPU
    is idle and one request is answered within PROMPT_S. Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline and server.process.poll() is None:
        _wait_cpu_idle(server.process, deadline)
        asked = time.monotonic()
        with suppress(requests.RequestException):
            requests.get(server.url, timeout=max(1.0, deadline - asked))
        if time.monotonic() - asked < PROMPT_S:
            return time.monotonic() - started
    if server.process.poll() is None:
        log(f"catalog load: {server.label} not settled after {timeout_s:.0f} s; measuring on")
    return time.monotonic() - started


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def logged_errors(path: Path, offset: int) -> list[str]:
    """The ERROR records (uvicorn's and the catalog's) a server logged after byte `offset` of its log."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    records = []
    for index, line in enumerate(lines):
        if not re.match(r"ERROR\b", line):
            continue
        # A traceback may follow the record: its last line names the exception.
        end = index + 1
        while end < len(lines) and not re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b", lines[end]):
            end += 1
        cause = lines[end - 1].strip() if end - 1 > index else ""
        records.append(f"{line} -> {cause}" if cause else line)
    return records


def run_wrk(server: Server, config: CatalogLoadConfig, duration_s: int, workdir: Path) -> WrkRun:
    """One wrk run of `duration_s` against `server`, then `settle` it; its errors include those it logged
    from the start of the run until it settled."""
    url, process = server.url, server.process
    script = workdir / "done.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    argv = [
        wrk_binary(),
        f"--threads={config.threads}",
        f"--connections={config.connections}",
        f"--duration={duration_s}s",
        f"--timeout={config.timeout_s}s",
        "--latency",
        f"--script={script}",
        url,
    ]
    cpu_before = _cpu_seconds(process.pid)
    log_offset = _log_size(server.log_path)
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        output, _ = wrk.communicate(timeout=duration_s + config.timeout_s + 60)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wrk against {url} did not end in time") from None
    finally:
        stop_process(wrk)
    cpu_s = _cpu_seconds(process.pid) - cpu_before
    settle_s = settle(server)
    text = output.decode(errors="replace")
    found = re.search(r"^WRK_JSON (\{.*\})$", text, re.MULTILINE)
    if wrk.returncode != 0 or found is None:
        raise RuntimeError(f"wrk against {url} failed (exit {wrk.returncode}):\n{text[-3000:]}")
    data = json.loads(found.group(1))
    if data["requests"] == 0:  # nothing answered within the run: no latency is known, and none is short
        data.update({key: float("inf") for key in ("p50_us", "p90_us", "p99_us", "max_us")})
    return WrkRun(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        connections=config.connections,
        bytes=data["bytes"],
        errors={kind: data[kind] for kind in ERROR_KINDS},
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        server_cpu_s=cpu_s,
        settle_s=settle_s,
        logged=len(logged_errors(server.log_path, log_offset)),
    )


# -- the servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    url: str
    process: subprocess.Popen = field(repr=False)
    log_path: Path


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}:\n{tail(log_path)}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}: no 200 answer in {READY_TIMEOUT_S:.0f} s:\n{tail(log_path)}")


@contextmanager
def constant_server(body_file: Path, mode: str, workdir: Path) -> Iterator[Server]:
    """`python -m bench.constant_catalog` answering `body_file` (mode value or bytes), stopped on exit."""
    port = free_port()
    log_path = workdir / f"constant-{mode}.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("THINKUBE_")}
    argv = [
        sys.executable, "-m", "bench.constant_catalog", "--body", str(body_file), "--mode", mode,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", LOG_LEVEL,
    ]  # fmt: skip
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        url = f"http://127.0.0.1:{port}{PATH}"
        _wait_ready(url, process, log_path)
        yield Server(f"constant ({mode})", url, process, log_path)
    finally:
        stop_process(process)


def populate(catalog: CatalogServer, images: int) -> None:
    """Register `images` active Jupyter images (jupyter-bench-000, ...) through the API."""
    with requests.Session() as session:
        for index in range(images):
            payload = sample_image(f"jupyter-bench-{index:03d}")
            answer = session.post(
                f"{catalog.base_url}/api/v1/images", json=payload, headers=catalog.auth_headers, timeout=60
            )
            if answer.status_code not in (200, 201):
                raise RuntimeError(
                    f"POST /api/v1/images {payload['name']}: {answer.status_code} {answer.text[:500]}"
                )


@contextmanager
def database(kind: str, root: Path) -> Iterator[tuple[str, str]]:
    """(label, SQLAlchemy URL) of a fresh database of `kind`, removed on exit."""
    if kind == "sqlite":
        yield "SQLite", f"sqlite:///{root / 'catalog.db'}"
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database {kind!r}")
    from tests.fixtures.postgres import start_postgres

    with start_postgres(None) as server:  # a temporary folder the postgres user can enter
        yield f"PostgreSQL {server.bin_dir.parent.name}", server.create_database("catalog_bench")


def measure_database(kind: str, config: CatalogLoadConfig) -> DatabaseResults:
    results = DatabaseResults(database=kind)
    with tempfile.TemporaryDirectory(prefix=f"thinkube-bench-catalog-{kind}-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        catalog: CatalogServer | None = None
        try:
            label, url = stack.enter_context(database(kind, root))
            results.database = label
            catalog = stack.enter_context(start_catalog(root / "catalog", url, log_level=LOG_LEVEL))
            log(f"catalog load: {label}: catalog at {catalog.base_url} (pid {catalog.process.pid})")
            started = time.monotonic()
            populate(catalog, config.images)
            results.populate_s = time.monotonic() - started
            answer = requests.get(f"{catalog.base_url}{PATH}", timeout=60)
            if answer.status_code != 200:
                raise RuntimeError(f"GET {PATH}: {answer.status_code} {answer.text[:500]}")
            body = answer.content
            results.items, results.body_bytes = len(json.loads(body)), len(body)
            log(
                f"catalog load: {label}: {config.images} images registered in {results.populate_s:.1f} s; "
                f"{PATH} answers {results.items} items, {len(body)} bytes"
            )
            body_file = root / "body.json"
            body_file.write_bytes(body)
            servers = {
                "baseline": stack.enter_context(constant_server(body_file, "value", root)),
                "bytes": stack.enter_context(constant_server(body_file, "bytes", root)),
                "catalog": Server("catalog", f"{catalog.base_url}{PATH}", catalog.process, catalog.log_path),
            }
            results.bodies_identical = all(
                requests.get(server.url, timeout=60).content == body for server in servers.values()
            )
        except Exception as error:  # a database that cannot be set up is reported, not fatal
            results.not_measured = f"{type(error).__name__}: {str(error).strip()[:2000]}"
            if catalog is not None:
                time.sleep(0.5)  # let the service flush what it logged about it
                results.not_measured += f"\nthe catalog's log ends with:\n{tail(catalog.log_path, 15)}"
            log(f"catalog load: {kind}: not measured: {results.not_measured}")
            return results

        results.targets = {name: TargetRuns(name) for name in TARGETS}
        for name in TARGETS:  # warm-up: imports, caches, connection pools; not counted
            offset = _log_size(servers[name].log_path)
            run_wrk(servers[name], config, config.warmup_s, root)
            results.targets[name].warmup_logged_errors = len(logged_errors(servers[name].log_path, offset))
        offsets = {name: _log_size(servers[name].log_path) for name in TARGETS}
        for rep in range(config.repetitions):  # interleaved, so that a busy moment hits every server alike
            for name in TARGETS:
                server = servers[name]
                run = run_wrk(server, config, config.duration_s, root)
                results.targets[name].runs.append(run)
                alive = "" if server.process.poll() is None else f"; EXITED with {server.process.returncode}"
                log(
                    f"catalog load: {label}, repetition {rep + 1}/{config.repetitions}, {name}: "
                    f"{run.rps:.1f} answers/s, p50 {run.p50_ms:.0f} ms, p99 {run.p99_ms:.0f} ms "
                    f"(at least {run.p99_bound_ms:.0f} ms over all requests), wrk errors {run.errors}, "
                    f"{run.logged} ERROR records in its log, settled in {run.settle_s:.1f} s{alive}"
                )
        for name in TARGETS:
            results.targets[name].log_errors = logged_errors(servers[name].log_path, offsets[name])[:5]
    return results


def run_catalog_load(config: CatalogLoadConfig) -> CatalogLoadResults:
    version = wrk_version()
    measured = [measure_database(kind, config) for kind in config.databases]
    return CatalogLoadResults(config=config, wrk_version=version, databases=measured)
