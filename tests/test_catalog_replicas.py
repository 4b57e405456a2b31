"""Two catalog replicas on one PostgreSQL, 200 concurrent readers, one writer: what the cluster runs.

Readers alternate between the replicas and check every answer: a valid catalog (sorted, unique names,
exactly one default), generations that never go back for a reader even when it switches replica, and one
body per generation whichever replica served it. The writer sends each upsert through one replica and
reads it back at once through the other. At the end every acknowledged write is there, on both.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
from pydantic import TypeAdapter

from tests.fixtures.catalog import CatalogServer, CatalogServerFactory, sample_image
from thinkube_pipelines.catalog.contract import CatalogItem

READERS = 200
READ_SECONDS = 12.0
MIN_WRITES = 10
"""Writes go on past READ_SECONDS until this many: a busy machine slows the writer, not the verdict."""
IMAGES = 20
JUPYTER = "/api/v1/images/jupyter"
_ITEMS = TypeAdapter(list[CatalogItem])


@dataclass
class Observed:
    """What the readers saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    bodies: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    reads: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 20:
                self.problems.append(text)


def _check_catalog(body: bytes) -> str | None:
    """Why `body` is not a consistent catalog, or None."""
    items = _ITEMS.validate_json(body)
    names = [item.name for item in items]
    if names != sorted(set(names)):
        return f"names not unique and sorted: {names}"
    defaults = [item.name for item in items if item.default]
    if len(defaults) != 1:
        return f"{len(defaults)} defaults: {defaults}"
    return None


def _reader(replicas: list[CatalogServer], stop: threading.Event, observed: Observed, index: int) -> None:
    last_generation = 0
    turn = index
    with requests.Session() as http:
        while not stop.is_set():
            replica = replicas[turn % 2]
            turn += 1
            try:
                response = http.get(f"{replica.base_url}{JUPYTER}", timeout=30)
            except requests.RequestException as error:
                observed.problem(f"reader {index}: {error!r} from {replica.base_url}")
                continue
            if response.status_code != 200:
                observed.problem(f"reader {index}: {response.status_code} {response.text[:200]}")
                continue
            generation = int(response.headers["X-Catalog-Generation"])
            if generation < last_generation:
                observed.problem(
                    f"reader {index}: generation went back from {last_generation} to {generation}"
                )
            last_generation = generation
            why = _check_catalog(response.content)
            if why:
                observed.problem(f"reader {index} at generation {generation}: {why}")
            digest = hashlib.sha256(response.content).hexdigest()
            with observed.lock:
                observed.bodies[generation].add(digest)
                observed.reads += 1


def _upsert(replica: CatalogServer, payload: dict) -> requests.Response:
    return requests.post(
        f"{replica.base_url}/api/v1/images", json=payload, headers=replica.auth_headers, timeout=30
    )


@pytest.fixture
def replicas(catalog_server: CatalogServerFactory, fresh_postgres_url: str) -> list[CatalogServer]:
    token = "replica-shared-token-" + hashlib.sha256(fresh_postgres_url.encode()).hexdigest()[:16]
    started = [catalog_server(fresh_postgres_url, token=token) for _ in range(2)]
    yield started
    for server in started:
        server.stop()


def test_200_readers_on_two_replicas_see_consistent_catalogs_and_no_write_is_lost(
    replicas: list[CatalogServer],
) -> None:
    names = [f"jupyter-replica-{index:02d}" for index in range(IMAGES)]
    for name in names:
        assert _upsert(replicas[0], sample_image(name)).status_code == 201

    observed = Observed()
    stop = threading.Event()
    acknowledged: dict[str, str] = {}
    marked: str | None = None  # the image the last acknowledged writes left marked default
    writes = 0
    with ThreadPoolExecutor(READERS) as pool:
        for index in range(READERS):
            pool.submit(_reader, replicas, stop, observed, index)
        try:
            deadline = time.monotonic() + READ_SECONDS
            while time.monotonic() < deadline or writes < MIN_WRITES:
                name = names[writes % IMAGES]
                description = f"write {writes}"
                default = writes % 7 == 0
                through, other = replicas[writes % 2], replicas[(writes + 1) % 2]
                response = _upsert(through, sample_image(name, description=description, default=default))
                assert response.status_code == 200, response.text
                acknowledged[name] = description
                if default:
                    marked = name
                elif marked == name:
                    marked = None
                # Visible through the other replica at its very next read.
                seen = requests.get(f"{other.base_url}/api/v1/images/{name}", timeout=30).json()
                assert seen["description"] == description, (writes, seen)
                writes += 1
        finally:
            stop.set()

    assert not observed.problems, "\n".join(observed.problems)
    split = {generation: bodies for generation, bodies in observed.bodies.items() if len(bodies) > 1}
    assert not split, f"one generation served as different bodies by the replicas: {sorted(split)[:10]}"
    assert observed.reads > READERS, observed.reads
    assert writes >= MIN_WRITES, writes
    assert len(observed.bodies) >= 10, f"the readers saw only {len(observed.bodies)} generations"

    # No acknowledged write is lost, and both replicas answer the same catalog.
    finals = [requests.get(f"{replica.base_url}{JUPYTER}", timeout=30) for replica in replicas]
    assert finals[0].content == finals[1].content
    final = {item.name: item for item in _ITEMS.validate_json(finals[0].content)}
    for name, description in acknowledged.items():
        assert final[name].description == description, name
    # The default is the image marked last (marking unmarks the others), else the first by name.
    assert [item.name for item in final.values() if item.default] == [marked or names[0]]
    print(f"{observed.reads} reads of {len(observed.bodies)} generations, {writes} writes")
