"""The `Registry` Dagster resource: configuration, image references, and readiness against a real registry."""

from __future__ import annotations

import dagster as dg
import pytest

from tests.fixtures.registry import RegistryServer
from thinkube_pipelines.registry import Registry
from thinkube_pipelines.registry.client import HarborClient, RegistryClient, RegistryUnauthorized
from thinkube_pipelines.registry.resource import PASSWORD_ENV, USERNAME_ENV

DIGEST = "sha256:" + "c0" * 32


def test_defaults_run_locally() -> None:
    registry = Registry()
    assert registry.url == "http://127.0.0.1:5000"
    assert registry.host == "127.0.0.1:5000"
    assert registry.repository("jupyter-ml-gpu") == "library/jupyter-ml-gpu"
    assert registry.reference("jupyter-ml-gpu", DIGEST) == f"127.0.0.1:5000/library/jupyter-ml-gpu@{DIGEST}"
    client = registry.client()
    assert type(client) is RegistryClient and client.verify_tls is True


def test_harbor_settings() -> None:
    registry = Registry(
        url="https://harbor.example.org", project="thinkube", flavor="harbor", ca_bundle="/etc/ca.pem"
    )
    assert registry.host == "harbor.example.org"
    assert (
        registry.reference("jupyter-ml-cpu", DIGEST) == f"harbor.example.org/thinkube/jupyter-ml-cpu@{DIGEST}"
    )
    client = registry.client()
    assert isinstance(client, HarborClient) and client.verify_tls == "/etc/ca.pem"
    assert Registry(verify_tls=False, ca_bundle="/etc/ca.pem").client().verify_tls is False
    with pytest.raises(ValueError):
        registry.reference("Not A Name", DIGEST)
    with pytest.raises(ValueError):
        Registry(flavor="quay")  # type: ignore[arg-type]


def test_password_stays_out_of_reprs() -> None:
    registry = Registry(username="pusher", password="s3cret-value")
    assert "s3cret-value" not in repr(registry)
    assert "s3cret-value" not in repr(registry.client())


def test_check_ready_against_the_real_registry(registry: RegistryServer) -> None:
    mark = registry.mark()
    Registry(url=registry.url, username=registry.username, password=registry.password).check_ready(
        "jupyter-ml"
    )
    # It proved push access to library/jupyter-ml with an upload it cancelled: nothing stays behind.
    assert registry.blob_uploads("library/jupyter-ml", since=mark) == 1
    assert registry.blob_upload_cancels("library/jupyter-ml", since=mark) == 1
    assert registry.open_uploads("library/jupyter-ml") == {}

    mark = registry.mark()
    wrong = Registry(url=registry.url, username=registry.username, password="wrong-password")
    with pytest.raises(RegistryUnauthorized) as caught:
        wrong.check_ready("jupyter-ml")
    assert registry.url in str(caught.value) and "wrong-password" not in str(caught.value)
    assert registry.blob_uploads(since=mark) == 0


def test_credentials_from_the_environment_in_a_dagster_run(
    registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(USERNAME_ENV, registry.username)
    monkeypatch.setenv(PASSWORD_ENV, registry.password)

    @dg.asset
    def registry_ready(registry: Registry) -> str:
        registry.check_ready("jupyter-ml")
        return registry.host

    resource = Registry(url=registry.url, username=dg.EnvVar(USERNAME_ENV), password=dg.EnvVar(PASSWORD_ENV))
    result = dg.materialize([registry_ready], resources={"registry": resource})

    assert result.success
    assert result.output_for_node("registry_ready") == registry.host
