"""Access to a Kubernetes API server: a small typed resource on the official `kubernetes` client.

`KubernetesCluster` finds the cluster the way the client's own `config.load_config` does: the kubeconfig
named by its `kubeconfig` setting (one path or several joined with `:`, as `$KUBECONFIG`), else
`~/.kube/config`, else the pod's ServiceAccount (in-cluster config). `describe()` names the cluster for
messages (its kubeconfig context and server, or `in-cluster`): never a token, a client certificate or the
kubeconfig's content, none of which this module logs or puts in an error.

`ensure_config_map` makes a ConfigMap hold what a caller wants, writing only when something differs: a get,
then a create, or a replace carrying the resourceVersion it read (a concurrent write gets 409 Conflict and
the whole step is retried from a fresh read), so that an unchanged object costs one GET and no write.

The `kubernetes` package is imported only when the cluster is used: loading the code location stays fast.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

KUBECONFIG_ENV = "KUBECONFIG"
DEFAULT_KUBECONFIG = "~/.kube/config"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

Change = Literal["created", "updated", "unchanged"]
T = TypeVar("T")

TRANSIENT = frozenset({429, 500, 502, 503, 504})
"""Answers worth asking again: throttling (429, with Retry-After) and a server that is briefly unwell."""
ATTEMPTS = 5
MAX_WAIT_S = 10.0


class KubernetesError(RuntimeError):
    """A Kubernetes API request failed; the message names the cluster, the object and the API's reason."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubernetesCluster(dg.ConfigurableResource):
    """A Kubernetes API server, reached through a kubeconfig or the pod's ServiceAccount."""

    kubeconfig: str | None = Field(
        None,
        description="Kubeconfig file(s), `:`-separated as in $KUBECONFIG. None: ~/.kube/config if it "
        "exists, else the in-cluster ServiceAccount.",
    )
    context: str | None = Field(None, description="The kubeconfig context to use. None: its current one.")
    namespace: str | None = Field(
        None,
        description="The namespace objects go to when a caller names none. None: the context's namespace "
        "(in a pod: the pod's own), else `default`.",
    )
    timeout_s: float = Field(30.0, description="Seconds one API request may take.")

    # --- configuration (no network) -----------------------------------------------------------------

    def _kubeconfig_path(self) -> str | None:
        """The kubeconfig to load, or None for the in-cluster ServiceAccount."""
        if self.kubeconfig:
            return self.kubeconfig
        return DEFAULT_KUBECONFIG if Path(DEFAULT_KUBECONFIG).expanduser().exists() else None

    def configuration(self) -> Configuration:
        """The client's configuration for this cluster; raises KubernetesError, naming what was tried,
        when there is none (no kubeconfig, not in a pod) or it cannot be read."""
        from kubernetes import client, config

        configuration = client.Configuration()
        path = self._kubeconfig_path()
        try:
            if path is not None:
                if not any(Path(p).expanduser().exists() for p in path.split(os.pathsep) if p):
                    raise KubernetesError(f"kubeconfig {path} does not exist (set {KUBECONFIG_ENV})")
                config.load_kube_config(
                    config_file=path,
                    context=self.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            where = f"kubeconfig {path}" if path else "the in-cluster ServiceAccount"
            hint = "" if path else f" (not in a pod: set {KUBECONFIG_ENV} or create {DEFAULT_KUBECONFIG})"
            raise KubernetesError(f"no Kubernetes configuration from {where}{hint}: {exc}") from exc
        return configuration

    def _current_context(self) -> dict[str, Any]:
        from kubernetes import config

        path = self._kubeconfig_path()
        if path is None:
            return {}
        contexts, current = config.list_kube_config_contexts(config_file=path)
        if self.context:
            current = next((c for c in contexts if c.get("name") == self.context), None) or {}
        return current or {}

    def describe(self, configuration: Configuration | None = None) -> str:
        """The cluster as messages name it: `cluster "<name>" (<server>)`, or `the in-cluster API
        (<server>)`; `configuration` saves loading it again (a kubeconfig may run an exec plugin)."""
        if configuration is None:
            try:
                configuration = self.configuration()
            except KubernetesError:
                configuration = None
        server = configuration.host if configuration is not None else "unconfigured"
        if self._kubeconfig_path() is None:
            return f"the in-cluster API ({server})"
        try:
            context = self._current_context()
        except Exception:  # a description never fails; configuration() reports the error
            context = {}
        name = (context.get("context") or {}).get("cluster") or context.get("name") or "?"
        return f'cluster "{name}" ({server})'

    def default_namespace(self) -> str:
        """`namespace` if set, else the context's (in a pod: the pod's own namespace), else `default`."""
        if self.namespace:
            return self.namespace
        if self._kubeconfig_path() is None:
            try:
                return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
            except OSError:
                return "default"
        return (self._current_context().get("context") or {}).get("namespace") or "default"

    def api_client(self) -> ApiClient:
        """A new client for this cluster (close it when done)."""
        from kubernetes import client

        return client.ApiClient(self.configuration())

    # --- ConfigMaps ---------------------------------------------------------------------------------

    def ensure_config_map(self, body: Mapping[str, Any]) -> Change:
        """Make the cluster hold the ConfigMap `body` (apiVersion, kind, metadata with name, namespace,
        labels, annotations, and data). See `ensure_config_map` below."""
        from kubernetes import client

        configuration = self.configuration()
        with client.ApiClient(configuration) as api:
            return ensure_config_map(
                api, body, cluster=self.describe(configuration), timeout_s=self.timeout_s
            )


def ensure_config_map(
    api: ApiClient, body: Mapping[str, Any], *, cluster: str, timeout_s: float = 30.0
) -> Change:
    """Create the ConfigMap `body`, or replace it where it differs, or leave it: "created", "updated" or
    "unchanged" (no write). The existing object keeps labels and annotations others added; its `data` is
    replaced whole and `binaryData` dropped.

    An existing ConfigMap of that name must carry `body`'s `app.kubernetes.io/managed-by` label: one made
    by someone else is never overwritten. Raises KubernetesError naming the cluster and the object (a
    namespace that does not exist is named as such).
    """
    from kubernetes.client import CoreV1Api

    core = CoreV1Api(api)
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    what = f'ConfigMap "{name}" in namespace "{namespace}" of {cluster}'
    options = {"_request_timeout": timeout_s, "_preload_content": False}

    for _ in range(ATTEMPTS):
        current = _call(
            lambda: core.read_namespaced_config_map(name, namespace, **options), what, missing_ok=True
        )
        if current is None:
            try:
                _call(lambda: core.create_namespaced_config_map(namespace, dict(body), **options), what)
            except KubernetesError as exc:
                if exc.status == 409:  # AlreadyExists: someone created it since the read: read again
                    continue
                if exc.status == 404:
                    raise KubernetesError(
                        f'namespace "{namespace}" not found in {cluster}: cannot create ConfigMap '
                        f'"{name}" there (create the namespace, or configure another one)',
                        exc.status,
                        exc.reason,
                    ) from exc
                raise
            return "created"
        owner = (meta.get("labels") or {}).get(MANAGED_BY_LABEL)
        theirs = (current["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL)
        if owner is not None and theirs != owner:
            raise KubernetesError(
                f"{what} exists and is not managed by {owner} ({MANAGED_BY_LABEL}={theirs!r}): "
                "not overwriting it; delete or rename it"
            )
        desired = _merged(current, body)
        if desired == current:
            return "unchanged"
        try:
            _call(lambda d=desired: core.replace_namespaced_config_map(name, namespace, d, **options), what)
        except KubernetesError as exc:
            if exc.status in (404, 409):  # deleted, or written, since the read: read again
                continue
            raise
        return "updated"
    raise KubernetesError(f"{what}: still conflicting after {ATTEMPTS} attempts (concurrent writers?)", 409)


def _merged(current: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """`current` with `body`'s labels and annotations added and its data in place of the old: what a
    replace sends (the resourceVersion read travels with it, so a concurrent write is refused)."""
    desired = json.loads(json.dumps(current))
    meta, wanted = desired["metadata"], body["metadata"]
    for key in ("labels", "annotations"):
        merged = {**(meta.get(key) or {}), **(wanted.get(key) or {})}
        if merged:
            meta[key] = merged
    desired["data"] = dict(body.get("data") or {})
    desired.pop("binaryData", None)
    if not desired["data"] and "data" not in current:
        desired.pop("data")
    return desired


def _call(request: Callable[[], Any], what: str, *, missing_ok: bool = False) -> Any:
    """Run one API request; its JSON answer (None for a 404 when `missing_ok`). Throttling (429) and
    5xx answers are retried after their Retry-After (or a short backoff); anything else becomes a
    KubernetesError naming `what` and the API's own reason and message."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    for attempt in range(ATTEMPTS):
        try:
            response = request()
            return json.loads(response.data or b"null")
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            if not exc.status:  # no HTTP answer: the client could not prepare or secure the request
                raise KubernetesError(f"{what}: no answer from the API server: {exc.reason}") from exc
            if exc.status in TRANSIENT and attempt + 1 < ATTEMPTS:
                time.sleep(_retry_after(exc.headers, attempt))
                continue
            raise _api_error(exc, what) from exc
        except HTTPError as exc:  # connection refused, timeout, TLS: the API could not be reached
            if attempt + 1 < ATTEMPTS:
                time.sleep(_retry_after(None, attempt))
                continue
            raise KubernetesError(f"{what}: the API server did not answer: {type(exc).__name__}") from exc
    raise AssertionError("unreachable")


def _retry_after(headers: Mapping[str, str] | None, attempt: int) -> float:
    try:
        wait = float((headers or {}).get("Retry-After", ""))
    except ValueError:
        wait = 0.2 * 2**attempt
    return min(max(wait, 0.0), MAX_WAIT_S)


def _api_error(exc: Any, what: str) -> KubernetesError:
    """The API's Status body (reason, message) as a KubernetesError; never the request's headers."""
    reason, message = exc.reason, ""
    try:
        status = json.loads(exc.body)
        reason = status.get("reason") or reason
        message = status.get("message") or ""
    except (TypeError, ValueError):
        message = str(exc.body or "")[:500]
    hint = ""
    if exc.status == 401:
        hint = " (the credentials were refused)"
    elif exc.status == 403:
        hint = " (the ServiceAccount or user lacks RBAC permission for this request)"
    return KubernetesError(
        f"{what}: the API answered {exc.status} {reason}: {message}{hint}", exc.status, reason
    )
