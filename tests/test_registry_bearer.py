"""RegistryClient through the Bearer challenge: a real CNCF registry with `auth: token` and a token service.

The registry verifies each token's ES256 signature against the certificate in its `rootcertbundle` (the
certificate travels in the token's `x5c` header), as it does for Harbor's token service in production.
"""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.registry import BearerRegistry, push_test_image
from thinkube_pipelines.registry import Registry
from thinkube_pipelines.registry.client import RegistryClient, RegistryUnauthorized


def _repository() -> str:
    return f"library/bearer-{uuid.uuid4().hex[:10]}"


def test_ping_anonymous_and_with_credentials(bearer_registry: BearerRegistry) -> None:
    server = bearer_registry.server
    RegistryClient(server.url).ping()
    RegistryClient(server.url, server.username, server.password).ping()


def test_read_and_tag_through_bearer_tokens(bearer_registry: BearerRegistry) -> None:
    server = bearer_registry.server
    repository = _repository()
    digest = push_test_image(server, repository, "build-1", content=b"bearer\n")
    client = RegistryClient(server.url, server.username, server.password, timeout_s=10)
    mark = server.mark()
    asked_before = len(bearer_registry.token_requests)

    manifest = client.manifest(repository, "build-1")
    assert manifest.digest == digest
    assert client.digest_of(repository, "build-1") == digest
    assert client.blob_exists(repository, manifest.layer_digests[0])
    assert client.tag(repository, digest, "stable") == digest
    assert client.tag(repository, digest, "latest") == digest
    assert sorted(client.tags(repository)) == ["build-1", "latest", "stable"]

    # Promoting is two manifest PUTs; not one blob upload was started.
    assert server.manifest_puts(repository, "stable", since=mark) == 1
    assert server.manifest_puts(repository, "latest", since=mark) == 1
    assert server.blob_uploads(since=mark) == 0
    asked = bearer_registry.token_requests[asked_before:]
    # One token per scope, cached: one to pull, one to push, not one per request. (The registry names
    # the actions of a scope in any order: "pull,push" or "push,pull".)
    granted = sorted(tuple(sorted(scope.rpartition(":")[2].split(","))) for _, (scope,) in asked)
    assert granted == [("pull",), ("pull", "push")]
    assert {scope.rpartition(":")[0] for _, (scope,) in asked} == {f"repository:{repository}"}
    assert {user for user, _ in asked} == {server.username}


def test_wrong_password_fails_naming_the_registry(bearer_registry: BearerRegistry) -> None:
    server = bearer_registry.server
    wrong = "wrong-" + uuid.uuid4().hex
    client = RegistryClient(server.url, server.username, wrong, timeout_s=10)

    with pytest.raises(RegistryUnauthorized) as caught:
        client.manifest("library/anything", "latest")

    message = str(caught.value)
    assert server.url in message and bearer_registry.realm in message
    assert "pusher" in message and wrong not in message


def test_reader_may_pull_but_not_push(bearer_registry: BearerRegistry) -> None:
    server = bearer_registry.server
    repository = _repository()
    digest = push_test_image(server, repository, "v1", content=b"read only\n")
    reader = RegistryClient(server.url, bearer_registry.reader_username, bearer_registry.reader_password)

    assert reader.digest_of(repository, "v1") == digest
    with pytest.raises(RegistryUnauthorized, match="lacks the access") as caught:
        reader.tag(repository, digest, "promoted")
    assert server.url in str(caught.value)
    mark = server.mark()
    with pytest.raises(RegistryUnauthorized, match="lacks the access"):
        reader.check_push_access(repository)
    # The registry refused the upload (401) and opened no session.
    refused = server.requests("POST", rf"^/v2/{repository}/blobs/uploads/$", since=mark)
    assert refused and {entry.status for entry in refused} == {401}
    assert server.blob_uploads(repository, since=mark) == 0
    assert server.open_uploads(repository) == {}
    assert server.manifest_puts(repository, "promoted") == 0
    assert "promoted" not in RegistryClient(server.url, server.username, server.password).tags(repository)


def test_resource_check_ready_through_bearer(bearer_registry: BearerRegistry) -> None:
    server = bearer_registry.server
    Registry(url=server.url, username=server.username, password=server.password).check_ready("jupyter-ml")
    reader = Registry(
        url=server.url, username=bearer_registry.reader_username, password=bearer_registry.reader_password
    )
    with pytest.raises(RegistryUnauthorized, match="library/jupyter-ml"):
        reader.check_ready("jupyter-ml")
