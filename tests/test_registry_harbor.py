"""Harbor's extras (management API /api/v2.0) against a small stand-in: Harbor itself cannot run here.

The stand-in answers only what the client asks, with JSON shaped like Harbor 2.x's answers: the project
list (Harbor matches `name` fuzzily, so the client must pick the exact name), one artifact, Harbor's error
body, and `/v2/` behind a Bearer challenge whose token service answers with `access_token` only. It records
the raw request paths, so the double encoding of `/` in repository names is checked as sent on the wire.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from thinkube_pipelines.registry import Registry
from thinkube_pipelines.registry.client import (
    DigestMismatch,
    HarborClient,
    RegistryNotFound,
    RegistryUnauthorized,
    registry_client,
)
from thinkube_pipelines.registry.reference import OCI_MANIFEST

USER, PASSWORD = "robot$pipelines", "harbor-stand-in-secret"
DIGEST = "sha256:" + "ab" * 32
PROJECTS = [{"project_id": 1, "name": "library", "public": "true"}, {"project_id": 2, "name": "library-old"}]
ARTIFACT = {
    "id": 7,
    "digest": DIGEST,
    "manifest_media_type": OCI_MANIFEST,
    "media_type": "application/vnd.oci.image.config.v1+json",
    "size": 123456789,
    "push_time": "2026-11-25T02:14:09.000Z",
    "tags": [{"id": 3, "name": "2026.11.25-3f2a9c1", "immutable": False}, {"id": 4, "name": "latest"}],
}
LYING_MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()


@dataclass
class HarborStandIn:
    url: str
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def harbor() -> Iterator[HarborStandIn]:
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    state = HarborStandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            state.paths.append(self.path)
            url = urlsplit(self.path)
            auth = self.headers.get("Authorization")
            unauthorized = {"errors": [{"code": "UNAUTHORIZED", "message": "unauthorized"}]}
            if url.path == "/service/token":
                return self._send(200, {"access_token": "opaque-token"} if auth == basic else unauthorized)
            if url.path.startswith("/v2/"):
                if auth != "Bearer opaque-token":
                    challenge = f'Bearer realm="{state.url}/service/token",service="harbor-registry"'
                    return self._send(401, unauthorized, {"WWW-Authenticate": challenge})
                if url.path == "/v2/library/liar/manifests/v1":
                    return self._send(200, LYING_MANIFEST, {"Docker-Content-Digest": DIGEST})
                return self._send(200, {})
            if auth != basic:
                return self._send(401, unauthorized)
            if url.path == "/api/v2.0/projects":
                name = parse_qs(url.query).get("name", [""])[0]
                return self._send(200, [project for project in PROJECTS if name in project["name"]])
            if self.path.startswith(
                "/api/v2.0/projects/library/repositories/jupyter%252Fml-gpu/artifacts/"
            ) and url.path.rpartition("/")[2] in (DIGEST, "latest"):
                return self._send(200, ARTIFACT)
            return self._send(404, {"errors": [{"code": "NOT_FOUND", "message": f"{url.path} not found"}]})

        def do_POST(self) -> None:  # a blob upload session, as the push access check opens one
            state.paths.append(self.path)
            if self.headers.get("Authorization") != "Bearer opaque-token":
                challenge = f'Bearer realm="{state.url}/service/token",service="harbor-registry"'
                return self._send(401, {"errors": []}, {"WWW-Authenticate": challenge})
            upload = self.path.rstrip("/") + "/7a1d2b0c"
            return self._send(202, b"", {"Location": upload})

        def do_DELETE(self) -> None:
            state.paths.append(self.path)
            return self._send(204, b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def client(harbor: HarborStandIn) -> HarborClient:
    made = registry_client(harbor.url, USER, PASSWORD, flavor="harbor", timeout_s=5)
    assert isinstance(made, HarborClient)
    return made


def test_project_exists_matches_the_exact_name(client: HarborClient) -> None:
    assert client.project_exists("library")
    assert client.project_exists("library-old")
    assert not client.project_exists("librar")  # Harbor's fuzzy match returns both; neither is it
    assert not client.project_exists("missing")


def test_artifact_double_encodes_the_repository(client: HarborClient, harbor: HarborStandIn) -> None:
    artifact = client.artifact("library", "jupyter/ml-gpu", DIGEST)

    assert artifact.digest == DIGEST
    assert artifact.size == 123456789
    assert artifact.tags == ("2026.11.25-3f2a9c1", "latest")
    assert harbor.paths[-1].startswith(
        f"/api/v2.0/projects/library/repositories/jupyter%252Fml-gpu/artifacts/{DIGEST}?"
    )
    assert client.artifact("library", "jupyter/ml-gpu", "latest").digest == DIGEST


def test_missing_artifact_and_wrong_credentials(client: HarborClient, harbor: HarborStandIn) -> None:
    with pytest.raises(RegistryNotFound, match="NOT_FOUND") as caught:
        client.artifact("library", "jupyter/ml-gpu", "no-such-tag")
    assert harbor.url in str(caught.value)

    wrong = HarborClient(harbor.url, USER, "wrong-secret")
    with pytest.raises(RegistryUnauthorized) as caught:
        wrong.project_exists("library")
    assert harbor.url in str(caught.value) and "wrong-secret" not in str(caught.value)


def test_v2_through_a_token_that_comes_as_access_token(client: HarborClient) -> None:
    client.ping()


def test_digest_mismatch_is_refused(client: HarborClient, harbor: HarborStandIn) -> None:
    with pytest.raises(DigestMismatch) as caught:
        client.manifest("library/liar", "v1")
    assert harbor.url in str(caught.value) and DIGEST in str(caught.value)


def test_resource_check_ready_names_a_missing_project(harbor: HarborStandIn) -> None:
    registry = Registry(url=harbor.url, project="jupyter", username=USER, password=PASSWORD, flavor="harbor")
    assert isinstance(registry.client(), HarborClient)

    with pytest.raises(RegistryNotFound) as caught:
        registry.check_ready("jupyter-ml-gpu")

    assert "'jupyter'" in str(caught.value) and harbor.url in str(caught.value)


def test_resource_check_ready_opens_and_cancels_an_upload(harbor: HarborStandIn) -> None:
    registry = Registry(url=harbor.url, username=USER, password=PASSWORD, flavor="harbor")

    registry.check_ready("jupyter-ml-gpu")

    assert harbor.paths[-2:] == [
        "/v2/library/jupyter-ml-gpu/blobs/uploads/",
        "/v2/library/jupyter-ml-gpu/blobs/uploads/7a1d2b0c",
    ]
