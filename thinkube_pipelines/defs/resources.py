"""Resources, and the one place that picks them per environment: `local` (this machine) or `cluster`.

Every setting comes from the environment through `dg.EnvVar`, so the UI shows where a value came from and
a secret's value is never stored or shown. A setting with a default (settings.py, written once) uses the
default while its variable is unset; a secret an environment requires is always an `EnvVar`, so a run
without it fails when it starts, before any build, naming the variable.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from thinkube_pipelines import settings as s
from thinkube_pipelines.builders.base import DEFAULT_PLATFORM
from thinkube_pipelines.kubernetes.cluster import KUBECONFIG_ENV, KubernetesCluster, KubernetesError
from thinkube_pipelines.registry.resource import PASSWORD_ENV, USERNAME_ENV, Registry

if TYPE_CHECKING:
    from thinkube_pipelines.catalog.client import CatalogClient

REGISTRATION_ENV = "THINKUBE_REGISTRATION"
THINKUBE_CONTROL_NAMESPACE_ENV = "THINKUBE_CONTROL_NAMESPACE"
CATALOG_TARGET = "catalog"
THINKUBE_CONTROL_TARGET = "thinkube-control"
REGISTRATIONS: dict[str, tuple[str, ...]] = {
    CATALOG_TARGET: (CATALOG_TARGET,),
    THINKUBE_CONTROL_TARGET: (THINKUBE_CONTROL_TARGET,),
    "both": (CATALOG_TARGET, THINKUBE_CONTROL_TARGET),
}
"""The values of THINKUBE_REGISTRATION and the targets each one writes, in the order they are written."""
DEFAULT_REGISTRATION = CATALOG_TARGET
DEFAULT_THINKUBE_CONTROL_NAMESPACE = "thinkube-control"
KUBERNETES_BUILDER = "kubernetes"
"""THINKUBE_BUILDER's value for the Kubernetes builder and runner: the `cluster` environment's default."""
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def registration_targets(value: str | None) -> tuple[str, ...]:
    """The targets a THINKUBE_REGISTRATION value names; a ValueError naming the variable otherwise."""
    if value not in REGISTRATIONS:
        raise ValueError(
            f"{REGISTRATION_ENV}={value!r}: unknown registration target; expected one of "
            f"{', '.join(repr(v) for v in REGISTRATIONS)}"
        )
    return REGISTRATIONS[value]


class CatalogResource(dg.ConfigurableResource):
    """Where `catalog_entry` registers each image: this project's catalog service (the image API the hub
    reads) and/or thinkube-control's image discovery (a labelled ConfigMap per image, written through the
    Kubernetes API), as `registration` says."""

    url: str = Field(s.DEFAULT_CATALOG_URL, description="Base URL of the catalog service.")
    token: str | None = Field(
        None, description="Bearer token allowed to write (the service token or a Keycloak access token)."
    )
    timeout_s: float = Field(10.0, description="Seconds to wait for the catalog before failing.")
    registration: str = Field(
        DEFAULT_REGISTRATION,
        description=f"Where images are registered (${REGISTRATION_ENV}): 'catalog' (the catalog service), "
        "'thinkube-control' (the ConfigMap its image discovery reads) or 'both'.",
    )
    thinkube_control: KubernetesCluster | None = Field(
        None,
        description="The cluster thinkube-control runs in, and the namespace (its `namespace`, "
        f"${THINKUBE_CONTROL_NAMESPACE_ENV}) that holds our image ConfigMaps. Required when "
        "`registration` includes thinkube-control.",
    )

    def targets(self) -> tuple[str, ...]:
        """The targets to write, checked: a ValueError naming the setting that is wrong or missing."""
        targets = registration_targets(self.registration)
        if THINKUBE_CONTROL_TARGET in targets:
            if self.thinkube_control is None:
                raise ValueError(
                    f"{REGISTRATION_ENV}={self.registration!r} needs the thinkube-control cluster "
                    "(the resource's `thinkube_control`), which is not configured"
                )
            namespace = self.thinkube_control.namespace
            if namespace is not None and not _DNS_LABEL.match(namespace):
                raise ValueError(
                    f"{THINKUBE_CONTROL_NAMESPACE_ENV}={namespace!r}: not a namespace name (a DNS label: "
                    "lowercase letters, digits and '-', at most 63)"
                )
        return targets

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Check the settings when a run starts, before any step: the targets, and for thinkube-control
        that a Kubernetes configuration exists (read locally: nothing is sent to the cluster yet)."""
        targets = self.targets()
        if THINKUBE_CONTROL_TARGET in targets:
            assert self.thinkube_control is not None
            try:
                self.thinkube_control.configuration()
            except KubernetesError as exc:
                raise ValueError(f"{REGISTRATION_ENV}={self.registration!r}: {exc}") from exc

    def client(self) -> CatalogClient:
        from thinkube_pipelines.catalog.client import CatalogClient  # brings requests, httpx: not at load

        return CatalogClient(self.url, token=self.token, timeout_s=self.timeout_s)


class BuildSettings(dg.ConfigurableResource):
    """How images are built and published, whichever builder builds them."""

    base_mirror: str | None = Field(
        None,
        description="An image root images build FROM instead of their pinned upstream base (for machines "
        "that cannot reach the upstream registry): a digest reference, or a tag in our registry, which "
        "each build resolves to its current digest.",
    )
    platform: str = Field(DEFAULT_PLATFORM, description="The platform images are built for.")
    moving_tags: list[str] = Field(
        ["latest"],
        description="Tags moved to every newly published digest besides its immutable version tag. Empty "
        "where the registry makes every tag immutable.",
    )
    smoke_timeout_s: float = Field(600.0, description="Time limit of one smoke check run.")
    gpu_test: bool = Field(
        True,
        description="Run the GPU test (`gpu-check` with one GPU) of every gpu_required image before it is "
        "published. Off (a workstation without a GPU), the check reports a warning, not run, and does not "
        "block.",
    )
    gpu_test_timeout_s: float = Field(900.0, description="Time limit of one GPU test run.")


def env_setting(name: str, default: Any) -> Any:
    """`dg.EnvVar(name)` while the variable is set, else the default (which Dagster shows as a value)."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _truthy(name: str) -> bool:
    return (os.environ.get(name) or "").lower() in ("1", "true", "yes")


def _flavor(default: str) -> str:
    """THINKUBE_REGISTRY_FLAVOR's value, checked here: the field is a Literal, which a `dg.EnvVar` (a string
    subclass holding the variable's name until the run resolves it) cannot pass."""
    flavor = s.setting(s.REGISTRY_FLAVOR_ENV, default)
    if flavor not in ("distribution", "harbor"):
        raise ValueError(f"{s.REGISTRY_FLAVOR_ENV}={flavor!r}: expected 'distribution' or 'harbor'")
    return flavor


def _registry(**extra: Any) -> Registry:
    """The registry with credentials by reference: required unless anonymous access is configured."""
    anonymous = _truthy(s.REGISTRY_ANONYMOUS_ENV)
    return Registry(
        project=env_setting(s.REGISTRY_PROJECT_ENV, s.DEFAULT_REGISTRY_PROJECT),
        username=None if anonymous else dg.EnvVar(USERNAME_ENV),
        password=None if anonymous else dg.EnvVar(PASSWORD_ENV),
        ca_bundle=env_setting(s.REGISTRY_CA_BUNDLE_ENV, None),
        **extra,
    )


def _env_present(name: str, default: Any) -> Any:
    """`dg.EnvVar(name)` while the variable is set, even to an empty value (which means "none" for the
    settings that use this), else the default."""
    return dg.EnvVar(name) if name in os.environ else default


def _env_int(name: str, default: int) -> Any:
    return dg.EnvVar.int(name) if os.environ.get(name) else default


def _kubernetes_builder_and_runner() -> dict[str, Any]:
    """The Kubernetes builder and runner: every build a BuildKit Job, every check a Job, in the cluster
    $KUBECONFIG names (else ~/.kube/config, else the pod's ServiceAccount), in $THINKUBE_JOBS_NAMESPACE
    (else the context's namespace; in a pod its own)."""
    from thinkube_pipelines.builders import kubernetes as k

    cache = s.setting(k.BUILD_CACHE_ENV, "registry")
    if cache not in ("registry", "none"):
        raise ValueError(f"{k.BUILD_CACHE_ENV}={cache!r}: expected 'registry' or 'none'")
    jobs: dict[str, Any] = {
        "cluster": KubernetesCluster(
            kubeconfig=env_setting(KUBECONFIG_ENV, None),
            namespace=env_setting(k.JOBS_NAMESPACE_ENV, None),
        ),
        "registry_secret": env_setting(k.BUILD_REGISTRY_SECRET_ENV, k.DEFAULT_REGISTRY_SECRET),
        "ca_configmap": env_setting(k.REGISTRY_CA_CONFIGMAP_ENV, k.DEFAULT_CA_CONFIGMAP),
        "node_selector": _env_present(k.JOB_NODE_SELECTOR_ENV, k.DEFAULT_NODE_SELECTOR),
        "tolerations": _env_present(k.JOB_TOLERATIONS_ENV, k.DEFAULT_TOLERATIONS),
        "schedule_timeout_s": _env_int(k.SCHEDULE_TIMEOUT_ENV, k.DEFAULT_SCHEDULE_TIMEOUT_S),
        "start_timeout_s": _env_int(k.START_TIMEOUT_ENV, k.DEFAULT_START_TIMEOUT_S),
    }
    return {
        "builder": k.KubernetesBuilder(
            **jobs,
            build_resources=env_setting(k.BUILD_RESOURCES_ENV, ""),
            registry_cache=cache == "registry",
            buildkit_image=env_setting(k.BUILDKIT_IMAGE_ENV, k.BUILDKIT_IMAGE),
            context_fetch_image=env_setting(k.CONTEXT_FETCH_IMAGE_ENV, k.CONTEXT_FETCH_IMAGE),
        ),
        "runner": k.KubernetesRunner(**jobs, check_resources=env_setting(k.CHECK_RESOURCES_ENV, "")),
    }


def _builder_and_runner(default_storage: str, default_kind: str = "buildah") -> dict[str, Any]:
    """The builder and runner THINKUBE_BUILDER names: `buildah` (no daemon), `docker` (the engine at
    DOCKER_HOST) or `kubernetes` (Jobs in the cluster); `default_kind` while it is unset."""
    kind = os.environ.get(s.BUILDER_ENV) or default_kind
    if kind == KUBERNETES_BUILDER:
        return _kubernetes_builder_and_runner()
    if kind == "buildah":
        from thinkube_pipelines.builders.buildah import BuildahBuilder, BuildahRunner

        storage = {
            "storage_root": f"{default_storage}/containers/root",
            "run_root": f"{default_storage}/containers/run",
        }
        return {
            "builder": BuildahBuilder(**storage, ca_bundle=env_setting(s.BUILD_CA_BUNDLE_ENV, None)),
            "runner": BuildahRunner(**storage),
        }
    if kind == "docker":
        from thinkube_pipelines.builders.docker import DockerBuilder, DockerRunner

        host = env_setting(s.DOCKER_HOST_ENV, None)
        return {"builder": DockerBuilder(docker_host=host), "runner": DockerRunner(docker_host=host)}
    raise ValueError(
        f"{s.BUILDER_ENV}={kind!r}: unknown builder; expected 'buildah', 'docker' or '{KUBERNETES_BUILDER}'"
    )


def _catalog(url: Any) -> CatalogResource:
    """Where `catalog_entry` registers images, as THINKUBE_REGISTRATION says (checked here, so a wrong
    value stops the code location from loading, naming the variable). The catalog's URL and token are
    required only when the catalog is a target; the thinkube-control cluster comes from $KUBECONFIG, else
    ~/.kube/config, else the pod's ServiceAccount (the official client's own order)."""
    registration = s.setting(REGISTRATION_ENV, DEFAULT_REGISTRATION)
    targets = registration_targets(registration)
    catalog = CATALOG_TARGET in targets
    return CatalogResource(
        url=url if catalog else env_setting(s.CATALOG_URL_ENV, s.DEFAULT_CATALOG_URL),
        token=dg.EnvVar(s.CATALOG_TOKEN_ENV) if catalog else None,
        registration=env_setting(REGISTRATION_ENV, DEFAULT_REGISTRATION),
        thinkube_control=KubernetesCluster(
            kubeconfig=env_setting(KUBECONFIG_ENV, None),
            namespace=env_setting(THINKUBE_CONTROL_NAMESPACE_ENV, DEFAULT_THINKUBE_CONTROL_NAMESPACE),
        )
        if THINKUBE_CONTROL_TARGET in targets
        else None,
    )


def _build_settings() -> BuildSettings:
    return BuildSettings(
        base_mirror=env_setting(s.BASE_MIRROR_ENV, None),
        platform=env_setting(s.BUILD_PLATFORM_ENV, DEFAULT_PLATFORM),
        gpu_test=_gpu_test(),
    )


def _gpu_test() -> bool:
    """THINKUBE_GPU_TEST, checked here: a typo must not silently turn the GPU gate off."""
    value = (os.environ.get(s.GPU_TEST_ENV) or "true").lower()
    if value not in ("true", "false"):
        raise ValueError(f"{s.GPU_TEST_ENV}={value!r}: expected 'true' or 'false'")
    return value == "true"


def _hub() -> Any:
    """The hub deploy: the cluster from $KUBECONFIG (else ~/.kube/config, else the pod's ServiceAccount),
    the OAuth client secret by reference where set (a hub step without it fails when it starts; image runs
    never need it, so it is not a required configuration value),
    helm from $THINKUBE_HELM (else PATH), the health URL from $THINKUBE_HUB_HEALTH_URL (else the public
    URL's /hub/health). The other settings: thinkube_pipelines/hub/settings.py."""
    from thinkube_pipelines.defs.hub.resources import HubDeployment
    from thinkube_pipelines.hub.settings import HEALTH_URL_ENV, HELM_ENV, OIDC_CLIENT_SECRET_ENV

    return HubDeployment(
        cluster=KubernetesCluster(kubeconfig=env_setting(KUBECONFIG_ENV, None)),
        oidc_client_secret=env_setting(OIDC_CLIENT_SECRET_ENV, None),
        helm=env_setting(HELM_ENV, None),
        health_url=env_setting(HEALTH_URL_ENV, None),
    )


def local_resources() -> dict[str, Any]:
    """This machine: buildah (or the Docker engine), the local registry and catalog service."""
    return {
        **_builder_and_runner(str(s.state_dir())),
        "registry": _registry(
            url=env_setting(s.REGISTRY_URL_ENV, s.DEFAULT_REGISTRY_URL),
            flavor=_flavor("distribution"),
        ),
        "catalog": _catalog(env_setting(s.CATALOG_URL_ENV, s.DEFAULT_CATALOG_URL)),
        "build_settings": _build_settings(),
        "hub": _hub(),
    }


def cluster_resources() -> dict[str, Any]:
    """The cluster: builds as BuildKit Jobs and checks as Jobs on the GPU nodes (the Kubernetes builder
    and runner; THINKUBE_BUILDER may still name a local one), Harbor over HTTPS with the platform's CA and a
    robot account, the catalog service with its token and/or thinkube-control's discovery ConfigMaps
    (THINKUBE_REGISTRATION; in a pod the Kubernetes API is reached with the pod's ServiceAccount). Registry
    and catalog URLs have no default here: each must be configured (the catalog's only when it is a
    target)."""
    return {
        **_builder_and_runner(str(s.state_dir()), default_kind=KUBERNETES_BUILDER),
        "registry": _registry(url=dg.EnvVar(s.REGISTRY_URL_ENV), flavor=_flavor("harbor")),
        "catalog": _catalog(dg.EnvVar(s.CATALOG_URL_ENV)),
        "build_settings": _build_settings(),
        "hub": _hub(),
    }


ENVIRONMENTS = {"local": local_resources, "cluster": cluster_resources}


def resources_for_environment(name: str | None = None) -> dict[str, Any]:
    """The resources of `name` (default: $THINKUBE_ENVIRONMENT, else "local")."""
    name = name or s.setting(s.ENVIRONMENT_ENV, "local")
    if name not in ENVIRONMENTS:
        raise ValueError(
            f"{s.ENVIRONMENT_ENV}={name!r}: unknown environment; expected one of {sorted(ENVIRONMENTS)}"
        )
    return ENVIRONMENTS[name]()
