"""Every setting of the hub deploy, read from the environment in one place (`HubSettings.from_env()`).

The names are module constants (`*_ENV`); the README's settings table lists them. Settings the pipeline
already had (the catalog URL, the OIDC issuer, the registry URL) keep their names from
`thinkube_pipelines.settings`. No secret is a setting: the OAuth client secret stays in a Kubernetes Secret
that the settings only name (`oidc_client_secret_name`/`_key`).

A missing required setting or a bad value raises `HubConfigError`, whose message names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from thinkube_pipelines import settings as pipeline_settings


class HubConfigError(ValueError):
    """A hub setting is missing or malformed; the message names the environment variable."""


# Names of the environment variables (README "Settings (environment)").
NAMESPACE_ENV = "THINKUBE_HUB_NAMESPACE"
RELEASE_ENV = "THINKUBE_HUB_RELEASE"
CHART_ENV = "THINKUBE_HUB_CHART"
CHART_REPOSITORY_ENV = "THINKUBE_HUB_CHART_REPOSITORY"
CHART_VERSION_ENV = "THINKUBE_HUB_CHART_VERSION"
CHART_PATH_ENV = "THINKUBE_HUB_CHART_PATH"
PUBLIC_URL_ENV = "THINKUBE_HUB_PUBLIC_URL"
INGRESS_CLASS_ENV = "THINKUBE_HUB_INGRESS_CLASS"
INGRESS_TLS_SECRET_ENV = "THINKUBE_HUB_INGRESS_TLS_SECRET"
DB_STORAGE_CLASS_ENV = "THINKUBE_HUB_DB_STORAGE_CLASS"
OIDC_ISSUER_ENV = "THINKUBE_OIDC_ISSUER"
OIDC_CLIENT_ID_ENV = "THINKUBE_HUB_OIDC_CLIENT_ID"
OIDC_CLIENT_SECRET_NAME_ENV = "THINKUBE_HUB_OIDC_SECRET_NAME"
OIDC_CLIENT_SECRET_KEY_ENV = "THINKUBE_HUB_OIDC_SECRET_KEY"
OIDC_SCOPES_ENV = "THINKUBE_HUB_OIDC_SCOPES"
USERNAME_CLAIM_ENV = "THINKUBE_HUB_USERNAME_CLAIM"
GROUPS_CLAIM_ENV = "THINKUBE_HUB_GROUPS_CLAIM"
ALLOWED_GROUPS_ENV = "THINKUBE_HUB_ALLOWED_GROUPS"
ADMIN_GROUPS_ENV = "THINKUBE_HUB_ADMIN_GROUPS"
CATALOG_URL_ENV = pipeline_settings.CATALOG_URL_ENV
HUB_CATALOG_URL_ENV = "THINKUBE_HUB_CATALOG_URL"
CATALOG_TIMEOUT_ENV = "THINKUBE_HUB_CATALOG_TIMEOUT_S"
REGISTRY_URL_ENV = pipeline_settings.REGISTRY_URL_ENV
CSI_DRIVER_ENV = "THINKUBE_HUB_CSI_DRIVER"
FILER_URL_ENV = "THINKUBE_SEAWEEDFS_FILER_URL"
SCRATCH_SIZE_ENV = "THINKUBE_HUB_SCRATCH_SIZE"
GPU_RESOURCE_ENV = "THINKUBE_HUB_GPU_RESOURCE"
GPU_PRODUCT_LABEL_ENV = "THINKUBE_HUB_GPU_PRODUCT_LABEL"
GPU_TOLERATION_KEY_ENV = "THINKUBE_HUB_GPU_TOLERATION_KEY"
HELM_TIMEOUT_ENV = "THINKUBE_HUB_HELM_TIMEOUT_S"
BUDGET_ENV = "THINKUBE_HUB_BUDGET_S"
HEALTH_TIMEOUT_ENV = "THINKUBE_HUB_HEALTH_TIMEOUT_S"
HEALTH_URL_ENV = "THINKUBE_HUB_HEALTH_URL"
"""Where the deploy asks the hub's health after the release (the resource's, not a HubSettings field)."""
HELM_ENV = "THINKUBE_HELM"
"""The helm binary (the resource's; default `helm` on PATH)."""
OIDC_CLIENT_SECRET_ENV = "THINKUBE_HUB_OIDC_CLIENT_SECRET"
"""The hub's OAuth client secret in Keycloak. The deploy writes it into the Kubernetes Secret the chart
values name (`oidc_client_secret_name`/`_key`); it never appears in the values, metadata or logs."""

VOLUME_NAMES = ("notebooks", "datasets", "models")


def volume_env(volume: str, field: str) -> str:
    """The variable of one volume's field: THINKUBE_HUB_NOTEBOOKS_SIZE, THINKUBE_HUB_MODELS_READ_ONLY, ..."""
    return f"THINKUBE_HUB_{volume.upper()}_{field.upper()}"


_FIELD_ENV = {
    "namespace": NAMESPACE_ENV,
    "release": RELEASE_ENV,
    "chart": CHART_ENV,
    "chart_repository": CHART_REPOSITORY_ENV,
    "chart_version": CHART_VERSION_ENV,
    "chart_path": CHART_PATH_ENV,
    "public_url": PUBLIC_URL_ENV,
    "ingress_class": INGRESS_CLASS_ENV,
    "ingress_tls_secret": INGRESS_TLS_SECRET_ENV,
    "db_storage_class": DB_STORAGE_CLASS_ENV,
    "oidc_issuer": OIDC_ISSUER_ENV,
    "oidc_client_id": OIDC_CLIENT_ID_ENV,
    "oidc_client_secret_name": OIDC_CLIENT_SECRET_NAME_ENV,
    "oidc_client_secret_key": OIDC_CLIENT_SECRET_KEY_ENV,
    "oidc_scopes": OIDC_SCOPES_ENV,
    "username_claim": USERNAME_CLAIM_ENV,
    "groups_claim": GROUPS_CLAIM_ENV,
    "allowed_groups": ALLOWED_GROUPS_ENV,
    "admin_groups": ADMIN_GROUPS_ENV,
    "catalog_url": CATALOG_URL_ENV,
    "hub_catalog_url": HUB_CATALOG_URL_ENV,
    "catalog_timeout_s": CATALOG_TIMEOUT_ENV,
    "registry_url": REGISTRY_URL_ENV,
    "csi_driver": CSI_DRIVER_ENV,
    "filer_url": FILER_URL_ENV,
    "scratch_size": SCRATCH_SIZE_ENV,
    "gpu_resource": GPU_RESOURCE_ENV,
    "gpu_product_label": GPU_PRODUCT_LABEL_ENV,
    "gpu_toleration_key": GPU_TOLERATION_KEY_ENV,
    "helm_timeout_s": HELM_TIMEOUT_ENV,
    "budget_s": BUDGET_ENV,
    "health_timeout_s": HEALTH_TIMEOUT_ENV,
}
_LIST_FIELDS = ("allowed_groups", "admin_groups", "oidc_scopes")
_VOLUME_FIELDS = ("size", "collection", "read_only")

# RFC 1123 label (namespaces, release names, Secret names are at most this strict where we use them).
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, StringConstraints(pattern=_DNS_LABEL, max_length=53)]
# RFC 1123 subdomain (Secret names, CSI driver names).
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DnsSubdomain = Annotated[str, StringConstraints(pattern=_DNS_SUBDOMAIN, max_length=253)]
# A Kubernetes resource quantity as sizes are written (20Gi, 500M, 1Ti, 1000000).
Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[kmun])?$")]
# A qualified name (label keys, extended resource names): optional DNS prefix, then a name.
QualifiedName = Annotated[
    str,
    StringConstraints(
        pattern=rf"^({_DNS_SUBDOMAIN[1:-1]}/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", max_length=316
    ),
]
# A SeaweedFS collection name (letters, digits, - and _).
Collection = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
GroupName = Annotated[str, StringConstraints(pattern=r"^[^\s,]+$", max_length=255)]
Claim = Annotated[str, StringConstraints(pattern=r"^[^\s]+$", max_length=255)]
PositiveSeconds = Annotated[float, Field(gt=0, le=24 * 3600)]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r}: no credentials, query or fragment expected")
    return value.rstrip("/")


class VolumeSettings(BaseModel, frozen=True):
    """One SeaweedFS volume (a PV on the CSI driver and its claim)."""

    model_config = ConfigDict(extra="forbid")

    size: Quantity = Field(description="capacity of the PV and its claim (a Kubernetes quantity, e.g. 100Gi)")
    collection: Collection = Field(description="SeaweedFS collection that holds the volume's files")
    read_only: bool = Field(False, description="mounted read-only in users' pods")


def _default_volumes() -> dict[str, VolumeSettings]:
    return {
        "notebooks": VolumeSettings(size="100Gi", collection="jupyter-notebooks"),
        "datasets": VolumeSettings(size="500Gi", collection="jupyter-datasets"),
        "models": VolumeSettings(size="500Gi", collection="jupyter-models", read_only=True),
    }


class HubSettings(BaseModel, frozen=True):
    """Everything the hub deploy reads. Build it with `from_env()`, or directly (tests, the Dagster job)."""

    model_config = ConfigDict(extra="forbid")

    namespace: DnsLabel = Field("jupyterhub", description="namespace of the hub and its volumes' claims")
    release: DnsLabel = Field("jupyterhub", description="Helm release name")
    chart: str = Field("jupyterhub", min_length=1, description="chart name in the chart repository")
    chart_repository: str = Field(
        "https://hub.jupyter.org/helm-chart/", description="Helm repository the chart is installed from"
    )
    chart_version: str = Field("4.4.0", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+([-+].*)?$")
    chart_path: Path | None = Field(
        None, description="a local chart .tgz used instead of the repository (the tests use the reference)"
    )
    public_url: str = Field(description="the hub's public URL, e.g. https://jupyter.example.org")
    ingress_class: str | None = Field(None, description="ingressClassName of the hub's Ingress")
    ingress_tls_secret: DnsSubdomain | None = Field(
        None, description="TLS Secret of the hub's Ingress (for an https public URL)"
    )
    db_storage_class: DnsSubdomain | None = Field(
        None,
        description="StorageClass of the hub's database volume (the chart's sqlite-pvc); None: the "
        "cluster's default class, which must then exist",
    )
    oidc_issuer: str = Field(description="the Keycloak realm URL, exactly its discovery document's issuer")
    oidc_client_id: str = Field("jupyterhub", min_length=1, max_length=255, pattern=r"^[^\s]+$")
    oidc_client_secret_name: DnsSubdomain = Field(
        "jupyterhub-oidc", description="Secret in the hub's namespace that holds the OAuth client secret"
    )
    oidc_client_secret_key: str = Field(
        "client-secret", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="key in that Secret"
    )
    oidc_scopes: list[Claim] = Field(
        default_factory=lambda: ["openid", "profile", "email", "groups"],
        min_length=1,
        description=(
            "scopes the hub asks for; `groups` is the realm's client scope whose Group Membership mapper "
            "puts the groups claim into the userinfo answer"
        ),
    )
    username_claim: Claim = "preferred_username"
    groups_claim: Claim = "groups"
    allowed_groups: list[GroupName] = Field(
        default_factory=lambda: ["jupyterhub-users"],
        min_length=1,
        description="Keycloak groups whose members may log in (at least one: else nobody may)",
    )
    admin_groups: list[GroupName] = Field(
        default_factory=lambda: ["jupyterhub-admins"], description="Keycloak groups whose members are admins"
    )
    catalog_url: str = Field(
        pipeline_settings.DEFAULT_CATALOG_URL, description="where the pipeline reads the catalog"
    )
    hub_catalog_url: str = Field(
        None,  # type: ignore[assignment]  # filled from catalog_url by _hub_catalog_url
        validate_default=True,
        description="where the hub reads the catalog (in-cluster); default: catalog_url",
    )
    catalog_timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    registry_url: str = Field(pipeline_settings.DEFAULT_REGISTRY_URL, description="Harbor (or a registry)")
    csi_driver: DnsSubdomain = "seaweedfs-csi-driver"
    filer_url: str = Field(description="SeaweedFS filer URL, e.g. http://seaweedfs-filer.seaweedfs:8888")
    volumes: dict[str, VolumeSettings] = Field(default_factory=_default_volumes)
    scratch_size: Quantity = "20Gi"
    gpu_resource: QualifiedName = "nvidia.com/gpu"
    gpu_product_label: QualifiedName = "nvidia.com/gpu.product"
    gpu_toleration_key: QualifiedName = "nvidia.com/gpu"
    helm_timeout_s: PositiveSeconds = 300.0
    budget_s: PositiveSeconds = 120.0
    health_timeout_s: PositiveSeconds = 60.0

    @field_validator(
        "public_url", "oidc_issuer", "catalog_url", "hub_catalog_url", "registry_url", "filer_url"
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="before")
    @classmethod
    def _hub_catalog_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("hub_catalog_url"):
            catalog_url = data.get("catalog_url", pipeline_settings.DEFAULT_CATALOG_URL)
            data = {**data, "hub_catalog_url": catalog_url}
        return data

    @field_validator("public_url")
    @classmethod
    def _no_path(cls, value: str) -> str:
        if urlsplit(value).path not in ("", "/"):
            raise ValueError(f"{value!r}: the hub is served at the root of its host, expected no path")
        return value

    @field_validator("volumes")
    @classmethod
    def _three_volumes(cls, value: dict[str, VolumeSettings]) -> dict[str, VolumeSettings]:
        if sorted(value) != sorted(VOLUME_NAMES):
            raise ValueError(f"expected exactly the volumes {', '.join(VOLUME_NAMES)}, got {sorted(value)}")
        return value

    @property
    def ingress_host(self) -> str:
        """The host of the public URL (the Ingress rule's host)."""
        return urlsplit(self.public_url).hostname or ""

    @property
    def oauth_callback_url(self) -> str:
        return f"{self.public_url}/hub/oauth_callback"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HubSettings:
        """The settings from the environment (an empty variable counts as unset); `HubConfigError` names
        the variable of a missing or malformed setting."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for field, name in _FIELD_ENV.items():
            value = env.get(name)
            if not value:
                continue
            raw[field] = _split(value) if field in _LIST_FIELDS else value
        volumes: dict[str, dict[str, Any]] = {}
        for volume, defaults in _default_volumes().items():
            fields = defaults.model_dump()
            for field in _VOLUME_FIELDS:
                value = env.get(volume_env(volume, field))
                if value:
                    fields[field] = value
            volumes[volume] = fields
        raw["volumes"] = volumes
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise HubConfigError(_describe(exc)) from None


def _split(value: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", value) if part]


def env_name(loc: tuple[int | str, ...]) -> str:
    """The variable behind a validation error's location (`("volumes", "models", "size")` ->
    THINKUBE_HUB_MODELS_SIZE)."""
    if len(loc) >= 3 and loc[0] == "volumes":
        return volume_env(str(loc[1]), str(loc[2]))
    return _FIELD_ENV.get(str(loc[0]), str(loc[0])) if loc else "(settings)"


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = env_name(tuple(error["loc"]))
        if error["type"] == "missing":
            lines.append(f"{name} is not set: it is required")
        else:
            # The message of a pattern or URL check, never the whole input object.
            message = re.sub(r"^Value error, ", "", error["msg"])
            lines.append(f"{name}: {message}")
    return "hub settings: " + "; ".join(lines)
