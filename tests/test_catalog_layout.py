"""The catalog service stands on its own (issue 7, "Layout"): it never imports the pipeline, `[catalog]`
alone installs and runs it, and the hub's asynchronous client speaks the same contract as the pipeline's.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.catalog import catalog_env
from tests.fixtures.network import free_port
from tests.fixtures.postgres import start_postgres
from tests.fixtures.processes import stop_process
from thinkube_pipelines.catalog.client import AsyncCatalogClient, CatalogClient, CatalogError
from thinkube_pipelines.defs.images.catalog_item import catalog_upsert
from thinkube_pipelines.images import load_image_definitions

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
        healthy = _wait_healthy(f"http://127.0.0.1:{port}", server)
        assert healthy, f"thinkube-catalog serve in a [catalog] venv is not ready:\n{log.read_text()}"
    finally:
        stop_process(server)
    assert time.monotonic() - started < 90, "installing and starting the catalog took over 90 s"


def _wait_healthy(base_url: str, process: subprocess.Popen, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


# --- the asynchronous client, against the real service -------------------------------------------------


@pytest.fixture
def catalog(catalog_server, tmp_path):
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield server
    server.stop()


@pytest.fixture
def definition():
    return next(d for d in load_image_definitions(REPO / "images") if d.spec.gpu_required)


def test_async_client_writes_reads_and_reuses_the_jupyter_list(catalog, definition):
    wanted = catalog_upsert(definition, registry="reg.example", repository="p/x", digest=DIGEST, tag="t1")
    moved = wanted.model_copy(update={"metadata": wanted.metadata.model_copy(update={"tag": "t2"})})

    async def scenario() -> None:
        async with AsyncCatalogClient(catalog.base_url, token=catalog.token) as client:
            created = await client.upsert(wanted)
            assert created.change == "created" and created.item.is_active is True
            item, change = await client.ensure(wanted)
            assert change == "unchanged" and item == created.item
            assert await client.get(definition.name) == item
            assert await client.get("no-such-image") is None
            assert await client.list(category="jupyter", active=True) == [item]
            assert await client.list(active=False) == []

            first = await client.jupyter_images()
            assert [i.name for i in first] == [definition.name]
            assert client.jupyter_not_modified == 0
            assert await client.jupyter_images() == first
            assert client.jupyter_not_modified == 1, "the second call was not answered 304"

            # A write changes the list: the next read gets the new one, not the cached one.
            _, change = await client.ensure(moved)
            assert change == "updated"
            assert [i.metadata.tag for i in await client.jupyter_images()] == ["t2"]
            assert client.jupyter_not_modified == 1
            assert [i.metadata.tag for i in await client.jupyter_images()] == ["t2"]
            assert client.jupyter_not_modified == 2

            off = await client.deactivate(definition.name)
            assert off.change == "updated" and off.item.is_active is False
            with pytest.raises(CatalogError) as none_offered:
                await client.jupyter_images()
            assert none_offered.value.status == 503
            on = await client.activate(definition.name)
            assert on.change == "updated" and on.item.is_active is True
            await client.delete(definition.name)
            assert await client.get(definition.name) is None

    asyncio.run(scenario())
    # The blocking client reads the same contract from the same service.
    assert CatalogClient(catalog.base_url).list() == []


def test_async_client_errors_name_the_catalog(catalog, definition):
    wanted = catalog_upsert(definition, registry="r.example", repository="p/x", digest=DIGEST)
    prefix = f"catalog {catalog.base_url}: "

    async def scenario() -> None:
        async with AsyncCatalogClient(catalog.base_url, token="not-the-token") as wrong:
            with pytest.raises(CatalogError) as caught:
                await wrong.upsert(wanted)
            assert caught.value.status == 401
            assert str(caught.value).startswith(f"{prefix}POST /api/v1/images answered 401")
            assert "not-the-token" not in str(caught.value)

        async with AsyncCatalogClient(catalog.base_url, token=catalog.token) as client:
            with pytest.raises(CatalogError, match=f"^{prefix}no token configured"):
                await AsyncCatalogClient(catalog.base_url).upsert(wanted)
            with pytest.raises(CatalogError) as caught:
                await client.jupyter_images()
            assert caught.value.status == 503 and "No Jupyter images are available" in str(caught.value)
            # The catalog's 422 body names the field; the client keeps that.
            with pytest.raises(CatalogError) as caught:
                await client.upsert(wanted.model_copy(update={"display_name": ""}))
            assert caught.value.status == 422 and "display_name" in str(caught.value)
            with pytest.raises(CatalogError) as caught:
                await client.delete("no-such-image")
            assert caught.value.status == 404
            assert str(caught.value).startswith(f"{prefix}DELETE /api/v1/images/no-such-image answered 404")

        with pytest.raises(CatalogError, match=r"^catalog http://127.0.0.1:9 is unreachable"):
            await AsyncCatalogClient("http://127.0.0.1:9", timeout_s=2).list()

    asyncio.run(scenario())


def test_async_client_waiting_for_a_silent_catalog_leaves_the_loop_free():
    """A catalog that accepts and never answers: the client times out, and other tasks ran meanwhile."""
    listener = socket.create_server(("127.0.0.1", 0))  # never accepts: connections wait in the backlog
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        beat = asyncio.create_task(ticker())
        try:
            async with AsyncCatalogClient(base_url, timeout_s=1) as client:
                with pytest.raises(CatalogError, match=rf"^catalog {base_url} is unreachable: no answer"):
                    await client.jupyter_images()
        finally:
            beat.cancel()
        return ticks

    try:
        ticks = asyncio.run(scenario())
    finally:
        listener.close()
    # About 50 in the one-second wait; a client that blocked the loop would leave at most one.
    assert ticks >= 20, f"the event loop ran only {ticks} ticks while the client waited"


def test_async_client_reports_retry_after_when_the_database_is_down(catalog_server, definition):
    postgres = start_postgres()
    try:
        catalog = catalog_server(postgres.create_database())
        wanted = catalog_upsert(definition, registry="r.example", repository="p/x", digest=DIGEST)

        async def scenario() -> None:
            async with AsyncCatalogClient(catalog.base_url, token=catalog.token) as client:
                await client.upsert(wanted)
                assert [i.name for i in await client.jupyter_images()] == [definition.name]
                postgres.stop()
                with pytest.raises(CatalogError) as caught:
                    await client.jupyter_images()
                assert caught.value.status == 503
                assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
                assert str(caught.value).startswith(f"catalog {catalog.base_url}: GET /api/v1/images/jupyter")
                assert "Retry-After:" in str(caught.value)
                postgres.start()
                assert [i.name for i in await client.jupyter_images()] == [definition.name]

        asyncio.run(scenario())
        catalog.stop()
    finally:
        postgres.destroy()
