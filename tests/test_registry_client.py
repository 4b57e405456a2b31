"""RegistryClient against a real CNCF distribution registry with htpasswd (Basic) auth."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tests.fixtures.network import free_port
from tests.fixtures.registry import RegistryServer, push_test_image
from thinkube_pipelines.registry.client import (
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
    RegistryUnreachable,
)
from thinkube_pipelines.registry.reference import DOCKER_MANIFEST, OCI_MANIFEST


def _repository() -> str:
    return f"library/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(registry: RegistryServer) -> RegistryClient:
    return RegistryClient(registry.url, registry.username, registry.password, timeout_s=10)


def test_ping(client: RegistryClient) -> None:
    client.ping()


def test_manifest_of_a_pushed_image(registry: RegistryServer, client: RegistryClient) -> None:
    repository = _repository()
    pushed = push_test_image(registry, repository, "v1", content=b"manifest test\n")

    manifest = client.manifest(repository, "v1")

    assert manifest.digest == pushed
    assert manifest.media_type == OCI_MANIFEST
    assert "sha256:" + hashlib.sha256(manifest.raw).hexdigest() == pushed
    assert manifest.size > 0
    assert len(manifest.layer_digests) == 1
    assert manifest.config_digest and client.blob_exists(repository, manifest.config_digest)
    assert client.blob_exists(repository, manifest.layer_digests[0])
    assert not client.blob_exists(repository, "sha256:" + "0" * 64)
    assert client.manifest(repository, pushed).raw == manifest.raw
    assert client.digest_of(repository, "v1") == pushed


def test_docker_v2_manifest(registry: RegistryServer, client: RegistryClient) -> None:
    repository = _repository()
    pushed = push_test_image(registry, repository, "v1", content=b"docker format\n", manifest_format="v2s2")

    manifest = client.manifest(repository, "v1")

    assert manifest.media_type == DOCKER_MANIFEST
    assert manifest.digest == pushed
    assert manifest.size == manifest.config.size + manifest.layers[0].size


def test_tag_promotes_a_digest_without_pushing_layers(
    registry: RegistryServer, client: RegistryClient
) -> None:
    repository = _repository()
    digest = push_test_image(registry, repository, "build-1", content=b"promote me\n")
    mark = registry.mark()

    assert client.tag(repository, digest, "2026.11.25-3f2a9c1") == digest
    assert client.tag(repository, digest, "latest") == digest

    assert client.digest_of(repository, "2026.11.25-3f2a9c1") == digest
    assert client.digest_of(repository, "latest") == digest
    assert sorted(client.tags(repository)) == ["2026.11.25-3f2a9c1", "build-1", "latest"]
    # One manifest PUT per tag, and not one blob upload started.
    assert registry.manifest_puts(repository, "2026.11.25-3f2a9c1", since=mark) == 1
    assert registry.manifest_puts(repository, "latest", since=mark) == 1
    assert registry.manifest_puts(since=mark) == 2
    assert registry.blob_uploads(since=mark) == 0


def test_the_access_log_counts_what_the_registry_received(registry: RegistryServer) -> None:
    """The counters the other tests rely on: a first push uploads, the same content again does not."""
    repository = _repository()
    mark = registry.mark()
    push_test_image(registry, repository, "v1", content=b"counted\n")

    assert registry.blob_uploads(repository, since=mark) == 2  # the layer and the config
    assert registry.blob_upload_completions(repository, since=mark) == 2
    assert registry.manifest_puts(repository, "v1", since=mark) == 1
    assert registry.blob_uploads("library/some-other-repository", since=mark) == 0
    assert {entry.path for entry in registry.requests("POST", since=mark)} == {
        f"/v2/{repository}/blobs/uploads/"
    }

    again = registry.mark()
    blobs = registry.blob_count()
    push_test_image(registry, repository, "v2", content=b"counted\n")

    assert registry.blob_uploads(since=again) == 0  # skopeo found both blobs there
    assert registry.requests("HEAD", rf"^/v2/{repository}/blobs/sha256:", since=again)
    assert registry.manifest_puts(repository, "v2", since=again) == 1
    assert registry.manifest_puts(repository, "v1", since=again) == 0
    assert registry.blob_count() == blobs


def test_wrong_password_names_the_registry_and_hides_the_password(registry: RegistryServer) -> None:
    wrong = "not-the-password-" + uuid.uuid4().hex
    client = RegistryClient(registry.url, registry.username, wrong, timeout_s=10)

    with pytest.raises(RegistryUnauthorized) as caught:
        client.ping()

    message = str(caught.value)
    assert registry.url in message
    assert "pusher" in message
    assert wrong not in message and wrong not in repr(client) and wrong not in repr(caught.value)


def test_no_credentials_against_a_registry_that_needs_them(registry: RegistryServer) -> None:
    with pytest.raises(RegistryUnauthorized, match="none are configured") as caught:
        RegistryClient(registry.url).digest_of("library/anything", "latest")
    assert registry.url in str(caught.value)


def test_registry_down_names_the_registry() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    with pytest.raises(RegistryUnreachable) as caught:
        RegistryClient(url, "someone", "secret-xyz", timeout_s=2).ping()

    assert url in str(caught.value)
    assert "refused" in str(caught.value).lower()
    assert "secret-xyz" not in str(caught.value)


def test_unknown_manifest_and_repository(registry: RegistryServer, client: RegistryClient) -> None:
    repository = _repository()
    push_test_image(registry, repository, "v1", content=b"exists\n")

    with pytest.raises(RegistryNotFound, match="MANIFEST_UNKNOWN") as caught:
        client.manifest(repository, "no-such-tag")
    assert registry.url in str(caught.value) and "no-such-tag" in str(caught.value)

    assert client.digest_of(repository, "no-such-tag") is None
    assert client.digest_of("library/no-such-repository", "latest") is None
    with pytest.raises(RegistryNotFound, match="NAME_UNKNOWN"):
        client.tags("library/no-such-repository")


def test_tag_of_a_missing_digest_fails(client: RegistryClient) -> None:
    with pytest.raises(RegistryNotFound):
        client.tag("library/no-such-repository", "sha256:" + "1" * 64, "latest")


def test_push_access_check_leaves_nothing_behind(registry: RegistryServer, client: RegistryClient) -> None:
    repository = _repository()
    mark = registry.mark()
    blobs_before = registry.blob_count()

    client.check_push_access(repository)

    # The proof of access is one upload session opened, then cancelled: no byte sent, no blob stored.
    assert registry.blob_uploads(repository, since=mark) == 1
    assert registry.blob_upload_cancels(repository, since=mark) == 1
    assert registry.requests("PATCH", since=mark) == []
    assert registry.blob_upload_completions(since=mark) == 0
    assert registry.open_uploads(repository) == {}
    assert registry.blob_count() == blobs_before


def test_invalid_names_fail_before_any_request() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="repository"):
        client.manifest("Library/UPPER", "latest")
    with pytest.raises(ValueError, match="tag or digest"):
        client.manifest("library/ok", "../../etc")
    with pytest.raises(ValueError, match="sha256"):
        client.tag("library/ok", "latest", "v1")
    with pytest.raises(ValueError, match="credentials"):
        RegistryClient("http://user:pw@127.0.0.1:5000")
    with pytest.raises(ValueError, match="without a path"):
        RegistryClient("http://127.0.0.1:5000/v2/")


def test_errors_are_registry_errors() -> None:
    assert issubclass(RegistryUnauthorized, RegistryError)
    assert issubclass(RegistryNotFound, RegistryError)
    assert issubclass(RegistryUnreachable, RegistryError)
