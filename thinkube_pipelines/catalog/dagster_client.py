"""The catalog's client of Dagster's GraphQL API: launch an image's rebuild, read a run, follow its logs.

The catalog service does not depend on Dagster's Python packages (its image installs `.[catalog]` only), so
this speaks GraphQL over httpx and reads the answers into pydantic models. Every failure to get a usable
answer (unreachable, an HTTP error, GraphQL `errors`, a `PythonError` or another error result) becomes
`DagsterUnavailable`, whose message names Dagster and its URL and carries Dagster's own message, never a
stack trace.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PART_TAG = "thinkube/part"
IMAGE_PART = "image"
IMAGE_TAG = "thinkube/image"
#: The job that builds images (selection: every asset tagged thinkube/part=image); a rebuild subsets it,
#: or Dagster's implicit job of every asset when the build job does not hold them all.
BUILD_JOB = "build_images"
ASSET_JOB = "__ASSET_JOB"
FORCE_REBUILD_TAG = "thinkube/force-rebuild"
RUN_KIND_TAG = "thinkube/run-kind"
REQUESTED_BY_TAG = "thinkube/requested-by"
TRIGGER_TAG = "thinkube/trigger"
REBUILD_IMAGE_TAG = "thinkube/rebuild-image"
CATALOG_REBUILD = "catalog-rebuild"

RunStatus = Literal[
    "QUEUED",
    "NOT_STARTED",
    "MANAGED",
    "STARTING",
    "STARTED",
    "SUCCESS",
    "FAILURE",
    "CANCELING",
    "CANCELED",
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
M = TypeVar("M", bound=BaseModel)


class DagsterUnavailable(Exception):
    """Dagster could not give a usable answer: the catalog answers 503 with this message."""


class ImageUnknownToDagster(Exception):
    """Dagster's code location has no materializable asset for the image: the catalog answers 404."""


class RunNotFound(Exception):
    """Dagster has no run of that id."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AssetKey(_Model):
    path: list[str]

    @property
    def slash(self) -> str:
        return "/".join(self.path)


class Tag(_Model):
    key: str
    value: str


class _Location(_Model):
    name: str


class Repository(_Model):
    name: str
    location: _Location


class AssetCheck(_Model):
    name: str


class _AssetChecks(_Model):
    typename: str = Field(alias="__typename")
    checks: list[AssetCheck] = []


class AssetNode(_Model):
    """What the rebuild needs to know of one asset of the code location."""

    assetKey: AssetKey
    tags: list[Tag]
    isMaterializable: bool
    jobNames: list[str]
    dependedByKeys: list[AssetKey]
    repository: Repository
    assetChecksOrError: _AssetChecks

    def tag(self, key: str) -> str | None:
        return next((tag.value for tag in self.tags if tag.key == key), None)

    @property
    def is_image_part(self) -> bool:
        return self.tag(PART_TAG) == IMAGE_PART

    @property
    def checks(self) -> list[str]:
        return [check.name for check in self.assetChecksOrError.checks]


class CheckHandle(_Model):
    name: str
    assetKey: AssetKey


class Run(_Model):
    """A run as Dagster reports it."""

    runId: str
    status: RunStatus
    jobName: str
    tags: list[Tag]
    startTime: float | None = None
    endTime: float | None = None
    assetSelection: list[AssetKey] | None = None
    assetCheckSelection: list[CheckHandle] | None = None

    def tag(self, key: str) -> str | None:
        return next((tag.value for tag in self.tags if tag.key == key), None)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class RunEvent(_Model):
    """One event of a run's event log (every kind implements MessageEvent)."""

    typename: str = Field(alias="__typename")
    message: str = ""
    timestamp: str | None = None
    stepKey: str | None = None
    eventType: str | None = None
    fileKey: str | None = None
    stepKeys: list[str] | None = None

    @property
    def time(self) -> float | None:
        """Seconds since the epoch (Dagster sends milliseconds, as a string)."""
        try:
            return float(self.timestamp) / 1000 if self.timestamp else None
        except ValueError:
            return None


class EventPage(_Model):
    events: list[RunEvent]
    cursor: str
    hasMore: bool


class CapturedLogs(_Model):
    stdout: str | None = None
    stderr: str | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class Rebuild:
    """What a rebuild launched: its run and the assets and checks it selected."""

    run_id: str
    image: str
    assets: list[str]
    checks: list[str]


class LogLine(_Model):
    """One line of a build's log, as the WebSocket sends it."""

    type: Literal["line"] = "line"
    text: str
    time: float | None
    step: str | None


class LogEnd(_Model):
    type: Literal["end"] = "end"
    status: str


def _without_credentials(url: str) -> str:
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url
    except httpx.InvalidURL:
        return "(an invalid URL)"


_ASSET_NODES = """
query ImageAssets {
  assetNodes {
    assetKey { path }
    tags { key value }
    isMaterializable
    jobNames
    dependedByKeys { path }
    repository { name location { name } }
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
  }
}
"""

_LAUNCH = """
mutation LaunchRebuild($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on PythonError { className }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

#: One run: its status, times, tags and selection. Public so the tests' Dagster fixture reads runs
#: with the very query the catalog uses.
RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId status jobName startTime endTime
      tags { key value }
      assetSelection { path }
      assetCheckSelection { name assetKey { path } }
    }
    ... on Error { message }
  }
}
"""

_EVENTS = """
query RunEvents($runId: ID!, $after: String) {
  logsForRun(runId: $runId, afterCursor: $after, limit: 1000) {
    __typename
    ... on EventConnection {
      cursor hasMore
      events {
        __typename
        ... on MessageEvent { message timestamp stepKey eventType }
        ... on LogsCapturedEvent { fileKey stepKeys }
      }
    }
    ... on Error { message }
  }
}
"""

_CAPTURED = """
query CapturedLogs($logKey: [String!]!, $cursor: String) {
  capturedLogs(logKey: $logKey, cursor: $cursor) { stdout stderr cursor }
}
"""

_WORKSPACE = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
    ... on Error { message }
  }
}
"""


#: A line of Dagster's console log in a step's captured stderr: the same message as an event of the run's
#: event log, which the log stream sends already (with its time and step), so it is not sent twice.
DAGSTER_CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - dagster - [A-Z]+ - ")
#: Longest Dagster message passed on in an answer.
MAX_MESSAGE_CHARS = 2000


def without_stack(message: str) -> str:
    """Dagster's message without the stack traces its errors embed (`Stack Trace:`, then `  File ...`
    lines each followed by their code): the reason is for the caller, the stack for Dagster's own log."""
    kept: list[str] = []
    in_frame = False
    for line in message.splitlines():
        stripped = line.strip()
        if stripped == "Stack Trace:":
            in_frame = False
            continue
        if line.startswith("  File ") or stripped.startswith('File "'):
            in_frame = True
            continue
        if in_frame and stripped and line.startswith("    "):
            continue
        in_frame = False
        if stripped or (kept and kept[-1].strip()):
            kept.append(line.rstrip())
    text = "\n".join(kept).strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


class DagsterClient:
    """Dagster's GraphQL API at `url`, for the catalog's rebuilds and build logs.

    Use it as an async context manager (one HTTP connection pool for its life)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.shown_url = _without_credentials(url)
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def __aenter__(self) -> DagsterClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _unavailable(self, why: str) -> DagsterUnavailable:
        return DagsterUnavailable(f"Dagster's GraphQL API at {self.shown_url} {why}")

    async def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a GraphQL answer; DagsterUnavailable when there is none or it carries errors."""
        try:
            response = await self._http.post(self.url, json={"query": document, "variables": variables or {}})
        except httpx.TimeoutException:
            raise self._unavailable("did not answer in time") from None
        except httpx.HTTPError as error:
            raise self._unavailable(f"cannot be reached ({error.__class__.__name__}: {error})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._unavailable(f"answered HTTP {response.status_code} without a GraphQL body")
        errors = body.get("errors")
        if errors:
            messages = "; ".join(
                str(error.get("message", error)) if isinstance(error, dict) else str(error)
                for error in errors
            )
            raise self._unavailable(f"answered with errors: {without_stack(messages)}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise self._unavailable(f"answered HTTP {response.status_code} without data")
        return data

    def _read(self, model: type[M], value: object, what: str) -> M:
        try:
            return model.model_validate(value)
        except ValidationError as error:
            raise self._unavailable(f"answered an unexpected {what}: {error.errors()[0]['msg']}") from None

    def _error_result(self, result: dict[str, Any], doing: str) -> DagsterUnavailable:
        kind = result.get("__typename", "an error")
        message = result.get("message")
        if message is None and result.get("errors"):
            message = "; ".join(str(error.get("message")) for error in result["errors"])
        if message is None:
            message = ", ".join(f"{key}={value}" for key, value in result.items() if key != "__typename")
        return self._unavailable(f"refused to {doing}: {kind}: {without_stack(str(message))}")

    async def asset_nodes(self) -> list[AssetNode]:
        data = await self.query(_ASSET_NODES)
        return [self._read(AssetNode, node, "asset node") for node in data.get("assetNodes") or []]

    async def launch_rebuild(self, image: str, requested_by: str) -> Rebuild:
        """Launch one run of the build job: the image's chain, every image chain built FROM it
        (transitively), and their checks, forced to build."""
        nodes = await self.asset_nodes()
        selected = rebuild_selection(nodes, image)
        repository = selected[0].repository
        job = BUILD_JOB if all(BUILD_JOB in node.jobNames for node in selected) else ASSET_JOB
        assets = [node.assetKey for node in selected]
        checks = [(node.assetKey, check) for node in selected for check in node.checks]
        params = {
            "selector": {
                "repositoryLocationName": repository.location.name,
                "repositoryName": repository.name,
                "jobName": job,
                "assetSelection": [{"path": key.path} for key in assets],
                "assetCheckSelection": [
                    {"assetKey": {"path": key.path}, "name": name} for key, name in checks
                ],
            },
            "executionMetadata": {
                "tags": [
                    {"key": key, "value": value}
                    for key, value in {
                        FORCE_REBUILD_TAG: "true",
                        RUN_KIND_TAG: "image-build",
                        REQUESTED_BY_TAG: requested_by,
                        TRIGGER_TAG: CATALOG_REBUILD,
                        REBUILD_IMAGE_TAG: image,
                    }.items()
                ]
            },
        }
        data = await self.query(_LAUNCH, {"params": params})
        result = data.get("launchRun") or {}
        if result.get("__typename") != "LaunchRunSuccess":
            raise self._error_result(result, f"launch the rebuild of {image}")
        run_id = str(result["run"]["runId"])
        return Rebuild(
            run_id=run_id,
            image=image,
            assets=[key.slash for key in assets],
            checks=[f"{key.slash}:{name}" for key, name in checks],
        )

    async def run(self, run_id: str) -> Run:
        data = await self.query(RUN_QUERY, {"runId": run_id})
        result = data.get("runOrError") or {}
        kind = result.get("__typename")
        if kind == "RunNotFoundError":
            raise RunNotFound(run_id)
        if kind != "Run":
            raise self._error_result(result, f"report run {run_id}")
        return self._read(Run, result, "run")

    async def events(self, run_id: str, after: str | None) -> EventPage:
        data = await self.query(_EVENTS, {"runId": run_id, "after": after})
        result = data.get("logsForRun") or {}
        kind = result.get("__typename")
        if kind == "RunNotFoundError":
            raise RunNotFound(run_id)
        if kind != "EventConnection":
            raise self._error_result(result, f"list the events of run {run_id}")
        return self._read(EventPage, result, "event page")

    async def captured_logs(self, log_key: list[str], cursor: str | None) -> CapturedLogs:
        data = await self.query(_CAPTURED, {"logKey": log_key, "cursor": cursor})
        return self._read(CapturedLogs, data.get("capturedLogs") or {}, "captured log")

    async def loaded_locations(self) -> dict[str, str | None]:
        """Each code location's name and its load error (None once loaded); {} while none is known."""
        data = await self.query(_WORKSPACE)
        result = data.get("workspaceOrError") or {}
        if result.get("__typename") != "Workspace":
            raise self._error_result(result, "describe its workspace")
        locations: dict[str, str | None] = {}
        for entry in result.get("locationEntries") or []:
            loaded = entry.get("locationOrLoadError") or {}
            if entry.get("loadStatus") != "LOADED" or not loaded:
                continue
            error = loaded.get("message") if loaded.get("__typename") == "PythonError" else None
            locations[str(entry["name"])] = error
        return locations


def rebuild_selection(nodes: list[AssetNode], image: str) -> list[AssetNode]:
    """The image's own materializable assets and every image asset downstream of them (the images built
    FROM it, transitively), in the order Dagster listed them. Only assets tagged thinkube/part=image count,
    so the walk never reaches, nor selects, the hub."""
    images = {node.assetKey.slash: node for node in nodes if node.is_image_part}
    own = [node for node in images.values() if node.tag(IMAGE_TAG) == image and node.isMaterializable]
    if not own:
        raise ImageUnknownToDagster(
            f"Dagster's code location has no materializable asset of image {image!r} "
            f"(tagged {IMAGE_TAG}={image}): reload the code location if the image was added since"
        )
    chosen: set[str] = set()
    todo = deque(node.assetKey.slash for node in own)
    while todo:
        key = todo.popleft()
        if key in chosen:
            continue
        chosen.add(key)
        for downstream in images[key].dependedByKeys:
            if downstream.slash in images and images[downstream.slash].isMaterializable:
                todo.append(downstream.slash)
    return [node for node in images.values() if node.assetKey.slash in chosen]


@dataclass
class _Stream:
    """One captured stream (stdout or stderr of one log key): the part of a line not yet ended."""

    partial: str = ""

    def lines(self, text: str | None) -> list[str]:
        if not text:
            return []
        *complete, self.partial = (self.partial + text).split("\n")
        return [line.removesuffix("\r") for line in complete]

    def rest(self) -> list[str]:
        rest, self.partial = self.partial, ""
        return [rest.removesuffix("\r")] if rest else []


@dataclass
class _CapturedFile:
    log_key: list[str]
    step: str | None
    cursor: str | None = None
    stdout: _Stream = field(default_factory=_Stream)
    stderr: _Stream = field(default_factory=_Stream)


class _Follower:
    """What has been read of one run: the event cursor, and each captured file with its cursor. Each
    read advances its cursor only once its answer is in hand, so a failed read loses nothing."""

    def __init__(self, client: DagsterClient, run_id: str) -> None:
        self._client = client
        self._run_id = run_id
        self._event_cursor: str | None = None
        self._files: dict[str, _CapturedFile] = {}

    async def events(self) -> list[LogLine]:
        page = await self._client.events(self._run_id, self._event_cursor)
        lines: list[LogLine] = []
        for event in page.events:
            if event.fileKey and event.fileKey not in self._files:
                steps = event.stepKeys or []
                self._files[event.fileKey] = _CapturedFile(
                    log_key=[self._run_id, "compute_logs", event.fileKey],
                    # One file per process: a step's own when it has one, else the run's (no one step).
                    step=steps[0] if len(steps) == 1 else event.stepKey,
                )
            if event.message:
                lines.append(LogLine(text=event.message, time=event.time, step=event.stepKey))
        self._event_cursor = page.cursor
        return lines if not page.hasMore else lines + await self.events()

    async def captured(self) -> list[LogLine]:
        lines: list[LogLine] = []
        for file in self._files.values():
            chunk = await self._client.captured_logs(file.log_key, file.cursor)
            for stream, text in ((file.stdout, chunk.stdout), (file.stderr, chunk.stderr)):
                lines.extend(
                    LogLine(text=line, time=None, step=file.step)
                    for line in stream.lines(text)
                    if not DAGSTER_CONSOLE_LINE.match(line)
                )
            file.cursor = chunk.cursor or file.cursor
        return lines

    def rest(self) -> list[LogLine]:
        """The last line of each stream when it did not end with a newline."""
        return [
            LogLine(text=line, time=None, step=file.step)
            for file in self._files.values()
            for stream in (file.stdout, file.stderr)
            for line in stream.rest()
            if not DAGSTER_CONSOLE_LINE.match(line)
        ]


async def follow_run(
    client: DagsterClient, run_id: str, *, poll_s: float = 0.5, patience_s: float = 30.0
) -> AsyncIterator[LogLine | LogEnd]:
    """The run's log from its start: each event-log message, and each line its steps printed (captured
    stdout/stderr, read with cursors so that each line comes once, in order per stream; Dagster's own
    console copies of the events left out), until the run ends; then its terminal status. Events and
    output are read in turns, so how they interleave depends on when a client reads.

    RunNotFound or DagsterUnavailable at once when the run cannot be read at the start; later, Dagster
    may fail to answer for `patience_s` before DagsterUnavailable ends the stream (a restart of the
    webserver does not cut a build's log). The status is read before each round of reading, so the round
    after a terminal status has everything the run wrote."""
    run: Run | None = await client.run(run_id)
    follower = _Follower(client, run_id)
    failing_since: float | None = None
    while True:
        try:
            if run is None:
                run = await client.run(run_id)
            for line in await follower.events():
                yield line
            for line in await follower.captured():
                yield line
        except DagsterUnavailable:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > patience_s:
                raise
            await asyncio.sleep(poll_s)
            continue
        failing_since = None
        if run.finished:
            for line in follower.rest():
                yield line
            yield LogEnd(status=run.status)
            return
        run = None
        await asyncio.sleep(poll_s)
