"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch, as the real
API applies them. Server-side apply (`application/apply-patch+yaml`) is managed.py's.

Strategic merge patch (https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/
and k8s.io/apimachinery/pkg/util/strategicpatch): a JSON merge patch, except for the lists whose schema
says `x-kubernetes-patch-strategy: merge` (read from the OpenAPI definitions, openapi.py/typed.py): a list
of objects with a `x-kubernetes-patch-merge-key` is merged item by item on that key (containers by name,
ports by containerPort, env by name, volumes by name...), a list of scalars is merged as a set. The
directives: `$patch: replace` (a map or a list replaced whole), `$patch: delete` (a map, or a list item by
its key, removed), `$patch: merge`, `$retainKeys` (keys not listed are cleared), `$setElementOrder/<list>`
(the order of the merged list) and `$deleteFromPrimitiveList/<list>` (values removed from a set list).
Simplified: without `$setElementOrder`, the merged list keeps the stored items in their order and appends
the new ones (the real code interleaves them by the stored order).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.k8s_sim import errors, typed


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.bad_request(
            f"the server rejected our request due to an error in our request: "
            f"JSON pointer {path!r} must start with '/'"
        )
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], op: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch; a failing operation is what the real API answers for it (422 or 400)."""
    if not isinstance(operations, list):
        raise errors.bad_request(
            f"json: cannot unmarshal {(type(operations).__name__ == 'dict' and 'object') or 'value'} into Go "
            "value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(doc)
    for operation in operations:
        op = operation.get("op")
        try:
            parts = _pointer(operation.get("path", ""))
            if op in ("move", "copy"):
                source = _pointer(operation["from"])
                parent, key = _parent(doc, source, op)
                value = parent[int(key)] if isinstance(parent, list) else parent[key]
                if op == "move":
                    parent.pop(int(key) if isinstance(parent, list) else key)
                doc = _add(doc, parts, copy.deepcopy(value))
            elif op == "add":
                doc = _add(doc, parts, copy.deepcopy(operation["value"]))
            elif op in ("remove", "replace", "test"):
                parent, key = _parent(doc, parts, op)
                index: Any = int(key) if isinstance(parent, list) else key
                current = parent[index]
                if op == "remove":
                    parent.pop(index)
                elif op == "replace":
                    parent[index] = copy.deepcopy(operation["value"])
                elif current != operation["value"]:
                    raise errors.ApiError(
                        422,
                        "Invalid",
                        "the server rejected our request due to an error in our "
                        f"request: testing value {operation['path']} failed",
                    )
            else:
                raise errors.bad_request(f"Unexpected kind: {op}")
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            raise errors.ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {op} operation does not "
                f'apply: doc is missing path: "{operation.get("path")}": {exc}',
            ) from None
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, key = _parent(doc, parts, "add")
    if isinstance(parent, list):
        if key == "-":
            parent.append(value)
        else:
            index = int(key)
            if index > len(parent):
                raise IndexError(key)
            parent.insert(index, value)
    else:
        parent[key] = value
    return doc


# -- strategic merge patch ------------------------------------------------------------------------------

_ORDER = "$setElementOrder/"
_DELETE_FROM = "$deleteFromPrimitiveList/"


def strategic_merge_patch(target: dict[str, Any], patch: dict[str, Any], resource: Any) -> dict[str, Any]:
    """Apply a strategic merge patch to an object of `resource`'s kind."""
    t = typed.root(resource.api_version, resource.kind) or typed.Type("deduced")
    try:
        result = _smp_map(copy.deepcopy(target), copy.deepcopy(patch), t)
    except (typed.SchemaError, TypeError, KeyError) as exc:
        raise errors.bad_request(f"unable to apply the strategic merge patch: {exc}") from None
    return result if isinstance(result, dict) else {}


def _child(t: typed.Type, key: str) -> typed.Type:
    try:
        return typed.child_type(t, key)
    except typed.SchemaError:
        return typed.Type("deduced")


def _smp_map(original: Any, patch: dict[str, Any], t: typed.Type) -> Any:
    directive = patch.pop("$patch", None)
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive not in (None, "merge"):
        raise errors.bad_request(f"Unknown patch type: {directive} in map: {patch}")
    result = dict(original) if isinstance(original, dict) else {}
    retain = patch.pop("$retainKeys", None)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    orders = {k[len(_ORDER) :]: patch.pop(k) for k in [k for k in patch if k.startswith(_ORDER)]}
    deletions = {
        k[len(_DELETE_FROM) :]: patch.pop(k) for k in [k for k in patch if k.startswith(_DELETE_FROM)]
    }
    for key, value in patch.items():
        child = _child(t, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and not child.atomic and child.kind != "scalar":
            merged = _smp_map(result.get(key), value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and child.kind == "list" and "merge" in child.patch_strategy.split(","):
            result[key] = _smp_list(result.get(key), value, child)
        else:
            result[key] = _strip_directives(value)
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in (values or [])]
    for key, order in orders.items():
        if isinstance(result.get(key), list) and isinstance(order, list):
            result[key] = _ordered(result[key], order, _child(t, key))
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and "$patch" in v)]
    return value


def _smp_list(original: Any, patch: list[Any], t: typed.Type) -> list[Any]:
    current = list(original) if isinstance(original, list) else []
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip_directives(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")
        ]
    key = t.merge_key
    if not key or not all(isinstance(item, dict) for item in patch):
        # A list of scalars merged as a set: new values appended, in the patch's order.
        for item in patch:
            if item not in current:
                current.append(item)
        return current
    elem = typed.resolve(t.elem)
    for item in patch:
        if key not in item:
            raise errors.bad_request(f"map: {item} does not contain declared merge key: {key}")
        index = next(
            (i for i, old in enumerate(current) if isinstance(old, dict) and old.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                current.pop(index)
            continue
        if index is None:
            current.append(_smp_map({}, dict(item), elem))
        else:
            current[index] = _smp_map(current[index], dict(item), elem)
    return current


def _ordered(items: list[Any], order: list[Any], t: typed.Type) -> list[Any]:
    """$setElementOrder: the listed items first in that order, then the rest in their order."""
    key = t.merge_key

    def identity(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [identity(o) for o in order]
    ranked = sorted(
        range(len(items)),
        key=lambda i: (wanted.index(identity(items[i])) if identity(items[i]) in wanted else len(wanted), i),
    )
    return [items[i] for i in ranked]
