"""The hub deploy's resource: the cluster, the OAuth client secret (by environment variable only), helm,
and where the hub's health is asked. Every other setting is a `HubSettings` field, read from the
environment when a run starts (thinkube_pipelines/hub/settings.py; the README lists the variables)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from thinkube_pipelines.hub.settings import (
    HEALTH_URL_ENV,
    HELM_ENV,
    OIDC_CLIENT_SECRET_ENV,
    HubConfigError,
    HubSettings,
)
from thinkube_pipelines.kubernetes.cluster import KubernetesCluster, KubernetesError


class HubDeployment(dg.ConfigurableResource):
    """Where and how the hub is deployed."""

    cluster: KubernetesCluster = Field(description="The cluster the hub is deployed to.")
    oidc_client_secret: str | None = Field(
        None,
        repr=False,
        description=f"The hub OAuth client secret in Keycloak: EnvVar({OIDC_CLIENT_SECRET_ENV!r}) if set. "
        "Optional here, so that image runs need no hub secret; a hub step fails at its start without it.",
    )
    helm: str | None = Field(None, description=f"The helm binary (${HELM_ENV}). None: `helm` on PATH.")
    health_url: str | None = Field(
        None,
        description=f"Where the hub's health is asked after the release (${HEALTH_URL_ENV}). None: "
        "{public_url}/hub/health; in a pod that cannot resolve the public host, e.g. "
        "http://proxy-public.<namespace>.svc/hub/health.",
    )
    preflight_timeout_s: float = Field(5.0, description="Seconds each preflight request may take.")

    _settings: HubSettings | None = PrivateAttr(None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Read the hub settings and the cluster's configuration when the run starts, before any step: a
        missing or malformed setting fails the run naming its variable."""
        try:
            self._settings = HubSettings.from_env()
        except HubConfigError as exc:
            raise dg.Failure(str(exc)) from None
        if not self.oidc_client_secret:
            raise dg.Failure(
                f"{OIDC_CLIENT_SECRET_ENV} is not set: deploying the hub needs its OAuth client secret"
            )
        try:
            self.cluster.configuration()
        except KubernetesError as exc:
            raise dg.Failure(f"hub deploy: {exc}") from None

    @property
    def settings(self) -> HubSettings:
        if self._settings is None:
            self._settings = HubSettings.from_env()
        return self._settings
