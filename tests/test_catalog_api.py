"""The catalog API over real HTTP, on SQLite and on PostgreSQL.

One service per backend, on a database made for this module; every test starts from an empty table.
Rows are checked in the database itself, not only through the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.fixtures.catalog import CatalogServer, CatalogServerFactory, sample_image
from tests.fixtures.postgres import PostgresServer

IMAGES = "/api/v1/images"
JUPYTER = "/api/v1/images/jupyter"


@dataclass
class Catalog:
    """The service under test and a direct line to its database."""

    server: CatalogServer
    engine: sa.Engine
    http: requests.Session

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{path}"

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.http.get(self.url(path), timeout=10, **kwargs)

    def post(
        self, path: str, payload: object = None, *, auth: bool = True, **kwargs: object
    ) -> requests.Response:
        headers = self.server.auth_headers if auth else {}
        return self.http.post(self.url(path), json=payload, headers=headers, timeout=10, **kwargs)

    def delete(self, path: str, *, auth: bool = True) -> requests.Response:
        headers = self.server.auth_headers if auth else {}
        return self.http.delete(self.url(path), headers=headers, timeout=10)

    def rows(self, name: str | None = None) -> list[sa.RowMapping]:
        query = "SELECT * FROM images" + (" WHERE name = :name" if name else "") + " ORDER BY id"
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text(query), {"name": name}).mappings())


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def catalog_service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    catalog_server: CatalogServerFactory,
) -> Iterator[Catalog]:
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalog.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database_url = postgres.create_database()
    server = catalog_server(database_url)
    engine = sa.create_engine(database_url)
    with requests.Session() as http:
        yield Catalog(server=server, engine=engine, http=http)
    server.stop()
    engine.dispose()


@pytest.fixture
def catalog(catalog_service: Catalog) -> Catalog:
    """The service, with an empty images table."""
    with catalog_service.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM images"))
    return catalog_service


def test_empty_catalog_answers_503_with_a_clear_detail(catalog: Catalog) -> None:
    response = catalog.get(JUPYTER)
    assert response.status_code == 503
    assert response.json() == {"detail": "No Jupyter images are available in the catalog"}
    assert catalog.get(IMAGES).json() == []
    assert catalog.get("/healthz").status_code == 200


def test_upsert_creates_then_the_same_payload_changes_nothing(catalog: Catalog) -> None:
    payload = sample_image()
    created = catalog.post(IMAGES, payload)
    assert created.status_code == 201, created.text
    [row] = catalog.rows()

    again = catalog.post(IMAGES, payload)
    assert again.status_code == 200
    assert again.json() == created.json()
    [row_again] = catalog.rows()
    assert row_again["id"] == row["id"]
    for column in ("name", "display_name", "description", "category", "is_default", "tags", "metadata"):
        assert row_again[column] == row[column]


def test_item_matches_the_contract(catalog: Catalog) -> None:
    payload = sample_image(metadata={"thinkube_control_extra": {"kept": True}})
    catalog.post(IMAGES, payload)
    [item] = catalog.get(JUPYTER).json()
    assert item == payload  # extra metadata keys survive; timestamps come back in UTC with a Z
    assert item["last_built"] == "2026-11-25T02:14:09Z"


def test_last_built_is_stored_in_utc(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image(last_built="2026-11-25T03:14:09+01:00"))
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["last_built"] == "2026-11-25T02:14:09Z"


def test_update_replaces_the_fields(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image())
    changed = sample_image(
        display_name="ML (GPU, CUDA 12.4)",
        default=True,
        tags=["jupyter-compatible", "cuda"],
        metadata={"tag": "2026.11.26-aaaaaaa", "digest": "sha256:" + "ab" * 32, "cpu_limit": 0.5},
        last_built="2026-11-26T01:00:00Z",
    )
    response = catalog.post(IMAGES, changed)
    assert response.status_code == 200
    assert response.json() == changed
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json() == changed
    [row] = catalog.rows()
    assert row["display_name"] == "ML (GPU, CUDA 12.4)"
    assert _json(row["metadata"])["digest"] == "sha256:" + "ab" * 32


def test_get_by_name_and_404_naming_the_image(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image())
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["name"] == "jupyter-ml-gpu"
    missing = catalog.get(f"{IMAGES}/jupyter-nope")
    assert missing.status_code == 404
    assert "jupyter-nope" in missing.json()["detail"]


def test_list_filters_by_category_and_activity(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image("jupyter-ml-cpu", metadata={"gpu_required": False}))
    catalog.post(IMAGES, sample_image("jupyter-ml-gpu"))
    catalog.post(IMAGES, sample_image("vscode-dev", category="vscode"))
    catalog.post(IMAGES, sample_image("jupyter-old", is_active=False))

    def names(**params: str) -> list[str]:
        response = catalog.get(IMAGES, params=params)
        assert response.status_code == 200
        return [item["name"] for item in response.json()]

    assert names() == ["jupyter-ml-cpu", "jupyter-ml-gpu", "jupyter-old", "vscode-dev"]
    assert names(category="vscode") == ["vscode-dev"]
    assert names(category="jupyter", active="true") == ["jupyter-ml-cpu", "jupyter-ml-gpu"]
    assert names(active="false") == ["jupyter-old"]
    assert [item["name"] for item in catalog.get(JUPYTER).json()] == ["jupyter-ml-cpu", "jupyter-ml-gpu"]


def test_inactive_images_are_not_offered(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image())
    deactivated = catalog.post(f"{IMAGES}/jupyter-ml-gpu/deactivate")
    assert deactivated.status_code == 200
    assert deactivated.json()["is_active"] is False
    assert catalog.get(JUPYTER).status_code == 503
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["is_active"] is False
    assert catalog.post(f"{IMAGES}/jupyter-nope/deactivate").status_code == 404


def test_delete(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image())
    deleted = catalog.delete(f"{IMAGES}/jupyter-ml-gpu")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert catalog.rows() == []
    again = catalog.delete(f"{IMAGES}/jupyter-ml-gpu")
    assert again.status_code == 404
    assert "jupyter-ml-gpu" in again.json()["detail"]
    # Created anew after a delete: 201 again.
    assert catalog.post(IMAGES, sample_image()).status_code == 201


def _json(value: object) -> object:
    """A JSON column as Python: PostgreSQL's driver decodes it, SQLite hands back the text."""
    return json.loads(value) if isinstance(value, str) else value


def _without(payload: dict, key: str) -> dict:
    return {k: v for k, v in payload.items() if k != key}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param(sample_image(metadata={"digest": "sha256:abc"}), "digest", id="bad-digest"),
        pytest.param(sample_image(metadata={"digest": "md5:" + "0" * 64}), "digest", id="digest-not-sha256"),
        pytest.param(_without(sample_image(), "name"), "name", id="missing-name"),
        pytest.param(sample_image(name="Jupyter_ML"), "name", id="uppercase-name"),
        pytest.param(sample_image(name="jupyter/ml"), "name", id="name-with-slash"),
        pytest.param(sample_image(metadata={"cpu_limit": "eight"}), "cpu_limit", id="cpu-limit-string"),
        pytest.param(sample_image(metadata={"cpu_limit": 0}), "cpu_limit", id="cpu-limit-zero"),
        pytest.param(sample_image(metadata={"mem_limit": "32 gigs"}), "mem_limit", id="mem-limit-words"),
        pytest.param(sample_image(metadata={"image_size": -1}), "image_size", id="negative-size"),
        pytest.param(
            sample_image(metadata={"gpu_required": "yes"}), "gpu_required", id="gpu-required-string"
        ),
        pytest.param(sample_image(tags="jupyter-compatible"), "tags", id="tags-not-a-list"),
        pytest.param(
            sample_image(last_built="2026-11-25T02:14:09"), "last_built", id="last-built-without-zone"
        ),
        pytest.param({**sample_image(), "owner": "someone"}, "owner", id="unknown-field"),
    ],
)
def test_invalid_payload_is_refused_with_the_field_named(catalog: Catalog, payload: dict, field: str) -> None:
    response = catalog.post(IMAGES, payload)
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(field in location for location in locations), locations
    assert catalog.rows() == []


def test_a_payload_that_is_not_json_is_refused(catalog: Catalog) -> None:
    response = catalog.http.post(
        catalog.url(IMAGES),
        data=b"{not json",
        headers={**catalog.server.auth_headers, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422
    assert catalog.rows() == []


@pytest.mark.parametrize("token", [None, "wrong-token", ""], ids=["no-token", "wrong-token", "empty"])
def test_writes_need_the_token(catalog: Catalog, token: str | None) -> None:
    catalog.post(IMAGES, sample_image("jupyter-kept"))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    attempts = [
        catalog.http.post(catalog.url(IMAGES), json=sample_image(), headers=headers, timeout=10),
        catalog.http.post(catalog.url(f"{IMAGES}/jupyter-kept/deactivate"), headers=headers, timeout=10),
        catalog.http.delete(catalog.url(f"{IMAGES}/jupyter-kept"), headers=headers, timeout=10),
    ]
    for response in attempts:
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert catalog.server.token not in response.text
    [row] = catalog.rows()
    assert row["name"] == "jupyter-kept"
    assert row["is_active"]
    # Reads stay open.
    assert catalog.get(JUPYTER).status_code == 200


def test_an_unauthenticated_bad_payload_gets_401_not_422(catalog: Catalog) -> None:
    response = catalog.post(IMAGES, {"name": "Nope"}, auth=False)
    assert response.status_code == 401


def test_concurrent_upserts_of_one_name_leave_one_row(catalog: Catalog) -> None:
    def upsert(index: int) -> requests.Response:
        payload = sample_image(metadata={"tag": f"build-{index}"})
        return requests.post(
            catalog.url(IMAGES), json=payload, headers=catalog.server.auth_headers, timeout=30
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(upsert, range(20)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 19 + [201], [
        response.text for response in responses if response.status_code >= 300
    ]
    [row] = catalog.rows("jupyter-ml-gpu")
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["metadata"]["tag"].startswith("build-")
    assert row["name"] == "jupyter-ml-gpu"


def test_writes_are_refused_when_no_writer_is_configured(
    catalog_server: CatalogServerFactory, tmp_path: Path
) -> None:
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}", token=None)
    try:
        response = requests.post(
            f"{server.base_url}{IMAGES}",
            json=sample_image(),
            headers={"Authorization": "Bearer anything"},
            timeout=10,
        )
        assert response.status_code == 503
        assert "no writer configured" in response.json()["detail"]
        assert "THINKUBE_CATALOG_TOKEN" in response.json()["detail"]
        assert requests.get(f"{server.base_url}{IMAGES}", timeout=10).json() == []
    finally:
        server.stop()
