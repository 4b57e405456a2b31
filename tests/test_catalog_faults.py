"""Database faults: PostgreSQL stops under a running catalog service, then comes back.

The catalog runs against a PostgreSQL server of this module's own (`start_postgres`), so stopping it
(`pg_ctl stop -m fast`: every open connection is cut) disturbs no other test. While it is down, every
database-backed answer is a quick 503 with a JSON `detail` (never a hang, never a 500), and /healthz says
"not ready"; once it is back, the same service process recovers by itself within a bounded time, with every
write it acknowledged before the outage still there, and takes new writes. A server that hangs without
closing anything (frozen with SIGSTOP) gets the same quick 503s, from the service's own time limits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import pytest
import requests

from tests.fixtures.catalog import CatalogServer, CatalogServerFactory, sample_image
from tests.fixtures.postgres import PostgresServer, PostgresStartError, start_postgres

#: An answer while the database is down must come within this many seconds.
QUICK_S = 5.0
#: After PostgreSQL is back, /healthz must say ready within this many seconds.
RECOVERY_S = 30.0
#: Client-side limit, well above QUICK_S, so a hanging request is measured rather than cut short.
CLIENT_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def outage_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this module only: these tests stop and start it."""
    try:
        server = start_postgres()
    except PostgresStartError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def catalog(outage_postgres: PostgresServer, catalog_server: CatalogServerFactory) -> CatalogServer:
    """The catalog service (one process for the whole module) over a database on `outage_postgres`."""
    return catalog_server(database_url=outage_postgres.create_database("catalog"))


@pytest.fixture
def postgres_back_up(outage_postgres: PostgresServer, catalog: CatalogServer) -> Iterator[PostgresServer]:
    """The module's PostgreSQL, running; started again after the test if the test left it stopped."""
    yield outage_postgres
    if not outage_postgres.is_running():
        outage_postgres.start()
    _wait_ready(catalog)


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    body: object
    text: str


def _call(method: str, url: str, **kwargs: object) -> Answer:
    started = time.monotonic()
    response = requests.request(method, url, timeout=CLIENT_TIMEOUT_S, **kwargs)
    seconds = time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, seconds, body, response.text[:500])


def _healthz_status(catalog: CatalogServer) -> int | None:
    try:
        return requests.get(f"{catalog.base_url}/healthz", timeout=5).status_code
    except requests.RequestException:
        return None


def _wait_ready(catalog: CatalogServer, timeout_s: float = RECOVERY_S) -> float:
    """Poll /healthz until it answers 200; the seconds it took (fails the test past `timeout_s`)."""
    started = time.monotonic()
    while (status := _healthz_status(catalog)) != 200:
        assert catalog.process.poll() is None, f"the catalog service exited:\n{catalog.log()[-3000:]}"
        if time.monotonic() - started > timeout_s:
            pytest.fail(
                f"the catalog service did not recover within {timeout_s} s of PostgreSQL coming back "
                f"(last /healthz: {status}); its log ends:\n{catalog.log()[-3000:]}",
                pytrace=False,
            )
        time.sleep(0.2)
    return time.monotonic() - started


def _write(catalog: CatalogServer, name: str, **overrides: object) -> Answer:
    return _call(
        "POST",
        f"{catalog.base_url}/api/v1/images",
        json=sample_image(name, **overrides),
        headers=catalog.auth_headers,
    )


def _written(catalog: CatalogServer, names: list[str]) -> None:
    for name in names:
        answer = _write(catalog, name, description=f"written before the outage: {name}")
        assert answer.status in (200, 201), (name, answer)


def _assert_unavailable(answer: Answer, what: str, catalog: CatalogServer) -> None:
    context = f"{what}: {answer.status} after {answer.seconds:.2f} s, body {answer.text!r}"
    print(context)  # shown with `pytest -s`: the timings of the outage
    assert answer.status == 503, f"{context}; service log ends:\n{catalog.log()[-2000:]}"
    assert answer.seconds < QUICK_S, context
    assert isinstance(answer.body, dict), context
    assert answer.body.get("detail"), context


def test_while_postgres_is_down_reads_writes_and_health_answer_503_quickly(
    catalog: CatalogServer, postgres_back_up: PostgresServer
) -> None:
    names = ["outage-read-a", "outage-read-b"]
    _written(catalog, names)
    # Up, every request below succeeds: a 503 afterwards comes from the outage, not from the catalog.
    reads = {
        "GET /api/v1/images/jupyter": "/api/v1/images/jupyter",
        "GET /api/v1/images": "/api/v1/images",
        f"GET /api/v1/images/{names[0]}": f"/api/v1/images/{names[0]}",
    }
    for what, path in reads.items():
        answer = _call("GET", f"{catalog.base_url}{path}")
        assert answer.status == 200, (what, answer)
    assert _healthz_status(catalog) == 200

    postgres_back_up.stop()

    # Twice over: the first request finds the pooled connections cut, the second finds none to open.
    for attempt in (1, 2):
        for what, path in reads.items():
            _assert_unavailable(_call("GET", f"{catalog.base_url}{path}"), f"{what} (#{attempt})", catalog)
        _assert_unavailable(
            _write(catalog, f"outage-write-{attempt}"), f"POST /api/v1/images (#{attempt})", catalog
        )
        health = _call("GET", f"{catalog.base_url}/healthz")
        _assert_unavailable(health, f"GET /healthz (#{attempt})", catalog)
    assert catalog.process.poll() is None, "the catalog service exited while PostgreSQL was down"
    assert catalog.token and catalog.token not in catalog.log()


def test_after_postgres_returns_the_service_recovers_by_itself_and_lost_no_write(
    catalog: CatalogServer, postgres_back_up: PostgresServer
) -> None:
    before = [f"kept-{index}" for index in range(5)]
    _written(catalog, before)
    # An update acknowledged before the outage must survive too, not only inserts.
    updated = _write(catalog, before[0], description="updated before the outage", tags=["kept", "updated"])
    assert updated.status == 200, updated
    pid = catalog.process.pid

    postgres_back_up.stop()
    refused = _write(catalog, "refused-during-outage")
    assert refused.status == 503, refused
    _assert_unavailable(_call("GET", f"{catalog.base_url}/api/v1/images"), "GET /api/v1/images", catalog)

    postgres_back_up.start()
    recovered_s = _wait_ready(catalog)
    assert catalog.process.poll() is None and catalog.process.pid == pid, "the service was restarted"
    print(f"recovered {recovered_s:.2f} s after PostgreSQL came back")

    # Every write acknowledged before the outage reads back, as written.
    listed = _call("GET", f"{catalog.base_url}/api/v1/images")
    assert listed.status == 200, listed
    assert isinstance(listed.body, list)
    by_name = {item["name"]: item for item in listed.body}
    assert set(before) <= set(by_name), sorted(by_name)
    for name in before:
        one = _call("GET", f"{catalog.base_url}/api/v1/images/{name}")
        assert one.status == 200, (name, one)
        assert isinstance(one.body, dict)
        assert one.body["name"] == name
        assert by_name[name] == one.body
    assert by_name[before[0]]["description"] == "updated before the outage"
    assert by_name[before[0]]["tags"] == ["kept", "updated"]
    assert by_name[before[1]]["description"] == f"written before the outage: {before[1]}"
    jupyter = _call("GET", f"{catalog.base_url}/api/v1/images/jupyter")
    assert jupyter.status == 200, jupyter
    assert isinstance(jupyter.body, list)
    assert set(before) <= {item["name"] for item in jupyter.body}

    # The write refused with 503 was not applied; sent again, it is, and new writes succeed.
    missing = _call("GET", f"{catalog.base_url}/api/v1/images/refused-during-outage")
    assert missing.status == 404, missing
    for name in ("refused-during-outage", "written-after-outage"):
        answer = _write(catalog, name)
        assert answer.status == 201, (name, answer)
        read = _call("GET", f"{catalog.base_url}/api/v1/images/{name}")
        assert read.status == 200, (name, read)
        assert isinstance(read.body, dict)
        assert read.body["name"] == name


def test_a_frozen_postgres_gets_quick_503s_and_the_service_recovers_when_it_thaws(
    catalog: CatalogServer, postgres_back_up: PostgresServer
) -> None:
    """A server that hangs without closing its connections (frozen VM, partitioned network): no answer
    may wait for it past the service's own time limits."""
    _written(catalog, ["frozen-a"])
    assert _call("GET", f"{catalog.base_url}/api/v1/images/frozen-a").status == 200

    reads = ("/api/v1/images/jupyter", "/api/v1/images/frozen-a", "/healthz")
    requests_of_a_wave = {
        **{
            f"GET {p} (#{n})": partial(_call, "GET", f"{catalog.base_url}{p}")
            for p in reads
            for n in (1, 2, 3)
        },
        **{f"POST /api/v1/images (#{n})": partial(_write, catalog, "frozen-b") for n in (1, 2, 3)},
    }
    postgres_back_up.freeze()
    try:
        # Two waves of 12 requests at once, more than the service has database connections (5): in the
        # first, five hang on the database and seven wait for a connection; in the second, the hung ones
        # still hold theirs. Every request must be answered quickly all the same.
        for wave in (1, 2):
            with ThreadPoolExecutor(max_workers=len(requests_of_a_wave)) as pool:
                answers = {what: pool.submit(call) for what, call in requests_of_a_wave.items()}
            for what, answer in answers.items():
                _assert_unavailable(answer.result(), f"wave {wave}: {what}", catalog)
    finally:
        postgres_back_up.thaw()
    _wait_ready(catalog)
    assert _call("GET", f"{catalog.base_url}/api/v1/images/frozen-a").status == 200
    assert _write(catalog, "frozen-after").status == 201
