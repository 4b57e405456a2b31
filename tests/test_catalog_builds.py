"""The catalog's rebuild API against a real Dagster webserver and daemon, real tokens and real builds.

One module-scoped stack: the Keycloak stand-in, a catalog service (uvicorn) that knows Dagster's GraphQL
URL and is also the pipeline's catalog, the registry with the Debian base, and Dagster on a code location
whose images folder holds tk-parent and tk-child (built FROM tk-parent), built by buildah. One rebuild of
the parent builds both chains for real; the other tests read what it left or need no build.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fixtures.catalog import CatalogServer, sample_image
from tests.fixtures.dagster_server import TERMINAL_STATUSES, DagsterServer, fixture_images, pipeline_env
from tests.fixtures.network import free_port
from tests.fixtures.oidc import OidcProvider
from tests.fixtures.polling import wait_until
from thinkube_pipelines.catalog.dagster_client import DAGSTER_CONSOLE_LINE

REBUILD_ROLE = "image-rebuilder"
IMAGES = ("tk-parent", "tk-child")
STAGES = ("build", "published", "catalog_entry")
RUN_TIMEOUT_S = 600


@dataclass
class Stack:
    oidc: OidcProvider
    catalog: CatalogServer
    dagster: DagsterServer
    rebuild: dict = field(default_factory=dict)


def ws_url(catalog: CatalogServer, path: str) -> str:
    return catalog.base_url.replace("http://", "ws://", 1) + path


def rebuilder_token(oidc: OidcProvider, username: str = "ada") -> str:
    """A realm access token of a user holding the rebuild role (as Keycloak gives a signed-in user)."""
    return oidc.mint(
        "access",
        "viewer",
        claims={"preferred_username": username, "realm_access": {"roles": [REBUILD_ROLE]}},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class LogStream:
    """What a WebSocket client of a build's log received: the messages, and how the socket closed."""

    messages: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def lines(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "line"]


def read_log(url: str, timeout_s: float = RUN_TIMEOUT_S) -> LogStream:
    stream = LogStream()
    deadline = time.monotonic() + timeout_s
    with connect(url, open_timeout=30, close_timeout=10) as socket:
        try:
            while time.monotonic() < deadline:
                stream.messages.append(json.loads(socket.recv(timeout=deadline - time.monotonic())))
        except ConnectionClosed as closed:
            received = closed.rcvd
            stream.close_code = received.code if received else None
            stream.close_reason = received.reason if received else ""
    return stream


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory,
    oidc_provider,
    catalog_server,
    dagster_server,
    registry,
    registry_debian_base,
    buildah_storage,
    buildah_builder,
) -> Stack:
    tmp = tmp_path_factory.mktemp("catalog-builds")
    dagster_port = free_port()
    catalog = catalog_server(
        f"sqlite:///{tmp / 'catalog.db'}",
        oidc_issuer=oidc_provider.issuer,
        oidc_audience=oidc_provider.audience,
        extra_env={
            "THINKUBE_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{dagster_port}/graphql",
            "THINKUBE_DAGSTER_UI_URL": f"http://127.0.0.1:{dagster_port}",
            "THINKUBE_CATALOG_BUILD_LOG_POLL_S": "0.2",
        },
    )
    for name in IMAGES:
        response = requests.post(
            f"{catalog.base_url}/api/v1/images",
            json=sample_image(name, metadata={"gpu_required": False}),
            headers=catalog.auth_headers,
            timeout=10,
        )
        assert response.status_code == 201, response.text
    images = fixture_images(Path(tmp / "images"), *IMAGES)
    env = pipeline_env(
        images,
        state_dir=buildah_storage,
        registry=registry,
        base=registry_debian_base,
        catalog_url=catalog.base_url,
        catalog_token=catalog.token,
    )
    dagster = dagster_server(env, port=dagster_port)
    return Stack(oidc_provider, catalog, dagster)


@pytest.fixture(scope="module")
def rebuilt(stack: Stack) -> Stack:
    """The parent rebuilt through the catalog, its log read over the WebSocket while it ran, its status
    polled through the catalog, until the run ended."""
    response = requests.post(
        f"{stack.catalog.base_url}/api/v1/images/tk-parent/rebuild",
        headers=bearer(rebuilder_token(stack.oidc)),
        timeout=60,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    live: dict[str, LogStream] = {}
    reader = threading.Thread(
        target=lambda: live.update(stream=read_log(ws_url(stack.catalog, accepted["logs_url"]))),
        daemon=True,
    )
    reader.start()
    statuses: list[dict] = []

    def ended() -> bool:
        answer = requests.get(f"{stack.catalog.base_url}{accepted['status_url']}", timeout=30)
        assert answer.status_code == 200, answer.text
        statuses.append(answer.json())
        return statuses[-1]["status"] in TERMINAL_STATUSES

    # a run still going after the timeout is reported by the tests that read the statuses seen
    with contextlib.suppress(TimeoutError):
        wait_until(ended, RUN_TIMEOUT_S, "the rebuild's end", interval_s=0.5)
    reader.join(timeout=60)
    assert "stream" in live, "the WebSocket reader did not finish"
    stack.rebuild = {"accepted": accepted, "statuses": statuses, "live": live["stream"]}
    return stack


def test_rebuild_of_the_parent_launches_one_run_of_its_chain_and_its_childs(rebuilt: Stack):
    accepted = rebuilt.rebuild["accepted"]
    expected = sorted(f"{image}/{stage}" for image in IMAGES for stage in STAGES)
    run_id = accepted["run_id"]
    assert accepted == {
        "run_id": run_id,
        "image": "tk-parent",
        "assets": accepted["assets"],
        "status_url": f"/api/v1/builds/{run_id}",
        "logs_url": f"/api/v1/builds/{run_id}/logs",
        "dagster_url": f"{rebuilt.dagster.ui_url}/runs/{run_id}",
    }
    assert sorted(accepted["assets"]) == expected

    # As Dagster reports it: the two chains and their smoke checks, nothing of the hub, forced.
    run = rebuilt.dagster.run(run_id)
    assert run["jobName"] == "build_images"
    assert run["assetSelection"] == expected
    assert run["assetCheckSelection"] == [f"{image}/build:smoke" for image in sorted(IMAGES)]
    assert {
        key: run["tags"].get(key)
        for key in (
            "thinkube/force-rebuild",
            "thinkube/run-kind",
            "thinkube/requested-by",
            "thinkube/trigger",
            "thinkube/rebuild-image",
        )
    } == {
        "thinkube/force-rebuild": "true",
        "thinkube/run-kind": "image-build",
        "thinkube/requested-by": "ada",
        "thinkube/trigger": "catalog-rebuild",
        "thinkube/rebuild-image": "tk-parent",
    }
    assert [r["runId"] for r in rebuilt.dagster.runs({"thinkube/trigger": "catalog-rebuild"})] == [run_id]
    assert run["status"] == "SUCCESS", rebuilt.dagster.log()


def test_status_follows_the_run_to_success(rebuilt: Stack):
    statuses = rebuilt.rebuild["statuses"]
    run_id = rebuilt.rebuild["accepted"]["run_id"]
    seen = [s["status"] for s in statuses]
    assert seen[-1] == "SUCCESS", seen
    assert len(statuses) > 1 and set(seen[:-1]) <= {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}, seen
    final = statuses[-1]
    assert final["run_id"] == run_id and final["image"] == "tk-parent"
    assert final["dagster_url"] == f"{rebuilt.dagster.ui_url}/runs/{run_id}"
    assert isinstance(final["start_time"], float) and isinstance(final["end_time"], float)
    assert final["start_time"] <= final["end_time"]
    # The catalog now holds what the run built (it was the pipeline's catalog too).
    item = requests.get(f"{rebuilt.catalog.base_url}/api/v1/images/tk-child", timeout=10).json()
    assert item["metadata"]["registry"] != "harbor.example.org"


def captured_streams(dagster: DagsterServer, run_id: str) -> list[list[str]]:
    """The lines of each stream the run's steps printed (stdout, stderr), as Dagster's compute log
    manager stored them on disk."""
    folder = dagster.dagster_home / "storage" / run_id / "compute_logs"
    streams = []
    for path in sorted(folder.glob("*.out")) + sorted(folder.glob("*.err")):
        *lines, last = path.read_text(errors="replace").split("\n")
        streams.append([line.removesuffix("\r") for line in lines + ([last] if last else [])])
    return streams


def in_order(lines: list[str], within: list[str]) -> bool:
    """Whether `lines` appear in `within` in the same order (other lines may come between)."""
    remaining = iter(within)
    return all(any(line == other for other in remaining) for line in lines)


def test_the_log_streams_event_messages_and_the_build_output_once_each_then_ends(rebuilt: Stack):
    live: LogStream = rebuilt.rebuild["live"]
    run_id = rebuilt.rebuild["accepted"]["run_id"]
    assert live.close_code == 1000, (live.close_code, live.close_reason)
    assert live.messages[-1] == {"type": "end", "status": "SUCCESS"}
    assert all(m["type"] == "line" for m in live.messages[:-1])
    assert all(set(m) == {"type", "text", "time", "step"} for m in live.lines)

    events = [m for m in live.lines if m["time"] is not None]
    assert any(m["step"] == "tk_parent" for m in events)
    assert any("Started execution of run" in m["text"] for m in events), [m["text"] for m in events][:20]
    assert any("STEP 1/" in m["text"] for m in events)  # the build's milestones go to the event log too

    # The build output, from the steps' captured stdout/stderr: every line once, each stream in order,
    # buildah's first step of each of the two builds among them.
    output = [m["text"] for m in live.lines if m["time"] is None]
    streams = [
        [line for line in stream if not DAGSTER_CONSOLE_LINE.match(line)]
        for stream in captured_streams(rebuilt.dagster, run_id)
    ]
    assert not any(DAGSTER_CONSOLE_LINE.match(line) for line in output)  # sent once, as events
    assert sorted(output) == sorted(line for stream in streams for line in stream)
    assert all(in_order(stream, output) for stream in streams)
    assert len([line for line in output if line.startswith("STEP 1/")]) == 2, output[:40]


def test_a_client_that_connects_after_the_end_gets_the_whole_log(rebuilt: Stack):
    late = read_log(ws_url(rebuilt.catalog, rebuilt.rebuild["accepted"]["logs_url"]), timeout_s=60)
    assert late.close_code == 1000
    live: LogStream = rebuilt.rebuild["live"]
    assert late.messages[-1] == live.messages[-1] == {"type": "end", "status": "SUCCESS"}
    # The same lines, in the same order within the event log and within the output (how the two
    # interleave depends on when they were read).
    for from_events in (True, False):
        assert [m for m in late.lines if (m["time"] is not None) == from_events] == [
            m for m in live.lines if (m["time"] is not None) == from_events
        ]


def test_unknown_run(stack: Stack):
    run_id = "00000000-0000-0000-0000-000000000000"
    response = requests.get(f"{stack.catalog.base_url}/api/v1/builds/{run_id}", timeout=30)
    assert response.status_code == 404 and run_id in response.json()["detail"]
    closed = read_log(ws_url(stack.catalog, f"/api/v1/builds/{run_id}/logs"), timeout_s=30)
    assert closed.messages == []
    assert closed.close_code == 4404 and run_id in closed.close_reason


def test_rebuild_needs_a_token_with_the_rebuild_role(stack: Stack):
    url = f"{stack.catalog.base_url}/api/v1/images/tk-parent/rebuild"
    runs_before = len(stack.dagster.runs())
    anonymous = requests.post(url, timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"

    forged = requests.post(url, headers=bearer("not-a-token"), timeout=30)
    assert forged.status_code == 401 and "invalid_token" in forged.headers["WWW-Authenticate"]

    # The writer role is not the rebuild role, nor is a reader's.
    for client in ("dagster", "viewer"):
        refused = requests.post(url, headers=bearer(stack.oidc.token(client)), timeout=30)
        assert refused.status_code == 403, refused.text
        assert REBUILD_ROLE in refused.json()["detail"]
        assert "insufficient_scope" in refused.headers["WWW-Authenticate"]
    assert len(stack.dagster.runs()) == runs_before  # nothing launched


def test_an_image_not_in_the_catalog_is_404_for_a_rebuilder_by_client_role(stack: Stack):
    token = stack.oidc.mint(
        "access",
        "viewer",
        claims={
            "preferred_username": "grace",
            "resource_access": {stack.oidc.audience: {"roles": [REBUILD_ROLE]}},
            "realm_access": {"roles": []},
        },
    )
    unknown = requests.post(
        f"{stack.catalog.base_url}/api/v1/images/tk-nowhere/rebuild", headers=bearer(token), timeout=30
    )
    assert unknown.status_code == 404
    assert "tk-nowhere" in unknown.json()["detail"] and "catalog" in unknown.json()["detail"]


def test_an_image_dagster_does_not_know_is_404_naming_dagster(stack: Stack):
    listed = requests.post(
        f"{stack.catalog.base_url}/api/v1/images",
        json=sample_image("tk-only-in-the-catalog"),
        headers=stack.catalog.auth_headers,
        timeout=10,
    )
    assert listed.status_code == 201
    response = requests.post(
        f"{stack.catalog.base_url}/api/v1/images/tk-only-in-the-catalog/rebuild",
        headers=stack.catalog.auth_headers,
        timeout=30,
    )
    assert response.status_code == 404
    assert "Dagster" in response.json()["detail"] and "tk-only-in-the-catalog" in response.json()["detail"]


def test_dagster_down_or_not_configured_is_503_naming_it(stack: Stack, catalog_server, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/graphql"
    down = catalog_server(
        f"sqlite:///{tmp_path / 'down.db'}", extra_env={"THINKUBE_DAGSTER_GRAPHQL_URL": closed}
    )
    unset = catalog_server(f"sqlite:///{tmp_path / 'unset.db'}")
    for server in (down, unset):
        requests.post(
            f"{server.base_url}/api/v1/images",
            json=sample_image("tk-parent"),
            headers=server.auth_headers,
            timeout=10,
        ).raise_for_status()

    answer = requests.post(
        f"{down.base_url}/api/v1/images/tk-parent/rebuild", headers=down.auth_headers, timeout=60
    )
    assert answer.status_code == 503
    assert "Dagster" in answer.json()["detail"] and closed in answer.json()["detail"]
    status = requests.get(f"{down.base_url}/api/v1/builds/some-run", timeout=60)
    assert status.status_code == 503 and closed in status.json()["detail"]
    log = read_log(ws_url(down, "/api/v1/builds/some-run/logs"), timeout_s=60)
    assert log.close_code == 4503 and "Dagster" in log.close_reason

    answer = requests.post(
        f"{unset.base_url}/api/v1/images/tk-parent/rebuild", headers=unset.auth_headers, timeout=30
    )
    assert answer.status_code == 503 and "THINKUBE_DAGSTER_GRAPHQL_URL" in answer.json()["detail"]
    # Reads do not need Dagster.
    assert requests.get(f"{unset.base_url}/api/v1/images/tk-parent", timeout=10).status_code == 200


def test_a_run_dagster_refuses_is_503_with_its_reason_and_no_stack(catalog_server, dagster_server, tmp_path):
    """A code location without the registry's credentials: Dagster refuses the run (a PythonError whose
    message embeds a stack trace); the catalog passes on the reason, not the stack."""
    images = fixture_images(tmp_path / "images", *IMAGES)
    port = free_port()
    catalog = catalog_server(
        f"sqlite:///{tmp_path / 'catalog.db'}",
        extra_env={"THINKUBE_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{port}/graphql"},
    )
    requests.post(
        f"{catalog.base_url}/api/v1/images",
        json=sample_image("tk-child"),
        headers=catalog.auth_headers,
        timeout=10,
    ).raise_for_status()
    dagster = dagster_server({"THINKUBE_IMAGES_DIR": str(images)}, port=port)
    try:
        answer = requests.post(
            f"{catalog.base_url}/api/v1/images/tk-child/rebuild", headers=catalog.auth_headers, timeout=60
        )
    finally:
        dagster.stop()
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert "Dagster" in detail and "THINKUBE_REGISTRY_USERNAME" in detail
    assert "Stack Trace" not in detail and 'File "' not in detail, detail
