"""The hub release: `helm upgrade --install --wait --rollback-on-failure`, then the hub's health endpoint.

- The chart comes from the settings: a local .tgz (`chart_path`, THINKUBE_HUB_CHART_PATH) or the chart
  repository (`--repo chart_repository chart --version chart_version`).
- The values travel as a file in a private temporary folder (mode 0700, the file 0600), removed afterwards:
  never on helm's command line, where every process on the machine could read them.
- `--rollback-on-failure` (helm 4's name for `--atomic`): a failed or timed-out rollout is rolled back to the
  last deployed revision (a first install that fails is uninstalled), so the hub keeps serving what it
  served before. helm's `--timeout` is `helm_timeout_s`, capped by the budget.
- Then the hub's health endpoint must answer 200: `health_url`, by default `{public_url}/hub/health`
  (through the ingress and the proxy, as users reach it). Where the deploy runs cannot resolve the public
  host, set THINKUBE_HUB_HEALTH_URL, e.g. `http://proxy-public.<namespace>.svc/hub/health` from a pod in
  the cluster (the chart's NetworkPolicy admits anyone to the proxy, not to the hub's own Service).
- The whole release (helm and the health wait) must finish within `budget_s` (120 s by default); past it
  the deploy fails, naming how long it took.

The helm binary: THINKUBE_HELM (a path), else `helm` on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from thinkube_pipelines.hub.render import to_yaml
from thinkube_pipelines.hub.settings import HEALTH_URL_ENV, HELM_ENV

if TYPE_CHECKING:
    from thinkube_pipelines.hub.settings import HubSettings

HEALTH_PATH = "/hub/health"
HEALTH_POLL_S = 1.0
OUTPUT_TAIL = 4000


class ReleaseError(RuntimeError):
    """The release failed: helm failed (and rolled back), the hub did not answer, or the budget ran out."""


@dataclass(frozen=True)
class ReleaseResult:
    release: str
    namespace: str
    chart: str
    revision: int
    status: str
    health_url: str
    helm_s: float
    health_s: float
    duration_s: float
    budget_s: float

    def metadata(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "namespace": self.namespace,
            "chart": self.chart,
            "revision": self.revision,
            "status": self.status,
            "health_url": self.health_url,
            "helm_s": round(self.helm_s, 3),
            "health_s": round(self.health_s, 3),
            "duration_s": round(self.duration_s, 3),
            "budget_s": self.budget_s,
        }


def helm_binary(configured: str | None = None) -> str:
    """The helm to run: `configured`, else $THINKUBE_HELM, else `helm` on PATH; ReleaseError otherwise."""
    candidate = configured or os.environ.get(HELM_ENV)
    if candidate:
        if not (Path(candidate).is_file() and os.access(candidate, os.X_OK)):
            raise ReleaseError(f"helm binary {candidate} ({HELM_ENV}) is not an executable file")
        return candidate
    found = shutil.which("helm")
    if found is None:
        raise ReleaseError(f"no helm binary: set {HELM_ENV} to its path, or put helm (4.x) on PATH")
    return found


def default_health_url(settings: HubSettings) -> str:
    return settings.public_url.rstrip("/") + HEALTH_PATH


def chart_args(settings: HubSettings) -> list[str]:
    """The chart argument(s) of `helm upgrade`: the local .tgz, or the repository chart at its version."""
    if settings.chart_path is not None:
        if not Path(settings.chart_path).is_file():
            raise ReleaseError(f"chart {settings.chart_path} (THINKUBE_HUB_CHART_PATH) does not exist")
        return [str(settings.chart_path)]
    return [settings.chart, "--repo", settings.chart_repository, "--version", settings.chart_version]


def chart_label(settings: HubSettings) -> str:
    if settings.chart_path is not None:
        return Path(settings.chart_path).name
    return f"{settings.chart}-{settings.chart_version} ({settings.chart_repository})"


def _tail(text: str) -> str:
    return text if len(text) <= OUTPUT_TAIL else "..." + text[-OUTPUT_TAIL:]


def _seconds(value: float) -> str:
    return f"{max(1, int(value))}s"


def write_values_file(values: Mapping[str, Any], private: Path) -> Path:
    """`values` as YAML (libyaml's dumper where PyYAML has it) in `private/values.yaml`: the folder made
    0700, the file created 0600 (never there before). The path, for helm's `--values`."""
    os.chmod(private, 0o700)
    path = private / "values.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(to_yaml(json.loads(json.dumps(values))))  # plain JSON data (recorded metadata)
    return path


def deploy_release(
    settings: HubSettings,
    values: Mapping[str, Any],
    *,
    helm: str | None = None,
    kubeconfig: str | None = None,
    kube_context: str | None = None,
    env: Mapping[str, str] | None = None,
    health_url: str | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> ReleaseResult:
    """Install or upgrade the hub release with `values`, wait for it, then for its health endpoint.

    `kubeconfig`/`kube_context`: the cluster (None: helm's own default, in a pod its ServiceAccount);
    `env`: helm's environment (None: this process's); `log` receives helm's output and progress lines.
    Raises ReleaseError naming what failed: helm (with its output's tail and the release's state after the
    rollback), the health endpoint (its last answer), or the budget."""
    binary = helm_binary(helm)
    url = health_url or default_health_url(settings)
    budget = settings.budget_s
    started = time.monotonic()
    helm_timeout = min(settings.helm_timeout_s, budget)
    common = ["--namespace", settings.namespace]
    if kubeconfig:
        common += ["--kubeconfig", kubeconfig]
    if kube_context:
        common += ["--kube-context", kube_context]
    environment = dict(os.environ if env is None else env)

    with tempfile.TemporaryDirectory(prefix="thinkube-hub-") as private:
        values_file = write_values_file(values, Path(private))
        command = [
            binary,
            "upgrade",
            "--install",
            settings.release,
            *chart_args(settings),
            *common,
            "--values",
            str(values_file),
            "--wait",
            "--rollback-on-failure",
            "--timeout",
            _seconds(helm_timeout),
        ]
        log(
            f"helm upgrade --install {settings.release} {chart_label(settings)} -n {settings.namespace} "
            f"--wait --rollback-on-failure --timeout {_seconds(helm_timeout)}"
        )
        try:
            result = subprocess.run(
                command,
                env=environment,
                capture_output=True,
                text=True,
                timeout=helm_timeout + 120,  # helm's own timeout, plus the rollback
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ReleaseError(
                f"helm upgrade of release {settings.release} in namespace {settings.namespace} did not exit "
                f"within {helm_timeout + 120:.0f} s"
            ) from exc
    helm_s = time.monotonic() - started
    for stream in (result.stdout, result.stderr):
        for line in stream.splitlines():
            log(line)
    state = _release_state(binary, settings, common, environment)
    if result.returncode != 0:
        raise ReleaseError(
            f"helm upgrade --install of release {settings.release} ({chart_label(settings)}) in namespace "
            f"{settings.namespace} failed after {helm_s:.1f} s (helm timeout {_seconds(helm_timeout)}); "
            f"after the rollback: {state['summary']}.\nhelm said:\n"
            + _tail(result.stderr.strip() or result.stdout)
        )
    log(f"helm: {state['summary']} in {helm_s:.1f} s; waiting for {url}")

    health_started = time.monotonic()
    deadline = min(started + budget, health_started + settings.health_timeout_s)
    last = "no attempt"
    while True:
        try:
            answer = requests.get(url, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            if answer.status_code == 200:
                break
            last = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}"
        if time.monotonic() + HEALTH_POLL_S > deadline:
            waited = time.monotonic() - health_started
            raise ReleaseError(
                f"the hub (release {settings.release}, revision {state['revision']}) did not answer 200 at "
                f"{url} within {waited:.1f} s (last: {last}); total {time.monotonic() - started:.1f} s of a "
                f"{budget:g} s budget ({HEALTH_URL_ENV} sets the URL)"
            )
        time.sleep(HEALTH_POLL_S)
    health_s = time.monotonic() - health_started
    duration = time.monotonic() - started
    if duration > budget:
        raise ReleaseError(
            f"the hub deploy took {duration:.1f} s (helm {helm_s:.1f} s, health {health_s:.1f} s): past its "
            f"budget of {budget:g} s ({settings.release} revision {state['revision']} is deployed, healthy)"
        )
    return ReleaseResult(
        release=settings.release,
        namespace=settings.namespace,
        chart=chart_label(settings),
        revision=state["revision"],
        status=state["status"],
        health_url=url,
        helm_s=helm_s,
        health_s=health_s,
        duration_s=duration,
        budget_s=budget,
    )


def _release_state(binary: str, settings: HubSettings, common: list[str], env: Mapping[str, str]) -> dict:
    """The release's revisions after helm ran: the latest revision and status, and a one-line summary."""
    try:
        result = subprocess.run(
            [binary, "history", settings.release, *common, "--max", "5", "-o", "json"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        history = json.loads(result.stdout) if result.returncode == 0 else []
    except (subprocess.TimeoutExpired, ValueError):
        history = []
    if not history:
        return {
            "revision": 0,
            "status": "absent",
            "summary": "the release does not exist (nothing installed)",
        }
    latest = history[-1]
    revisions = ", ".join(f"{h['revision']} {h['status']}" for h in history)
    return {
        "revision": int(latest["revision"]),
        "status": latest["status"],
        "summary": f"revision {latest['revision']} is {latest['status']} (history: {revisions})",
    }
