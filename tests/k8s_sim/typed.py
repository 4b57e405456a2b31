"""Objects read through their schema, as sigs.k8s.io/structured-merge-diff (SMD) reads them.

Server-side apply and the `metadata.managedFields` bookkeeping (managed.py) work on *field sets*: sets of
paths into an object, where a path is a tuple of path elements:

- `("f", name)`: a field of a struct or a key of a map (`f:<name>` in FieldsV1);
- `("k", ((key, value), ...))`: the item of an associative list (`x-kubernetes-list-type: map`) with these
  key fields, sorted by name (`k:{"containerPort":80,"protocol":"TCP"}`);
- `("v", value)`: the item of a set list (`x-kubernetes-list-type: set`), its JSON text (`v:"a"`);
- `("i", index)`: an item by position (not produced for the kinds served here).

The schema is the kind's OpenAPI definition (openapi.py); it says for every node whether it is a scalar, a
struct (`properties`), a map (`additionalProperties`) or a list, and for lists and maps their relationship,
as kube-openapi's schemaconv derives it: `x-kubernetes-list-type` (atomic, set, map with
`x-kubernetes-list-map-keys`), else `x-kubernetes-patch-strategy: merge` (with `x-kubernetes-patch-merge-key`:
a map list on that key; without: a set), else atomic; `x-kubernetes-map-type: atomic` makes a struct or map
one leaf. Untyped nodes (RawExtension, `type: object` without properties) are "deduced": maps are granular,
lists atomic.

The walks are ports of SMD's typed package: `to_field_set` (typed/tofieldset.go), `compare`
(typed/compare.go), `merge` (typed/merge.go: the right-hand side wins on leaves, associative lists merge
item by item keeping the right-hand order) and `remove` (typed/remove.go); `fields_v1`/`from_fields_v1`
are the FieldsV1 JSON encoding (fieldpath/serialize.go), `path_string` the `.spec.containers[name="a"]`
notation of conflict messages (fieldpath/path.go).

Simplification, stated: SMD compares Go objects converted to unstructured, where a struct that is not a
pointer is always present (as `{}`); here a missing struct node is read as `{}` for every struct (so a
pointer struct, such as `securityContext`, is not recorded as a member of its own when it is added).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from tests.k8s_sim import openapi

PathElement = tuple[str, Any]
Path = tuple[PathElement, ...]
MISSING: Any = object()

# +default markers of the real types that the JSON schemas do not carry but list keys rely on
# (kube-openapi publishes them as `default`): a port's protocol defaults to TCP.
_KEY_DEFAULTS = {
    ("containerPort", "protocol"): {"protocol": "TCP"},
    ("port", "protocol"): {"protocol": "TCP"},
}


class SchemaError(ValueError):
    """A value that does not fit its schema (the real API: `.spec.foo: field not declared in schema`)."""


@dataclass
class Type:
    kind: str  # scalar, struct, map, list, deduced
    fields: dict[str, Any] = field(default_factory=dict)
    elem: Any = None
    atomic: bool = False
    list_type: str = "atomic"  # atomic, set, map
    keys: tuple[str, ...] = ()
    patch_strategy: str = ""
    merge_key: str = ""


@functools.cache
def _named(name: str) -> Type:
    return _build(openapi.schema(name))


def resolve(node: Any) -> Type:
    """The Type of a schema node (a definition, a property, an items schema)."""
    if node is None:
        return Type("deduced")
    if isinstance(node, Type):
        return node
    ref = node.get("$ref")
    if ref:
        return _named(ref.rsplit("/", 1)[-1])
    return _build(node)


def _build(node: dict[str, Any]) -> Type:
    if "$ref" in node:
        return resolve(node)
    kind = node.get("type")
    if node.get("format") == "int-or-string" or "oneOf" in node:
        return Type("scalar")
    if kind == "array":
        list_type = node.get("x-kubernetes-list-type")
        keys: tuple[str, ...] = ()
        strategy = node.get("x-kubernetes-patch-strategy", "")
        merge_key = node.get("x-kubernetes-patch-merge-key", "")
        if list_type == "map":
            keys = tuple(node.get("x-kubernetes-list-map-keys") or ())
        elif list_type is None:
            if strategy in ("merge", "merge,retainKeys"):
                list_type, keys = ("map", (merge_key,)) if merge_key else ("set", ())
            else:
                list_type = "atomic"
        return Type(
            "list",
            elem=node.get("items"),
            atomic=list_type == "atomic",
            list_type=list_type,
            keys=keys,
            patch_strategy=strategy,
            merge_key=merge_key,
        )
    if kind == "object" or "properties" in node or "additionalProperties" in node:
        atomic = node.get("x-kubernetes-map-type") == "atomic"
        if "properties" in node:
            return Type(
                "struct",
                fields=node["properties"],
                elem=node.get("additionalProperties")
                if isinstance(node.get("additionalProperties"), dict)
                else None,
                atomic=atomic,
                patch_strategy=node.get("x-kubernetes-patch-strategy", ""),
            )
        if isinstance(node.get("additionalProperties"), dict):
            return Type("map", elem=node["additionalProperties"], atomic=atomic)
        return Type("deduced", atomic=atomic)
    if kind in ("string", "integer", "number", "boolean"):
        return Type("scalar")
    return Type("deduced")


@functools.cache
def root(api_version: str, kind: str) -> Type | None:
    name = openapi.definition_name(api_version, kind)
    return _named(name) if name else None


def child_type(t: Type, key: str) -> Type:
    """The Type of a struct's field or a map's value; SchemaError for a field the struct lacks."""
    if t.kind == "struct":
        if key in t.fields:
            return resolve(t.fields[key])
        if t.elem is not None:
            return resolve(t.elem)
        raise SchemaError("field not declared in schema")
    if t.kind == "map":
        return resolve(t.elem)
    return Type("deduced")


def _deduce(t: Type, value: Any) -> Type:
    """A deduced node takes the shape of its value: a map is granular, anything else a leaf."""
    if t.kind != "deduced" or t.atomic:
        return t
    if isinstance(value, dict):
        return Type("map", elem=None)
    return Type("scalar")


def is_leaf(t: Type) -> bool:
    return t.kind == "scalar" or t.atomic or (t.kind == "list" and t.list_type == "atomic")


# -- list items -----------------------------------------------------------------------------------------


def item_element(t: Type, item: Any) -> PathElement:
    """The path element of a list item (listItemToPathElement)."""
    if t.list_type == "map":
        if not isinstance(item, dict):
            raise SchemaError("associative list with keys may not have non-map elements")
        defaults = _KEY_DEFAULTS.get(t.keys, {})
        keys = []
        for key in t.keys:
            if key in item and item[key] is not None:
                keys.append((key, item[key]))
            elif key in defaults:
                keys.append((key, defaults[key]))
            else:
                raise SchemaError(
                    f'associative list with keys has an element that omits key field "{key}" '
                    "(and doesn't have default value)"
                )
        return ("k", tuple(sorted(keys)))
    if t.list_type == "set":
        if isinstance(item, (dict, list)):
            raise SchemaError("associative list without keys has an element that's a map or list type")
        return ("v", json.dumps(item, separators=(",", ":")))
    raise SchemaError("atomic list items have no path element")


def _index(t: Type, items: Any, allow_duplicates: bool) -> list[tuple[PathElement, Any]]:
    out: list[tuple[PathElement, Any]] = []
    seen: set[PathElement] = set()
    for item in items or []:
        pe = item_element(t, item)
        if pe in seen and not allow_duplicates:
            raise SchemaError(f"duplicate entries for key {element_string(pe)}")
        seen.add(pe)
        out.append((pe, item))
    return out


# -- field sets -----------------------------------------------------------------------------------------


def to_field_set(value: Any, t: Type, path: Path = (), out: set[Path] | None = None) -> set[Path]:
    """The fields set in `value` (typed/tofieldset.go): its leaves, list items, atomic nodes, and the map
    entries that are empty or null or not struct fields."""
    out = set() if out is None else out
    t = _deduce(t, value)
    if is_leaf(t):
        out.add(path)
        return out
    if t.kind == "list":
        for pe, item in _index(t, value if isinstance(value, list) else [], False):
            child = (*path, pe)
            to_field_set(item, resolve(t.elem), child, out)
            out.add(child)
        return out
    if not isinstance(value, dict):
        return out
    for key, item in value.items():
        child = (*path, ("f", key))
        ct = child_type(t, key)
        to_field_set(item, ct, child, out)
        if item is None or (isinstance(item, dict) and not item) or t.kind != "struct" or key not in t.fields:
            out.add(child)
    return out


@dataclass
class Comparison:
    added: set[Path] = field(default_factory=set)
    modified: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)

    def same(self) -> bool:
        return not (self.added or self.modified or self.removed)


def compare(lhs: Any, rhs: Any, t: Type) -> Comparison:
    """What changed from `lhs` to `rhs` (typed/compare.go)."""
    result = Comparison()
    _compare(lhs, rhs, t, (), result, True)
    return result


def _compare(
    lhs: Any, rhs: Any, t: Type, path: Path, result: Comparison, field_of_struct: bool = False
) -> None:
    t = _deduce(t, rhs if rhs is not MISSING else lhs)
    if field_of_struct and t.kind == "struct" and not t.atomic:
        # A Go struct field that is not a pointer is never absent (see the module docstring).
        lhs = {} if lhs is MISSING else lhs
        rhs = {} if rhs is MISSING else rhs
    if lhs is MISSING and rhs is MISSING:
        return
    leaf = is_leaf(t)
    if not leaf:
        if t.kind == "list":
            lv = lhs if isinstance(lhs, list) else []
            rv = rhs if isinstance(rhs, list) else []
            if not lv and not rv:
                leaf = True
        else:
            lv = lhs if isinstance(lhs, dict) else {}
            rv = rhs if isinstance(rhs, dict) else {}
            if not lv and not rv:
                leaf = True
    if leaf:
        if lhs is MISSING:
            result.added.add(path)
        elif rhs is MISSING:
            result.removed.add(path)
        elif lhs != rhs or (type(lhs) is not type(rhs) and not (_number(lhs) and _number(rhs))):
            result.modified.add(path)
        return
    if t.kind == "list":
        elem = resolve(t.elem)
        left = dict(_index(t, lv, True))
        right = dict(_index(t, rv, True))
        for pe in list(left) + [pe for pe in right if pe not in left]:
            _compare(left.get(pe, MISSING), right.get(pe, MISSING), elem, (*path, pe), result)
    else:
        for key in list(lv) + [k for k in rv if k not in lv]:
            try:
                ct = child_type(t, key)
            except SchemaError:
                ct = Type("deduced")
            in_struct = t.kind == "struct" and key in t.fields
            _compare(lv.get(key, MISSING), rv.get(key, MISSING), ct, (*path, ("f", key)), result, in_struct)
    if lhs is MISSING:
        result.added.add(path)
    elif rhs is MISSING:
        result.removed.add(path)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- merge and remove -----------------------------------------------------------------------------------


def merge(lhs: Any, rhs: Any, t: Type) -> Any:
    """`rhs` merged into `lhs` (typed/merge.go, the rule server-side apply merges a configuration with)."""
    t = _deduce(t, rhs if rhs is not MISSING else lhs)
    if rhs is MISSING:
        return lhs
    if lhs is MISSING or is_leaf(t):
        return rhs
    if t.kind == "list":
        lv = lhs if isinstance(lhs, list) else []
        rv = rhs if isinstance(rhs, list) else []
        if not lv and not rv:
            return rhs  # both empty or null: a leaf, the right-hand side wins
        return _merge_list(lv, rv, t)
    lm = lhs if isinstance(lhs, dict) else {}
    rm = rhs if isinstance(rhs, dict) else {}
    if not lm and not rm:
        return rhs
    out = dict(lm)
    for key, value in rm.items():
        out[key] = merge(lm.get(key, MISSING), value, child_type(t, key))
    return out


def _merge_list(lhs: list[Any], rhs: list[Any], t: Type) -> list[Any]:
    elem = resolve(t.elem)
    left = _index(t, lhs, True)
    right = _index(t, rhs, False)
    observed_left = dict(left)
    observed_right = dict(right)
    shared = [pe for pe, _ in right if pe in observed_left]
    out: list[Any] = []
    merged: set[PathElement] = set()
    li = ri = 0
    next_shared = shared.pop(0) if shared else None
    while li < len(left) or ri < len(right):
        if li < len(left) and ri < len(right):
            pe = left[li][0]
            if pe == right[ri][0]:
                merged.add(pe)
                out.append(merge(observed_left[pe], observed_right[pe], elem))
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if pe in observed_right and next_shared is not None and next_shared != pe:
                li += 1
                continue
        if li < len(left):
            pe = left[li][0]
            if pe not in observed_right:
                out.append(left[li][1])
                li += 1
                continue
            if pe in merged:
                li += 1
        if ri < len(right):
            pe = right[ri][0]
            merged.add(pe)
            out.append(merge(observed_left.get(pe, MISSING), observed_right[pe], elem))
            ri += 1
            if next_shared is not None and next_shared == pe:
                next_shared = shared.pop(0) if shared else None
    return out


def remove(value: Any, t: Type, paths: set[Path]) -> Any:
    """`value` without the members in `paths` (a member goes with everything under it)."""
    return _remove(value, t, (), paths, _prefixes(paths))


def _prefixes(paths: set[Path]) -> set[Path]:
    found: set[Path] = set()
    for path in paths:
        for i in range(len(path)):
            found.add(path[:i])
    return found


def _remove(value: Any, t: Type, path: Path, paths: set[Path], prefixes: set[Path]) -> Any:
    t = _deduce(t, value)
    if path not in prefixes or is_leaf(t):
        return value
    if t.kind == "list" and isinstance(value, list):
        elem = resolve(t.elem)
        out = []
        for item in value:
            pe = item_element(t, item)
            child = (*path, pe)
            if child in paths:
                continue
            out.append(_remove(item, elem, child, paths, prefixes))
        return out
    if isinstance(value, dict):
        out_map = {}
        for key, item in value.items():
            child = (*path, ("f", key))
            if child in paths:
                continue
            try:
                ct = child_type(t, key)
            except SchemaError:
                ct = Type("deduced")
            out_map[key] = _remove(item, ct, child, paths, prefixes)
        return out_map
    return value


def ensure_named_fields_are_members(paths: set[Path], t: Type) -> set[Path]:
    """`paths` plus every struct field on the way to them (fieldpath.Set.EnsureNamedFieldsAreMembers)."""
    out = set(paths)
    for path in paths:
        node = t
        for i, pe in enumerate(path):
            if node.kind == "struct" and pe[0] == "f" and pe[1] in node.fields:
                out.add(path[: i + 1])
            try:
                if pe[0] == "f":
                    node = child_type(node, pe[1])
                elif node.kind == "list":
                    node = resolve(node.elem)
                else:
                    break
            except SchemaError:
                break
    return out


def recursive_difference(paths: set[Path], ignored: set[Path]) -> set[Path]:
    """`paths` without those at or under an ignored path (fieldpath.Set.RecursiveDifference)."""
    if not ignored:
        return set(paths)
    return {p for p in paths if not any(p[: len(i)] == i for i in ignored)}


# -- FieldsV1 -------------------------------------------------------------------------------------------


def element_key(pe: PathElement) -> str:
    kind, value = pe
    if kind == "f":
        return f"f:{value}"
    if kind == "k":
        return "k:" + json.dumps(dict(value), separators=(",", ":"))
    if kind == "v":
        return f"v:{value}"
    return f"i:{value}"


def _parse_key(key: str) -> PathElement:
    kind, _, rest = key.partition(":")
    if kind == "f":
        return ("f", rest)
    if kind == "k":
        return ("k", tuple(sorted(json.loads(rest).items())))
    if kind == "v":
        return ("v", json.dumps(json.loads(rest), separators=(",", ":")))
    if kind == "i":
        return ("i", int(rest))
    raise ValueError(f"unknown path element {key!r}")


def _order(pe: PathElement) -> tuple[int, str]:
    return ({"f": 0, "k": 1, "v": 2, "i": 3}[pe[0]], element_key(pe))


def fields_v1(paths: set[Path]) -> dict[str, Any]:
    """The FieldsV1 JSON of a set: a trie of path elements, "." marking a member that has children."""
    tree: dict[PathElement, Any] = {}
    members: set[Path] = set(paths)
    for path in paths:
        node = tree
        for pe in path:
            node = node.setdefault(pe, {})

    def encode(node: dict[PathElement, Any], prefix: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if node and prefix in members and prefix:
            out["."] = {}
        for pe in sorted(node, key=_order):
            out[element_key(pe)] = encode(node[pe], (*prefix, pe))
        return out

    return encode(tree, ())


def from_fields_v1(fields: dict[str, Any]) -> set[Path]:
    out: set[Path] = set()

    def walk(node: dict[str, Any], prefix: Path) -> None:
        if not node and prefix:
            out.add(prefix)
        for key, child in node.items():
            if key == ".":
                out.add(prefix)
                continue
            walk(child or {}, (*prefix, _parse_key(key)))

    walk(fields or {}, ())
    return out


def _value_string(value: Any) -> str:
    """value.ToString: strings quoted, numbers and booleans bare."""
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def element_string(pe: PathElement) -> str:
    kind, value = pe
    if kind == "f":
        return f".{value}"
    if kind == "k":
        return "[" + ",".join(f"{k}={_value_string(v)}" for k, v in value) + "]"
    if kind == "v":
        return f"[={_value_string(json.loads(value))}]"
    return f"[{value}]"


def path_string(path: Path) -> str:
    return "".join(element_string(pe) for pe in path)


def sort_key(path: Path) -> tuple:
    return tuple(_order(pe) for pe in path)
