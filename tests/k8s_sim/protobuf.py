"""Request bodies in the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`), read as JSON.

kubectl's and helm's typed clients (client-go clientsets built by cli-runtime) send built-in objects as
protobuf: `kubectl create namespace` sends a Namespace, helm's release storage creates, updates and
deletes Secrets (type helm.sh/release.v1) that way, with DeleteOptions as the DELETE body. The answers can
stay JSON: those clients accept `application/vnd.kubernetes.protobuf,application/json`.

The encoding (https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding): the magic
bytes `k8s\\x00`, then a `runtime.Unknown` message {typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2,
contentEncoding = 3, contentType = 4} whose `raw` is the object's own message. The messages below are
the ones of k8s.io/api and k8s.io/apimachinery (their generated.proto field numbers) for the kinds that
clients send this way; a body of another kind is answered 415, as a server that cannot read the media
type answers. Decoded messages are written as the JSON the same object has (maps of bytes and `bytes`
fields base64, Time as RFC 3339, FieldsV1 as its JSON).
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
}

KINDS = {
    ("v1", "Secret"): "Secret",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Namespace"): "Namespace",
    ("v1", "DeleteOptions"): "DeleteOptions",
    ("meta.k8s.io/v1", "DeleteOptions"): "DeleteOptions",
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
            continue  # a field this table does not know: skipped, as an older client's decoder does
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
