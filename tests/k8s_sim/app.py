"""The HTTP face of the simulator: the real API's URL layout, verbs, query parameters and answers.

Served: the control endpoints `/_sim/...` (control.py: faults, scripts, hooks, node loss, evictions),
discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`, `/version`,
`/healthz`, `/readyz`, `/livez`), the OpenAPI documents (`/openapi/v2`, `/openapi/v3`,
`/openapi/v3/<group-version>`: openapi.py); for every resource in `resources.RESOURCES`: create (POST, 201),
get, list (labelSelector, fieldSelector, limit/continue), replace (PUT), patch (JSON patch, merge patch,
strategic merge patch by the schema's patch merge keys: patch.py; server-side apply,
`application/apply-patch+yaml` with `fieldManager` and `force`, creating the object when it is missing
(201): managed.py), delete (DELETE, with preconditions), deletecollection (DELETE on the collection, with
the list's selectors), and watch (`?watch=true`: one JSON event per line, ADDED/MODIFIED/DELETED/BOOKMARK/
ERROR, from a resourceVersion, with `timeoutSeconds` and `allowWatchBookmarks`; `sendInitialEvents=true`
streams the current objects and ends them with the `k8s.io/initial-events-end` bookmark, as client-go's
reflectors ask with the WatchListClient feature, on in client-go 1.37), plus `<resource>/status` (get,
update, patch), `pods/log` (container, follow,
tailLines, timestamps, sinceSeconds, limitBytes, previous: served as text/plain from the kubelet stand-in's
record, with the kubelet's errors for containers that have not started) and `pods/eviction` (the Eviction
API: 429 when a PodDisruptionBudget allows no disruption, else condition DisruptionTarget reason
EvictionByEvictionAPI and a graceful delete). DELETE honours DeleteOptions (body or query):
propagationPolicy (default Background, but Orphan for batch/v1 Jobs with the real API's warning),
orphanDependents, gracePeriodSeconds, preconditions. `dryRun=All` is honoured. Every write keeps
`metadata.managedFields` (managed.py): the field manager is `fieldManager` or the User-Agent's product.
Bodies are JSON, YAML, or protobuf for the kinds typed clients send that way (protobuf.py); answers are
JSON (the clients accept it). Faults injected through `/_sim/faults` (faults.py) apply before a request is
served (and, for rules that say so, to the controllers' pod creates).

Status codes and Status bodies follow https://kubernetes.io/docs/reference/using-api/api-concepts/ (see
`errors.py`).

A get or list asked for as a Table (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, what `kubectl
get` asks for) is answered with the real printers' columns (tables.py).

`deployments/scale`, `replicasets/scale` and `statefulsets/scale` serve the autoscaling/v1 Scale (get,
update, patch), what `kubectl scale` uses.

Not implemented yet: pods/binding, pods/exec, Tables in watches, protobuf answers,
authentication/authorization (any client is admitted), resourceVersionMatch on lists.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.k8s_sim import control, errors, managed, openapi, protobuf, resources, tables
from tests.k8s_sim.faults import Faults
from tests.k8s_sim.patch import json_patch, merge_patch, strategic_merge_patch
from tests.k8s_sim.resources import Resource
from tests.k8s_sim.runtime import Runtime, set_condition
from tests.k8s_sim.selectors import field_selector, label_selector
from tests.k8s_sim.store import Event, Store
from tests.k8s_sim.validation import FIELD_VALIDATION

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where PyYAML has it
BODY_MEDIA_TYPES = ("application/json", "application/yaml")
PATCH_MEDIA_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)
JOB_DELETE_WARNING = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove "
    "them or set propagationPolicy=Orphan to suppress this warning"
)


def _json(body: Any, code: int = 200, warnings: list[str] | None = None) -> JSONResponse:
    headers = {}
    if warnings:
        # The real server's Warning header: one 299 entry per warning (RFC 7234 format).
        headers["Warning"] = ", ".join(f'299 - "{w}"'.replace("\\", "\\\\") for w in warnings)
    return JSONResponse(body, status_code=code, headers=headers)


def _error(error: errors.ApiError) -> JSONResponse:
    return JSONResponse(error.status(), status_code=error.code, headers=error.headers)


class Simulator:
    def __init__(
        self, store: Store | None = None, bookmark_interval_s: float = 60.0, runtime: Runtime | None = None
    ) -> None:
        self.store = store or Store()
        self.bookmark_interval_s = bookmark_interval_s
        self.runtime = runtime
        self.faults = Faults()
        if runtime is not None:
            runtime.faults = self.faults
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette):
        if self.runtime is not None:
            self.runtime.start()
        try:
            yield
        finally:
            if self.runtime is not None:
                await self.runtime.stop()

    async def handle(self, request: Request) -> Response:
        try:
            path = request.url.path
            if path == "/_sim" or path.startswith("/_sim/"):
                return await control.handle(self, request)
            if path not in ("/healthz", "/readyz", "/livez"):
                rule = self.faults.match(path, request.method, self._verb(request))
                if rule is not None:
                    if rule.delay_s:
                        await asyncio.sleep(rule.delay_s)
                    error = rule.error()
                    if error is not None:
                        raise error
            return await self._handle(request)
        except errors.ApiError as error:
            return _error(error)

    def _verb(self, request: Request) -> str:
        """The Kubernetes verb of a request (for fault rules)."""
        method = request.method
        if method != "GET":
            return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
        if _bool(request.query_params.get("watch")):
            return "watch"
        parts = [p for p in request.url.path.split("/") if p]
        try:
            if parts[:2] == ["api", "v1"]:
                _, _, name, _ = self._route("", "v1", parts[2:])
            elif len(parts) >= 4 and parts[0] == "apis":
                _, _, name, _ = self._route(parts[1], parts[2], parts[3:])
            else:
                return "get"
        except (errors.ApiError, IndexError):
            return "get"
        return "get" if name else "list"

    async def _handle(self, request: Request) -> Response:
        parts = [p for p in request.url.path.split("/") if p]
        if request.method == "GET":
            if parts in (["healthz"], ["readyz"], ["livez"]):
                return Response("ok", media_type="text/plain")
            if parts == ["version"]:
                return _json(resources.version_info())
            if parts and parts[0] == "openapi":
                return self._openapi(request, parts[1:])
            if parts == ["api"]:
                return _json(resources.api_versions(f"{request.url.hostname}:{request.url.port}"))
            if parts == ["apis"]:
                return _json(resources.api_group_list())
            if parts == ["api", "v1"]:
                return _json(resources.api_resource_list("", "v1"))
            if len(parts) == 2 and parts[0] == "apis":
                group = resources.api_group(parts[1])
                if group is None:
                    raise errors.page_not_found()
                return _json(group)
            if len(parts) == 3 and parts[0] == "apis":
                listed = resources.api_resource_list(parts[1], parts[2])
                if listed is None:
                    raise errors.page_not_found()
                return _json(listed)
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.page_not_found()
        resource, namespace, name, sub = self._route(group, version, rest)
        return await self._serve(request, resource, namespace, name, sub)

    def _openapi(self, request: Request, parts: list[str]) -> Response:
        """/openapi/v2, /openapi/v3 and /openapi/v3/<group-version> (openapi.py)."""
        if not _accepts_json(request.headers.get("accept")):
            # No protobuf encoder here: 406, as the real server answers a media type it cannot produce.
            return Response(b"", status_code=406)
        if parts == ["v2"]:
            return Response(openapi.v2_document(), media_type="application/json")
        if parts == ["v3"]:
            return _json(openapi.v3_root())
        if parts[:1] == ["v3"] and len(parts) > 1:
            found = openapi.v3_document("/".join(parts[1:]))
            if found is not None:
                body, digest = found
                headers = {"Etag": f'"{digest}"', "Vary": "Accept"}
                if request.query_params.get("hash") == digest:
                    headers["Cache-Control"] = "public, immutable"
                    expires = datetime.now(UTC) + timedelta(days=365)
                    headers["Expires"] = expires.strftime("%a, %d %b %Y %H:%M:%S GMT")
                elif request.query_params.get("hash"):
                    # A hash that is not the document's: the real server redirects to the current one.
                    url = f"/openapi/v3/{'/'.join(parts[1:])}?hash={digest}"
                    return Response(b"", status_code=301, headers={"Location": url})
                else:
                    headers["Cache-Control"] = "no-cache, private"
                return Response(body, media_type="application/json", headers=headers)
        raise errors.page_not_found()

    @staticmethod
    def _route(group: str, version: str, rest: list[str]) -> tuple[Resource, str | None, str, str]:
        """(resource, namespace or None, name, subresource) of a resource path."""
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = resources.find(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        resource = resources.find(group, version, rest[0]) if rest else None
        if resource is None or len(rest) > 3:
            raise errors.page_not_found()
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (
            (sub == "status" and resource.status)
            or (resource.kind == "Pod" and sub in ("log", "eviction"))
            or (sub == "scale" and "scale" in resource.subresources)
        ):
            raise errors.page_not_found()
        if namespace is None and resource.namespaced and name:
            raise errors.page_not_found()
        return resource, namespace, name, sub

    async def _body(self, request: Request) -> Any:
        """A POST/PUT/DELETE body: JSON, YAML (`application/yaml`), or protobuf for the kinds protobuf.py
        reads; 415 for what the real server also reads but this one does not (other protobuf, CBOR)."""
        raw = await request.body()
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if raw and media in ("application/yaml", "application/apply-patch+yaml"):
            if raw.lstrip()[:1] == b"{":  # JSON, which YAML includes: what the Python client sends
                with contextlib.suppress(ValueError):
                    return json.loads(raw)
            try:
                return yaml.load(raw, Loader=_YAML_LOADER)
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"error decoding YAML: {exc}") from None
        if raw and media == protobuf.MEDIA_TYPE:
            try:
                return protobuf.decode(raw)
            except protobuf.Unsupported as exc:
                print(f"k8s-sim: {request.method} {request.url.path}: protobuf body: {exc}", file=sys.stderr)
                raise errors.unsupported_media_type(media, BODY_MEDIA_TYPES) from None
        if raw and media not in ("", "application/json", "*/*") and request.method in ("POST", "PUT"):
            raise errors.unsupported_media_type(media, BODY_MEDIA_TYPES)
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"the object provided is unrecognized or invalid: {exc}") from None

    def _manager(self, request: Request, required: bool = False) -> str:
        """The write's field manager: `fieldManager`, else the User-Agent up to its first "/"
        (ValidatePatchOptions / ValidateFieldManager: required for apply, at most 128 characters)."""
        manager = request.query_params.get("fieldManager") or ""
        if len(manager) > 128:
            raise errors.invalid(
                "PatchOptions" if request.method == "PATCH" else "CreateOptions",
                "meta.k8s.io",
                "",
                [
                    errors.cause(
                        "FieldValueTooLong", "fieldManager", "Too long: may not be more than 128 bytes"
                    )
                ],
            )
        if required and not manager:
            raise errors.invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [
                    errors.cause(
                        "FieldValueRequired", "fieldManager", "Required value: is required for apply patch"
                    )
                ],
            )
        return manager or managed.manager_from_user_agent(request.headers.get("user-agent"))

    async def _serve(
        self, request: Request, resource: Resource, namespace: str | None, name: str, sub: str
    ) -> Response:
        query = request.query_params
        store = self.store
        method = request.method
        dry_run = query.get("dryRun") == "All"
        validation = query.get("fieldValidation") or None
        if validation is not None and validation not in FIELD_VALIDATION:
            raise errors.bad_request(
                f"fieldValidation parameter unsupported: {validation}. Must be one of Ignore, Warn, Strict"
            )
        ns = namespace or ""
        if sub == "log" and method == "GET":
            return await self._log(request, ns, name)
        if sub == "eviction" and method == "POST":
            return self._evict(ns, name, await self._body(request))
        if sub in ("log", "eviction"):
            raise errors.method_not_allowed(method, f"{resource.plural}/{sub}")
        if sub == "scale":
            return await self._scale(request, resource, ns, name, dry_run)
        if not name:
            if method == "GET":
                if _bool(query.get("watch")):
                    return self._watch(request, resource, namespace)
                return self._list(request, resource, namespace)
            if method == "POST" and (namespace is not None or not resource.namespaced):
                body = await self._body(request)
                obj, warnings = store.create(
                    resource, ns, body, validation, dry_run, manager=self._manager(request)
                )
                return _json(obj, 201, warnings)
            if method == "DELETE" and (namespace is not None or not resource.namespaced):
                return self._delete_collection(
                    request, resource, namespace, await self._body(request), dry_run
                )
            raise errors.method_not_allowed(method, resource.qualified)
        if method == "GET":
            obj = store.get(resource, ns, name)
            if tables.wants_table(request.headers.get("accept")):
                version = obj["metadata"]["resourceVersion"]
                return _json(tables.table(resource, [obj], query.get("includeObject"), version))
            return _json(obj)
        if method == "PUT":
            body = await self._body(request)
            obj, warnings = store.replace(
                resource, ns, name, body, validation, sub, dry_run, manager=self._manager(request)
            )
            return _json(obj, 200, warnings)
        if method == "PATCH":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type not in PATCH_MEDIA_TYPES:
                raise errors.unsupported_media_type(content_type, PATCH_MEDIA_TYPES)
            force = query.get("force")
            if content_type == "application/apply-patch+yaml":
                return await self._apply(request, resource, ns, name, sub, validation, dry_run)
            if force is not None:
                raise errors.invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    [
                        errors.cause(
                            "FieldValueForbidden",
                            "force",
                            "Forbidden: may not be specified for non-apply patch",
                        )
                    ],
                )
            patch = await self._body(request)
            current = store.get(resource, ns, name)
            if content_type == "application/json-patch+json":
                patched = json_patch(current, patch)
            elif content_type == "application/merge-patch+json":
                if not isinstance(patch, dict):
                    raise errors.bad_request("the body of a merge patch must be a JSON object")
                patched = merge_patch(current, patch)
            else:
                if not isinstance(patch, dict):
                    raise errors.bad_request("the body of a strategic merge patch must be a JSON object")
                patched = strategic_merge_patch(current, patch, resource)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch did not produce an object")
            # A patch carries the resourceVersion it read only when the client put one in (a precondition).
            patched_metadata = patched.setdefault("metadata", {})
            sent = patch.get("metadata", {}).get("resourceVersion") if isinstance(patch, dict) else None
            if isinstance(patch, list):
                sent = patched_metadata.get("resourceVersion")
                if sent == current["metadata"]["resourceVersion"]:
                    sent = None
            if sent:
                patched_metadata["resourceVersion"] = sent
            else:
                patched_metadata.pop("resourceVersion", None)
            obj, warnings = store.replace(
                resource, ns, name, patched, validation, sub, dry_run, manager=self._manager(request)
            )
            return _json(obj, 200, warnings)
        if method == "DELETE":
            return self._delete(request, resource, ns, name, await self._body(request) or {}, dry_run)
        raise errors.method_not_allowed(method, resource.qualified)

    async def _apply(
        self,
        request: Request,
        resource: Resource,
        ns: str,
        name: str,
        sub: str,
        validation: str | None,
        dry_run: bool,
    ) -> Response:
        """Server-side apply (managed.py): create-or-update; 201 when it creates the object."""
        manager = self._manager(request, required=True)
        force = _bool(request.query_params.get("force"))
        config = await self._body(request)
        if not isinstance(config, dict):
            raise errors.bad_request("error decoding YAML: the configuration must be an object")
        sent_version = str(config.get("apiVersion") or "")
        if sent_version != resource.api_version:
            raise errors.bad_request(
                f"Incorrect version specified in apply patch. Specified patch version: "
                f"{sent_version}, expected: {resource.api_version}"
            )
        if config.get("kind") != resource.kind:
            raise errors.bad_request(
                f"Incorrect kind specified in apply patch. Specified patch kind: "
                f"{config.get('kind') or ''}, expected: {resource.kind}"
            )
        live = self.store.peek(resource, ns, name)
        if live is None and sub:
            raise errors.not_found(resource.qualified, resource.group, resource.plural, name)
        metadata = config.get("metadata")
        if isinstance(metadata, dict) and metadata.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
            )
        merged = managed.apply(resource, copy.deepcopy(live) if live else None, config, manager, force, sub)
        merged.setdefault("metadata", {})["name"] = name
        if live is None:
            obj, warnings = self.store.create(
                resource, ns, merged, validation, dry_run, manager=manager, applied=True
            )
            return _json(obj, 201, warnings)
        obj, warnings = self.store.replace(
            resource, ns, name, merged, validation, sub, dry_run, manager=manager, applied=True
        )
        return _json(obj, 200, warnings)

    async def _scale(
        self, request: Request, resource: Resource, ns: str, name: str, dry_run: bool
    ) -> Response:
        """The scale subresource of Deployments, ReplicaSets and StatefulSets (autoscaling/v1 Scale):
        `kubectl scale` patches it. A write sets the parent's spec.replicas (its managedFields entry has
        `subresource: scale`, as the real server writes it)."""
        current = self.store.get(resource, ns, name)
        scale = _scale_of(current)
        method = request.method
        if method == "GET":
            return _json(scale)
        if method not in ("PUT", "PATCH"):
            raise errors.method_not_allowed(method, f"{resource.plural}/scale")
        body = await self._body(request)
        if method == "PUT":
            wanted = body
        else:
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type == "application/json-patch+json":
                wanted = json_patch(scale, body)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(body, dict):
                    raise errors.bad_request("the body of a merge patch must be a JSON object")
                wanted = merge_patch(scale, body)
            else:
                raise errors.unsupported_media_type(content_type, PATCH_MEDIA_TYPES[:3])
        replicas = ((wanted or {}).get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "Scale",
                "autoscaling",
                name,
                [
                    errors.cause(
                        "FieldValueInvalid",
                        "spec.replicas",
                        f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0",
                    )
                ],
            )
        sent = ((wanted or {}).get("metadata") or {}).get("resourceVersion")
        if sent and sent != current["metadata"]["resourceVersion"]:
            raise errors.conflict(
                f"{resource.plural}.{resource.group}", resource.group, resource.plural, name
            )
        updated = copy.deepcopy(current)
        updated["spec"]["replicas"] = replicas
        updated["metadata"].pop("resourceVersion", None)
        obj, _ = self.store.replace(
            resource, ns, name, updated, None, "", dry_run, manager=self._manager(request), scale=True
        )
        if self.runtime is not None:
            self.runtime.kick()
        return _json(_scale_of(obj))

    def _delete_collection(
        self, request: Request, resource: Resource, namespace: str | None, options: Any, dry_run: bool
    ) -> Response:
        """deletecollection: every object the selectors match is deleted as a DELETE would; the answer is
        the list of the deleted objects (the real registry's DeleteCollection returns a List)."""
        matches = self._matcher(request, resource, namespace)
        items = []
        for obj in [o for o in self.store.list(resource, namespace) if matches(o)]:
            metadata = obj["metadata"]
            ns = metadata.get("namespace", "")
            with contextlib.suppress(errors.ApiError):
                self._delete(request, resource, ns, metadata["name"], options or {}, dry_run)
                # the object as the deletion left it (still there, being deleted), or as it was
                items.append(self.store.peek(resource, ns, metadata["name"]) or obj)
        items = [copy.deepcopy(item) for item in items]
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return _json(
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self.store.revision)},
                "items": items,
            }
        )

    def _delete(
        self, request: Request, resource: Resource, ns: str, name: str, options: Any, dry_run: bool
    ) -> Response:
        query = request.query_params
        options = options if isinstance(options, dict) else {}
        preconditions = options.get("preconditions") or {}
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
        orphan = options.get("orphanDependents")
        if orphan is None and query.get("orphanDependents") is not None:
            orphan = _bool(query.get("orphanDependents"))
        if propagation is not None and propagation not in ("Foreground", "Background", "Orphan"):
            raise errors.invalid(
                "DeleteOptions",
                "",
                "",
                [
                    errors.cause(
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        f'Unsupported value: "{propagation}": supported values: "Foreground", '
                        '"Background", "Orphan"',
                    )
                ],
            )
        warnings = []
        if propagation is None and orphan is not None:
            propagation = "Orphan" if orphan else "Background"
        if propagation is None:
            # The registries' DefaultGarbageCollectionPolicy: batch/v1 Jobs orphan their pods.
            if resource.kind == "Job":
                propagation = "Orphan"
                warnings.append(JOB_DELETE_WARNING)
            else:
                propagation = "Background"
        grace = options.get("gracePeriodSeconds")
        if grace is None and query.get("gracePeriodSeconds") is not None:
            grace = int(query["gracePeriodSeconds"])
        obj, deleted = self.store.delete(
            resource,
            ns,
            name,
            preconditions.get("resourceVersion"),
            preconditions.get("uid"),
            dry_run,
            propagation=propagation if propagation != "Background" else None,
            grace_seconds=grace,
        )
        if self.runtime is not None:
            self.runtime.kick()
        if not deleted:
            return _json(obj, 202 if orphan is False else 200, warnings)
        if resource.return_deleted:
            return _json(obj, 200, warnings)
        details: dict[str, Any] = {"name": name}
        if resource.group:
            details["group"] = resource.group
        details.update(kind=resource.plural, uid=obj["metadata"]["uid"])
        return _json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details},
            200,
            warnings,
        )

    # -- pods/log and pods/eviction ---------------------------------------------------------------------

    async def _log(self, request: Request, ns: str, name: str) -> Response:
        from tests.k8s_sim.runtime import PODS

        query = request.query_params
        pod = self.store.get(PODS, ns, name)
        spec = pod.get("spec") or {}
        container = query.get("container") or ""
        names = [c["name"] for c in spec.get("containers") or []]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        if not container:
            if len(names) == 1:
                container = names[0]
            else:
                message = (
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                )
                if init_names:
                    message += f" or one of the init containers: [{' '.join(init_names)}]"
                raise errors.bad_request(message)
        elif container not in names and container not in init_names:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        if not spec.get("nodeName") or self.runtime is None:
            return Response(b"", media_type="text/plain")
        previous = _bool(query.get("previous"))
        log = self.runtime.kubelet.log(pod["metadata"]["uid"], container, previous)
        if log is None:
            if previous:
                raise errors.bad_request(
                    f'previous terminated container "{container}" in pod "{name}" not found'
                )
            raise errors.bad_request(_waiting_message(pod, container))
        follow = _bool(query.get("follow"))
        stamps = _bool(query.get("timestamps"))
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        since = float(query["sinceSeconds"]) if query.get("sinceSeconds") else None
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        lines = list(log.lines)
        if since is not None:
            lines = [entry for entry in lines if entry[0] >= time.time() - since]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []

        def render(entries) -> bytes:
            return "".join((f"{_nano(t)} " if stamps else "") + line + "\n" for t, line in entries).encode()

        if not follow:
            body = render(lines)
            return Response(body[:limit] if limit is not None else body, media_type="text/plain")
        seen = len(log.lines)

        async def stream():
            nonlocal seen
            sent = 0
            chunk = render(lines)
            if chunk:
                sent += len(chunk)
                yield chunk[:limit] if limit is not None else chunk
            while True:
                if limit is not None and sent >= limit:
                    return
                await log.wait(seen, timeout=1.0)
                fresh = log.lines[seen:]
                seen += len(fresh)
                if fresh:
                    chunk = render(fresh)
                    if limit is not None:
                        chunk = chunk[: max(limit - sent, 0)]
                    sent += len(chunk)
                    yield chunk
                elif log.finished:
                    return
                if await request.is_disconnected():
                    return

        return StreamingResponse(stream(), media_type="text/plain")

    def _evict(self, ns: str, name: str, body: Any) -> Response:
        """The Eviction API (https://kubernetes.io/docs/concepts/scheduling-eviction/api-eviction/)."""
        from tests.k8s_sim.controllers.workloads import PDBS, matches_selector
        from tests.k8s_sim.runtime import PODS

        pod = self.store.get(PODS, ns, name)
        labels = pod["metadata"].get("labels") or {}
        for pdb in self.store.iter(PDBS, ns):
            budget = pdb.get("status") or {}
            if matches_selector((pdb.get("spec") or {}).get("selector"), labels) and (
                int(budget.get("disruptionsAllowed", 0)) <= 0
            ):
                raise errors.ApiError(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    {
                        "causes": [
                            {
                                "reason": "DisruptionBudget",
                                "message": (
                                    f"The disruption budget {pdb['metadata']['name']} needs "
                                    f"{budget.get('desiredHealthy', 0)} healthy pods and has "
                                    f"{budget.get('currentHealthy', 0)} currently"
                                ),
                            }
                        ]
                    },
                )
        status = dict(pod.get("status") or {})
        conditions = [dict(c) for c in status.get("conditions") or []]
        if status.get("phase") not in ("Succeeded", "Failed"):
            set_condition(
                conditions,
                "DisruptionTarget",
                "True",
                "EvictionByEvictionAPI",
                "Eviction API: evicting",
                probe="null",
            )
            self.store.update_status(PODS, ns, name, dict(status, conditions=conditions))
        options = (body or {}).get("deleteOptions") or {} if isinstance(body, dict) else {}
        self.store.delete(PODS, ns, name, grace_seconds=options.get("gracePeriodSeconds"))
        if self.runtime is not None:
            self.runtime.kick()
        return _json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201
        )

    # -- list -------------------------------------------------------------------------------------------

    def _matcher(self, request: Request, resource: Resource, namespace: str | None):
        labels = label_selector(request.query_params.get("labelSelector"))
        fields = field_selector(request.query_params.get("fieldSelector"), resource.kind)

        def matches(obj: dict[str, Any]) -> bool:
            metadata = obj["metadata"]
            if namespace is not None and metadata.get("namespace", "") != namespace:
                return False
            return labels(metadata.get("labels") or {}) and fields(obj)

        return matches

    def _list(self, request: Request, resource: Resource, namespace: str | None) -> Response:
        query = request.query_params
        matches = self._matcher(request, resource, namespace)
        items = [obj for obj in self.store.list(resource, namespace) if matches(obj)]
        list_version = str(self.store.revision)
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.b64decode(query["continue"]))
                list_version, after = token["rv"], token["start"]
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request("continue key is not valid: malformed token") from None
            # Simplification: the real server serves the rest of the list at the token's resourceVersion
            # (a consistent snapshot); here, the rest of the current list after the last name served.
            start = next((i for i, o in enumerate(items) if _sort_key(o) > tuple(after)), len(items))
        metadata: dict[str, Any] = {"resourceVersion": list_version}
        limit = int(query.get("limit") or 0)
        page = items[start:]
        if limit and len(page) > limit:
            page = page[:limit]
            token = {"rv": list_version, "start": list(_sort_key(page[-1]))}
            metadata["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
            metadata["remainingItemCount"] = len(items) - start - limit
        for obj in page:  # list items carry no kind/apiVersion, as the real server sends them
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        if tables.wants_table(request.headers.get("accept")):
            extra = {k: v for k, v in metadata.items() if k != "resourceVersion"}
            return _json(tables.table(resource, page, query.get("includeObject"), list_version, extra))
        return _json(
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": metadata,
                "items": page,
            }
        )

    # -- watch ------------------------------------------------------------------------------------------

    def _watch(self, request: Request, resource: Resource, namespace: str | None) -> Response:
        query = request.query_params
        matches = self._matcher(request, resource, namespace)
        bookmarks = _bool(query.get("allowWatchBookmarks"))
        timeout = float(query.get("timeoutSeconds") or 1800)
        store = self.store
        since = query.get("resourceVersion") or ""
        initial_events = _bool(query.get("sendInitialEvents"))
        if initial_events and (not bookmarks or query.get("resourceVersionMatch") != "NotOlderThan"):
            # ValidateListOptions: what sendInitialEvents requires.
            causes = []
            if query.get("resourceVersionMatch") != "NotOlderThan":
                causes.append(
                    errors.cause(
                        "FieldValueForbidden",
                        "resourceVersionMatch",
                        "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )
                )
            if not bookmarks:
                causes.append(
                    errors.cause(
                        "FieldValueForbidden",
                        "allowWatchBookmarks",
                        "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
                    )
                )
            raise errors.invalid("ListOptions", "meta.k8s.io", "", causes)
        queue = store.subscribe()
        initial: list[dict[str, Any]] = []
        try:
            if initial_events:
                # Streaming list (https://kubernetes.io/docs/reference/using-api/api-concepts/#streaming-lists):
                # the current objects as ADDED, then a BOOKMARK annotated k8s.io/initial-events-end.
                # resourceVersionMatch=NotOlderThan with any resourceVersion: the current state is newer.
                snapshot = [o for o in store.list(resource, namespace) if matches(o)]
                initial = [{"type": "ADDED", "object": o} for o in snapshot]
                start_version = store.revision
                end = _bookmark(resource, start_version)
                end["object"]["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                initial.append(end)
            elif since in ("", "0"):
                # "Get State and Start at Most Recent" / "Start at Any": synthetic ADDED for what exists.
                snapshot = [o for o in store.list(resource, namespace) if matches(o)]
                initial = [{"type": "ADDED", "object": o} for o in snapshot]
                start_version = store.revision
            else:
                try:
                    start_version = int(since)
                except ValueError:
                    store.unsubscribe(queue)
                    raise errors.bad_request(f"invalid resource version: {since}") from None
                initial = [
                    line
                    for e in store.events_since(start_version)
                    if (line := _event_line(e, resource, matches))
                ]
        except errors.ApiError as error:
            # The real server opens the watch and sends the error as an ERROR event (410 Expired included).
            store.unsubscribe(queue)
            initial, start_version = [{"type": "ERROR", "object": error.status()}], None

        async def stream():
            try:
                for line in initial:
                    yield json.dumps(line) + "\n"
                if start_version is None:
                    return
                last = start_version
                deadline = time.monotonic() + timeout
                next_bookmark = time.monotonic() + self.bookmark_interval_s
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    wait = (
                        min(remaining, max(next_bookmark - time.monotonic(), 0.0)) if bookmarks else remaining
                    )
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=wait)
                    except TimeoutError:
                        if bookmarks and time.monotonic() >= next_bookmark:
                            yield json.dumps(_bookmark(resource, store.revision)) + "\n"
                            next_bookmark = time.monotonic() + self.bookmark_interval_s
                        continue
                    if event.resource_version <= last:
                        continue
                    last = event.resource_version
                    line = _event_line(event, resource, matches)
                    if line:
                        yield json.dumps(line) + "\n"
                if bookmarks:
                    # The real server sends a last bookmark before it ends a watch at its timeout.
                    yield json.dumps(_bookmark(resource, store.revision)) + "\n"
            finally:
                store.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="application/json")


def _nano(seconds: float) -> str:
    """RFC 3339 with nanoseconds, as the kubelet prefixes log lines with `timestamps=true`."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def _waiting_message(pod: dict[str, Any], container: str) -> str:
    """The kubelet's answer for the log of a container that has not started (validateContainerLogStatus)."""
    name = pod["metadata"]["name"]
    prefix = f'container "{container}" in pod "{name}" is waiting to start:'
    status = pod.get("status") or {}
    for entry in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if entry.get("name") != container:
            continue
        waiting = (entry.get("state") or {}).get("waiting")
        if waiting:
            reason = waiting.get("reason", "")
            if reason == "ErrImagePull":
                return f"{prefix} image can't be pulled"
            if reason == "ImagePullBackOff":
                return f"{prefix} trying and failing to pull image"
            return f"{prefix} {reason}"
    return f"{prefix} ContainerCreating"


def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The autoscaling/v1 Scale of a Deployment, ReplicaSet or StatefulSet."""
    from tests.k8s_sim.tables import _selector

    metadata = obj["metadata"]
    selector = (obj.get("spec") or {}).get("selector")
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in metadata
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": _selector(selector) if selector else "",
        },
    }


def _accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits JSON (absent, */*, application/*, application/json)."""
    if not accept:
        return True
    for entry in accept.split(","):
        media = entry.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", "application/json"):
            return True
    return False


def _bool(value: str | None) -> bool:
    """A boolean query parameter, read as Go's strconv.ParseBool reads it (the client sends "True")."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _sort_key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _bookmark(resource: Resource, revision: int) -> dict[str, Any]:
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": resource.kind,
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(revision)},
        },
    }


def _event_line(event: Event, resource: Resource, matches) -> dict[str, Any] | None:
    """The watch line for `event`, as the real server filters it: an object that stops matching the
    selectors arrives as DELETED, one that starts matching as ADDED."""
    if (event.resource.group, event.resource.plural) != (resource.group, resource.plural):
        return None
    now_matches = matches(event.obj)
    before = event.old is not None and matches(event.old)
    if event.type == "MODIFIED":
        if now_matches and not before:
            return {"type": "ADDED", "object": event.obj}
        if before and not now_matches:
            return {"type": "DELETED", "object": event.obj}
        return {"type": "MODIFIED", "object": event.obj} if now_matches else None
    if event.type == "DELETED":
        return {"type": "DELETED", "object": event.obj} if before or now_matches else None
    return {"type": event.type, "object": event.obj} if now_matches else None
