"""The catalog's rebuild API: launch an image's rebuild in Dagster, report a build, stream its log.

- `POST /api/v1/images/{name}/rebuild` (a bearer token with the rebuild role, or the service token):
  one run of the build job for the image's chain and the chains of every image built FROM it, forced to
  build (see `dagster_client.rebuild_selection`).
- `GET /api/v1/builds/{run_id}`: the run's status as Dagster reports it (open, like every read).
- `WebSocket /api/v1/builds/{run_id}/logs`: the run's log from its start (event-log messages and the
  steps' captured output, where the build prints every line), then `{"type": "end"}` and close 1000.

Dagster is reached through its GraphQL API only (THINKUBE_DAGSTER_GRAPHQL_URL); without it, or when it
fails, these routes answer 503 naming Dagster, while the rest of the catalog keeps serving.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, WebSocket, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.websockets import WebSocketState

from thinkube_pipelines import oci
from thinkube_pipelines.catalog.contract import ErrorBody, ValidationErrorBody
from thinkube_pipelines.catalog.dagster_client import (
    REBUILD_IMAGE_TAG,
    DagsterClient,
    DagsterUnavailable,
    ImageUnknownToDagster,
    RunNotFound,
    RunStatus,
    follow_run,
)
from thinkube_pipelines.catalog.settings import CatalogSettings
from thinkube_pipelines.catalog.writers import AccessDenied, RoleAccess

log = logging.getLogger(__name__)

GRAPHQL_URL_ENV = "THINKUBE_DAGSTER_GRAPHQL_URL"
#: WebSocket close codes besides 1000 (the run ended): the run is unknown, Dagster is not there.
CLOSE_UNKNOWN_RUN = 4404
CLOSE_DAGSTER_UNAVAILABLE = 4503
#: Seconds a followed build may go without an answer from Dagster before its log stream gives up.
FOLLOW_PATIENCE_S = 30.0
#: A WebSocket close reason holds at most 123 bytes.
MAX_CLOSE_REASON = 123

_bearer = HTTPBearer(auto_error=False, description="The service token or a Keycloak access token.")

RunIdParam = Annotated[
    str, Path(description="A Dagster run id.", pattern=r"^[A-Za-z0-9_-]{1,64}$", max_length=64)
]
ImageNameParam = Annotated[
    str,
    Path(
        description="Image name, as in images/<name>/image.yaml.",
        pattern=rf"^{oci.COMPONENT_PATTERN}$",
        max_length=128,
    ),
]


class RebuildAccepted(BaseModel):
    """A rebuild launched: where to follow it."""

    run_id: str
    image: str
    assets: list[str]
    status_url: str
    logs_url: str
    dagster_url: str | None


class BuildStatus(BaseModel):
    """A build (a Dagster run) as Dagster reports it; times in seconds since the epoch."""

    run_id: str
    status: RunStatus
    image: str | None
    start_time: float | None
    end_time: float | None
    dagster_url: str | None


class RebuildAccess(RoleAccess):
    """Who may ask for a rebuild: the service token, or a Keycloak access token carrying the rebuild role
    (THINKUBE_CATALOG_REBUILD_ROLE), counted as the writer role is counted for writes."""

    def __init__(self, settings: CatalogSettings) -> None:
        super().__init__(settings, settings.rebuild_role, "rebuild images", "A rebuild")


def _requester(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    # A plain function: FastAPI runs it on a thread, where the token check may fetch the realm's keys.
    access: RebuildAccess = request.app.state.rebuild_access
    try:
        return access.authorize(credentials.credentials if credentials is not None else None).name
    except AccessDenied as denied:
        headers = {"WWW-Authenticate": denied.challenge} if denied.challenge else None
        raise HTTPException(denied.status, denied.detail, headers=headers) from None


def _error(status_code: int, description: str, model: type = ErrorBody) -> dict[int | str, Any]:
    return {status_code: {"model": model, "description": description}}


_INVALID = _error(422, "A parameter is invalid; `loc` names it.", ValidationErrorBody)


def _close_reason(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= MAX_CLOSE_REASON:
        return text
    return encoded[: MAX_CLOSE_REASON - 3].decode(errors="ignore") + "..."


def build_router(settings: CatalogSettings, image_in_catalog: Callable[[str], Awaitable[bool]]) -> APIRouter:
    """The rebuild and build routes; `image_in_catalog(name)` says whether the catalog holds the image."""
    router = APIRouter(tags=["builds"])
    ui_url = settings.dagster_ui_url.rstrip("/") if settings.dagster_ui_url else None
    poll_s = settings.build_log_poll_s

    def new_client(url: str) -> DagsterClient:
        return DagsterClient(url, timeout_s=settings.dagster_timeout_s)

    def dagster_url(run_id: str) -> str | None:
        return f"{ui_url}/runs/{run_id}" if ui_url else None

    @asynccontextmanager
    async def dagster() -> AsyncIterator[DagsterClient]:
        """A client of Dagster for one request, its failures answered 503. Not a dependency: a request's
        own parameters are validated first (422), and only then is Dagster's absence its answer."""
        if not settings.dagster_graphql_url:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"Builds need Dagster, and {GRAPHQL_URL_ENV} is not set: the catalog does not know where "
                "Dagster's GraphQL API is",
            )
        async with new_client(settings.dagster_graphql_url) as client:
            try:
                yield client
            except DagsterUnavailable as error:
                log.warning("%s", error)
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None

    @router.post(
        "/api/v1/images/{name}/rebuild",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=RebuildAccepted,
        responses={
            **_error(401, "No bearer token, or one that is not valid (WWW-Authenticate says why)."),
            **_error(403, "The token lacks the rebuild role."),
            **_error(404, "The catalog holds no image of that name, or Dagster knows none."),
            **_INVALID,
            **_error(503, "Dagster is not configured, cannot be reached, or refused the run."),
        },
    )
    async def rebuild_image(
        name: ImageNameParam,
        requester: Annotated[str, Depends(_requester)],
    ) -> RebuildAccepted:
        """Launch one Dagster run that rebuilds the image and every image built FROM it (forced: built
        even when the registry already has the build), checks them, publishes and catalogs them."""
        if not await image_in_catalog(name):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Image {name!r} is not in the catalog")
        async with dagster() as client:
            try:
                rebuild = await client.launch_rebuild(name, requester)
            except ImageUnknownToDagster as error:
                raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
        log.info(
            "rebuild of %s requested by %s: run %s (%d assets)",
            name,
            requester,
            rebuild.run_id,
            len(rebuild.assets),
        )
        return RebuildAccepted(
            run_id=rebuild.run_id,
            image=name,
            assets=rebuild.assets,
            status_url=f"/api/v1/builds/{rebuild.run_id}",
            logs_url=f"/api/v1/builds/{rebuild.run_id}/logs",
            dagster_url=dagster_url(rebuild.run_id),
        )

    @router.get(
        "/api/v1/builds/{run_id}",
        response_model=BuildStatus,
        responses={
            **_error(404, "Dagster has no run of that id."),
            **_INVALID,
            **_error(503, "Dagster is not configured or cannot be reached."),
        },
    )
    async def build_status(run_id: RunIdParam) -> BuildStatus:
        """Where a build stands (Dagster's run status: QUEUED, STARTING, STARTED, SUCCESS, FAILURE, ...)."""
        async with dagster() as client:
            try:
                run = await client.run(run_id)
            except RunNotFound:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"Dagster has no run {run_id!r}") from None
        return BuildStatus(
            run_id=run.runId,
            status=run.status,
            image=run.tag(REBUILD_IMAGE_TAG) or run.tag("thinkube/image"),
            start_time=run.startTime,
            end_time=run.endTime,
            dagster_url=dagster_url(run.runId),
        )

    @router.websocket("/api/v1/builds/{run_id}/logs")
    async def build_logs(websocket: WebSocket, run_id: str) -> None:
        """The run's log lines from its start, live, then `end` and close 1000 once the run has ended.
        Close 4404: no such run; 4503: Dagster not configured or not answering."""
        await websocket.accept()
        if not settings.dagster_graphql_url:
            await websocket.close(CLOSE_DAGSTER_UNAVAILABLE, _close_reason(f"{GRAPHQL_URL_ENV} is not set"))
            return
        async with new_client(settings.dagster_graphql_url) as client:
            code, reason = await _stream(websocket, client, run_id, poll_s)
        if websocket.application_state != WebSocketState.DISCONNECTED and code is not None:
            await websocket.close(code, _close_reason(reason))

    return router


async def _stream(
    websocket: WebSocket, client: DagsterClient, run_id: str, poll_s: float
) -> tuple[int | None, str]:
    """Send the run's log until it ends or the client goes; the close code and reason to send (None: the
    client is gone)."""

    async def send() -> tuple[int, str]:
        try:
            async for message in follow_run(client, run_id, poll_s=poll_s, patience_s=FOLLOW_PATIENCE_S):
                await websocket.send_text(message.model_dump_json())
        except RunNotFound:
            return CLOSE_UNKNOWN_RUN, f"Dagster has no run {run_id}"
        except DagsterUnavailable as error:
            log.warning("following run %s: %s", run_id, error)
            return CLOSE_DAGSTER_UNAVAILABLE, str(error)
        return 1000, "the run has ended"

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender = asyncio.create_task(send())
    watcher = asyncio.create_task(until_disconnect())
    try:
        await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, watcher):
            task.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
    if sender.done() and not sender.cancelled() and sender.exception() is None:
        return sender.result()
    if sender.done() and not sender.cancelled():
        error = sender.exception()
        log.warning("following run %s failed: %s", run_id, error.__class__.__name__)
        return 1011, "the catalog failed to follow the run"
    return None, ""
