"""`thinkube-pipelines images register` and the catalog client, against the real catalog service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from thinkube_pipelines.catalog.client import CatalogClient, CatalogError
from thinkube_pipelines.catalog.entries import catalog_upsert
from thinkube_pipelines.images import load_image_definitions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def catalog(catalog_server, tmp_path):
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield server
    server.stop()


def register(catalog, token: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent), "THINKUBE_CATALOG_URL": catalog.base_url}
    if token is not None:
        env["THINKUBE_CATALOG_TOKEN"] = token
    exe = Path(sys.executable).parent / "thinkube-pipelines"
    return subprocess.run([str(exe), "images", "register"], env=env, cwd=REPO, capture_output=True, text=True)


def test_register_records_each_offered_image_inactive_and_keeps_published_ones(catalog):
    images = load_image_definitions(REPO / "images")
    client = CatalogClient(catalog.base_url, token=catalog.token)
    offered = [d for d in images if d.spec.catalog]
    published = offered[0]
    digest = "sha256:" + "ab" * 32
    client.upsert(
        catalog_upsert(published, registry="reg.example", repository=f"p/{published.name}", digest=digest)
    )

    result = register(catalog, catalog.token)
    assert result.returncode == 0, result.stderr

    items = {item.name: item for item in client.list()}
    assert set(items) == {d.name for d in offered}
    assert items[published.name].metadata.digest == digest and items[published.name].is_active
    for d in offered[1:]:
        item = items[d.name]
        assert not item.is_active
        assert item.display_name == d.spec.display_name
        assert item.metadata.gpu_required == d.spec.gpu_required
        assert "jupyter-compatible" in item.tags
    assert [i.name for i in client.jupyter_images()] == [published.name]
    assert "already in the catalog" in result.stdout

    again = register(catalog, catalog.token)
    assert again.returncode == 0 and again.stdout.count("already in the catalog") == len(offered)


def test_register_without_token_fails_naming_the_catalog(catalog):
    result = register(catalog, None)
    assert result.returncode == 1
    assert f"catalog {catalog.base_url}: no token configured" in result.stderr
    assert CatalogClient(catalog.base_url).list() == []


def test_register_with_wrong_token_reports_the_401(catalog):
    result = register(catalog, "not-the-token")
    assert result.returncode == 1
    assert f"catalog {catalog.base_url}: POST /api/v1/images answered 401" in result.stderr


def test_client_names_an_unreachable_catalog():
    client = CatalogClient("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(CatalogError, match=r"catalog http://127.0.0.1:9 is unreachable"):
        client.list()


def test_client_reports_503_when_no_image_is_offered(catalog):
    with pytest.raises(CatalogError) as caught:
        CatalogClient(catalog.base_url).jupyter_images()
    assert caught.value.status == 503
    assert "No Jupyter images are available" in str(caught.value)
