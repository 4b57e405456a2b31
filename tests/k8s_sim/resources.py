"""The kinds the simulator serves, and the discovery documents built from them.

Each `Resource` is one REST resource as the real API server's discovery lists it (`kubectl api-resources`
on a v1.37 cluster): group, version, plural name, Kind, whether it is namespaced, its short names and verbs.
Objects of every listed resource are stored generically (see `store.py`); the ones with behaviour have a
controller in runtime.py's components (Pods: scheduler.py and kubelet.py; Jobs, ReplicaSets, Deployments,
DaemonSets, StatefulSets, PodDisruptionBudgets, PersistentVolume(Claim)s, Nodes: controllers/).

Subresources served: `<resource>/status` (the kinds marked `status=True`), `pods/log`, `pods/eviction`,
`<deployments|replicasets|statefulsets>/scale`; `pods/binding`, `pods/exec` and friends are listed for
discovery only.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBERNETES_VERSION = "1.37.0"
"""The Kubernetes version the simulator claims (`/version`) and whose schemas it validates against."""

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Resource:
    group: str
    """"" for the core group (served under /api/v1), else e.g. "apps"."""
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status: bool = False
    """Has a `/status` subresource: status is ignored on create and on update of the main resource."""
    return_deleted: bool = False
    """DELETE answers with the deleted object (the real registry's ReturnDeletedObject); else a Status."""
    singular: str = ""
    subresources: tuple[str, ...] = ()
    """Further subresources named in discovery only (not served yet)."""
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The resource as the real API names it in messages: "pods", "jobs.batch"."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_generation(self) -> bool:
        """metadata.generation is kept (and bumped on spec changes), for the kinds the real API keeps it."""
        return self.kind in (
            "Pod",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "PodDisruptionBudget",
            "Ingress",
        )


_R = Resource
RESOURCES: tuple[Resource, ...] = (
    # core/v1
    _R("", "v1", "namespaces", "Namespace", False, ("ns",), status=True, return_deleted=True),
    _R("", "v1", "nodes", "Node", False, ("no",), status=True),
    _R(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        ("po",),
        status=True,
        return_deleted=True,
        subresources=("log", "binding", "eviction", "exec", "attach", "portforward", "ephemeralcontainers"),
        categories=("all",),
    ),
    _R(
        "", "v1", "services", "Service", True, ("svc",), status=True, return_deleted=True, categories=("all",)
    ),
    _R("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _R("", "v1", "secrets", "Secret", True),
    _R(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        True,
        ("sa",),
        return_deleted=True,
        subresources=("token",),
    ),
    _R("", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",), status=True, return_deleted=True),
    _R(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        True,
        ("pvc",),
        status=True,
        return_deleted=True,
    ),
    _R("", "v1", "events", "Event", True, ("ev",)),
    _R("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    _R("", "v1", "limitranges", "LimitRange", True, ("limits",)),
    _R("", "v1", "resourcequotas", "ResourceQuota", True, ("quota",), status=True, return_deleted=True),
    # apps/v1
    _R(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        True,
        ("deploy",),
        status=True,
        subresources=("scale",),
        categories=("all",),
    ),
    _R(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        True,
        ("rs",),
        status=True,
        subresources=("scale",),
        categories=("all",),
    ),
    _R("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), status=True, categories=("all",)),
    _R(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        True,
        ("sts",),
        status=True,
        subresources=("scale",),
        categories=("all",),
    ),
    _R("apps", "v1", "controllerrevisions", "ControllerRevision", True),
    # batch/v1
    _R("batch", "v1", "jobs", "Job", True, status=True, categories=("all",)),
    _R("batch", "v1", "cronjobs", "CronJob", True, ("cj",), status=True, categories=("all",)),
    # rbac.authorization.k8s.io/v1
    _R("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _R("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _R("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _R("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    # networking.k8s.io/v1
    _R("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    _R("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",), status=True),
    _R("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    # policy/v1
    _R("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), status=True),
    # storage.k8s.io/v1
    _R("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, ("sc",), return_deleted=True),
    _R("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False, return_deleted=True),
    _R("storage.k8s.io", "v1", "csinodes", "CSINode", False, return_deleted=True),
    # scheduling.k8s.io/v1, coordination.k8s.io/v1, events.k8s.io/v1
    _R("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, ("pc",)),
    _R("coordination.k8s.io", "v1", "leases", "Lease", True),
    _R("events.k8s.io", "v1", "events", "Event", True, ("ev",)),
)

# The order of groups in /apis, as the real server lists them (core first, then by priority).
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(r.group for r in RESOURCES if r.group))


def find(group: str, version: str, plural: str) -> Resource | None:
    for resource in RESOURCES:
        if (resource.group, resource.version, resource.plural) == (group, version, plural):
            return resource
    return None


def by_kind(api_version: str, kind: str) -> Resource | None:
    for resource in RESOURCES:
        if resource.api_version == api_version and resource.kind == kind:
            return resource
    return None


def group_versions(group: str) -> list[str]:
    return list(dict.fromkeys(r.version for r in RESOURCES if r.group == group))


def api_resource_list(group: str, version: str) -> dict | None:
    """The APIResourceList of /api/v1 or /apis/<group>/<version>, or None when the server has no such."""
    members = [r for r in RESOURCES if r.group == group and r.version == version]
    if not members:
        return None
    entries = []
    for r in members:
        entry = {
            "name": r.plural,
            "singularName": r.singular or r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(ALL_VERBS)
            if r.kind != "Namespace"
            else [v for v in ALL_VERBS if v != "deletecollection"],
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        entries.append(entry)
        if r.status:
            entries.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        for sub in r.subresources:
            sub_kind, verbs = {
                "log": ("Pod", ["get"]),
                "binding": ("Binding", ["create"]),
                "eviction": ("Eviction", ["create"]),
                "scale": ("Scale", ["get", "patch", "update"]),
                "token": ("TokenRequest", ["create"]),
                "ephemeralcontainers": ("Pod", ["get", "patch", "update"]),
            }.get(sub, ("PodExecOptions" if sub == "exec" else r.kind, ["create", "get"]))
            entry = {
                "name": f"{r.plural}/{sub}",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": sub_kind,
                "verbs": verbs,
            }
            if sub == "scale":
                entry.update(group="autoscaling", version="v1")
            elif sub == "eviction":
                entry.update(group="policy", version="v1")
            elif sub == "token":
                entry.update(group="authentication.k8s.io", version="v1")
            entries.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": members[0].api_version,
        "resources": entries,
    }


def api_group(group: str) -> dict | None:
    versions = group_versions(group)
    if not group or not versions:
        return None
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": listed,
        "preferredVersion": listed[0],
    }


def api_group_list() -> dict:
    groups = []
    for group in GROUPS:
        entry = api_group(group)
        assert entry is not None
        del entry["kind"], entry["apiVersion"]
        groups.append(entry)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_versions(server_address: str) -> dict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def version_info() -> dict:
    major, minor, _ = KUBERNETES_VERSION.split(".")
    return {
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "gitVersion": f"v{KUBERNETES_VERSION}",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }
