"""The registry over HTTPS with a private CA: the client and the builder trust it through its CA only.

`tls_registry` serves a certificate for 127.0.0.1 signed by a CA made for the test session; nothing on this
machine trusts that CA unless it is configured (`Registry.ca_bundle`, `RegistryAccess.ca_pem`). Without it,
the TLS handshake fails before any HTTP request: the registry's access log shows that nothing (credentials
included) was sent.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryServer, make_tls_files, push_test_image, start_registry
from thinkube_pipelines.builders import (
    BuildahBuilder,
    BuildContext,
    BuildError,
    BuildRequest,
    RegistryAccess,
    RegistryAuth,
)
from thinkube_pipelines.registry import Registry
from thinkube_pipelines.registry.client import RegistryClient, RegistryError, RegistryUnreachable


def _repository() -> str:
    return f"library/tls-{uuid.uuid4().hex[:10]}"


def _resource(server: RegistryServer, **settings: object) -> Registry:
    return Registry(url=server.url, username=server.username, password=server.password, **settings)


def test_the_client_trusts_the_registry_through_the_ca_bundle(tls_registry: RegistryServer) -> None:
    assert tls_registry.url.startswith("https://127.0.0.1:") and tls_registry.ca_file is not None
    registry = _resource(tls_registry, ca_bundle=str(tls_registry.ca_file))
    repository = _repository()
    pushed = push_test_image(tls_registry, repository, "v1", content=b"over https\n")
    mark = tls_registry.mark()

    client = registry.client()
    client.ping()
    assert client.digest_of(repository, "v1") == pushed
    assert client.manifest(repository, "v1").digest == pushed
    registry.check_ready("jupyter-ml")

    assert tls_registry.requests("GET", r"^/v2/$", status=200, since=mark)
    assert tls_registry.blob_uploads("library/jupyter-ml", since=mark) == 1  # the push access check


def test_without_the_ca_the_certificate_is_not_trusted(tls_registry: RegistryServer) -> None:
    mark = tls_registry.mark()

    with pytest.raises(RegistryUnreachable) as caught:
        _resource(tls_registry).client().ping()

    message = str(caught.value)
    assert tls_registry.url in message
    assert "certificate is not trusted" in message
    assert "this machine's trusted CAs" in message
    assert "ca_bundle" in message
    assert tls_registry.password not in message
    with pytest.raises(RegistryUnreachable, match="certificate is not trusted"):
        _resource(tls_registry).check_ready("jupyter-ml")
    # The handshake failed first: the registry received no request, so no credentials either.
    assert tls_registry.requests(since=mark) == []


def test_a_ca_bundle_of_another_ca_is_named(tls_registry: RegistryServer, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other-ca")

    with pytest.raises(RegistryUnreachable) as caught:
        _resource(tls_registry, ca_bundle=str(other.ca_file)).client().digest_of("library/x", "latest")

    message = str(caught.value)
    assert tls_registry.url in message and "certificate is not trusted" in message
    assert f"the CA bundle {other.ca_file}" in message


def test_a_missing_ca_bundle_file_is_named(tls_registry: RegistryServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"

    with pytest.raises(RegistryError) as caught:
        _resource(tls_registry, ca_bundle=str(missing)).client().ping()

    assert tls_registry.url in str(caught.value) and str(missing) in str(caught.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_can_be_switched_off(tls_registry: RegistryServer) -> None:
    # The documented escape hatch (verify_tls=False) reaches the registry without any CA.
    _resource(tls_registry, verify_tls=False).client().ping()


def test_a_certificate_for_another_host_is_refused_as_such(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls", hosts=("127.0.0.1",))
    with start_registry(tmp_path / "registry", auth="none", tls=tls) as server:
        by_name = server.url.replace("127.0.0.1", "localhost")

        with pytest.raises(RegistryUnreachable) as caught:
            RegistryClient(by_name, verify_tls=str(tls.ca_file)).ping()

        assert by_name in str(caught.value)
        assert "not valid for this host" in str(caught.value)
        RegistryClient(server.url, verify_tls=str(tls.ca_file)).ping()


def test_https_to_a_plain_http_registry_says_so(registry: RegistryServer) -> None:
    url = registry.url.replace("http://", "https://")

    with pytest.raises(RegistryUnreachable) as caught:
        RegistryClient(url, registry.username, registry.password).ping()

    assert url in str(caught.value) and "no HTTPS there" in str(caught.value)


# -- the builder pushes through the same CA --------------------------------------------------------------


def _scratch_build(
    tmp_path: Path, server: RegistryServer, repository: str, ca_pem: str | None
) -> BuildRequest:
    """A one-file image FROM scratch: nothing to pull, so the push is the only registry traffic."""
    folder = tmp_path / "context"
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    (folder / "hello.txt").write_text(f"pushed over https to {repository}\n")
    return BuildRequest(
        image_name="tls-image",
        context=BuildContext.from_folder(folder),
        target=f"{server.host}/{repository}:build-1",
        registry=RegistryAccess(
            auth=RegistryAuth(server.host, server.username, server.password), tls_verify=True, ca_pem=ca_pem
        ),
    )


def test_buildah_pushes_through_the_registry_ca(
    tls_registry: RegistryServer, buildah_builder: BuildahBuilder, tmp_path: Path
) -> None:
    repository = _repository()
    mark = tls_registry.mark()

    result = buildah_builder.build(_scratch_build(tmp_path, tls_registry, repository, tls_registry.ca_pem))

    client = RegistryClient(
        tls_registry.url, tls_registry.username, tls_registry.password, verify_tls=str(tls_registry.ca_file)
    )
    assert client.digest_of(repository, "build-1") == result.digest
    assert tls_registry.manifest_puts(repository, "build-1", since=mark) == 1
    assert tls_registry.blob_uploads(repository, since=mark) >= 1


def test_buildah_without_the_ca_fails_naming_the_registry(
    tls_registry: RegistryServer, buildah_builder: BuildahBuilder, tmp_path: Path
) -> None:
    repository = _repository()
    mark = tls_registry.mark()

    with pytest.raises(BuildError) as caught:
        buildah_builder.build(_scratch_build(tmp_path, tls_registry, repository, ca_pem=None))

    error = caught.value
    assert error.step == f"push to registry {tls_registry.host}"
    assert "push failed" in error.reason
    assert "certificate signed by unknown authority" in str(error)
    assert tls_registry.password not in str(error)
    # The handshake failed: nothing reached the registry.
    assert tls_registry.requests(since=mark) == []
    assert tls_registry.manifest_puts(repository) == 0
