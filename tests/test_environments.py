"""Resources come from the environment: `local` and `cluster` chosen in one place, every setting through
`dg.EnvVar`, and a missing secret stops a run before any work, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.fixtures.registry import RegistryServer
from thinkube_pipelines.defs.resources import resources_for_environment

REPO = Path(__file__).resolve().parents[1]
CHAIN = "jupyter-base/build,jupyter-base/published,jupyter-base/catalog_entry"


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("THINKUBE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("missing", ["THINKUBE_CATALOG_TOKEN", "THINKUBE_REGISTRY_PASSWORD"])
def test_a_run_without_a_required_secret_fails_before_building_naming_it(
    tmp_path: Path, registry: RegistryServer, missing: str
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path),
        "THINKUBE_STATE_DIR": str(tmp_path / "state"),
        "THINKUBE_REGISTRY_URL": registry.url,
        "THINKUBE_REGISTRY_USERNAME": registry.username,
        "THINKUBE_REGISTRY_PASSWORD": registry.password,
        "THINKUBE_CATALOG_URL": "http://127.0.0.1:9",
        "THINKUBE_CATALOG_TOKEN": "a-token-that-is-set",
    }
    del env[missing]
    mark = registry.mark()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
         "thinkube_pipelines.definitions", "--select", CHAIN],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f'environment variable "{missing}" which is not set' in output
    assert "STEP_START" not in output and "building jupyter-base" not in output
    assert registry.requests(since=mark) == [], "nothing may reach the registry before the secret is there"
    assert registry.password not in output


def test_anonymous_registry_access_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    with pytest.raises(dg.DagsterInvalidConfigError, match="THINKUBE_REGISTRY_USERNAME"):
        resources_for_environment("local")["registry"].process_config_and_initialize()
    monkeypatch.setenv("THINKUBE_REGISTRY_ANONYMOUS", "true")
    registry = resources_for_environment("local")["registry"].process_config_and_initialize()
    assert registry.username is None and registry.access().auth is None
    assert registry.url == "http://127.0.0.1:5000"  # the default, written once in settings.py


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("THINKUBE_REGISTRY_URL", "http://127.0.0.1:5999")
    monkeypatch.setenv("THINKUBE_REGISTRY_USERNAME", "robot$pipelines")
    monkeypatch.setenv("THINKUBE_REGISTRY_PASSWORD", "s3cret-value")
    monkeypatch.setenv("THINKUBE_BASE_MIRROR", "127.0.0.1:5999/library/thinkube-base:bookworm")
    monkeypatch.setenv("THINKUBE_CATALOG_TOKEN", "catalog-s3cret")
    resources = resources_for_environment("local")
    registry = resources["registry"].process_config_and_initialize()
    assert (registry.url, registry.username, registry.password) == (
        "http://127.0.0.1:5999",
        "robot$pipelines",
        "s3cret-value",
    )
    settings = resources["build_settings"].process_config_and_initialize()
    assert settings.base_mirror == "127.0.0.1:5999/library/thinkube-base:bookworm"
    # Secrets are held by reference: the configuration Dagster stores and shows names the variable only.
    shown = repr(resources["registry"]._get_non_default_public_field_values()) + repr(resources["catalog"])
    assert "s3cret" not in shown and "THINKUBE_REGISTRY_PASSWORD" in shown


def test_the_cluster_environment_needs_its_urls_and_takes_the_platform_ca(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("THINKUBE_REGISTRY_USERNAME", "robot$pipelines")
    monkeypatch.setenv("THINKUBE_REGISTRY_PASSWORD", "s3cret")
    monkeypatch.setenv("THINKUBE_CATALOG_TOKEN", "t")
    with pytest.raises(dg.DagsterInvalidConfigError, match="THINKUBE_REGISTRY_URL"):
        resources_for_environment("cluster")["registry"].process_config_and_initialize()
    with pytest.raises(dg.DagsterInvalidConfigError, match="THINKUBE_CATALOG_URL"):
        resources_for_environment("cluster")["catalog"].process_config_and_initialize()
    ca = tmp_path / "platform-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nplatform\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("THINKUBE_REGISTRY_URL", "https://harbor.example.org")
    monkeypatch.setenv("THINKUBE_REGISTRY_CA_BUNDLE", str(ca))
    registry = resources_for_environment("cluster")["registry"].process_config_and_initialize()
    assert registry.flavor == "harbor"
    access = registry.access()
    assert access.tls_verify and access.ca_pem == ca.read_text()
    assert access.auth is not None and access.auth.username == "robot$pipelines"


def test_an_unknown_environment_or_builder_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="THINKUBE_ENVIRONMENT='staging'"):
        resources_for_environment("staging")
    monkeypatch.setenv("THINKUBE_BUILDER", "kaniko")
    with pytest.raises(ValueError, match="THINKUBE_BUILDER='kaniko'"):
        resources_for_environment("local")
