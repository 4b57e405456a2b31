"""What the catalog serves to readers: one generation of the catalog, encoded once, and kept current.

Every read of the hub (one per spawn) and of the operators' page is answered from a `CatalogView`: the
JSON of each item and of each list is built once per change of the catalog, with its ETag. `LiveView`
keeps the view current across service replicas: a read waits for a generation check that *started after
the read arrived*, so it sees every write committed before it, whichever replica wrote it. Concurrent
reads share one check, so 200 readers cost one indexed query, not 200, and never queue on the pool.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from thinkube_pipelines.catalog.contract import JUPYTER_CATEGORY, CatalogItem


class DatabaseTimeout(Exception):
    """The database took longer than the service waits: the request is answered 503."""


@dataclass(frozen=True)
class Encoded:
    """A response body and its strong ETag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Encoded:
        return cls(body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    def matches(self, if_none_match: str | None) -> bool:
        """Whether a request's If-None-Match names this body (RFC 9110: weak comparison, `*`)."""
        if not if_none_match:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or self.etag in tags


def effective_defaults(items: Iterable[CatalogItem]) -> set[str]:
    """The one default of each category among its active images: the marked one, else the first by name."""
    chosen: dict[str, CatalogItem] = {}
    for item in sorted(items, key=lambda item: item.name):
        if not item.is_active:
            continue
        current = chosen.get(item.category)
        if current is None or (item.default and not current.default):
            chosen[item.category] = item
    return {item.name for item in chosen.values()}


class CatalogView:
    """The catalog as of one generation; immutable, so any number of readers share it."""

    def __init__(self, generation: int, items: Iterable[CatalogItem]) -> None:
        self.generation = generation
        stored = sorted(items, key=lambda item: item.name)
        defaults = effective_defaults(stored)
        self.items = [item.model_copy(update={"default": item.name in defaults}) for item in stored]
        self._item_bodies = {item.name: item.model_dump_json().encode() for item in self.items}
        self._items = {name: Encoded.of(body) for name, body in self._item_bodies.items()}
        self._lists: dict[tuple[str | None, bool | None], Encoded] = {}

    def item(self, name: str) -> Encoded | None:
        return self._items.get(name)

    def listing(self, category: str | None = None, active: bool | None = None) -> Encoded:
        """The items of `category` (any if None), active or inactive (either if None), by name."""
        key = (category, active)
        encoded = self._lists.get(key)
        if encoded is None:
            # Built at most once per generation and query: the items' own JSON, joined.
            bodies = [
                self._item_bodies[item.name]
                for item in self.items
                if (category is None or item.category == category)
                and (active is None or item.is_active == active)
            ]
            encoded = self._lists[key] = Encoded.of(b"[" + b",".join(bodies) + b"]")
        return encoded

    def jupyter(self) -> Encoded | None:
        """What the hub offers: the active Jupyter images; None when there is none."""
        encoded = self.listing(JUPYTER_CATEGORY, True)
        return None if encoded.body == b"[]" else encoded


class LiveView:
    """The current `CatalogView` of a database that other replicas write too.

    `refresh(view)` runs in a worker thread (through `run`, the API's database gate): it reads the
    generation and returns `view` itself when unchanged, else a new view. At most one refresh runs at a
    time; readers that arrive while one runs wait for the next, which starts as soon as it ends.
    """

    def __init__(
        self,
        refresh: Callable[[CatalogView | None], CatalogView],
        run: Callable[..., Awaitable[CatalogView]],
        timeout_s: float,
    ) -> None:
        self._refresh = refresh
        self._timeout_s = timeout_s
        self._run = run
        self._view: CatalogView | None = None
        self._running: asyncio.Task[CatalogView] | None = None
        self._queued: asyncio.Future[CatalogView] | None = None

    async def current(self) -> CatalogView:
        """A view at least as new as every write committed before this call."""
        if self._running is None:
            self._running = self._start()
            waited: asyncio.Future[CatalogView] = self._running
        else:
            # The running check may have read the generation before we arrived: wait for the next one.
            if self._queued is None:
                self._queued = asyncio.get_running_loop().create_future()
            waited = self._queued
        try:
            async with asyncio.timeout(self._timeout_s):
                return await asyncio.shield(waited)
        except TimeoutError:
            raise DatabaseTimeout from None

    def _start(self) -> asyncio.Task[CatalogView]:
        task = asyncio.ensure_future(self._check())
        task.add_done_callback(self._finished)
        return task

    async def _check(self) -> CatalogView:
        view = await self._run(self._refresh, self._view)
        if self._view is None or view.generation >= self._view.generation:
            self._view = view
        return self._view

    def _finished(self, task: asyncio.Task[CatalogView]) -> None:
        self._running = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter also gets it through its own await
        queued, self._queued = self._queued, None
        if queued is None:
            return
        self._running = self._start()
        self._running.add_done_callback(lambda done: _settle(queued, done))


def _settle(future: asyncio.Future[CatalogView], task: asyncio.Task[CatalogView]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
        future.exception()
    else:
        future.set_result(task.result())
