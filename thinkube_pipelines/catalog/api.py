"""The catalog's HTTP API (thinkube-control's `/api/v1/images`), as a FastAPI app factory.

Reads are open (the hub lists images at spawn time without credentials) and are answered from the
`LiveView`: pre-encoded JSON with an ETag, checked against the database's generation on every read.
Writes need a bearer token (see `writers`) and go through the `DatabaseGate`, which never lets more work
reach the database than the pool holds: a request waits its turn for a bounded time, or is refused at once
with 503 and Retry-After when too many already wait. The schema is not created here: `thinkube-catalog
serve` migrates before it serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import sessionmaker

from thinkube_pipelines import oci
from thinkube_pipelines.catalog import store
from thinkube_pipelines.catalog.builds import RebuildAccess, build_router
from thinkube_pipelines.catalog.contract import (
    MAX_BODY_BYTES,
    CatalogItem,
    ErrorBody,
    ImageUpsert,
    ValidationErrorBody,
    WriteOutcome,
)
from thinkube_pipelines.catalog.db import POOL_SIZE, connect, session_factory
from thinkube_pipelines.catalog.limits import BodyLimit
from thinkube_pipelines.catalog.page_routes import add_page
from thinkube_pipelines.catalog.settings import CatalogSettings
from thinkube_pipelines.catalog.view import CatalogView, DatabaseTimeout, Encoded, LiveView
from thinkube_pipelines.catalog.writers import AccessDenied, WriteAccess, Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_JUPYTER_IMAGES = "No Jupyter images are available in the catalog"
DATABASE_UNAVAILABLE = "The catalog database is unavailable"
#: Requests that may wait for a database slot; one more is refused at once.
MAX_WAITING = 64
#: Seconds a request's database part may take, its wait for a slot included, before it is answered 503.
ANSWER_TIMEOUT_S = 3.0
RETRY_AFTER_S = 1

ImageNameParam = Annotated[
    str,
    Path(
        description="Image name, as in images/<name>/image.yaml.",
        pattern=rf"^{oci.COMPONENT_PATTERN}$",
        max_length=128,
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(description="An ETag from an earlier answer: 304 without a body while it still holds."),
]

_bearer = HTTPBearer(auto_error=False, description="The service token or a Keycloak access token.")


class Busy(Exception):
    """Too much database work is waiting already: refuse now rather than queue without end."""


class DatabaseGate:
    """Runs blocking database work on its own threads, never more at once than the pool has connections.

    One deadline (ANSWER_TIMEOUT_S) bounds the wait for a thread (with at most MAX_WAITING waiters) and
    the work together: a database that hangs without closing its connections (a frozen server, a
    partitioned network) is answered 503 within that time, also for a request that waited for a slot
    first. Work that overruns keeps its thread, and its slot, until the database lets it go, so the pool
    is never overcommitted.
    """

    def __init__(self, sessions: sessionmaker, slots: int = POOL_SIZE) -> None:
        self._sessions = sessions
        self._executor = ThreadPoolExecutor(slots, thread_name_prefix="catalog-db")
        self._free = asyncio.Semaphore(slots)
        self._waiting = 0

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self._waiting >= MAX_WAITING:
            raise Busy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_TIMEOUT_S
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._free.acquire()
        except TimeoutError:
            raise Busy from None
        finally:
            self._waiting -= 1

        def in_thread() -> T:
            try:
                return work(*args)
            finally:
                loop.call_soon_threadsafe(self._free.release)

        done = loop.run_in_executor(self._executor, in_thread)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(done)
        except TimeoutError:
            log.error("catalog database did not answer within %s s", ANSWER_TIMEOUT_S)
            raise DatabaseTimeout from None

    async def in_session(self, work: Callable[..., T], *args: Any) -> T:
        """`work(session, *args)` in a session of its own."""

        def with_session() -> T:
            with self._sessions() as session:
                return work(session, *args)

        return await self.run(with_session)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _writer(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Writer:
    access: WriteAccess = request.app.state.write_access
    token = credentials.credentials if credentials is not None else None
    try:
        return access.authorize(token)
    except AccessDenied as denied:
        headers = {"WWW-Authenticate": denied.challenge} if denied.challenge else None
        raise HTTPException(denied.status, denied.detail, headers=headers) from None


WriterDep = Annotated[Writer, Depends(_writer)]


def _error(status_code: int, description: str, model: type = ErrorBody) -> dict[int | str, Any]:
    return {status_code: {"model": model, "description": description}}


_UNAVAILABLE = _error(503, "The database is unavailable, or too many requests wait for it (Retry-After).")
_INVALID = _error(422, "A field, parameter or the body is invalid; `loc` names it.", ValidationErrorBody)
_NOT_FOUND = _error(404, "No image of that name.")
_NOT_MODIFIED: dict[int | str, Any] = {304: {"description": "Not modified: If-None-Match named the ETag."}}
_WRITE = {
    **_error(401, "No bearer token, or one that is not valid (WWW-Authenticate says why)."),
    **_error(403, "The token lacks the writer role."),
    **_error(413, f"The body is larger than {MAX_BODY_BYTES} bytes."),
    **_INVALID,
    **_UNAVAILABLE,
}


def _not_found(name: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"Image {name!r} is not in the catalog")


def _json(encoded: Encoded, view: CatalogView, if_none_match: str | None) -> Response:
    headers = {
        "ETag": encoded.etag,
        "Cache-Control": "no-cache",
        "X-Catalog-Generation": str(view.generation),
    }
    if encoded.matches(if_none_match):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(encoded.body, media_type="application/json", headers=headers)


def _field_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the rejected input: it may be huge, secret, or not even JSON (NaN)."""
    return [
        {
            "loc": [str(part) if not isinstance(part, int) else part for part in problem.get("loc", ())],
            "msg": str(problem.get("msg", "")),
            "type": str(problem.get("type", "")),
        }
        for problem in error.errors()
    ]


def create_app(settings: CatalogSettings | None = None) -> FastAPI:
    """The catalog app over the database named by `settings` (read from the environment if omitted)."""
    settings = settings or CatalogSettings()
    engine = connect(settings.database_url.get_secret_value())
    sessions = session_factory(engine)
    gate = DatabaseGate(sessions)

    def refresh(view: CatalogView | None) -> CatalogView:
        with sessions() as session:
            if view is not None and store.generation(session) == view.generation:
                return view
            rows = store.read_all(session)
        return CatalogView(rows.generation, store.valid_items(rows.rows))

    live = LiveView(refresh, gate.run, timeout_s=ANSWER_TIMEOUT_S)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.has_writer:
            log.warning("no THINKUBE_CATALOG_TOKEN nor THINKUBE_OIDC_ISSUER: every write will be refused")
        yield
        gate.close()
        engine.dispose()

    app = FastAPI(
        title="Thinkube image catalog",
        description="The Jupyter images the hub offers, as recorded by the image pipeline.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.state.write_access = WriteAccess(settings)
    app.state.rebuild_access = RebuildAccess(settings)

    async def image_in_catalog(name: str) -> bool:
        return (await live.current()).item(name) is not None

    app.include_router(build_router(settings, image_in_catalog))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(error)}, status_code=422)

    @app.exception_handler(Busy)
    async def _busy(_request: Request, _error: Busy) -> JSONResponse:
        return JSONResponse(
            {"detail": "The catalog is busy: too many requests wait for its database"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DatabaseTimeout)
    async def _database_unavailable(_request: Request, error: Exception) -> JSONResponse:
        reason = getattr(error, "orig", None) or error
        log.error("catalog database unavailable: %s", reason.__class__.__name__)
        return JSONResponse({"detail": DATABASE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(store.StateConflict)
    async def _conflict(_request: Request, error: store.StateConflict) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.get(
        "/healthz",
        tags=["health"],
        responses={503: {"model": ErrorBody, "description": "The database is not ready."}},
    )
    async def healthz() -> dict[str, str]:
        """Ready when the database answers and holds the catalog's tables."""
        try:
            await gate.in_session(store.ping)
        except (SQLAlchemyError, Busy, DatabaseTimeout) as error:
            log.warning("readiness check failed: %s", error.__class__.__name__)
            raise HTTPException(503, "The catalog database is not ready") from None
        return {"status": "ok"}

    # Declared before /images/{name}, or "jupyter" would be read as an image name (it is reserved).
    @app.get(
        "/api/v1/images/jupyter",
        tags=["images"],
        response_model=list[CatalogItem],
        responses={
            **_NOT_MODIFIED,
            **_INVALID,
            **_error(503, f"{NO_JUPYTER_IMAGES}, or the database is unavailable (Retry-After)."),
        },
    )
    async def jupyter_images(if_none_match: IfNoneMatch = None) -> Response:
        """Active Jupyter images, by name, exactly one marked default: what the hub offers."""
        view = await live.current()
        encoded = view.jupyter()
        if encoded is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, NO_JUPYTER_IMAGES)
        return _json(encoded, view, if_none_match)

    @app.get(
        "/api/v1/images",
        tags=["images"],
        response_model=list[CatalogItem],
        responses={**_NOT_MODIFIED, **_INVALID, **_UNAVAILABLE},
    )
    async def list_images(
        category: Annotated[
            str | None, Query(description="Only images of this category.", max_length=64)
        ] = None,
        active: Annotated[bool | None, Query(description="Only active (true) or inactive (false).")] = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        """Every image by name, optionally narrowed."""
        view = await live.current()
        return _json(view.listing(category, active), view, if_none_match)

    @app.get(
        "/api/v1/images/{name}",
        tags=["images"],
        response_model=CatalogItem,
        responses={**_NOT_MODIFIED, **_NOT_FOUND, **_INVALID, **_UNAVAILABLE},
    )
    async def get_image(name: ImageNameParam, if_none_match: IfNoneMatch = None) -> Response:
        view = await live.current()
        encoded = view.item(name)
        if encoded is None:
            raise _not_found(name)
        return _json(encoded, view, if_none_match)

    @app.post(
        "/api/v1/images",
        tags=["images"],
        status_code=status.HTTP_200_OK,
        response_model=WriteOutcome,
        responses={
            201: {"description": "Created", "model": WriteOutcome},
            200: {"description": "Updated, or unchanged (`change` says which)"},
            **_error(400, "The body could not be read as JSON text."),
            **_error(409, "is_active differs from the image's state, which has its own routes."),
            **_WRITE,
        },
    )
    async def upsert_image(entry: ImageUpsert, response: Response, writer: WriterDep) -> WriteOutcome:
        """Create the image, or replace the fields of the one with the same name.

        An identical upsert changes nothing (`unchanged`); an image's activity is kept (see is_active).
        Marking it default unmarks the other images of its category.
        """
        written = await gate.in_session(store.upsert, entry)
        if written.change == "created":
            response.status_code = status.HTTP_201_CREATED
        if written.change != "unchanged":
            log.info("image %s %s by %s", entry.name, written.change, writer.name)
        return WriteOutcome(change=written.change, item=written.item)

    async def set_active(name: str, active: bool, writer: Writer) -> WriteOutcome:
        written = await gate.in_session(store.set_active, name, active)
        if written is None:
            raise _not_found(name)
        if written.change != "unchanged":
            log.info("image %s %s by %s", name, "activated" if active else "deactivated", writer.name)
        return WriteOutcome(change=written.change, item=written.item)

    @app.post(
        "/api/v1/images/{name}/activate",
        tags=["images"],
        response_model=WriteOutcome,
        responses={**_NOT_FOUND, **_WRITE},
    )
    async def activate_image(name: ImageNameParam, writer: WriterDep) -> WriteOutcome:
        """Offer the image again."""
        return await set_active(name, True, writer)

    @app.post(
        "/api/v1/images/{name}/deactivate",
        tags=["images"],
        response_model=WriteOutcome,
        responses={**_NOT_FOUND, **_WRITE},
    )
    async def deactivate_image(name: ImageNameParam, writer: WriterDep) -> WriteOutcome:
        """Stop offering the image; it stays in the catalog. If it was the default, the default moves."""
        return await set_active(name, False, writer)

    @app.delete(
        "/api/v1/images/{name}",
        tags=["images"],
        status_code=status.HTTP_204_NO_CONTENT,
        responses={**_NOT_FOUND, **_WRITE},
    )
    async def delete_image(name: ImageNameParam, writer: WriterDep) -> Response:
        if not await gate.in_session(store.remove, name):
            raise _not_found(name)
        log.info("image %s deleted by %s", name, writer.name)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    add_page(app, settings)
    return app
