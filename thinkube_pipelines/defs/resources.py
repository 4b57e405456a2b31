"""Resources, and the one place that picks them per environment (this machine, or the cluster)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from thinkube_pipelines.builders.buildah import BuildahBuilder
from thinkube_pipelines.catalog.client import CatalogClient
from thinkube_pipelines.registry.resource import PASSWORD_ENV, USERNAME_ENV, Registry
from thinkube_pipelines.settings import (
    BASE_MIRROR_ENV,
    BUILD_CA_BUNDLE_ENV,
    CATALOG_TOKEN_ENV,
    CATALOG_URL_ENV,
    DEFAULT_CATALOG_URL,
    DEFAULT_REGISTRY_PROJECT,
    DEFAULT_REGISTRY_URL,
    ENVIRONMENT_ENV,
    REGISTRY_FLAVOR_ENV,
    REGISTRY_PROJECT_ENV,
    REGISTRY_URL_ENV,
    setting,
    state_dir,
)


class CatalogResource(dg.ConfigurableResource):
    """The image catalog (thinkube-control's image API) that `catalog_entry` writes to."""

    url: str = Field(DEFAULT_CATALOG_URL, description="Base URL of the catalog service.")
    token: str | None = Field(
        None, description="Bearer token allowed to write (the service token or a Keycloak access token)."
    )
    timeout_s: float = Field(10.0, description="Seconds to wait for the catalog before failing.")

    def client(self) -> CatalogClient:
        return CatalogClient(self.url, token=self.token, timeout_s=self.timeout_s)


def _secret(name: str) -> dg.EnvVar | None:
    """A secret passed by reference, so Dagster never shows or stores its value; None when unset."""
    return dg.EnvVar(name) if setting(name) else None


def local_resources() -> dict[str, Any]:
    """This machine: buildah with storage under .state/, the local registry and catalog service."""
    containers = state_dir() / "containers"
    return {
        "builder": BuildahBuilder(
            storage_root=str(containers / "root"),
            run_root=str(containers / "run"),
            base_mirror=setting(BASE_MIRROR_ENV),
            ca_bundle=setting(BUILD_CA_BUNDLE_ENV),
        ),
        "registry": Registry(
            url=setting(REGISTRY_URL_ENV, DEFAULT_REGISTRY_URL),
            project=setting(REGISTRY_PROJECT_ENV, DEFAULT_REGISTRY_PROJECT),
            flavor=setting(REGISTRY_FLAVOR_ENV, "distribution"),
            username=_secret(USERNAME_ENV),
            password=_secret(PASSWORD_ENV),
        ),
        "catalog": CatalogResource(
            url=setting(CATALOG_URL_ENV, DEFAULT_CATALOG_URL), token=_secret(CATALOG_TOKEN_ENV)
        ),
    }


ENVIRONMENTS = {"local": local_resources}


def resources_for_environment(name: str | None = None) -> dict[str, Any]:
    """The resources of `name` (default: $THINKUBE_ENVIRONMENT, else "local")."""
    name = name or setting(ENVIRONMENT_ENV, "local")
    if name not in ENVIRONMENTS:
        raise ValueError(
            f"{ENVIRONMENT_ENV}={name!r}: unknown environment; expected one of {sorted(ENVIRONMENTS)}"
        )
    return ENVIRONMENTS[name]()
