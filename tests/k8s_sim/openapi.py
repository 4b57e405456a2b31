"""The OpenAPI documents the real API server publishes, built from the schemas of Kubernetes 1.37.

Served (app.py):

- `GET /openapi/v2`: the Swagger 2.0 document (`definitions` and `paths`), as JSON. The real server also
  serves it as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, which client-go's
  discovery client asks for); the simulator has no protobuf encoder and answers 406 NotAcceptable when the
  request accepts nothing but protobuf (what the real server answers for a media type it cannot produce).
  kubectl and helm 1.37/4.x do not need it: they read OpenAPI v3 (below) and only fall back to v2 when
  `/openapi/v3` is missing.
- `GET /openapi/v3`: the discovery document, `{"paths": {"api/v1": {"serverRelativeURL":
  "/openapi/v3/api/v1?hash=<HASH>"}, "apis/apps/v1": ...}}`
  (https://kubernetes.io/docs/concepts/overview/kubernetes-api/#openapi-v3);
- `GET /openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`: one OpenAPI 3.0 document per
  group-version, with its `paths` (one operation per verb, each with `x-kubernetes-action` and
  `x-kubernetes-group-version-kind`, and the query parameters the verb takes) and `components.schemas`
  (the kinds of the group-version and every definition they reference). The `hash` query parameter is the
  document's content hash; an answer to a request carrying it may be cached for good (the real server
  answers with `Cache-Control: public, immutable` and an ETag).

What clients read from them: kubectl's and helm's field-validation check (cli-runtime's
`QueryParamVerifierV3`) looks in the group-version document for the PATCH operation of a kind and its
`fieldValidation` parameter, and validates on the client side only when the server lacks it; `kubectl
explain` reads the schemas; client-side apply reads `x-kubernetes-patch-strategy` and
`x-kubernetes-patch-merge-key` for its strategic merge patches.

The definitions come from the JSON schemas that the `kubernetes-validate` package ships for v1.37 (the
same `_definitions.json` that validation.py reads), turned back into OpenAPI: `$ref`s point at
`#/definitions/` (v2) or `#/components/schemas/` (v3, wrapped in `allOf` when the reference has siblings,
as the real v3 documents write it), `"type": ["string", "null"]` becomes `"type": "string"`, the `enum`s
that the JSON-schema converter adds to `apiVersion` and `kind` are dropped, and IntOrString and Quantity
get their real OpenAPI forms (v2: `string` with format `int-or-string`, and `string`; v3: `oneOf`). The
`x-kubernetes-*` extensions (group-version-kind, list-type, list-map-keys, map-type, patch-strategy,
patch-merge-key, unions) are kept as they are: server-side apply and strategic merge patch in this
simulator read them from here too (`schema(...)`).

Simplified: the paths hold only the simulator's resources and verbs (no watch paths, no `/proxy`), and
parameters are written inline rather than as `#/components/parameters` references.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

import importlib_resources

from tests.k8s_sim.resources import KUBERNETES_VERSION, RESOURCES, Resource

INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
V2_MIME_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"

_SPECIAL = {
    INT_OR_STRING: {
        "description": (
            "IntOrString is a type that can hold an int32 or a string.  When used in JSON or YAML "
            "marshalling and unmarshalling, it produces or consumes the inner type.  This allows you to "
            "have, for example, a JSON field that can accept a name or number."
        ),
        "v2": {"type": "string", "format": "int-or-string"},
        "v3": {"oneOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
    },
    QUANTITY: {
        "description": (
            "Quantity is a fixed-point representation of a number. It provides convenient "
            "marshaling/unmarshaling in JSON and YAML, in addition to String() and AsInt64() accessors."
        ),
        "v2": {"type": "string"},
        "v3": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    },
}


@functools.cache
def definitions() -> dict[str, Any]:
    """The v1.37 definitions (`$defs`) as kubernetes-validate ships them (JSON-schema form)."""
    ref = importlib_resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local/_definitions.json"
    )
    return json.loads(ref.read_text())["$defs"]


def _convert(node: Any, ref_prefix: str, v3: bool, top_kind: bool = False) -> Any:
    if isinstance(node, list):
        return [_convert(item, ref_prefix, v3) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            out[key] = ref_prefix + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            out[key] = kinds[0] if len(kinds) == 1 else kinds
        elif key == "properties" and isinstance(value, dict):
            props = {}
            for name, prop in value.items():
                prop = _convert(prop, ref_prefix, v3)
                if top_kind and name in ("apiVersion", "kind") and isinstance(prop, dict):
                    prop.pop("enum", None)  # added by the JSON-schema converter, not in the real document
                props[name] = prop
            out[key] = props
        elif key.startswith("x-kubernetes-") or key in ("description", "required", "format", "enum"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _convert(value, ref_prefix, v3)
    if v3 and "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out["allOf"] = [{"$ref": ref}]
    return out


def _definition(name: str, v3: bool) -> dict[str, Any]:
    if name in _SPECIAL:
        special = _SPECIAL[name]
        return {"description": special["description"], **copy.deepcopy(special["v3" if v3 else "v2"])}
    raw = definitions()[name]
    prefix = "#/components/schemas/" if v3 else "#/definitions/"
    return _convert(raw, prefix, v3, top_kind="x-kubernetes-group-version-kind" in raw)


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _refs(item, found)


def _closure(names: list[str]) -> list[str]:
    """`names` and every definition they reference, transitively."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions():
            continue
        seen.add(name)
        found: set[str] = set()
        _refs(definitions()[name], found)
        todo.extend(found - seen)
    return sorted(seen)


@functools.cache
def definition_name(api_version: str, kind: str) -> str | None:
    """The definition of a kind (`io.k8s.api.apps.v1.Deployment` for apps/v1 Deployment)."""
    group, _, version = api_version.rpartition("/")
    for name, raw in definitions().items():
        for gvk in raw.get("x-kubernetes-group-version-kind") or []:
            if (gvk.get("group", ""), gvk.get("version"), gvk.get("kind")) == (group, version, kind):
                return name
    return None


# -- paths ----------------------------------------------------------------------------------------------

_PARAMETERS = {
    "dryRun": (
        "string",
        "When present, indicates that modifications should not be persisted. An invalid or unrecognized "
        "dryRun directive will result in an error response and no further processing of the request. "
        "Valid values are: - All: all dry run stages will be processed",
    ),
    "fieldManager": (
        "string",
        "fieldManager is a name associated with the actor or entity that is making these changes. The "
        "value must be less than or 128 characters long, and only contain printable characters, as defined "
        "by https://golang.org/pkg/unicode/#IsPrint.",
    ),
    "fieldValidation": (
        "string",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) "
        "containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict",
    ),
    "force": (
        "boolean",
        'Force is going to "force" Apply requests. It means user will re-acquire conflicting fields owned '
        "by other people. Force flag must be unset for non-apply patch requests.",
    ),
    "pretty": ("string", "If 'true', then the output is pretty printed."),
    "allowWatchBookmarks": ("boolean", 'allowWatchBookmarks requests watch events with type "BOOKMARK".'),
    "continue": ("string", "The continue option should be set when retrieving more results from the server."),
    "fieldSelector": ("string", "A selector to restrict the list of returned objects by their fields."),
    "labelSelector": ("string", "A selector to restrict the list of returned objects by their labels."),
    "limit": ("integer", "limit is a maximum number of responses to return for a list call."),
    "resourceVersion": (
        "string",
        "resourceVersion sets a constraint on what resource versions a request may be served from.",
    ),
    "resourceVersionMatch": (
        "string",
        "resourceVersionMatch determines how resourceVersion is applied to list calls.",
    ),
    "sendInitialEvents": ("boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
    "timeoutSeconds": ("integer", "Timeout for the list/watch call."),
    "watch": ("boolean", "Watch for changes to the described resources and return them as a stream."),
    "gracePeriodSeconds": ("integer", "The duration in seconds before the object should be deleted."),
    "ignoreStoreReadErrorWithClusterBreakingPotential": (
        "boolean",
        "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion "
        "flow fails with a corrupt object error.",
    ),
    "orphanDependents": ("boolean", "Deprecated: please use the PropagationPolicy."),
    "propagationPolicy": ("string", "Whether and how garbage collection will be performed."),
}
_LIST = [
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
]
_WRITE = ["dryRun", "fieldManager", "fieldValidation"]
_DELETE = [
    "dryRun",
    "gracePeriodSeconds",
    "ignoreStoreReadErrorWithClusterBreakingPotential",
    "orphanDependents",
    "propagationPolicy",
]
_PATCH_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
_MEDIA = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")


def _param(name: str, v3: bool, where: str = "query") -> dict[str, Any]:
    kind, description = _PARAMETERS[name]
    if v3:
        return {
            "name": name,
            "in": where,
            "description": description,
            "schema": {"type": kind, "uniqueItems": True},
        }
    return {"uniqueItems": True, "type": kind, "description": description, "name": name, "in": where}


def _path_param(name: str, description: str, v3: bool) -> dict[str, Any]:
    if v3:
        return {
            "name": name,
            "in": "path",
            "description": description,
            "required": True,
            "schema": {"type": "string", "uniqueItems": True},
        }
    return {
        "uniqueItems": True,
        "type": "string",
        "description": description,
        "name": name,
        "in": "path",
        "required": True,
    }


def _group_word(group: str) -> str:
    """The group as operation ids spell it: "" -> Core, rbac.authorization.k8s.io -> RbacAuthorization."""
    if not group:
        return "Core"
    return "".join(part[:1].upper() + part[1:] for part in group.removesuffix(".k8s.io").split("."))


def _operation(
    resource: Resource,
    verb: str,
    action: str,
    description: str,
    params: list[str],
    v3: bool,
    body: str | None,
    response: str,
    all_namespaces: bool = False,
) -> dict[str, Any]:
    prefix = "#/components/schemas/" if v3 else "#/definitions/"
    scope = "Namespaced" if resource.namespaced and not all_namespaces else ""
    suffix = "ForAllNamespaces" if all_namespaces else ""
    kind = resource.kind + ("List" if action in ("list",) else "")
    tag = f"{_group_word(resource.group)[:1].lower()}{_group_word(resource.group)[1:]}_{resource.version}"
    operation: dict[str, Any] = {
        "tags": [tag],
        "description": description,
        "operationId": (
            f"{verb}{_group_word(resource.group)}{resource.version.capitalize()}{scope}{kind}{suffix}"
        ),
        "parameters": [_param(p, v3) for p in params],
        "responses": {},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": resource.group,
            "version": resource.version,
            "kind": resource.kind,
        },
    }
    codes = {"get": ["200"], "put": ["200", "201"], "post": ["200", "201", "202"], "patch": ["200", "201"]}
    for code in codes.get(verb if verb in codes else "get", ["200"]):
        if v3:
            operation["responses"][code] = {
                "description": {"200": "OK", "201": "Created", "202": "Accepted"}[code],
                "content": {m: {"schema": {"$ref": prefix + response}} for m in _MEDIA},
            }
        else:
            operation["responses"][code] = {
                "description": {"200": "OK", "201": "Created", "202": "Accepted"}[code],
                "schema": {"$ref": prefix + response},
            }
    operation["responses"]["401"] = {"description": "Unauthorized"}
    if body is not None:
        types = _PATCH_TYPES if body.endswith(".Patch") else ("*/*",)
        if v3:
            operation["requestBody"] = {
                "content": {t: {"schema": {"$ref": prefix + body}} for t in types},
                "required": True,
            }
        else:
            operation["parameters"].insert(
                0, {"name": "body", "in": "body", "required": True, "schema": {"$ref": prefix + body}}
            )
            if body.endswith(".Patch"):
                operation["consumes"] = list(types)
    if not v3:
        operation["consumes"] = operation.get("consumes", ["*/*"])
        operation["produces"] = list(_MEDIA)
        operation["schemes"] = ["https"]
    return operation


def _resource_paths(resource: Resource, v3: bool) -> dict[str, Any]:
    name = definition_name(resource.api_version, resource.kind)
    if name is None:
        return {}
    list_name = definition_name(resource.api_version, f"{resource.kind}List") or name
    base = "/api/v1" if not resource.group else f"/apis/{resource.group}/{resource.version}"
    collection = (
        f"{base}/namespaces/{{namespace}}/{resource.plural}"
        if resource.namespaced
        else f"{base}/{resource.plural}"
    )
    status = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
    patch = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
    delete_options = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"
    common = [_param("pretty", v3)]
    if resource.namespaced:
        common.insert(
            0, _path_param("namespace", "object name and auth scope, such as for teams and projects", v3)
        )
    kind = resource.kind
    paths: dict[str, Any] = {
        collection: {
            "get": _operation(
                resource, "list", "list", f"list or watch objects of kind {kind}", _LIST, v3, None, list_name
            ),
            "post": _operation(resource, "create", "post", f"create a {kind}", _WRITE, v3, name, name),
            "delete": _operation(
                resource,
                "deletecollection",
                "deletecollection",
                f"delete collection of {kind}",
                _DELETE + _LIST,
                v3,
                delete_options,
                status,
            ),
            "parameters": common,
        },
        f"{collection}/{{name}}": {
            "get": _operation(resource, "read", "get", f"read the specified {kind}", [], v3, None, name),
            "put": _operation(
                resource, "replace", "put", f"replace the specified {kind}", _WRITE, v3, name, name
            ),
            "delete": _operation(
                resource, "delete", "delete", f"delete a {kind}", _DELETE, v3, delete_options, status
            ),
            "patch": _operation(
                resource,
                "patch",
                "patch",
                f"partially update the specified {kind}",
                [*_WRITE, "force"],
                v3,
                patch,
                name,
            ),
            "parameters": [_path_param("name", f"name of the {kind}", v3), *common],
        },
    }
    for key in ("get", "put", "delete", "patch"):
        paths[f"{collection}/{{name}}"][key]["operationId"] = paths[f"{collection}/{{name}}"][key][
            "operationId"
        ].replace(f"{kind}List", kind)
    if resource.status:
        paths[f"{collection}/{{name}}/status"] = {
            "get": _operation(
                resource, "read", "get", f"read status of the specified {kind}", [], v3, None, name
            ),
            "put": _operation(
                resource, "replace", "put", f"replace status of the specified {kind}", _WRITE, v3, name, name
            ),
            "patch": _operation(
                resource,
                "patch",
                "patch",
                f"partially update status of the specified {kind}",
                [*_WRITE, "force"],
                v3,
                patch,
                name,
            ),
            "parameters": [_path_param("name", f"name of the {kind}", v3), *common],
        }
        for op in ("get", "put", "patch"):
            operation = paths[f"{collection}/{{name}}/status"][op]
            operation["operationId"] += "Status"
    if resource.namespaced:
        paths[f"{base}/{resource.plural}"] = {
            "get": _operation(
                resource,
                "list",
                "list",
                f"list or watch objects of kind {kind}",
                _LIST,
                v3,
                None,
                list_name,
                all_namespaces=True,
            ),
            "parameters": [_param("pretty", v3)],
        }
    return paths


def _group_versions() -> list[tuple[str, str]]:
    return list(dict.fromkeys((r.group, r.version) for r in RESOURCES))


def _gv_path(group: str, version: str) -> str:
    return "api/v1" if not group else f"apis/{group}/{version}"


def _schemas(members: list[Resource], v3: bool) -> dict[str, Any]:
    names = []
    for resource in members:
        for kind in (resource.kind, f"{resource.kind}List"):
            name = definition_name(resource.api_version, kind)
            if name:
                names.append(name)
    names += [
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
        "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList",
    ]
    return {name: _definition(name, v3) for name in _closure(names)}


@functools.cache
def _v3_document(group: str, version: str) -> bytes:
    members = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    paths: dict[str, Any] = {}
    for resource in members:
        paths.update(_resource_paths(resource, v3=True))
    document = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": f"v{KUBERNETES_VERSION}"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _schemas(members, v3=True),
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                }
            },
        },
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _hash(body: bytes) -> str:
    """The real server's hash: the SHA-512 of the document, upper-case hex."""
    return hashlib.sha512(body).hexdigest().upper()


def v3_root() -> dict[str, Any]:
    return {
        "paths": {
            _gv_path(group, version): {
                "serverRelativeURL": (
                    f"/openapi/v3/{_gv_path(group, version)}?hash={_hash(_v3_document(group, version))}"
                )
            }
            for group, version in _group_versions()
        }
    }


def v3_document(path: str) -> tuple[bytes, str] | None:
    """(the document, its hash) for "api/v1" or "apis/<group>/<version>"; None if not served."""
    parts = path.strip("/").split("/")
    if parts == ["api", "v1"]:
        group, version = "", "v1"
    elif len(parts) == 3 and parts[0] == "apis":
        group, version = parts[1], parts[2]
    else:
        return None
    if (group, version) not in _group_versions():
        return None
    body = _v3_document(group, version)
    return body, _hash(body)


@functools.cache
def v2_document() -> bytes:
    paths: dict[str, Any] = {}
    for resource in RESOURCES:
        paths.update(_resource_paths(resource, v3=False))
    document = {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": f"v{KUBERNETES_VERSION}"},
        "paths": dict(sorted(paths.items())),
        "definitions": _schemas(list(RESOURCES), v3=False),
        "securityDefinitions": {
            "BearerToken": {
                "description": "Bearer Token authentication",
                "type": "apiKey",
                "name": "authorization",
                "in": "header",
            }
        },
        "security": [{"BearerToken": []}],
    }
    return json.dumps(document, separators=(",", ":")).encode()


# -- the schema as server-side apply and strategic merge patch read it ---------------------------------


def schema(name: str) -> dict[str, Any]:
    """A definition in the v2 form (with `$ref`s to `#/definitions/`), for the merge code (typed.py)."""
    return _schema_v2(name)


@functools.cache
def _schema_v2(name: str) -> dict[str, Any]:
    return _definition(name, v3=False)
