"""The catalog clients against the real catalog service: the blocking one the pipeline writes with, the
asynchronous one the hub reads with (same contract, never blocking its event loop); and the mapping from
an image definition to a catalog item (beside the assets)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.fixtures.postgres import start_postgres
from thinkube_pipelines.catalog.client import AsyncCatalogClient, CatalogClient, CatalogError
from thinkube_pipelines.defs.images.catalog_item import catalog_upsert
from thinkube_pipelines.images import load_image_definitions

REPO = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


@pytest.fixture
def catalog(catalog_server, tmp_path):
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield server
    server.stop()


@pytest.fixture
def definition():
    images = load_image_definitions(REPO / "images")
    return next(d for d in images if d.spec.gpu_required)


def test_entry_carries_the_image_definition(catalog, definition):
    client = CatalogClient(catalog.base_url, token=catalog.token)
    wanted = catalog_upsert(
        definition, registry="reg.example", repository=f"p/{definition.name}", digest=DIGEST
    )
    item, change = client.ensure(wanted)
    assert change == "created"
    assert item.display_name == definition.spec.display_name
    assert item.metadata.gpu_required is True
    assert item.metadata.cpu_limit == definition.spec.cpu_limit
    assert item.metadata.image_reference == f"reg.example/p/{definition.name}@{DIGEST}"
    assert item.tags[0] == "jupyter-compatible" and set(definition.spec.tags) <= set(item.tags)
    assert [i.name for i in client.jupyter_images()] == [definition.name]


def test_ensure_writes_only_what_changed(catalog, definition):
    client = CatalogClient(catalog.base_url, token=catalog.token)
    wanted = catalog_upsert(definition, registry="reg.example", repository="p/x", digest=DIGEST, tag="t1")
    first = client.upsert(wanted)
    assert first.change == "created" and first.item.is_active is True
    again, change = client.ensure(wanted)
    assert change == "unchanged" and again == first.item
    moved = catalog_upsert(definition, registry="reg.example", repository="p/x", digest="sha256:" + "cd" * 32)
    item, change = client.ensure(moved)
    assert change == "updated" and item.metadata.digest == "sha256:" + "cd" * 32


def test_a_rebuild_keeps_an_image_the_operator_deactivated(catalog, definition):
    """The mapping leaves is_active unset: a new build updates the item but does not offer it again."""
    client = CatalogClient(catalog.base_url, token=catalog.token)
    wanted = catalog_upsert(definition, registry="reg.example", repository="p/x", digest=DIGEST)
    assert "is_active" not in wanted.model_dump(exclude_unset=True)
    client.ensure(wanted)
    off = client.deactivate(definition.name)
    assert off.change == "updated" and off.item.is_active is False
    assert client.deactivate(definition.name).change == "unchanged"
    rebuilt = catalog_upsert(definition, registry="reg.example", repository="p/x", digest=OTHER_DIGEST)
    item, change = client.ensure(rebuilt)
    assert change == "updated" and item.is_active is False
    assert client.list(active=True) == [] and client.list(active=False) == [item]
    assert client.activate(definition.name).item.is_active is True
    client.delete(definition.name)
    assert client.get(definition.name) is None


def test_jupyter_images_reuses_the_list_while_its_etag_holds(catalog, definition):
    client = CatalogClient(catalog.base_url, token=catalog.token)
    client.ensure(catalog_upsert(definition, registry="reg.example", repository="p/x", digest=DIGEST))
    first = client.jupyter_images()
    assert client.jupyter_not_modified == 0
    assert client.jupyter_images() == first
    assert client.jupyter_not_modified == 1, "the second call was not answered 304"
    # What the caller does with the list it got does not change the cached one.
    first[0].display_name = "changed by the caller"
    assert client.jupyter_images()[0].display_name == definition.spec.display_name


def test_writing_without_a_token_names_the_catalog(catalog, definition):
    client = CatalogClient(catalog.base_url)
    with pytest.raises(CatalogError, match=f"catalog {catalog.base_url}: no token configured"):
        client.upsert(catalog_upsert(definition, registry="r.example", repository="p/x", digest=DIGEST))
    assert client.list() == []


def test_a_wrong_token_reports_the_401(catalog, definition):
    client = CatalogClient(catalog.base_url, token="not-the-token")
    with pytest.raises(CatalogError) as caught:
        client.upsert(catalog_upsert(definition, registry="r.example", repository="p/x", digest=DIGEST))
    assert caught.value.status == 401
    assert f"catalog {catalog.base_url}: POST /api/v1/images answered 401" in str(caught.value)
    assert "not-the-token" not in str(caught.value)


def test_client_names_an_unreachable_catalog():
    client = CatalogClient("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(CatalogError, match=r"catalog http://127.0.0.1:9 is unreachable"):
        client.list()


def test_changing_a_missing_image_reports_the_404(catalog):
    client = CatalogClient(catalog.base_url, token=catalog.token)
    for change in (client.activate, client.deactivate, client.delete):
        with pytest.raises(CatalogError) as caught:
            change("no-such-image")
        assert caught.value.status == 404
        assert str(caught.value).startswith(f"catalog {catalog.base_url}: ")
        assert "no-such-image" in str(caught.value)


def test_client_reports_503_when_no_image_is_offered(catalog):
    with pytest.raises(CatalogError) as caught:
        CatalogClient(catalog.base_url).jupyter_images()
    assert caught.value.status == 503
    assert "No Jupyter images are available" in str(caught.value)


# --- the asynchronous client (the hub's), against the same real service ------------------------------


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
