"""Server-side apply of a few kinds of object, as `kubectl apply --server-side` does it.

`apply_manifests` sends each object as an apply patch (`application/apply-patch+yaml`) with the field
manager `thinkube-pipelines` and `force=false`: the API server merges it, records which fields we own, and
answers 409 Conflict when another manager (an operator's `kubectl edit`, another tool) owns a field we set
to a different value. A conflict is never forced: it is reported, naming the object, the fields and their
owner, for an operator to resolve. Applying the same objects again changes nothing (same resourceVersion).

Each object costs a GET (to say created / configured / unchanged) and the PATCH. The kinds are the ones the
hub deploy applies (`APPLIED_KINDS`), each mapped to its REST path; deploy/rbac.yaml grants get, create
(an apply that creates needs it) and patch on exactly these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from thinkube_pipelines.kubernetes.cluster import KubernetesError, _call

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

FIELD_MANAGER = "thinkube-pipelines"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"

Outcome = Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    resource: str
    namespaced: bool

    def path(self, name: str, namespace: str | None) -> str:
        root = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        where = f"/namespaces/{namespace}" if self.namespaced else ""
        return f"{root}{where}/{self.resource}/{name}"


APPLIED_KINDS: dict[tuple[str, str], Kind] = {
    ("v1", "PersistentVolume"): Kind("", "v1", "persistentvolumes", False),
    ("v1", "PersistentVolumeClaim"): Kind("", "v1", "persistentvolumeclaims", True),
    ("v1", "Secret"): Kind("", "v1", "secrets", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): Kind(
        "rbac.authorization.k8s.io", "v1", "clusterroles", False
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): Kind(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", False
    ),
    ("apps/v1", "DaemonSet"): Kind("apps", "v1", "daemonsets", True),
}
"""(apiVersion, kind) -> where it lives: the only kinds `apply_manifests` applies."""


@dataclass(frozen=True)
class Applied:
    """One applied object and what the apply did to it."""

    kind: str
    name: str
    namespace: str | None
    outcome: Outcome

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} {self.outcome}"


def describe(manifest: Mapping[str, Any]) -> str:
    meta = manifest.get("metadata") or {}
    where = f' in namespace "{meta["namespace"]}"' if meta.get("namespace") else ""
    return f'{manifest.get("kind")} "{meta.get("name")}"{where}'


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    kind = APPLIED_KINDS.get(key)  # type: ignore[arg-type]
    if kind is None:
        known = ", ".join(f"{v} {k}" for v, k in APPLIED_KINDS)
        raise KubernetesError(f"{describe(manifest)}: cannot apply {key[0]} {key[1]} (applies {known})")
    return kind


def apply_manifests(
    api: ApiClient,
    manifests: Iterable[Mapping[str, Any]],
    *,
    cluster: str,
    timeout_s: float = 30.0,
    field_manager: str = FIELD_MANAGER,
) -> list[Applied]:
    """Apply every manifest in order (server-side, `force=false`); what happened to each.

    Raises KubernetesError naming the cluster and the object: a 409 conflict names the fields and the
    managers that own them; an object of a kind not in `APPLIED_KINDS` is refused before any request.
    Objects applied before a failure stay applied (applying them again is harmless)."""
    manifests = list(manifests)
    kinds = [kind_of(m) for m in manifests]  # every kind checked before the first write
    done: list[Applied] = []
    for manifest, kind in zip(manifests, kinds, strict=True):
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta.get("namespace") if kind.namespaced else None
        if kind.namespaced and not namespace:
            raise KubernetesError(f"{describe(manifest)}: a namespaced object without a namespace")
        path = kind.path(name, namespace)
        what = f"{describe(manifest)} of {cluster}"
        before = _call(partial(request, api, "GET", path, timeout_s), what, missing_ok=True)
        try:
            after = _call(
                partial(
                    request,
                    api,
                    "PATCH",
                    path,
                    timeout_s,
                    query_params=[("fieldManager", field_manager), ("force", "false")],
                    content_type=APPLY_CONTENT_TYPE,
                    body=json.loads(json.dumps(manifest)),
                ),
                what,
            )
        except KubernetesError as exc:
            if exc.status == 409:
                raise KubernetesError(
                    f"{exc} (server-side apply as field manager {field_manager!r}, not forced: another "
                    "manager changed these fields; make the change in the hub settings, or remove that "
                    "manager's ownership, then deploy again)",
                    exc.status,
                    exc.reason,
                ) from exc
            raise
        if before is None:
            outcome: Outcome = "created"
        elif before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
            outcome = "unchanged"
        else:
            outcome = "configured"
        done.append(Applied(manifest["kind"], name, namespace, outcome))
    return done


def read_manifest(
    api: ApiClient, manifest: Mapping[str, Any], *, cluster: str, timeout_s: float = 30.0
) -> dict[str, Any] | None:
    """The object `manifest` names as the API server has it now (its status included), None if absent; a
    GET, as `apply_manifests` makes before each apply (so the same rights)."""
    kind = kind_of(manifest)
    meta = manifest["metadata"]
    path = kind.path(meta["name"], meta.get("namespace") if kind.namespaced else None)
    what = f"{describe(manifest)} of {cluster}"
    return _call(partial(request, api, "GET", path, timeout_s), what, missing_ok=True)


def request(
    api: ApiClient,
    method: str,
    path: str,
    timeout_s: float,
    *,
    query_params: list[tuple[str, str]] | None = None,
    content_type: str | None = None,
    body: Any = None,
) -> Any:
    """One request through the client's own transport (its auth, TLS and proxy settings); the raw answer."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    return api.call_api(
        path,
        method,
        query_params=query_params or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=timeout_s,
    )
