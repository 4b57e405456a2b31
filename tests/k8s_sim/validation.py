"""Validation of objects as the real API server validates them on create and update.

Two layers, as in the real server:

1. Decoding against the real OpenAPI schema of the kind (the strict JSON schemas that the
   `kubernetes-validate` package ships, loaded the way `kubernetes_validate.utils.validate` loads them):
   - an unknown field is handled per the request's `fieldValidation` (Strict: 400 BadRequest
     `strict decoding error: unknown field "spec.foo"`; Warn: dropped, with a `Warning` header; Ignore:
     dropped). The real server's default is Warn; the simulator's default is Strict (configurable on the
     command line), so that a test never passes with a field the real server would silently drop;
   - a value of the wrong JSON type is a decoding error: 400 BadRequest (`Pod in version "v1" cannot be
     handled as a Pod: ...`; the real message names Go types, ours names JSON types);
   - a missing required field is 422 Invalid with a FieldValueRequired cause naming the field.
2. A few of the real server's own validation rules, which the schemas do not carry (marked "real API
   rule" below): metadata.name present and a DNS-1123 subdomain (label for Namespace, Service), Pod
   containers present with a name and an image, Pod restartPolicy, a Job's pod template restartPolicy
   OnFailure or Never, and resource requirements (ValidateResourceRequirements: a request of an extended
   resource such as `nvidia.com/gpu` needs a limit and must equal it, and must be a whole number; a request
   may not exceed its limit:
   https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/#extended-resources).
   Everything else the real server checks (immutability of Pod specs, selector matching templates, ...) is
   not implemented yet.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import importlib_resources
import jsonschema
from referencing import Registry
from referencing import Resource as SchemaResource

from tests.k8s_sim import errors, quantity
from tests.k8s_sim.resources import KUBERNETES_VERSION, Resource
from thinkube_pipelines.kubernetes.validation import field_path  # the API's notation, as kubectl prints it

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
FIELD_VALIDATION = ("Strict", "Warn", "Ignore")


def _schema_dir() -> str:
    return f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"


@functools.cache
def _load(filename: str) -> Any:
    ref = importlib_resources.files("kubernetes_validate").joinpath(f"{_schema_dir()}/{filename}")
    return json.loads(ref.read_text())


@functools.cache
def validator_for(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    """The strict schema validator of a kind, as kubernetes_validate builds it (None: no schema shipped)."""
    # rbac.authorization.k8s.io/v1 -> rbac-v1; v1 -> v1 (kubernetes_validate's file naming)
    short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = _load(f"{kind.lower()}-{short}.json")
    except FileNotFoundError:
        return None
    registry = SchemaResource.from_contents(schema) @ Registry()
    registry = SchemaResource.from_contents(_load("_definitions.json")) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _drop(obj: Any, path: list[Any], name: str) -> None:
    for part in path:
        obj = obj[part]
    obj.pop(name, None)


def validate(resource: Resource, obj: dict[str, Any], field_validation: str) -> list[str]:
    """Validate `obj` (a create or an update body) in place; return the warnings to send.

    Raises `errors.ApiError` (400 or 422) as the real server would. Unknown fields are removed from `obj`
    under Warn and Ignore.
    """
    name = (obj.get("metadata") or {}).get("name") or ""
    warnings: list[str] = []
    validator = validator_for(resource.api_version, resource.kind)
    causes: list[dict[str, str]] = []
    unknown: list[tuple[list[Any], str]] = []
    if validator is not None:
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            path = list(error.absolute_path)
            if error.validator == "additionalProperties":
                known = set(error.schema.get("properties", {}))
                for extra in sorted(set(error.instance) - known):
                    unknown.append((path, extra))
            elif error.validator == "required":
                missing = error.message.split("'")[1] if "'" in error.message else ""
                causes.append(
                    errors.cause("FieldValueRequired", field_path([*path, missing]), "Required value")
                )
            elif error.validator == "type":
                raise errors.bad_request(
                    f'{resource.kind} in version "{resource.version}" cannot be handled as a '
                    f"{resource.kind}: "
                    f"json: cannot unmarshal {_json_type(error.instance)} into Go struct field "
                    f"{field_path(path)} of type {error.validator_value}"
                )
            else:
                causes.append(
                    errors.cause(
                        "FieldValueInvalid",
                        field_path(path),
                        f"Invalid value: {json.dumps(error.instance)}: {error.message}",
                    )
                )
    if unknown:
        fields = [field_path([*path, extra]) for path, extra in unknown]
        if field_validation == "Strict":
            raise errors.bad_request(
                "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in fields)
            )
        for path, extra in unknown:
            _drop(obj, path, extra)
        if field_validation == "Warn":
            warnings += [f'unknown field "{f}"' for f in fields]
    causes += _rules(resource, obj, name)
    if causes:
        raise errors.invalid(resource.kind, resource.group, name, causes)
    return warnings


def _rules(resource: Resource, obj: dict[str, Any], name: str) -> list[dict[str, str]]:
    """The real API rules this simulator checks beyond the schema (see the module docstring)."""
    causes = []
    if not name:
        causes.append(
            errors.cause(
                "FieldValueRequired", "metadata.name", "Required value: name or generateName is required"
            )
        )
    elif resource.kind in ("Namespace", "Service"):
        if not DNS1123_LABEL.match(name) or len(name) > 63:
            causes.append(
                errors.cause(
                    "FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {_LABEL_MESSAGE}'
                )
            )
    elif not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(
            errors.cause(
                "FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {_SUBDOMAIN_MESSAGE}'
            )
        )
    if resource.kind == "Pod":
        causes += _pod_spec_rules(obj.get("spec") or {}, "spec", ("Always", "OnFailure", "Never"))
    elif resource.kind == "Job":
        template_spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        causes += _pod_spec_rules(
            template_spec, "spec.template.spec", ("OnFailure", "Never"), required_policy=True
        )
    return causes


def _overcommit_allowed(name: str) -> bool:
    """helper.IsOvercommitAllowed: native resources (no domain, or kubernetes.io) except hugepages."""
    domain = name.split("/", 1)[0] if "/" in name else ""
    native = not domain or domain == "kubernetes.io" or domain.endswith(".kubernetes.io")
    return native and not name.startswith("hugepages-")


def _resource_rules(resources: dict[str, Any], path: str) -> list[dict[str, str]]:
    """ValidateResourceRequirements (real API rule)."""
    causes: list[dict[str, str]] = []
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    if not isinstance(requests, dict) or not isinstance(limits, dict):
        return causes
    for kind, values in (("limits", limits), ("requests", requests)):
        for name, value in values.items():
            try:
                amount = quantity.parse(value)
            except ValueError as exc:
                causes.append(
                    errors.cause(
                        "FieldValueInvalid",
                        f"{path}.{kind}[{name}]",
                        f"Invalid value: {json.dumps(value)}: {exc}",
                    )
                )
                continue
            if not _overcommit_allowed(name) and "/" in name and amount.denominator != 1:
                causes.append(
                    errors.cause(
                        "FieldValueInvalid",
                        f"{path}.{kind}[{name}]",
                        f'Invalid value: "{value}": must be an integer',
                    )
                )
    for name, value in requests.items():
        try:
            amount = quantity.parse(value)
        except ValueError:
            continue
        if name in limits:
            try:
                limit = quantity.parse(limits[name])
            except ValueError:
                continue
            if amount != limit and not _overcommit_allowed(name):
                causes.append(
                    errors.cause(
                        "FieldValueInvalid",
                        f"{path}.requests",
                        f'Invalid value: "{value}": must be equal to {name} limit of {limits[name]}',
                    )
                )
            elif amount > limit:
                causes.append(
                    errors.cause(
                        "FieldValueInvalid",
                        f"{path}.requests",
                        f'Invalid value: "{value}": must be less than or equal to {name} limit of '
                        f"{limits[name]}",
                    )
                )
        elif not _overcommit_allowed(name):
            causes.append(
                errors.cause(
                    "FieldValueRequired",
                    f"{path}.limits",
                    "Required value: Limit must be set for non overcommitable resources",
                )
            )
    return causes


def _pod_spec_rules(
    spec: dict[str, Any], prefix: str, policies: tuple[str, ...], required_policy: bool = False
) -> list[dict[str, str]]:
    causes = []
    containers = spec.get("containers") or []
    if not containers and "containers" in spec:
        causes.append(errors.cause("FieldValueRequired", f"{prefix}.containers", "Required value"))
    for index, container in enumerate(containers):
        if isinstance(container, dict) and not container.get("image"):
            causes.append(
                errors.cause("FieldValueRequired", f"{prefix}.containers[{index}].image", "Required value")
            )
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            if isinstance(container, dict):
                causes += _resource_rules(
                    container.get("resources") or {}, f"{prefix}.{key}[{index}].resources"
                )
    policy = spec.get("restartPolicy")
    supported = ", ".join(f'"{p}"' for p in policies)
    if policy is None and required_policy:
        policy = "Always"  # the pod template's default, which a Job refuses (as the real API answers)
    if policy is not None and policy not in policies:
        causes.append(
            errors.cause(
                "FieldValueNotSupported",
                f"{prefix}.restartPolicy",
                f'Unsupported value: "{policy}": supported values: {supported}',
            )
        )
    return causes
