"""The values of the zero-to-jupyterhub chart (4.4.0) for our hub: typed models of the parts we set, rendered
to a plain dict once (`chart_values`) and checked against the chart's own values schema (`validate_values`).

What the values say, and why (DESIGN.md "Where we go beyond the plan"):
- login: GenericOAuthenticator on the Keycloak realm; its endpoints from the realm's discovery document when
  the caller has it (the deploy's preflight fetched it), else Keycloak's URL layout under the issuer.
  Access and admin by Keycloak groups: OAuthenticator 17 reads the groups from the userinfo answer kept in
  the auth state (`auth_state_groups_key = "oauth_user.<groups claim>"`) and only with `manage_groups`
  (its `claim_groups_key` is deprecated since 17.0). The client secret never appears: the hub gets it as
  `OAUTH_CLIENT_SECRET` from a Kubernetes Secret (`valueFrom.secretKeyRef`), which OAuthenticator reads.
- the profile callable (`thinkube_pipelines/hub/profiles.py`) is shipped as a hub extra file, loaded by an
  extraConfig snippet, configured by extraEnv: no image list in the values.
- storage: no per-user dynamic PVC (`storage.type: none`); the SeaweedFS notebooks claim mounted at the home
  folder with the user's own `subPath` (`{escaped_username}`, expanded by KubeSpawner), datasets and models
  shared, scratch an emptyDir with a size limit; no hostPath anywhere.
- scheduling: no node selector or node affinity for user pods (`matchNodePurpose: ignore`), no
  user-scheduler; a GPU profile's own resources and toleration take its pod to some GPU node. The hub's pods
  tolerate the GPU taint, so that a cluster whose workers are all GPU nodes runs them.
- the chart's image pullers are off, both the pre-upgrade hook and the continuous one: helm's `--wait`
  would hold the deploy until every node has pulled every image (10+ GB for a GPU image), past the deploy's
  budget, and roll back a healthy hub. Our own pre-puller DaemonSet (hub/prepuller.py), applied beside the
  release and not waited for, pulls every catalog image by digest on every node instead.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlencode

import jsonschema
from pydantic import BaseModel, ConfigDict

from thinkube_pipelines.catalog.contract import CatalogItem
from thinkube_pipelines.hub import profiles
from thinkube_pipelines.hub.settings import OIDC_ISSUER_ENV, HubSettings
from thinkube_pipelines.hub.volumes import claim_name

SCHEMA_RESOURCE = "z2jh-4.4.0-values.schema.json"
DEFAULTS_RESOURCE = "z2jh-4.4.0-default-values.json"
"""The chart's own values.yaml (as JSON): helm checks the schema against the defaults merged with ours."""
PROFILES_FILE_KEY = "thinkube-profiles"
PROFILES_DIR = "/usr/local/etc/jupyterhub"
PROFILES_MOUNT_PATH = f"{PROFILES_DIR}/thinkube_profiles.py"
PROFILES_EXTRA_CONFIG = (
    f'import sys; sys.path.insert(0, "{PROFILES_DIR}"); '
    "import thinkube_profiles; thinkube_profiles.install(c)"
)
CLIENT_SECRET_ENV = "OAUTH_CLIENT_SECRET"
"""The variable GenericOAuthenticator reads its client secret from (oauthenticator's `client_secret`)."""
HOME = "/home/jovyan"
NOTEBOOKS_SUBPATH = "{escaped_username}"
"""KubeSpawner 7 expands it to the escaped user name; unlike `{username}` it does not change with
KubeSpawner's `slug_scheme`, so a user's folder stays the same across hub upgrades."""
MOUNT_PATHS = {"notebooks": HOME, "datasets": f"{HOME}/datasets", "models": f"{HOME}/models"}
SCRATCH_PATH = f"{HOME}/scratch"
CORE_TOLERATIONS = [
    # the chart's defaults for its core pods, kept when we add the GPU toleration
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "core", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "core", "effect": "NoSchedule"},
]


class HubValuesError(ValueError):
    """The values could not be rendered, or do not pass the chart's schema; the message says where."""


class _Values(BaseModel):
    """A part of the chart values: exactly the chart's key names, nothing unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- hub ---------------------------------------------------------------------------------------------------


class GenericOAuthenticatorConfig(_Values):
    """`hub.config.GenericOAuthenticator`: trait names of OAuthenticator 17.4 (the hub image's)."""

    client_id: str
    oauth_callback_url: str
    authorize_url: str
    token_url: str
    userdata_url: str
    logout_redirect_url: str | None = None
    login_service: str = "Keycloak"
    scope: list[str]
    username_claim: str
    manage_groups: bool = True
    auth_state_groups_key: str
    allowed_groups: list[str]
    admin_groups: list[str]


class HubConfig(_Values):
    JupyterHub: dict[str, Any]
    GenericOAuthenticator: GenericOAuthenticatorConfig


class SecretKeyRef(_Values):
    name: str
    key: str


class ValueFrom(_Values):
    secretKeyRef: SecretKeyRef


class EnvFromSecret(_Values):
    valueFrom: ValueFrom


class ExtraFile(_Values):
    mountPath: str
    stringData: str
    mode: int | None = None


class HubDbPvc(_Values):
    storageClassName: str | None = None


class HubDb(_Values):
    """The chart's default database (SQLite on a PVC), on a named StorageClass when one is configured."""

    pvc: HubDbPvc = HubDbPvc()


class Hub(_Values):
    config: HubConfig
    db: HubDb = HubDb()
    extraEnv: dict[str, str | EnvFromSecret]
    extraFiles: dict[str, ExtraFile]
    extraConfig: dict[str, str]


# -- proxy and ingress -------------------------------------------------------------------------------------


class ProxyService(_Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"


class ProxyHttps(_Values):
    enabled: bool = False


class Proxy(_Values):
    service: ProxyService = ProxyService()
    https: ProxyHttps = ProxyHttps()


class IngressTls(_Values):
    hosts: list[str]
    secretName: str


class Ingress(_Values):
    enabled: bool = True
    ingressClassName: str | None = None
    hosts: list[str]
    pathType: Literal["Prefix"] = "Prefix"
    tls: list[IngressTls] = []


# -- single-user pods --------------------------------------------------------------------------------------


class Storage(_Values):
    type: Literal["none"] = "none"
    extraVolumes: list[dict[str, Any]]
    extraVolumeMounts: list[dict[str, Any]]


class EgressAllowRules(_Values):
    privateIPs: bool = True
    """Users reach in-cluster services (SeaweedFS's S3 gateway, Gitea), which have private IPs."""


class SingleuserNetworkPolicy(_Values):
    egressAllowRules: EgressAllowRules = EgressAllowRules()


class ImageRef(_Values):
    """The chart writes `{name}:{tag}`; a digest goes in as name `repo@sha256` and tag the hex digits, which
    makes `repo@sha256:<hex>`."""

    name: str
    tag: str


class Singleuser(_Values):
    image: ImageRef
    storage: Storage
    networkPolicy: SingleuserNetworkPolicy = SingleuserNetworkPolicy()


# -- scheduling and the chart's image pullers --------------------------------------------------------------


class NodeAffinity(_Values):
    matchNodePurpose: Literal["ignore", "prefer", "require"]


class CorePods(_Values):
    tolerations: list[dict[str, Any]]


class UserPods(_Values):
    nodeAffinity: NodeAffinity = NodeAffinity(matchNodePurpose="ignore")


class Enabled(_Values):
    enabled: bool


class Scheduling(_Values):
    userScheduler: Enabled = Enabled(enabled=False)
    userPlaceholder: Enabled = Enabled(enabled=False)
    corePods: CorePods
    userPods: UserPods = UserPods()


class PrePuller(_Values):
    """Both of the chart's pullers off: they are DaemonSets of the release, which helm's `--wait` waits for
    until every node has every image (hub/prepuller.py pulls them outside the release)."""

    hook: Enabled = Enabled(enabled=False)
    continuous: Enabled = Enabled(enabled=False)


class ChartValues(_Values):
    fullnameOverride: str = ""
    """Blank: the chart's objects keep their plain names (`hub`, `proxy-public`, the `hub` ServiceAccount)."""
    hub: Hub
    proxy: Proxy = Proxy()
    ingress: Ingress
    singleuser: Singleuser
    scheduling: Scheduling
    prePuller: PrePuller


# -- building them -----------------------------------------------------------------------------------------


def oidc_endpoints(settings: HubSettings, discovery: Mapping[str, Any] | None = None) -> dict[str, str]:
    """authorize, token, userinfo and logout URLs of the realm: from its discovery document when given
    (whose issuer must be the configured one), else Keycloak's layout under the issuer."""
    issuer = settings.oidc_issuer
    keycloak = f"{issuer}/protocol/openid-connect"
    endpoints = {
        "authorize_url": f"{keycloak}/auth",
        "token_url": f"{keycloak}/token",
        "userdata_url": f"{keycloak}/userinfo",
        "end_session": f"{keycloak}/logout",
    }
    if discovery is None:
        return endpoints
    if str(discovery.get("issuer", "")).rstrip("/") != issuer:
        raise HubValuesError(
            f"the OIDC discovery document names issuer {discovery.get('issuer')!r}, "
            f"but {OIDC_ISSUER_ENV} is {issuer!r}"
        )
    keys = {
        "authorize_url": "authorization_endpoint",
        "token_url": "token_endpoint",
        "userdata_url": "userinfo_endpoint",
        "end_session": "end_session_endpoint",
    }
    for ours, theirs in keys.items():
        value = discovery.get(theirs)
        if isinstance(value, str) and value:
            endpoints[ours] = value
        elif ours != "end_session":
            raise HubValuesError(f"the OIDC discovery document of {issuer} has no {theirs}")
        else:
            del endpoints[ours]
    return endpoints


def image_reference(item: CatalogItem) -> str:
    """`registry/repository@digest` when the catalog has the digest, else `registry/repository:tag`."""
    meta = item.metadata
    repository = f"{meta.registry}/{meta.repository}"
    if meta.digest:
        return f"{repository}@{meta.digest}"
    if meta.tag:
        return f"{repository}:{meta.tag}"
    raise HubValuesError(f"catalog image {item.name!r} has neither a digest nor a tag: nothing to pull")


def _image_ref(item: CatalogItem) -> ImageRef:
    repository, _, rest = image_reference(item).rpartition("@" if item.metadata.digest else ":")
    if item.metadata.digest:
        algorithm, _, hex_digest = rest.partition(":")
        return ImageRef(name=f"{repository}@{algorithm}", tag=hex_digest)
    return ImageRef(name=repository, tag=rest)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _gpu_toleration(settings: HubSettings) -> dict[str, str]:
    return {"key": settings.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"}


def _profiles_env(settings: HubSettings) -> dict[str, str]:
    """The profile callable's settings, under the names profiles.py reads (its node cache keeps its
    default)."""
    return {
        profiles.CATALOG_URL_ENV: settings.hub_catalog_url,
        profiles.CATALOG_TIMEOUT_ENV: f"{settings.catalog_timeout_s:g}",
        profiles.GPU_RESOURCE_ENV: settings.gpu_resource,
        profiles.GPU_PRODUCT_LABEL_ENV: settings.gpu_product_label,
        profiles.GPU_TOLERATION_KEY_ENV: settings.gpu_toleration_key,
    }


def profiles_source() -> str:
    """The text of profiles.py, as installed: what the hub runs is exactly what our tests import."""
    return resources.files("thinkube_pipelines.hub").joinpath("profiles.py").read_text(encoding="utf-8")


def _storage(settings: HubSettings) -> Storage:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for volume, mount_path in MOUNT_PATHS.items():
        read_only = settings.volumes[volume].read_only
        volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim_name(volume), "readOnly": read_only},
            }
        )
        mount: dict[str, Any] = {"name": volume, "mountPath": mount_path, "readOnly": read_only}
        if volume == "notebooks":
            mount["subPath"] = NOTEBOOKS_SUBPATH
        mounts.append(mount)
    volumes.append({"name": "scratch", "emptyDir": {"sizeLimit": settings.scratch_size}})
    mounts.append({"name": "scratch", "mountPath": SCRATCH_PATH})
    return Storage(extraVolumes=volumes, extraVolumeMounts=mounts)


def _default_image(images: Sequence[CatalogItem]) -> CatalogItem:
    defaults = [item for item in images if item.default]
    return (defaults or list(images))[0]


def build_values(
    settings: HubSettings, images: Sequence[CatalogItem], discovery: Mapping[str, Any] | None = None
) -> ChartValues:
    """The typed values of our hub for the current catalog `images` (at least one)."""
    if not images:
        raise HubValuesError(f"the catalog at {settings.catalog_url} lists no Jupyter image")
    names = [item.name for item in images]
    if len(set(names)) != len(names):
        raise HubValuesError(f"the catalog lists an image twice: {sorted(names)}")
    endpoints = oidc_endpoints(settings, discovery)
    end_session = endpoints.pop("end_session", None)
    logout = None
    if end_session:
        query = urlencode(
            {"client_id": settings.oidc_client_id, "post_logout_redirect_uri": settings.public_url}
        )
        logout = f"{end_session}?{query}"
    oauth = GenericOAuthenticatorConfig(
        client_id=settings.oidc_client_id,
        oauth_callback_url=settings.oauth_callback_url,
        **endpoints,
        logout_redirect_url=logout,
        scope=list(settings.oidc_scopes),
        username_claim=settings.username_claim,
        auth_state_groups_key=f"oauth_user.{settings.groups_claim}",
        allowed_groups=list(settings.allowed_groups),
        admin_groups=list(settings.admin_groups),
    )
    secret = EnvFromSecret(
        valueFrom=ValueFrom(
            secretKeyRef=SecretKeyRef(
                name=settings.oidc_client_secret_name, key=settings.oidc_client_secret_key
            )
        )
    )
    hub = Hub(
        config=HubConfig(JupyterHub={"authenticator_class": "generic-oauth"}, GenericOAuthenticator=oauth),
        extraEnv={CLIENT_SECRET_ENV: secret, **_profiles_env(settings)},
        extraFiles={
            PROFILES_FILE_KEY: ExtraFile(mountPath=PROFILES_MOUNT_PATH, stringData=profiles_source())
        },
        extraConfig={PROFILES_FILE_KEY: PROFILES_EXTRA_CONFIG},
        db=HubDb(pvc=HubDbPvc(storageClassName=settings.db_storage_class)),
    )
    tls = []
    if settings.ingress_tls_secret:
        tls = [IngressTls(hosts=[settings.ingress_host], secretName=settings.ingress_tls_secret)]
    # an Ingress rule's host is a DNS name: a public URL on an IP address gets a rule for any host
    hosts = [] if _is_ip(settings.ingress_host) else [settings.ingress_host]
    ingress = Ingress(ingressClassName=settings.ingress_class, hosts=hosts, tls=tls)
    gpu = _gpu_toleration(settings)
    return ChartValues(
        hub=hub,
        ingress=ingress,
        singleuser=Singleuser(image=_image_ref(_default_image(images)), storage=_storage(settings)),
        scheduling=Scheduling(corePods=CorePods(tolerations=[*CORE_TOLERATIONS, gpu])),
        prePuller=PrePuller(),
    )


def chart_values(
    settings: HubSettings, images: Sequence[CatalogItem], discovery: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The chart values as plain data (what goes into values.yaml), checked against the chart's schema."""
    values = build_values(settings, images, discovery).model_dump(mode="json", exclude_none=True)
    validate_values(values)
    return values


def _resource(name: str) -> Any:
    return json.loads(resources.files("thinkube_pipelines.hub").joinpath(name).read_text(encoding="utf-8"))


@cache
def values_schema() -> dict[str, Any]:
    """The chart's values schema (zero-to-jupyterhub 4.4.0), shipped with the package."""
    return _resource(SCHEMA_RESOURCE)


def chart_defaults() -> dict[str, Any]:
    """The chart's default values (its values.yaml), a fresh copy each call."""
    return _resource(DEFAULTS_RESOURCE)


def coalesce(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Our values over the chart's defaults, as helm merges them: maps merge key by key, anything else
    (lists included) replaces, a null removes the chart's key."""
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = coalesce(merged[key], value)
        else:
            merged[key] = value
    return merged


def values_path(path: Sequence[str | int]) -> str:
    """`hub.extraEnv.X`, `singleuser.storage.extraVolumes[0].name`: where in the values a problem is."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(values)"


def validate_values(values: Mapping[str, Any]) -> None:
    """Check `values`, merged over the chart's defaults as helm merges them, against the chart's schema;
    HubValuesError names each failing path."""
    schema = values_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    merged = coalesce(chart_defaults(), values)
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        problems = [f"{values_path(list(e.absolute_path))}: {e.message}" for e in errors]
        raise HubValuesError("the chart values fail the z2jh 4.4.0 schema: " + "; ".join(problems))
