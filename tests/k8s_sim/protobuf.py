"""Request bodies in the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`), read as JSON.

Who sends protobuf (seen with `-v=8` and a recording proxy, kubectl 1.37.1 and helm 4.3.1): only the typed
clients (client-go clientsets), for built-in kinds. helm sends its release Secrets (type
helm.sh/release.v1: create, update, and DeleteOptions as the DELETE body) that way; every object of a chart
(the JupyterHub chart's Deployments, Services, ServiceAccounts, Roles, RoleBindings, Jobs, PVCs, ...) goes
as server-side apply YAML (`application/apply-patch+yaml`), and with `--server-side=false` as JSON patches;
its deletes as JSON DeleteOptions. `kubectl apply` (client- or server-side), `create -f`, `replace`, `run`,
`expose`, `label`, `scale`, `rollout restart` and `delete` send JSON or YAML. Protobuf comes from kubectl's
object generators: `kubectl create namespace|secret|configmap|serviceaccount|role|clusterrole|rolebinding|
clusterrolebinding|deployment|service|job|cronjob|quota|pdb|priorityclass|ingress`, `create token`
(TokenRequest) and `auth can-i` (SelfSubjectAccessReview). The answers can stay JSON: those clients accept
`application/vnd.kubernetes.protobuf,application/json`.

The encoding (https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding): the magic
bytes `k8s\\x00`, then a `runtime.Unknown` message {typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2,
contentEncoding = 3, contentType = 4} whose `raw` is the object's own message. The messages below are
those of k8s.io/api and k8s.io/apimachinery (their generated.proto field numbers), written out by hand for
the kinds read here: Namespace, Secret, ConfigMap, DeleteOptions, ServiceAccount, and RBAC's Role,
ClusterRole, RoleBinding and ClusterRoleBinding. Decoded messages are written as the JSON the same object
has (maps of bytes and `bytes` fields base64, Time as RFC 3339, FieldsV1 as its JSON; empty strings and
zero numbers outside lists are dropped as `omitempty` does: every number and bool of these kinds is a
pointer or never zero in practice).

Gap: a generic decoder needs the generated.proto of every kind, and no package this project installs
carries them (the official Python client and kubernetes-validate have the OpenAPI schemas, which have no
field numbers), so the kinds whose messages are large (a Deployment's or a Job's PodSpec, a Service,
PVCs, PVs, ...) are not read: a body of another kind, or with a field number the tables here lack, is
answered 415 UnsupportedMediaType with the real API's Status ("the body of the request was in an unknown
format - accepted media types include: application/json, application/yaml"; the reason goes to the
simulator's log), never decoded in part. kubectl then fails clearly (`error: failed to create deployment:
the body of the request was in an unknown format ...`); `kubectl create deployment x --image=y
--dry-run=client -o yaml | kubectl apply -f -` does the same through JSON.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A field: (number, json name, kind, repeated) where kind is a scalar type, "map:<value kind>", or the
# name of a message below.
_S, _B, _I, _BOOL = "string", "bytes", "int", "bool"
MESSAGES: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Unknown": {
        1: ("typeMeta", "TypeMeta", False),
        2: ("raw", _B, False),
        3: ("contentEncoding", _S, False),
        4: ("contentType", _S, False),
    },
    "TypeMeta": {1: ("apiVersion", _S, False), 2: ("kind", _S, False)},
    "ObjectMeta": {
        1: ("name", _S, False),
        2: ("generateName", _S, False),
        3: ("namespace", _S, False),
        4: ("selfLink", _S, False),
        5: ("uid", _S, False),
        6: ("resourceVersion", _S, False),
        7: ("generation", _I, False),
        8: ("creationTimestamp", "Time", False),
        9: ("deletionTimestamp", "Time", False),
        10: ("deletionGracePeriodSeconds", _I, False),
        11: ("labels", "map:string", False),
        12: ("annotations", "map:string", False),
        13: ("ownerReferences", "OwnerReference", True),
        14: ("finalizers", _S, True),
        17: ("managedFields", "ManagedFieldsEntry", True),
    },
    "OwnerReference": {
        5: ("apiVersion", _S, False),
        1: ("kind", _S, False),
        3: ("name", _S, False),
        4: ("uid", _S, False),
        6: ("controller", _BOOL, False),
        7: ("blockOwnerDeletion", _BOOL, False),
    },
    "ManagedFieldsEntry": {
        1: ("manager", _S, False),
        2: ("operation", _S, False),
        3: ("apiVersion", _S, False),
        4: ("time", "Time", False),
        6: ("fieldsType", _S, False),
        7: ("fieldsV1", "FieldsV1", False),
        8: ("subresource", _S, False),
    },
    "FieldsV1": {1: ("Raw", _B, False)},
    "Time": {1: ("seconds", _I, False), 2: ("nanos", _I, False)},
    "DeleteOptions": {
        1: ("gracePeriodSeconds", _I, False),
        2: ("preconditions", "Preconditions", False),
        3: ("orphanDependents", _BOOL, False),
        4: ("propagationPolicy", _S, False),
        5: ("dryRun", _S, True),
        6: ("ignoreStoreReadErrorWithClusterBreakingPotential", _BOOL, False),
    },
    "Preconditions": {1: ("uid", _S, False), 2: ("resourceVersion", _S, False)},
    "Secret": {
        1: ("metadata", "ObjectMeta", False),
        5: ("immutable", _BOOL, False),
        2: ("data", "map:bytes", False),
        4: ("stringData", "map:string", False),
        3: ("type", _S, False),
    },
    "ConfigMap": {
        1: ("metadata", "ObjectMeta", False),
        4: ("immutable", _BOOL, False),
        2: ("data", "map:string", False),
        3: ("binaryData", "map:bytes", False),
    },
    "Namespace": {
        1: ("metadata", "ObjectMeta", False),
        2: ("spec", "NamespaceSpec", False),
        3: ("status", "NamespaceStatus", False),
    },
    "NamespaceSpec": {1: ("finalizers", _S, True)},
    "NamespaceStatus": {1: ("phase", _S, False), 2: ("conditions", "NamespaceCondition", True)},
    "NamespaceCondition": {
        1: ("type", _S, False),
        2: ("status", _S, False),
        4: ("lastTransitionTime", "Time", False),
        5: ("reason", _S, False),
        6: ("message", _S, False),
    },
    "ServiceAccount": {
        1: ("metadata", "ObjectMeta", False),
        2: ("secrets", "ObjectReference", True),
        3: ("imagePullSecrets", "LocalObjectReference", True),
        4: ("automountServiceAccountToken", _BOOL, False),
    },
    "ObjectReference": {
        1: ("kind", _S, False),
        2: ("namespace", _S, False),
        3: ("name", _S, False),
        4: ("uid", _S, False),
        5: ("apiVersion", _S, False),
        6: ("resourceVersion", _S, False),
        7: ("fieldPath", _S, False),
    },
    "LocalObjectReference": {1: ("name", _S, False)},
    "Role": {1: ("metadata", "ObjectMeta", False), 2: ("rules", "PolicyRule", True)},
    "ClusterRole": {
        1: ("metadata", "ObjectMeta", False),
        2: ("rules", "PolicyRule", True),
        3: ("aggregationRule", "AggregationRule", False),
    },
    "PolicyRule": {
        1: ("verbs", _S, True),
        2: ("apiGroups", _S, True),
        3: ("resources", _S, True),
        4: ("resourceNames", _S, True),
        5: ("nonResourceURLs", _S, True),
    },
    "AggregationRule": {1: ("clusterRoleSelectors", "LabelSelector", True)},
    "LabelSelector": {
        1: ("matchLabels", "map:string", False),
        2: ("matchExpressions", "LabelSelectorRequirement", True),
    },
    "LabelSelectorRequirement": {
        1: ("key", _S, False),
        2: ("operator", _S, False),
        3: ("values", _S, True),
    },
    "RoleBinding": {
        1: ("metadata", "ObjectMeta", False),
        2: ("subjects", "Subject", True),
        3: ("roleRef", "RoleRef", False),
    },
    "Subject": {
        1: ("kind", _S, False),
        2: ("apiGroup", _S, False),
        3: ("name", _S, False),
        4: ("namespace", _S, False),
    },
    "RoleRef": {1: ("apiGroup", _S, False), 2: ("kind", _S, False), 3: ("name", _S, False)},
}
MESSAGES["ClusterRoleBinding"] = MESSAGES["RoleBinding"]

KINDS = {
    ("v1", "Secret"): "Secret",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Namespace"): "Namespace",
    ("v1", "DeleteOptions"): "DeleteOptions",
    ("meta.k8s.io/v1", "DeleteOptions"): "DeleteOptions",
    ("v1", "ServiceAccount"): "ServiceAccount",
    **{
        ("rbac.authorization.k8s.io/v1", kind): kind
        for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    },
}


class Unsupported(ValueError):
    """A protobuf body of a kind this decoder has no message for (or not protobuf at all)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise Unsupported("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """The (number, wire type, raw value) of every field of a message."""
    out = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise Unsupported(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def _scalar(kind: str, value: Any) -> Any:
    if kind == _S:
        return bytes(value).decode()
    if kind == _B:
        return base64.b64encode(bytes(value)).decode()
    if kind == _BOOL:
        return bool(value)
    if kind == _I:
        return value - (1 << 64) if value >= 1 << 63 else value
    raise Unsupported(kind)


def _time(fields: dict[str, Any]) -> str:
    moment = datetime.fromtimestamp(fields.get("seconds", 0), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_message(name: str, data: bytes) -> Any:
    spec = MESSAGES[name]
    out: dict[str, Any] = {}
    for number, _, raw in _fields(data):
        if number not in spec:
            # The real server knows every field; a part of the object left out here would be lost.
            raise Unsupported(f"{name} has no field {number} in these tables")
        key, kind, repeated = spec[number]
        if kind.startswith("map:"):
            entry = {n: v for n, _, v in _fields(raw)}
            value_kind = kind[4:]
            out.setdefault(key, {})[bytes(entry.get(1, b"")).decode()] = _scalar(
                value_kind, entry.get(2, b"")
            )
            continue
        value = decode_message(kind, raw) if kind in MESSAGES else _scalar(kind, raw)
        if not repeated and value in ("", 0, False, None) and kind != _BOOL:
            # gogo-protobuf writes empty strings and zeros; the JSON of the same Go object omits them.
            continue
        if repeated:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
    if name == "Time":
        return _time(out) if out.get("seconds") else None
    if name == "FieldsV1":
        raw = base64.b64decode(out.get("Raw", "")) if out.get("Raw") else b"{}"
        return json.loads(raw)
    return out


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object of a protobuf request body; `Unsupported` when it cannot be read."""
    if not body.startswith(MAGIC):
        raise Unsupported("the body does not start with the protobuf magic number")
    unknown = decode_message("Unknown", body[len(MAGIC) :])
    type_meta = unknown.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    message = KINDS.get((api_version, kind))
    if message is None:
        raise Unsupported(f"no protobuf message for {api_version}, Kind={kind}")
    raw = base64.b64decode(unknown.get("raw", "")) if unknown.get("raw") else b""
    obj = decode_message(message, raw)
    if kind != "DeleteOptions":
        obj = {"kind": kind, "apiVersion": api_version, **obj}
    return obj
