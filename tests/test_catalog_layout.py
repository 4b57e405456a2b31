"""The catalog service stands on its own (issue 7, "Layout"): it never imports the pipeline, `[catalog]`
alone installs and runs it. (The hub's asynchronous client is tested with the other in
test_catalog_client.py.)
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.catalog import catalog_env, wait_ready
from tests.fixtures.network import free_port
from tests.fixtures.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
CATALOG_PACKAGE = REPO / "thinkube_pipelines" / "catalog"
DIGEST = "sha256:" + "ab" * 32
#: What the service must never import: the pipeline's packages, and Dagster with its integrations.
PIPELINE_MODULES = (
    "dagster",
    "thinkube_pipelines.images",
    "thinkube_pipelines.defs",
    "thinkube_pipelines.builders",
    "thinkube_pipelines.registry",
)


def _is_pipeline(module: str) -> bool:
    return module.startswith("dagster_") or any(
        module == name or module.startswith(f"{name}.") for name in PIPELINE_MODULES
    )


# --- the service does not import the pipeline ----------------------------------------------------------


def test_no_catalog_module_names_a_pipeline_module():
    """Every import statement under catalog/, lazy ones inside functions included."""
    found = []
    for path in sorted(CATALOG_PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if _is_pipeline(n)]
    assert found == [], "the catalog service imports the pipeline:\n" + "\n".join(found)


def test_running_the_service_loads_no_pipeline_module(tmp_path):
    """Migrate, build the app and the clients in a fresh interpreter; then look at what got loaded."""
    script = """
import json, sys
from thinkube_pipelines.catalog import cli
assert cli.main(["migrate"]) == 0
from thinkube_pipelines.catalog.api import create_app
create_app()
from thinkube_pipelines.catalog.client import AsyncCatalogClient, CatalogClient
print(json.dumps(sorted(sys.modules)))
"""
    env = catalog_env(f"sqlite:///{tmp_path / 'catalog.db'}", token="t")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = [module for module in json.loads(done.stdout.splitlines()[-1]) if _is_pipeline(module)]
    assert loaded == [], f"importing the catalog service loaded pipeline modules: {loaded}"


@pytest.mark.slow
def test_the_catalog_extra_alone_installs_migrates_and_serves(tmp_path):
    """What the service's container image does: `pip install .[catalog]`, migrate, serve. No Dagster."""
    from uv import find_uv_bin

    uv = find_uv_bin()
    source = tmp_path / "source"  # a copy, so that building the wheel writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "thinkube_pipelines",
        source / "thinkube_pipelines",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    uv_env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}

    def run(*command: object, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(part) for part in command], capture_output=True, text=True, timeout=timeout, **kwargs
        )

    made = run(uv, "venv", "--quiet", "--python", sys.executable, venv, timeout=60, env=uv_env)
    assert made.returncode == 0, f"uv venv failed:\n{made.stderr}"
    started = time.monotonic()
    install = [uv, "pip", "install", "--python", python, "-c", REPO / "constraints.txt", f"{source}[catalog]"]
    installed = run(*install, timeout=240, env=uv_env)
    assert installed.returncode == 0, (
        f"`uv pip install .[catalog]` failed (it needs the package index):\n{installed.stderr[-3000:]}"
    )
    listed = run(uv, "pip", "list", "--python", python, "--format", "json", timeout=60, env=uv_env)
    packages = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "httpx"} <= packages, sorted(packages)
    pipeline_packages = sorted(p for p in packages if p.startswith("dagster") or p in {"kubernetes"})
    assert pipeline_packages == [], f"the [catalog] extra installs pipeline packages: {pipeline_packages}"

    env = catalog_env(f"sqlite:///{tmp_path / 'catalog.db'}", token="t")
    migrated = run(venv / "bin" / "thinkube-catalog", "migrate", timeout=60, env=env, cwd=tmp_path)
    assert migrated.returncode == 0, f"migrate failed in a [catalog] venv:\n{migrated.stderr}"

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [venv / "bin" / "thinkube-catalog", "serve", "--port", str(port), "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
    try:
        healthy = wait_ready(f"http://127.0.0.1:{port}", server)
        assert healthy, f"thinkube-catalog serve in a [catalog] venv is not ready:\n{log.read_text()}"
    finally:
        stop_process(server)
    assert time.monotonic() - started < 90, "installing and starting the catalog took over 90 s"
