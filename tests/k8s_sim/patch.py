"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as the real API applies them.

`application/strategic-merge-patch+json` is applied as a JSON merge patch for now: NOT YET the real
strategic merge (lists merged by their patchMergeKey, e.g. containers by name, `$patch` directives).
`application/apply-patch+yaml` (server-side apply) is not implemented yet (415).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.k8s_sim import errors


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
