"""The hub release as an operator reviews it and as the deploy applies it: the chart values and the
manifests applied beside the chart, both validated, written to a folder in one step.

`render_release(settings, images)` is pure (no cluster, no network): the `hub render` command and the
hub_deploy job make the same release from the same settings and catalog answer.

The manifests are the SeaweedFS volumes (`volumes.volume_manifests`) and the hub's read access to nodes:
the chart's own RBAC is namespaced, while the profile callable reads the nodes' GPU products and counts,
which are cluster-scoped. The ClusterRole lets the chart's hub ServiceAccount (`hub`, in the release's
namespace: the name the chart gives it with a blank `fullnameOverride`) get, list and watch nodes, nothing
else. Last, the image pre-puller (`prepuller.prepuller_manifest`): a DaemonSet pulling every catalog image
by digest on every node, applied beside the release rather than in it, so that helm's `--wait` never waits
for the pulls (the images keep pulling after the deploy returns).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thinkube_pipelines.catalog.contract import CatalogItem
from thinkube_pipelines.hub.prepuller import prepuller_manifest
from thinkube_pipelines.hub.settings import HubSettings
from thinkube_pipelines.hub.values import HubValuesError, chart_values
from thinkube_pipelines.hub.volumes import LABELS, volume_manifests
from thinkube_pipelines.kubernetes import validation

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest and newest Kubernetes minor the manifests are checked against (the versions
tests/test_kubernetes_manifests.py checks deploy/ against)."""
HUB_SERVICE_ACCOUNT = "hub"
"""The ServiceAccount the chart creates for the hub (hub.serviceAccount.name unset, fullnameOverride "")."""
VALUES_FILE = "values.yaml"
MANIFESTS_FILE = "manifests.yaml"
VOLUME_KINDS = frozenset({("v1", "PersistentVolume"), ("v1", "PersistentVolumeClaim")})
"""What the hub/seaweedfs_volumes step applies (`volume_manifests`); the release step applies the rest."""
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's safe dumper where PyYAML has it (several times faster than the pure-Python one)."""


def to_yaml(data: Any) -> str:
    """`data` (plain JSON-like values) as a YAML document, keys in their order."""
    return yaml.dump(data, Dumper=YAML_DUMPER, sort_keys=False, width=1000)


def node_reader_name(settings: HubSettings) -> str:
    """The ClusterRole and its binding (cluster-scoped, so the namespace is in the name)."""
    return f"{settings.namespace}-{settings.release}-hub-node-reader"


@dataclass(frozen=True)
class RenderedRelease:
    """What `helm upgrade` gets (`values`) and what is applied before it (`manifests`, in order)."""

    values: dict[str, Any]
    manifests: list[dict[str, Any]]

    def values_yaml(self) -> str:
        return to_yaml(self.values)

    def manifests_yaml(self) -> str:
        return yaml.dump_all(self.manifests, Dumper=YAML_DUMPER, sort_keys=False, width=1000)


def release_manifests(manifests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The manifests the release step applies: all but the volumes, which the hub/seaweedfs_volumes step
    applied before the values were rendered (each object is applied once per deploy). The image pre-puller
    is among them: applied, never waited for."""
    return [m for m in manifests if (m.get("apiVersion"), m.get("kind")) not in VOLUME_KINDS]


def node_reader_manifests(settings: HubSettings) -> list[dict[str, Any]]:
    """A ClusterRole allowing get/list/watch of nodes, bound to the hub's ServiceAccount."""
    name = node_reader_name(settings)
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": dict(LABELS)},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": dict(LABELS)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [
                {"kind": "ServiceAccount", "name": HUB_SERVICE_ACCOUNT, "namespace": settings.namespace}
            ],
        },
    ]


def validate_manifests(manifests: Sequence[Mapping[str, Any]]) -> None:
    """Every manifest passes kubernetes-validate --strict for each of KUBERNETES_VERSIONS (its schemas,
    each loaded once per process: thinkube_pipelines/kubernetes/validation.py); HubValuesError names each
    object, version and field path otherwise."""
    problems = []
    for manifest in manifests:
        for version in KUBERNETES_VERSIONS:
            try:
                validation.validate(manifest, version, strict=True)
            except validation.ManifestError as exc:
                problems.append(str(exc))
            except validation.SchemaNotFoundError as exc:
                problems.append(exc.message)
    if problems:
        raise HubValuesError("invalid manifests: " + "; ".join(problems))


def render_release(
    settings: HubSettings, images: Sequence[CatalogItem], discovery: Mapping[str, Any] | None = None
) -> RenderedRelease:
    """The validated release for the catalog's current `images`; `discovery` is the realm's OIDC discovery
    document when the caller has fetched it (else Keycloak's endpoint layout under the issuer)."""
    values = chart_values(settings, images, discovery)
    manifests = [
        *volume_manifests(settings),
        *node_reader_manifests(settings),
        prepuller_manifest(settings, images),
    ]
    validate_manifests(manifests)
    return RenderedRelease(values=values, manifests=manifests)


def write_release(rendered: RenderedRelease, out: Path) -> list[Path]:
    """Write values.yaml and manifests.yaml into `out` (created if missing). Each file is written to a
    temporary file beside it and renamed over, after both are complete: a failure leaves the folder as it
    was, never a half-written file. Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    contents = {VALUES_FILE: rendered.values_yaml(), MANIFESTS_FILE: rendered.manifests_yaml()}
    staged: list[tuple[str, Path]] = []
    try:
        for name, text in contents.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            staged.append((tmp, out / name))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [target for _, target in staged]
