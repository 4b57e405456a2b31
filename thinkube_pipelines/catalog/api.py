"""The catalog's HTTP API (thinkube-control's `/api/v1/images`), as a FastAPI app factory.

Reads are open: the hub lists images at spawn time without credentials. Writes need a bearer token
(see `writers`). The schema is not created here: `thinkube-catalog serve` migrates before it serves.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from thinkube_pipelines.catalog import store
from thinkube_pipelines.catalog.contract import CatalogItem, ImageUpsert
from thinkube_pipelines.catalog.db import connect, session_factory
from thinkube_pipelines.catalog.settings import CatalogSettings
from thinkube_pipelines.catalog.writers import AccessDenied, WriteAccess, Writer

log = logging.getLogger(__name__)

NO_JUPYTER_IMAGES = "No Jupyter images are available in the catalog"
ImageNameParam = Annotated[str, Path(description="Image name, as in images/<name>/image.yaml.")]

_bearer = HTTPBearer(auto_error=False, description="The service token or a Keycloak access token.")


def _session(request: Request) -> Iterator[Session]:
    sessions: sessionmaker = request.app.state.sessions
    with sessions() as session:
        yield session


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


SessionDep = Annotated[Session, Depends(_session)]
WriterDep = Annotated[Writer, Depends(_writer)]


def _not_found(name: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"Image {name!r} is not in the catalog")


def create_app(settings: CatalogSettings | None = None) -> FastAPI:
    """The catalog app over the database named by `settings` (read from the environment if omitted)."""
    settings = settings or CatalogSettings()
    engine = connect(settings.database_url.get_secret_value())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.has_writer:
            log.warning("no THINKUBE_CATALOG_TOKEN nor THINKUBE_OIDC_ISSUER: every write will be refused")
        yield
        engine.dispose()

    app = FastAPI(
        title="Thinkube image catalog",
        description="The Jupyter images the hub offers, as recorded by the image pipeline.",
        version="1",
        lifespan=lifespan,
    )
    app.state.sessions = session_factory(engine)
    app.state.write_access = WriteAccess(settings)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_request: Request, error: OperationalError) -> JSONResponse:
        log.error("catalog database unavailable: %s", error.orig.__class__.__name__ if error.orig else error)
        return JSONResponse({"detail": "The catalog database is unavailable"}, status_code=503)

    @app.exception_handler(SQLAlchemyError)
    async def _database_fault(_request: Request, error: SQLAlchemyError) -> JSONResponse:
        log.exception("catalog database error", exc_info=error)
        return JSONResponse({"detail": "The catalog database failed to answer"}, status_code=500)

    @app.get("/healthz", tags=["health"])
    def healthz(session: SessionDep) -> dict[str, str]:
        """Ready when the database answers and holds the catalog's table."""
        try:
            store.ping(session)
        except SQLAlchemyError as error:
            log.warning("readiness check failed: %s", error.__class__.__name__)
            raise HTTPException(503, "The catalog database is not ready") from None
        return {"status": "ok"}

    # Declared before /images/{name}, or "jupyter" would be read as an image name.
    @app.get("/api/v1/images/jupyter", tags=["images"])
    def jupyter_images(session: SessionDep) -> list[CatalogItem]:
        """Active Jupyter images: what the hub offers on its spawn page. 503 when there is none."""
        items = store.list_items(session, category="jupyter", active=True)
        if not items:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, NO_JUPYTER_IMAGES)
        return items

    @app.get("/api/v1/images", tags=["images"])
    def list_images(
        session: SessionDep,
        category: Annotated[str | None, Query(description="Only images of this category.")] = None,
        active: Annotated[bool | None, Query(description="Only active (true) or inactive (false).")] = None,
    ) -> list[CatalogItem]:
        """Every image, optionally narrowed."""
        return store.list_items(session, category=category, active=active)

    @app.get("/api/v1/images/{name}", tags=["images"], responses={404: {"description": "No such image"}})
    def get_image(name: ImageNameParam, session: SessionDep) -> CatalogItem:
        item = store.get(session, name)
        if item is None:
            raise _not_found(name)
        return item

    @app.post(
        "/api/v1/images",
        tags=["images"],
        status_code=status.HTTP_200_OK,
        responses={201: {"description": "Created", "model": CatalogItem}, 200: {"description": "Updated"}},
    )
    def upsert_image(
        entry: ImageUpsert, response: Response, session: SessionDep, writer: WriterDep
    ) -> CatalogItem:
        """Create the image, or replace the one with the same name (201 created, 200 updated)."""
        result = store.upsert(session, entry)
        if result.created:
            response.status_code = status.HTTP_201_CREATED
        log.info("image %s %s by %s", entry.name, "created" if result.created else "updated", writer.name)
        return result.item

    @app.post("/api/v1/images/{name}/deactivate", tags=["images"])
    def deactivate_image(name: ImageNameParam, session: SessionDep, writer: WriterDep) -> CatalogItem:
        """Stop offering the image; it stays in the catalog."""
        item = store.deactivate(session, name)
        if item is None:
            raise _not_found(name)
        log.info("image %s deactivated by %s", name, writer.name)
        return item

    @app.delete("/api/v1/images/{name}", tags=["images"], status_code=status.HTTP_204_NO_CONTENT)
    def delete_image(name: ImageNameParam, session: SessionDep, writer: WriterDep) -> Response:
        if not store.remove(session, name):
            raise _not_found(name)
        log.info("image %s deleted by %s", name, writer.name)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return app
