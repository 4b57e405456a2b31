"""The hub deploy's preflight: every service the hub needs answers as expected, before anything is applied.

Checked, each independently (all are reported at once, so an operator fixes them in one round):

- Keycloak: the realm's OIDC discovery document (`{issuer}/.well-known/openid-configuration`) answers 200
  with exactly the configured `issuer` and the authorization, token, userinfo and JWKS endpoints that the
  hub's GenericOAuthenticator uses;
- SeaweedFS: the CSI driver is registered (the CSIDriver object named by the settings exists in the
  cluster) and the filer answers HTTP at its URL;
- the catalog: `GET /api/v1/images/jupyter` returns at least one Jupyter image (the hub offers nothing
  otherwise);
- Harbor: the registry answers its OCI API (`/v2/`); a 401 challenge counts as an answer (the hub deploy
  pushes and pulls nothing, so it needs no registry credentials);
- the namespace: it exists, or it is created, and only when every other check passed: nothing is written to
  the cluster after a failed preflight.

`preflight()` returns a `PreflightReport` (what was checked, where, how long it took) or raises
`PreflightError`, whose message names each failed dependency, the URL or object asked, and what was
expected. There are no fallbacks: a missing service fails the deploy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import requests

from thinkube_pipelines.kubernetes.apply import request
from thinkube_pipelines.kubernetes.cluster import KubernetesError, _call

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from thinkube_pipelines.hub.settings import HubSettings

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")
"""The discovery document's endpoints the hub uses: login, token exchange, user info, token keys."""
DEFAULT_TIMEOUT_S = 5.0

KEYCLOAK = "Keycloak"
CSI_DRIVER = "SeaweedFS CSI driver"
FILER = "SeaweedFS filer"
CATALOG = "catalog"
HARBOR = "Harbor"
NAMESPACE = "namespace"


EXPECTED = {
    KEYCLOAK: "the realm's OIDC discovery document (HTTP 200) with its issuer and endpoints",
    CSI_DRIVER: "the CSIDriver object of the SeaweedFS CSI driver",
    FILER: "the SeaweedFS filer answering HTTP",
    CATALOG: "at least one Jupyter image",
    HARBOR: "the registry's OCI API at /v2/",
    NAMESPACE: "the namespace to exist or be created",
}


class CheckFailed(Exception):
    """One dependency is missing or answers something else than expected (the message says both)."""


@dataclass(frozen=True)
class Check:
    """One passed check: the dependency, what was asked (a URL or a Kubernetes object), what was found."""

    dependency: str
    target: str
    found: str
    duration_s: float


@dataclass(frozen=True)
class Failure:
    dependency: str
    target: str
    problem: str

    def __str__(self) -> str:
        expected = "" if "expected" in self.problem else f"; expected {EXPECTED[self.dependency]}"
        return f"{self.dependency} ({self.target}): {self.problem}{expected}"


class PreflightError(RuntimeError):
    """A dependency of the hub is missing; `failures` lists each one, and the message names them all."""

    def __init__(self, failures: list[Failure]):
        self.failures = failures
        names = ", ".join(dict.fromkeys(f.dependency for f in failures))
        lines = "\n".join(f"- {f}" for f in failures)
        super().__init__(f"hub preflight failed ({names}); nothing was applied:\n{lines}")


@dataclass
class PreflightReport:
    checks: list[Check] = field(default_factory=list)
    namespace_created: bool = False
    jupyter_images: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """What the preflight found, for the asset's metadata (URLs and names only: no secret)."""
        return {
            **{
                f"{c.dependency}": f"{c.target}: {c.found} ({c.duration_s * 1000:.0f} ms)"
                for c in self.checks
            },
            "namespace_created": self.namespace_created,
            "jupyter_images": self.jupyter_images,
        }


def _get(url: str, timeout_s: float, **kwargs: Any) -> requests.Response:
    try:
        return requests.get(url, timeout=timeout_s, allow_redirects=False, **kwargs)
    except requests.Timeout:
        raise CheckFailed(f"no answer within {timeout_s:g} s") from None
    except requests.RequestException as exc:
        raise CheckFailed(f"unreachable: {type(exc).__name__}: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def check_keycloak(settings: HubSettings, timeout_s: float) -> str:
    url = settings.oidc_issuer + DISCOVERY_PATH
    response = _get(url, timeout_s, headers={"Accept": "application/json"})
    if response.status_code != 200:
        raise CheckFailed(
            f"answered HTTP {response.status_code}; expected 200 with the realm's discovery document"
        )
    try:
        document = response.json()
    except ValueError:
        raise CheckFailed(
            "answered something that is not JSON; expected the realm's discovery document"
        ) from None
    if not isinstance(document, dict):
        raise CheckFailed("answered JSON that is not an object; expected the realm's discovery document")
    issuer = document.get("issuer")
    if issuer != settings.oidc_issuer:
        raise CheckFailed(
            f"names the issuer {issuer!r}; expected {settings.oidc_issuer!r} (the realm URL the hub is "
            "configured with: tokens from another issuer are refused)"
        )
    missing = [name for name in DISCOVERY_ENDPOINTS if not isinstance(document.get(name), str)]
    if missing:
        raise CheckFailed(f"has no {', '.join(missing)}; expected {', '.join(DISCOVERY_ENDPOINTS)}")
    return f"issuer {issuer}"


def check_filer(settings: HubSettings, timeout_s: float) -> str:
    response = _get(settings.filer_url + "/", timeout_s, headers={"Accept": "application/json"})
    if response.status_code >= 500:
        raise CheckFailed(f"answered HTTP {response.status_code}; expected the filer's listing of /")
    return f"HTTP {response.status_code}"


def check_catalog(settings: HubSettings, timeout_s: float) -> tuple[str, list[str]]:
    from thinkube_pipelines.catalog.client import CatalogClient, CatalogError

    with CatalogClient(settings.catalog_url, timeout_s=timeout_s) as client:
        try:
            images = client.jupyter_images()
        except CatalogError as exc:
            raise CheckFailed(f"{exc}; expected at least one Jupyter image") from None
    if not images:
        raise CheckFailed(
            "lists no Jupyter image; expected at least one (build and register the images first)"
        )
    names = [image.name for image in images]
    return f"{len(names)} Jupyter image(s)", names


def check_registry(settings: HubSettings, timeout_s: float) -> str:
    from thinkube_pipelines.registry.client import RegistryClient, RegistryError, RegistryUnauthorized

    try:
        client = RegistryClient(settings.registry_url, timeout_s=timeout_s)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    try:
        client.ping()
    except RegistryUnauthorized:
        return "the OCI API answers (authentication required)"
    except RegistryError as exc:
        raise CheckFailed(f"{exc}; expected the OCI distribution API at /v2/") from None
    return "the OCI API answers"


def _kubernetes(api: ApiClient, method: str, path: str, what: str, timeout_s: float, **kwargs: Any) -> Any:
    return _call(partial(request, api, method, path, timeout_s, **kwargs), what, missing_ok=method == "GET")


def check_csi_driver(settings: HubSettings, api: ApiClient, cluster: str, timeout_s: float) -> str:
    what = f'CSIDriver "{settings.csi_driver}" of {cluster}'
    try:
        driver = _kubernetes(
            api, "GET", f"/apis/storage.k8s.io/v1/csidrivers/{settings.csi_driver}", what, timeout_s
        )
    except KubernetesError as exc:
        raise CheckFailed(str(exc)) from None
    if driver is None:
        raise CheckFailed(
            f"{what} does not exist; expected the SeaweedFS CSI driver registered under that name (install "
            "seaweedfs-csi-driver, or set the driver name)"
        )
    return "registered"


def _timed(
    report: PreflightReport,
    failures: list[Failure],
    dependency: str,
    target: str,
    check: Callable[[], str],
) -> None:
    started = time.monotonic()
    try:
        found = check()
    except CheckFailed as exc:
        failures.append(Failure(dependency, target, str(exc)))
        return
    report.checks.append(Check(dependency, target, found, time.monotonic() - started))


def preflight(
    settings: HubSettings, api: ApiClient, *, cluster: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> PreflightReport:
    """Check every dependency of the hub (see the module's docstring), then make sure the namespace exists.

    `api` is a client of the cluster the hub goes to, `cluster` how messages name it. Raises PreflightError
    naming every failed dependency; then nothing has been written to the cluster."""
    report = PreflightReport()
    failures: list[Failure] = []
    _timed(
        report,
        failures,
        KEYCLOAK,
        settings.oidc_issuer + DISCOVERY_PATH,
        partial(check_keycloak, settings, timeout_s),
    )
    _timed(
        report,
        failures,
        CSI_DRIVER,
        f"CSIDriver {settings.csi_driver}",
        partial(check_csi_driver, settings, api, cluster, timeout_s),
    )
    _timed(report, failures, FILER, settings.filer_url, partial(check_filer, settings, timeout_s))

    def catalog() -> str:
        found, report.jupyter_images = check_catalog(settings, timeout_s)
        return found

    _timed(report, failures, CATALOG, f"{settings.catalog_url}/api/v1/images/jupyter", catalog)
    _timed(
        report, failures, HARBOR, f"{settings.registry_url}/v2/", partial(check_registry, settings, timeout_s)
    )
    if failures:
        raise PreflightError(failures)

    namespace = settings.namespace
    what = f'namespace "{namespace}" of {cluster}'
    started = time.monotonic()
    try:
        if _kubernetes(api, "GET", f"/api/v1/namespaces/{namespace}", what, timeout_s) is None:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            try:
                _call(partial(request, api, "POST", "/api/v1/namespaces", timeout_s, body=body), what)
                report.namespace_created = True
            except KubernetesError as exc:
                if exc.status != 409:  # created by someone else since the read: it exists
                    raise
    except KubernetesError as exc:
        raise PreflightError(
            [Failure(NAMESPACE, namespace, f"{exc}; expected it to exist or be created")]
        ) from None
    found = "created" if report.namespace_created else "exists"
    report.checks.append(Check(NAMESPACE, namespace, found, time.monotonic() - started))
    return report
