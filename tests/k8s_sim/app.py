"""The HTTP face of the simulator: the real API's URL layout, verbs, query parameters and answers.

Served: discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`, `/version`,
`/healthz`, `/readyz`, `/livez`); for every resource in `resources.RESOURCES`: create (POST, 201), get,
list (labelSelector, fieldSelector, limit/continue), replace (PUT), patch (merge, JSON patch; strategic merge
applied as merge patch), delete (DELETE, with preconditions), and watch (`?watch=true`: one JSON event per
line, ADDED/MODIFIED/DELETED/BOOKMARK/ERROR, from a resourceVersion, with `timeoutSeconds` and
`allowWatchBookmarks`), plus `<resource>/status` (get, update, patch). `dryRun=All` is honoured.

Status codes and Status bodies follow https://kubernetes.io/docs/reference/using-api/api-concepts/ (see
`errors.py`).

Not implemented yet: OpenAPI documents (`/openapi/v2`, `/openapi/v3`: helm and kubectl fetch them),
server-side apply (`application/apply-patch+yaml`, managedFields), the real strategic merge, deletecollection,
pods/log, pods/binding, pods/eviction, scale subresources, table output (`Accept: ...;as=Table`), protobuf,
authentication/authorization (any client is admitted), finalizers and graceful deletion, garbage collection,
`sendInitialEvents` watches, resourceVersionMatch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.k8s_sim import errors, resources
from tests.k8s_sim.patch import json_patch, merge_patch
from tests.k8s_sim.resources import Resource
from tests.k8s_sim.selectors import field_selector, label_selector
from tests.k8s_sim.store import Event, Store
from tests.k8s_sim.validation import FIELD_VALIDATION


def _json(body: Any, code: int = 200, warnings: list[str] | None = None) -> JSONResponse:
    headers = {}
    if warnings:
        # The real server's Warning header: one 299 entry per warning (RFC 7234 format).
        headers["Warning"] = ", ".join(f'299 - "{w}"'.replace("\\", "\\\\") for w in warnings)
    return JSONResponse(body, status_code=code, headers=headers)


def _error(error: errors.ApiError) -> JSONResponse:
    return JSONResponse(error.status(), status_code=error.code, headers=error.headers)


class Simulator:
    def __init__(self, store: Store | None = None, bookmark_interval_s: float = 60.0) -> None:
        self.store = store or Store()
        self.bookmark_interval_s = bookmark_interval_s
        self.app = Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
        )

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except errors.ApiError as error:
            return _error(error)

    async def _handle(self, request: Request) -> Response:
        parts = [p for p in request.url.path.split("/") if p]
        if request.method == "GET":
            if parts in (["healthz"], ["readyz"], ["livez"]):
                return Response("ok", media_type="text/plain")
            if parts == ["version"]:
                return _json(resources.version_info())
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
        if sub and not (sub == "status" and resource.status):
            raise errors.page_not_found()
        if namespace is None and resource.namespaced and name:
            raise errors.page_not_found()
        return resource, namespace, name, sub

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"the object provided is unrecognized or invalid: {exc}") from None

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
        if not name:
            if method == "GET":
                if _bool(query.get("watch")):
                    return self._watch(request, resource, namespace)
                return self._list(request, resource, namespace)
            if method == "POST" and (namespace is not None or not resource.namespaced):
                obj, warnings = store.create(resource, ns, await self._body(request), validation, dry_run)
                return _json(obj, 201, warnings)
            raise errors.method_not_allowed(method, resource.qualified)
        if method == "GET":
            return _json(store.get(resource, ns, name))
        if method == "PUT":
            obj, warnings = store.replace(
                resource, ns, name, await self._body(request), validation, sub, dry_run
            )
            return _json(obj, 200, warnings)
        if method == "PATCH":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            patch = await self._body(request)
            current = store.get(resource, ns, name)
            if content_type == "application/json-patch+json":
                patched = json_patch(current, patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                # strategic merge: applied as a JSON merge patch for now (see patch.py)
                if not isinstance(patch, dict):
                    raise errors.bad_request("the body of a merge patch must be a JSON object")
                patched = merge_patch(current, patch)
            else:
                raise errors.unsupported_media_type(content_type)
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
            obj, warnings = store.replace(resource, ns, name, patched, validation, sub, dry_run)
            return _json(obj, 200, warnings)
        if method == "DELETE":
            options = await self._body(request) or {}
            preconditions = options.get("preconditions") or {} if isinstance(options, dict) else {}
            gone = store.delete(
                resource, ns, name, preconditions.get("resourceVersion"), preconditions.get("uid"), dry_run
            )
            if resource.return_deleted:
                return _json(gone)
            details: dict[str, Any] = {"name": name}
            if resource.group:
                details["group"] = resource.group
            details.update(kind=resource.plural, uid=gone["metadata"]["uid"])
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            )
        raise errors.method_not_allowed(method, resource.qualified)

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
        queue = store.subscribe()
        initial: list[dict[str, Any]] = []
        try:
            if since in ("", "0"):
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
