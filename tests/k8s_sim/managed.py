"""`metadata.managedFields` and server-side apply, as the real API server's field manager keeps them.

Reference: https://kubernetes.io/docs/reference/using-api/server-side-apply/ and the code it describes
(k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager, sigs.k8s.io/structured-merge-diff/merge/update.go);
field sets and the merge are in typed.py.

Every write records who set which fields, one `ManagedFieldsEntry` per manager:
`{"manager", "operation": "Apply"|"Update", "apiVersion", "time", "fieldsType": "FieldsV1", "fieldsV1",
"subresource"?}`; entries are told apart by manager, operation, subresource and (for Update) apiVersion.

- Update (create, PUT, a non-apply PATCH; `update`): the fields that the write added or changed go to the
  writer (merged with its earlier Update entry, its time set to now) and are taken from every other
  manager; fields the write removed are taken from everyone. A write that changes nothing leaves the
  entries (and their times) as they were. The writer is the `fieldManager` query parameter or, without one,
  the User-Agent up to its first "/" (`kubectl`, `helm`, `python-requests`). Managed fields in an update's
  body replace the stored ones when they decode to at least one entry (that is how a client resets them:
  `[{}]` clears them); absent or `[]`, the stored ones are kept.
- Apply (PATCH `application/apply-patch+yaml`; `apply`): the configuration is merged into the live object
  (lists by their keys); the applier's set becomes exactly the configuration's fields; fields it set last
  time and no longer sets are removed from the object unless another manager owns them; a field the apply
  would change that another manager owns is a conflict (409, reason Conflict, one
  `FieldManagerConflict` cause per field, the real message: `Apply failed with 1 conflict: conflict with
  "other" using apps/v1: .spec.replicas`), unless `force=true`, which takes the fields over.
- `apiVersion`, `kind`, and the metadata fields the server sets (name, namespace, uid, resourceVersion,
  generation, creationTimestamp, managedFields...) are never owned (the stripMeta manager); on the main
  resource of a kind with a status subresource, `status` is not owned (the strategy's reset fields).
- When an object does not change except for the times of its entries, the old times are kept, so that a
  repeated apply writes nothing and keeps the resourceVersion (IgnoreManagedFieldsTimestampsTransformer).

Not implemented: the cap of 10 Update entries ("ancient-changes"), conversion of field sets between API
versions (one version per kind here), and the client-side-apply migration (kubectl's
last-applied-configuration annotation is kept as an ordinary annotation).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.k8s_sim import errors, typed
from tests.k8s_sim.resources import Resource
from tests.k8s_sim.typed import Path

_STRIP: set[Path] = {
    (("f", "apiVersion"),),
    (("f", "kind"),),
    (("f", "metadata"),),
    *(
        (("f", "metadata"), ("f", name))
        for name in (
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        )
    ),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    fields: set[Path] = field(default_factory=set)
    time: str | None = None
    subresource: str = ""

    @property
    def ident(self) -> tuple[str, str, str, str]:
        # BuildManagerIdentifier: the apiVersion is part of an Update manager's identity, not an Apply's.
        return (
            self.manager,
            self.operation,
            self.api_version if self.operation == "Update" else "",
            self.subresource,
        )

    def printed(self) -> str:
        """printManager: how conflict messages name a manager."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text


Managers = dict[tuple[str, str, str, str], Entry]


def manager_from_user_agent(user_agent: str | None) -> str:
    """The default field manager: the User-Agent up to its first "/" (prefixFromUserAgent)."""
    return (user_agent or "").split("/")[0]


def decode(entries: Any) -> Managers | None:
    """The managers of a managedFields list; None when it does not decode."""
    if not isinstance(entries, list):
        return None
    out: Managers = {}
    try:
        for raw in entries:
            if not isinstance(raw, dict):
                return None
            entry = Entry(
                manager=raw.get("manager", ""),
                operation=raw.get("operation", ""),
                api_version=raw.get("apiVersion", ""),
                fields=typed.from_fields_v1(raw.get("fieldsV1") or {}),
                time=raw.get("time"),
                subresource=raw.get("subresource", ""),
            )
            if entry.ident in out:
                return None  # the real decoder refuses duplicate managers
            out[entry.ident] = entry
    except (ValueError, TypeError, AttributeError):
        return None
    return out


def encode(managers: Managers) -> list[dict[str, Any]]:
    """The managedFields list, in the real server's order (Apply before Update, then time, manager...)."""
    entries = sorted(
        managers.values(),
        key=lambda e: (e.operation, e.time or "", e.manager, e.api_version, e.subresource),
    )
    out = []
    for entry in entries:
        encoded: dict[str, Any] = {
            "manager": entry.manager,
            "operation": entry.operation,
            "apiVersion": entry.api_version,
        }
        if entry.time:
            encoded["time"] = entry.time
        encoded["fieldsType"] = "FieldsV1"
        encoded["fieldsV1"] = typed.fields_v1(entry.fields)
        if entry.subresource:
            encoded["subresource"] = entry.subresource
        out.append(encoded)
    return out


def _ignored(resource: Resource, subresource: str) -> set[Path]:
    """The strategy's reset fields: status on the main resource, spec and metadata on /status."""
    if subresource == "status":
        return {(("f", "spec"),), (("f", "metadata"),)}
    if resource.status:
        return {(("f", "status"),)}
    return set()


def _body(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The object as the field manager compares it: without its managedFields."""
    if obj is None:
        return {}
    body = copy.copy(obj)
    metadata = dict(body.get("metadata") or {})
    metadata.pop("managedFields", None)
    body["metadata"] = metadata
    return body


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    body = _body(obj)
    body["metadata"].pop("resourceVersion", None)
    return body


def _filter(comparison: typed.Comparison, ignored: set[Path]) -> typed.Comparison:
    return typed.Comparison(
        typed.recursive_difference(comparison.added, ignored),
        typed.recursive_difference(comparison.modified, ignored),
        typed.recursive_difference(comparison.removed, ignored),
    )


def _take(managers: Managers, writer: tuple, comparison: typed.Comparison, force: bool) -> dict[tuple, set]:
    """Updater.update: the conflicts with other managers; with `force`, their fields taken from them."""
    changed = comparison.added | comparison.modified
    conflicts: dict[tuple, set[Path]] = {}
    for ident, entry in managers.items():
        if ident == writer:
            continue
        overlap = entry.fields & changed
        if overlap:
            conflicts[ident] = overlap
    if conflicts and not force:
        return conflicts
    for ident, entry in managers.items():
        if ident == writer:
            continue
        entry.fields = entry.fields - conflicts.get(ident, set()) - comparison.removed
    for ident in [i for i, e in managers.items() if not e.fields]:
        del managers[ident]
    return {}


def keep_times(old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """IgnoreManagedFieldsTimestampsTransformer: when a write changes nothing but the times of the
    managedFields entries, the old entries are kept (so the write is a no-op)."""
    if old is None:
        return
    previous = (old.get("metadata") or {}).get("managedFields")
    current = (new.get("metadata") or {}).get("managedFields")
    if previous == current or previous is None or current is None:
        return
    if _comparable(old) != _comparable(new):
        return

    def timeless(entries: list[dict[str, Any]]) -> list[str]:
        return sorted(_canon({k: v for k, v in e.items() if k != "time"}) for e in entries)

    if timeless(previous) == timeless(current):
        new["metadata"]["managedFields"] = copy.deepcopy(previous)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def update(
    resource: Resource,
    live: dict[str, Any] | None,
    new: dict[str, Any],
    manager: str,
    subresource: str = "",
) -> None:
    """Set `new`'s managedFields for an Update by `manager` from `live` (None: a create)."""
    t = typed.root(resource.api_version, resource.kind)
    metadata = new.setdefault("metadata", {})
    if t is None:
        metadata.pop("managedFields", None)
        return
    sent = decode(metadata.get("managedFields"))
    managers = sent if sent and subresource != "status" else None
    if managers is None:
        managers = decode((live or {}).get("metadata", {}).get("managedFields")) or {}
    ignored = _ignored(resource, subresource)
    try:
        comparison = _filter(typed.compare(_body(live), _body(new), t), ignored)
    except typed.SchemaError:
        metadata["managedFields"] = encode(managers)
        return
    writer = ("\0current-operation", "Update", resource.api_version, subresource)
    _take(managers, writer, comparison, force=True)
    current = (comparison.added | comparison.modified) - _STRIP
    current = typed.recursive_difference(current, ignored)
    if current:
        entry = Entry(manager, "Update", resource.api_version, subresource=subresource)
        previous = managers.pop(entry.ident, None)
        entry.fields = current | (previous.fields if previous else set())
        entry.time = _now()
        managers[entry.ident] = entry
    for ident in [i for i, e in managers.items() if not e.fields]:
        del managers[ident]
    if managers:
        metadata["managedFields"] = encode(managers)
    else:
        metadata.pop("managedFields", None)


def apply(
    resource: Resource,
    live: dict[str, Any] | None,
    config: dict[str, Any],
    manager: str,
    force: bool,
    subresource: str = "",
) -> dict[str, Any]:
    """The object that applying `config` as `manager` makes of `live` (None: create), managedFields set.

    Raises the real API's errors: 400 for a configuration the schema does not admit, 409 for conflicts.
    """
    t = typed.root(resource.api_version, resource.kind)
    if t is None:
        raise errors.bad_request(f"no schema for {resource.api_version}, Kind={resource.kind}")
    gvk = f"{resource.api_version}, Kind={resource.kind}"
    if (config.get("metadata") or {}).get("managedFields") is not None:
        raise errors.bad_request("metadata.managedFields must be nil")
    base = _body(live) if live is not None else {}
    managers = decode((live or {}).get("metadata", {}).get("managedFields")) or {}
    ignored = _ignored(resource, subresource)
    try:
        config_set = typed.to_field_set(config, t)
    except typed.SchemaError as exc:
        raise errors.bad_request(
            f"failed to create typed patch object ({gvk}): {_where(config, t, exc)}"
        ) from None
    try:
        merged = typed.merge(base, config, t)
    except typed.SchemaError as exc:
        raise errors.bad_request(f"failed to merge the configuration ({gvk}): {exc}") from None
    me = Entry(manager, "Apply", resource.api_version, subresource=subresource)
    last = managers.get(me.ident)
    applied = typed.recursive_difference(config_set, ignored) - _STRIP
    me.fields = applied
    managers[me.ident] = me
    if last is not None and last.fields:
        merged = _prune(merged, managers, last.fields, t)
    comparison = _filter(typed.compare(base, merged, t), ignored)
    conflicts = _take(managers, me.ident, comparison, force)
    if conflicts:
        raise conflict_error(managers, conflicts)
    if me.fields:
        me.time = _now()
    else:
        managers.pop(me.ident, None)
    metadata = merged.setdefault("metadata", {})
    if managers:
        metadata["managedFields"] = encode(managers)
    else:
        metadata.pop("managedFields", None)
    return merged


def _where(config: dict[str, Any], t: typed.Type, exc: typed.SchemaError) -> str:
    """The path of the first field the schema does not declare, as `.spec.foo: field not declared...`."""
    path = _undeclared(config, t, "")
    return f"{path}: {exc}" if path else str(exc)


def _undeclared(value: Any, t: typed.Type, prefix: str) -> str:
    t = typed._deduce(t, value)
    if t.kind == "struct" and isinstance(value, dict):
        for key, item in value.items():
            if key not in t.fields and t.elem is None:
                return f"{prefix}.{key}"
            found = _undeclared(item, typed.child_type(t, key), f"{prefix}.{key}")
            if found:
                return found
    elif t.kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            found = _undeclared(item, typed.resolve(t.elem), f"{prefix}.{key}")
            if found:
                return found
    elif t.kind == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            found = _undeclared(item, typed.resolve(t.elem), f"{prefix}[{index}]")
            if found:
                return found
    return ""


def _prune(merged: dict[str, Any], managers: Managers, last: set[Path], t: typed.Type) -> dict[str, Any]:
    """Updater.prune: drop what the applier set last time, no longer sets, and nobody else owns."""
    named = typed.ensure_named_fields_are_members
    merged_set = named(typed.to_field_set(merged, t), t)
    last_named = named(last, t)
    pruned = typed.remove(merged, t, last_named)
    owned: set[Path] = set()
    for entry in managers.values():
        owned |= entry.fields
    pruned_set = named(typed.to_field_set(pruned, t), t)
    pruned = typed.remove(merged, t, merged_set - (pruned_set | named(owned, t)))
    pruned_set = named(typed.to_field_set(pruned, t), t)
    return typed.remove(merged, t, (merged_set - pruned_set) & last_named)


def conflict_error(managers: Managers, conflicts: dict[tuple, set[Path]]) -> errors.ApiError:
    """NewConflictError: 409 Conflict, a FieldManagerConflict cause per field."""
    pairs = []
    for ident in sorted(conflicts, key=lambda i: managers[i].printed()):
        for path in sorted(conflicts[ident], key=typed.sort_key):
            pairs.append((managers[ident].printed(), typed.path_string(path)))
    causes = [
        {"reason": "FieldManagerConflict", "message": f"conflict with {who}", "field": path}
        for who, path in pairs
    ]
    if len(pairs) == 1:
        message = f"Apply failed with 1 conflict: conflict with {pairs[0][0]}: {pairs[0][1]}"
    else:
        lines = []
        last = None
        for who, path in pairs:
            if who != last:
                lines.append(f"conflicts with {who}:")
                last = who
            lines.append(f"- {path}")
        message = f"Apply failed with {len(pairs)} conflicts: " + "\n".join(lines)
    return errors.ApiError(409, "Conflict", message, {"causes": causes})
