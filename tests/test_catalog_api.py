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
    """The service, with an empty images table (the generation bumped, as every write does)."""
    with catalog_service.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM images"))
        connection.execute(sa.text("UPDATE catalog_state SET generation = generation + 1"))
    return catalog_service


def _names(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()]


def _defaults(catalog: Catalog) -> list[str]:
    return [item["name"] for item in catalog.get(JUPYTER).json() if item["default"]]


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
    assert created.json()["change"] == "created"
    [row] = catalog.rows()

    again = catalog.post(IMAGES, payload)
    assert again.status_code == 200
    assert again.json() == {"change": "unchanged", "item": created.json()["item"]}
    [row_again] = catalog.rows()
    # Nothing was written: same revision, same updated_at.
    assert dict(row_again) == dict(row)


def test_item_matches_the_contract(catalog: Catalog) -> None:
    payload = sample_image(metadata={"thinkube_control_extra": {"kept": True}})
    catalog.post(IMAGES, payload)
    [item] = catalog.get(JUPYTER).json()
    # Extra metadata keys survive; timestamps come back in UTC with a Z; the only image is the default.
    assert item == {**payload, "default": True}
    assert item["last_built"] == "2026-11-25T02:14:09Z"


def test_last_built_is_stored_in_utc(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image(last_built="2026-11-25T03:14:09+01:00"))
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["last_built"] == "2026-11-25T02:14:09Z"


def test_update_replaces_the_fields(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image())
    [before] = catalog.rows()
    changed = sample_image(
        display_name="ML (GPU, CUDA 12.4)",
        default=True,
        tags=["jupyter-compatible", "cuda"],
        metadata={"tag": "2026.11.26-aaaaaaa", "digest": "sha256:" + "ab" * 32, "cpu_limit": 0.5},
        last_built="2026-11-26T01:00:00Z",
    )
    response = catalog.post(IMAGES, changed)
    assert response.status_code == 200
    assert response.json() == {"change": "updated", "item": changed}
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json() == changed
    [row] = catalog.rows()
    assert row["display_name"] == "ML (GPU, CUDA 12.4)"
    assert _json(row["metadata"])["digest"] == "sha256:" + "ab" * 32
    assert row["revision"] == before["revision"] + 1


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

    assert _names(catalog.get(IMAGES)) == ["jupyter-ml-cpu", "jupyter-ml-gpu", "jupyter-old", "vscode-dev"]
    assert _names(catalog.get(IMAGES, params={"category": "vscode"})) == ["vscode-dev"]
    active_jupyter = catalog.get(IMAGES, params={"category": "jupyter", "active": "true"})
    assert _names(active_jupyter) == ["jupyter-ml-cpu", "jupyter-ml-gpu"]
    assert _names(catalog.get(IMAGES, params={"active": "false"})) == ["jupyter-old"]
    assert _names(catalog.get(JUPYTER)) == ["jupyter-ml-cpu", "jupyter-ml-gpu"]


def test_reads_carry_an_etag_and_answer_304_until_the_catalog_changes(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image("jupyter-a"))
    for path in (JUPYTER, IMAGES, f"{IMAGES}/jupyter-a"):
        first = catalog.get(path)
        etag = first.headers["ETag"]
        cached = catalog.get(path, headers={"If-None-Match": etag})
        assert cached.status_code == 304, path
        assert cached.content == b""
        assert cached.headers["ETag"] == etag
    etag = catalog.get(JUPYTER).headers["ETag"]
    catalog.post(IMAGES, sample_image("jupyter-b"))
    fresh = catalog.get(JUPYTER, headers={"If-None-Match": etag})
    assert fresh.status_code == 200
    assert fresh.headers["ETag"] != etag
    assert _names(fresh) == ["jupyter-a", "jupyter-b"]


def test_a_write_to_the_database_by_another_replica_is_seen_at_the_next_read(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image("jupyter-a"))
    assert _names(catalog.get(JUPYTER)) == ["jupyter-a"]
    # Another replica's write: a row and the generation, in one transaction, not through this service.
    with catalog.engine.begin() as connection:
        connection.execute(sa.text("UPDATE catalog_state SET generation = generation + 1"))
        connection.execute(sa.text("UPDATE images SET display_name = 'Renamed' WHERE name = 'jupyter-a'"))
    assert catalog.get(f"{IMAGES}/jupyter-a").json()["display_name"] == "Renamed"


def test_exactly_one_default_among_the_active_jupyter_images(catalog: Catalog) -> None:
    for name in ("jupyter-c", "jupyter-a", "jupyter-b"):
        catalog.post(IMAGES, sample_image(name))
    assert _defaults(catalog) == ["jupyter-a"]  # none marked: the first by name

    marked = catalog.post(IMAGES, sample_image("jupyter-b", default=True))
    assert marked.json()["item"]["default"] is True
    assert _defaults(catalog) == ["jupyter-b"]
    catalog.post(IMAGES, sample_image("jupyter-c", default=True))  # marking one unmarks the others
    assert _defaults(catalog) == ["jupyter-c"]
    assert [row["name"] for row in catalog.rows() if row["is_default"]] == ["jupyter-c"]

    catalog.post(f"{IMAGES}/jupyter-c/deactivate")  # deactivating the default moves it
    assert _defaults(catalog) == ["jupyter-a"]
    catalog.post(f"{IMAGES}/jupyter-a/deactivate")
    assert _defaults(catalog) == ["jupyter-b"]
    catalog.post(f"{IMAGES}/jupyter-c/activate")  # the marked image is the default again once offered
    assert _defaults(catalog) == ["jupyter-c"]
    assert not catalog.get(f"{IMAGES}/jupyter-a").json()["default"]


def test_deactivation_stays_until_an_explicit_activation(catalog: Catalog) -> None:
    catalog.post(IMAGES, sample_image())
    deactivated = catalog.post(f"{IMAGES}/jupyter-ml-gpu/deactivate")
    assert deactivated.status_code == 200
    assert deactivated.json()["change"] == "updated"
    assert deactivated.json()["item"]["is_active"] is False
    assert catalog.get(JUPYTER).status_code == 503
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["is_active"] is False
    assert catalog.post(f"{IMAGES}/jupyter-nope/deactivate").status_code == 404

    # A repeated POST that says is_active=true is refused, naming the route that does it.
    refused = catalog.post(IMAGES, sample_image(is_active=True))
    assert refused.status_code == 409
    assert "/api/v1/images/jupyter-ml-gpu/activate" in refused.json()["detail"]
    # The pipeline's upsert leaves is_active out: the fields change, the image stays inactive.
    rebuilt = catalog.post(IMAGES, _without(sample_image(metadata={"tag": "rebuilt"}), "is_active"))
    assert rebuilt.status_code == 200
    assert rebuilt.json()["item"]["is_active"] is False
    assert catalog.get(JUPYTER).status_code == 503

    activated = catalog.post(f"{IMAGES}/jupyter-ml-gpu/activate")
    assert activated.json()["change"] == "updated"
    assert _names(catalog.get(JUPYTER)) == ["jupyter-ml-gpu"]
    assert catalog.post(f"{IMAGES}/jupyter-ml-gpu/activate").json()["change"] == "unchanged"


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
        pytest.param(sample_image(name="jupyter"), "name", id="name-of-a-route"),
        pytest.param(sample_image(metadata={"cpu_limit": "eight"}), "cpu_limit", id="cpu-limit-string"),
        pytest.param(sample_image(metadata={"cpu_limit": 0}), "cpu_limit", id="cpu-limit-zero"),
        pytest.param(sample_image(metadata={"cpu_limit": 1e308}), "cpu_limit", id="cpu-limit-huge"),
        pytest.param(sample_image(metadata={"mem_limit": "32 gigs"}), "mem_limit", id="mem-limit-words"),
        pytest.param(sample_image(metadata={"mem_limit": "32GB"}), "mem_limit", id="mem-limit-gb"),
        pytest.param(sample_image(metadata={"mem_limit": "0G"}), "mem_limit", id="mem-limit-zero"),
        pytest.param(sample_image(metadata={"mem_limit": "65Ti"}), "mem_limit", id="mem-limit-over-64ti"),
        pytest.param(sample_image(metadata={"image_size": -1}), "image_size", id="negative-size"),
        pytest.param(sample_image(metadata={"image_size": 2**63}), "image_size", id="size-2-63"),
        pytest.param(
            sample_image(metadata={"gpu_required": "yes"}), "gpu_required", id="gpu-required-string"
        ),
        pytest.param(
            sample_image(metadata={"registry": "https://harbor.example.org"}),
            "registry",
            id="registry-scheme",
        ),
        pytest.param(
            sample_image(metadata={"registry": "harbor.example.org\nx"}), "registry", id="registry-newline"
        ),
        pytest.param(sample_image(metadata={"registry": "harbor"}), "registry", id="registry-no-dot-no-port"),
        pytest.param(sample_image(metadata={"repository": "../../etc"}), "repository", id="repository-dots"),
        pytest.param(
            sample_image(metadata={"repository": "x;rm -rf /"}), "repository", id="repository-shell"
        ),
        pytest.param(sample_image(metadata={"tag": "a\nb"}), "tag", id="tag-newline"),
        pytest.param(
            sample_image(metadata={"repository": "a/" * 130 + "b"}), "repository", id="reference-too-long"
        ),
        pytest.param(sample_image(tags="jupyter-compatible"), "tags", id="tags-not-a-list"),
        pytest.param(sample_image(tags=[f"t{i}" for i in range(33)]), "tags", id="too-many-tags"),
        pytest.param(sample_image(display_name="two\nlines"), "display_name", id="display-name-newline"),
        pytest.param(sample_image(metadata={"notes": "x" * 20_000}), "metadata", id="metadata-over-16-kib"),
        pytest.param(
            sample_image(last_built="2026-11-25T02:14:09"), "last_built", id="last-built-without-zone"
        ),
        pytest.param(
            sample_image(last_built="9999-12-31T23:59:59-14:00"), "last_built", id="last-built-overflow"
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


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["cpu_limit", "image_size", "extra"])
def test_non_finite_numbers_are_refused_with_422_not_500(catalog: Catalog, number: str, field: str) -> None:
    body = json.dumps(sample_image(metadata={field: 271828})).replace("271828", number)
    response = catalog.http.post(
        catalog.url(IMAGES),
        data=body,
        headers={**catalog.server.auth_headers, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422, response.text
    # Either the JSON parser refuses the token (NaN is not JSON) or the field's validation names it.
    [error] = response.json()["detail"]
    named = "metadata" if field == "extra" else field  # a free-form key is checked with its metadata
    assert error["type"] == "json_invalid" or named in error["loc"], error
    assert catalog.rows() == []


@pytest.mark.parametrize("mem_limit", ["32G", "32Gi", "512M", "1.5G", "2Ti", "1073741824"])
def test_memory_takes_the_quantities_kubespawner_takes(catalog: Catalog, mem_limit: str) -> None:
    response = catalog.post(IMAGES, sample_image(metadata={"mem_limit": mem_limit}))
    assert response.status_code == 201, response.text
    assert response.json()["item"]["metadata"]["mem_limit"] == mem_limit


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(sample_image(metadata={"notes": "x" * (10 * 1024 * 1024)}), id="10-mb-metadata"),
        pytest.param(sample_image(tags=["t"] * 200_000), id="200000-tags"),
    ],
)
def test_a_body_over_the_limit_is_refused_with_413(catalog: Catalog, payload: dict) -> None:
    response = catalog.post(IMAGES, payload)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert catalog.rows() == []


def test_a_chunked_body_over_the_limit_is_refused_with_413(catalog: Catalog) -> None:
    body = json.dumps(sample_image(metadata={"notes": "x" * (1024 * 1024)})).encode()
    chunks = (body[offset : offset + 65536] for offset in range(0, len(body), 65536))
    response = catalog.http.post(
        catalog.url(IMAGES),
        data=chunks,
        headers={**catalog.server.auth_headers, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413
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
    assert row["revision"] == 20
    assert catalog.get(f"{IMAGES}/jupyter-ml-gpu").json()["metadata"]["tag"].startswith("build-")


def test_concurrent_defaults_leave_exactly_one(catalog: Catalog) -> None:
    names = [f"jupyter-{index:02d}" for index in range(12)]

    def mark(name: str) -> int:
        payload = sample_image(name, default=True)
        return requests.post(
            catalog.url(IMAGES), json=payload, headers=catalog.server.auth_headers, timeout=30
        ).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(mark, names)) == {201}
    assert len([row for row in catalog.rows() if row["is_default"]]) == 1
    assert len(_defaults(catalog)) == 1


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
