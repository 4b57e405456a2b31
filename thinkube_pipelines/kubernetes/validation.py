"""Kubernetes objects checked against the schemas kubernetes-validate ships, each schema loaded once.

`validate(obj, version, strict=True)` answers as `kubernetes_validate.validate` does (the same schema
files, the same choice of schema version, the same first error, the same exception classes), but
`kubernetes_validate.validate` reads and parses the whole `_definitions.json` of the version (1.3-1.8 MB)
and builds a new validator on every call. Here each version's definitions are parsed once per process and
each kind's validator is built once (`functools.cache`), so checking a handful of manifests against
two versions costs two parses, not one per manifest and version.

`strict=True` is kubernetes-validate's `--strict`: the `-strict` schemas, where every object refuses a
property its schema does not name (`additionalProperties: false`). A failure raises `ManifestError`, a
`kubernetes_validate.ValidationError` (so `except kubernetes_validate.ValidationError` still catches it)
whose `.message`, `.path`, `.validator` ... are jsonschema's, as kubernetes-validate's are, and whose text
names the object, the Kubernetes version and the field path:
`ClusterRole "x" (Kubernetes 1.30): at rules[0].verbs: 'get' is not of type 'array'`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import importlib_resources
import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import (
    SchemaNotFoundError,
    VersionNotSupportedError,
    all_versions,
    latest_version,
    major_minor,
)
from referencing import Registry, Resource

__all__ = [
    "ManifestError",
    "SchemaNotFoundError",
    "VersionNotSupportedError",
    "clear_cache",
    "definitions",
    "field_path",
    "schema_version",
    "validate",
    "validator_for",
]

SCHEMA_ROOT = "kubernetes-json-schema"
DEFINITIONS_FILE = "_definitions.json"


class ManifestError(kubernetes_validate.ValidationError):
    """An object that does not match its kind's schema; `str()` names the object, version and field."""

    def __init__(self, caught: jsonschema.ValidationError, version: str, obj: Mapping[str, Any]):
        super().__init__(caught, version)  # copies jsonschema's attributes, as kubernetes-validate does
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        self.kind = str(obj.get("kind"))
        self.name = metadata.get("name")  # type: ignore[union-attr]
        self.field = field_path(self.absolute_path)

    def describe(self) -> str:
        """The object: its kind and name, e.g. `ClusterRole "x"`."""
        return f'{self.kind} "{self.name}"' if self.name is not None else self.kind

    def __str__(self) -> str:
        return f"{self.describe()} (Kubernetes {self.version}): at {self.field or '(object)'}: {self.message}"


def field_path(path: Iterable[Any]) -> str:
    """A field path as Kubernetes writes it: spec.containers[0].image."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


@functools.cache
def _versions() -> tuple[str, ...]:
    return tuple(all_versions())


@functools.cache
def schema_version(desired: str) -> str:
    """The schema version kubernetes-validate uses for `desired` (the newest it ships that is not newer),
    chosen exactly as `kubernetes_validate.validate` chooses it; VersionNotSupportedError past its newest."""
    if desired.startswith("v"):
        desired = desired[1:]
    if major_minor(desired) > latest_version():
        raise VersionNotSupportedError(version=major_minor(desired))
    return [v for v in _versions() if major_minor(v) <= major_minor(desired)][-1]


def _schema_dir(version: str, strict: bool) -> str:
    return f"v{version}-local" + ("-strict" if strict else "")


def _read(schema_dir: str, filename: str) -> Any:
    ref = importlib_resources.files("kubernetes_validate").joinpath(f"{SCHEMA_ROOT}/{schema_dir}/{filename}")
    with ref.open("rb") as handle:  # FileNotFoundError when the package has no such schema
        return json.load(handle)


@functools.cache
def _definitions_resource(schema_dir: str) -> Resource:
    return Resource.from_contents(_read(schema_dir, DEFINITIONS_FILE))


def definitions(version: str, strict: bool = True) -> Mapping[str, Any]:
    """The parsed `_definitions.json` of `version` (kubernetes-validate's; `$defs` maps a definition's
    name to its JSON schema). Shared: do not modify it."""
    return _definitions_resource(_schema_dir(schema_version(version), strict)).contents


def _short_api_version(api_version: str) -> str:
    # rbac.authorization.k8s.io/v1 -> rbac-v1; v1 -> v1 (kubernetes-validate's file naming)
    return re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)


@functools.cache
def _validator(schema_dir: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    schema = _read(schema_dir, f"{kind.lower()}-{_short_api_version(api_version)}.json")
    registry = Resource.from_contents(schema) @ Registry()
    registry = _definitions_resource(schema_dir) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validator_for(
    api_version: str, kind: str, version: str, strict: bool = True
) -> jsonschema.Draft202012Validator:
    """The (cached) schema validator of `kind` in `api_version` for Kubernetes `version`;
    SchemaNotFoundError when kubernetes-validate ships no schema for it."""
    found = schema_version(version)
    try:
        return _validator(_schema_dir(found, strict), kind, api_version)
    except FileNotFoundError:
        raise SchemaNotFoundError(
            version=major_minor(version.removeprefix("v")), kind=kind, api_version=api_version
        ) from None


def clear_cache() -> None:
    """Forget every loaded schema and built validator (what a new process starts with)."""
    for cached in (_versions, schema_version, _definitions_resource, _validator):
        cached.cache_clear()


def validate(obj: Mapping[str, Any] | Any, version: str, strict: bool = True) -> str:
    """Check `obj` (a dict, or an object with `to_dict()`) against its kind's schema for Kubernetes
    `version`; the schema version used (major.minor), as `kubernetes_validate.validate` returns it.

    Raises ManifestError (a kubernetes_validate.ValidationError) at the first error, SchemaNotFoundError
    for a kind without a schema, VersionNotSupportedError for a version newer than the schemas."""
    if isinstance(obj, Mapping):
        obj = obj if isinstance(obj, dict) else dict(obj)  # jsonschema's "object" is a dict
    else:
        try:
            obj = obj.to_dict()
        except AttributeError:
            raise TypeError("obj must be a mapping or an object with a to_dict() method") from None
    validator = validator_for(obj["apiVersion"], obj["kind"], version, strict)
    found = major_minor(schema_version(version))
    for error in validator.iter_errors(obj):
        raise ManifestError(error, found, obj)
    return found
