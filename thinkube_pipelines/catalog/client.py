"""Typed clients of the catalog API: `CatalogClient` blocks (requests), for the pipeline and scripts;
`AsyncCatalogClient` awaits (httpx), for callers on an event loop such as the hub's spawn page, which must
not stall every other user while the catalog answers.

Both share one implementation of everything but the transport (`_Catalog`): which request each call makes,
the auth header, how an answer becomes a contract model or a `CatalogError`. A transport only sends a
`_Request` and hands back an `_Answer`, so the two clients cannot drift apart.

Every failure is a CatalogError that names the catalog URL, so an operator knows which service to look at.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Generic, TypeVar
from urllib.parse import quote

import httpx
import requests
from pydantic import TypeAdapter, ValidationError

from thinkube_pipelines.catalog.contract import (
    CatalogItem,
    Change,
    ErrorBody,
    ImageUpsert,
    ValidationErrorBody,
    WriteOutcome,
)

DEFAULT_TIMEOUT_S = 10.0
IMAGES_PATH = "/api/v1/images"
_ITEMS = TypeAdapter(list[CatalogItem])
_DETAIL_MAX = 500
T = TypeVar("T")


class CatalogError(RuntimeError):
    """The catalog could not be reached, refused the request, or answered something unexpected.

    `status` is the HTTP status when the catalog answered; `retry_after_s` is its Retry-After (on a 503,
    say) in seconds, so a caller can wait that long instead of guessing.
    """

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str] | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case
    content: bytes


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its answer; statuses outside `ok` become a CatalogError instead."""

    request: _Request
    ok: frozenset[int]
    read: Callable[[_Request, _Answer], T]


@dataclass
class _Catalog:
    """What both clients share: the requests they make and what they make of the answers."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: How many `jupyter_images()` calls the catalog answered 304, i.e. served from the cached list.
    jupyter_not_modified: int = field(default=0, init=False)
    # The last Jupyter list and its ETag, taken as one value so concurrent calls never mix two lists.
    _jupyter_cache: tuple[str, tuple[CatalogItem, ...]] | None = field(default=None, init=False, repr=False)

    def item_url(self, name: str) -> str:
        """Where the catalog serves the image `name` (what the pipeline shows as the asset's link)."""
        return self._url(_item_path(name))

    # The calls, one per API route.

    def _upsert(self, image: ImageUpsert) -> _Call[WriteOutcome]:
        # An unset is_active is left out rather than sent as null: the two mean the same (a new image is
        # active, an existing one keeps its state), and a server that predates the field accepts it.
        body = image.model_dump_json(exclude={"is_active"} if image.is_active is None else None)
        return self._call("POST", IMAGES_PATH, self._outcome, ok=(200, 201), body=body.encode(), write=True)

    def _get(self, name: str) -> _Call[CatalogItem | None]:
        def read(request: _Request, answer: _Answer) -> CatalogItem | None:
            if answer.status == 404:
                return None
            return self._parse("item", CatalogItem.model_validate_json, request, answer)

        return self._call("GET", _item_path(name), read, ok=(200, 404))

    def _list(self, category: str | None, active: bool | None) -> _Call[builtins.list[CatalogItem]]:
        params = {}
        if category is not None:
            params["category"] = category
        if active is not None:
            params["active"] = "true" if active else "false"
        return self._call("GET", IMAGES_PATH, self._items, ok=(200,), params=params or None)

    def _jupyter_images(self) -> _Call[builtins.list[CatalogItem]]:
        cached = self._jupyter_cache

        def read(request: _Request, answer: _Answer) -> builtins.list[CatalogItem]:
            if answer.status == 304 and cached is not None:
                self.jupyter_not_modified += 1
                return [item.model_copy(deep=True) for item in cached[1]]
            items = self._items(request, answer)
            etag = answer.headers.get("etag")
            kept = tuple(item.model_copy(deep=True) for item in items)
            self._jupyter_cache = (etag, kept) if etag else None
            return items

        # Without a cached list a 304 would leave nothing to answer with: it is then an error.
        return self._call(
            "GET",
            f"{IMAGES_PATH}/jupyter",
            read,
            ok=(200, 304) if cached else (200,),
            headers={"If-None-Match": cached[0]} if cached else None,
        )

    def _set_active(self, name: str, active: bool) -> _Call[WriteOutcome]:
        action = "activate" if active else "deactivate"
        return self._call("POST", f"{_item_path(name)}/{action}", self._outcome, ok=(200,), write=True)

    def _delete(self, name: str) -> _Call[None]:
        return self._call("DELETE", _item_path(name), lambda _request, _answer: None, ok=(204,), write=True)

    # Building requests and reading answers.

    def _url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}{path}"

    def _call(
        self,
        method: str,
        path: str,
        read: Callable[[_Request, _Answer], T],
        *,
        ok: tuple[int, ...],
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        write: bool = False,
    ) -> _Call[T]:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if write:
            if not self.token:
                raise CatalogError(f"catalog {self.base_url}: no token configured to write {path}")
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = _Request(method, path, all_headers, params, body)
        return _Call(request, frozenset(ok), read)

    def _finish(self, call: _Call[T], answer: _Answer) -> T:
        if answer.status not in call.ok:
            raise self._refused(call.request, answer)
        return call.read(call.request, answer)

    def _refused(self, request: _Request, answer: _Answer) -> CatalogError:
        message = (
            f"catalog {self.base_url}: {request.method} {request.path} answered {answer.status}: "
            f"{_detail(answer)}"
        )
        retry_after = answer.headers.get("retry-after")
        if retry_after:
            message += f" (Retry-After: {retry_after[:64]})"
        return CatalogError(message, status=answer.status, retry_after_s=_seconds(retry_after))

    def _unreachable(self, request: _Request, error: Exception, timed_out: bool) -> CatalogError:
        if timed_out:
            return CatalogError(
                f"catalog {self.base_url} is unreachable: no answer to {request.method} {request.path} "
                f"within {self.timeout_s:g} s"
            )
        reason = str(error) or type(error).__name__
        return CatalogError(f"catalog {self.base_url} is unreachable: {reason}")

    def _parse(self, what: str, validate: Callable[[bytes], T], request: _Request, answer: _Answer) -> T:
        try:
            return validate(answer.content)
        except ValidationError as error:
            raise CatalogError(
                f"catalog {self.base_url}: {request.method} {request.path} answered an invalid {what}: "
                f"{error}",
                status=answer.status,
            ) from None

    def _outcome(self, request: _Request, answer: _Answer) -> WriteOutcome:
        return self._parse("write outcome", WriteOutcome.model_validate_json, request, answer)

    def _items(self, request: _Request, answer: _Answer) -> builtins.list[CatalogItem]:
        return self._parse("list", _ITEMS.validate_json, request, answer)


@dataclass
class CatalogClient(_Catalog):
    """The catalog service at `base_url`, blocking; `token` (a bearer token) is needed for writes only."""

    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def upsert(self, image: ImageUpsert) -> WriteOutcome:
        """Create or replace the image by name; the outcome says whether it was created, updated or
        already held exactly that (then nothing was written)."""
        return self._send(self._upsert(image))

    def ensure(self, image: ImageUpsert) -> tuple[CatalogItem, Change]:
        """Make the catalog hold `image` (one write: the catalog itself decides "unchanged")."""
        outcome = self.upsert(image)
        return outcome.item, outcome.change

    def get(self, name: str) -> CatalogItem | None:
        """The image named `name`, or None when the catalog has no such image."""
        return self._send(self._get(name))

    def list(self, category: str | None = None, active: bool | None = None) -> builtins.list[CatalogItem]:
        """Every image, or those of `category` / in the `active` state."""
        return self._send(self._list(category, active))

    def jupyter_images(self) -> builtins.list[CatalogItem]:
        """What the hub offers: the active Jupyter images (the catalog answers 503 when there are none).

        The last list is kept with its ETag: when the catalog answers 304 it is reused, not sent again.
        """
        return self._send(self._jupyter_images())

    def activate(self, name: str) -> WriteOutcome:
        """Offer the image again."""
        return self._send(self._set_active(name, True))

    def deactivate(self, name: str) -> WriteOutcome:
        """Stop offering the image; it stays in the catalog."""
        return self._send(self._set_active(name, False))

    def delete(self, name: str) -> None:
        """Remove the image from the catalog (a 404 when there is none is an error)."""
        self._send(self._delete(name))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> CatalogClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, call: _Call[T]) -> T:
        request = call.request
        try:
            response = self.session.request(
                request.method,
                self._url(request.path),
                params=request.params,
                data=request.body,
                headers=request.headers,
                timeout=self.timeout_s,
                allow_redirects=False,  # as httpx: a redirect is reported, never followed
            )
        except requests.RequestException as error:
            raise self._unreachable(request, error, isinstance(error, requests.Timeout)) from None
        answer = _Answer(response.status_code, _lower(response.headers), response.content)
        return self._finish(call, answer)


@dataclass
class AsyncCatalogClient(_Catalog):
    """The catalog service at `base_url`, for an event loop: every call awaits the network, none blocks.

    Make one at startup and reuse it (it pools connections and keeps the Jupyter list's ETag); close it
    with `aclose()` or `async with`. `token` is needed for writes only.
    """

    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient, repr=False)

    async def upsert(self, image: ImageUpsert) -> WriteOutcome:
        """Create or replace the image by name; the outcome says whether it was created, updated or
        already held exactly that (then nothing was written)."""
        return await self._send(self._upsert(image))

    async def ensure(self, image: ImageUpsert) -> tuple[CatalogItem, Change]:
        """Make the catalog hold `image` (one write: the catalog itself decides "unchanged")."""
        outcome = await self.upsert(image)
        return outcome.item, outcome.change

    async def get(self, name: str) -> CatalogItem | None:
        """The image named `name`, or None when the catalog has no such image."""
        return await self._send(self._get(name))

    async def list(
        self, category: str | None = None, active: bool | None = None
    ) -> builtins.list[CatalogItem]:
        """Every image, or those of `category` / in the `active` state."""
        return await self._send(self._list(category, active))

    async def jupyter_images(self) -> builtins.list[CatalogItem]:
        """What the hub offers: the active Jupyter images (the catalog answers 503 when there are none).

        The last list is kept with its ETag: when the catalog answers 304 it is reused, not sent again.
        """
        return await self._send(self._jupyter_images())

    async def activate(self, name: str) -> WriteOutcome:
        """Offer the image again."""
        return await self._send(self._set_active(name, True))

    async def deactivate(self, name: str) -> WriteOutcome:
        """Stop offering the image; it stays in the catalog."""
        return await self._send(self._set_active(name, False))

    async def delete(self, name: str) -> None:
        """Remove the image from the catalog (a 404 when there is none is an error)."""
        await self._send(self._delete(name))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncCatalogClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call[T]) -> T:
        request = call.request
        try:
            response = await self.http.request(
                request.method,
                self._url(request.path),
                params=request.params,
                content=request.body,
                headers=request.headers,
                timeout=self.timeout_s,
                follow_redirects=False,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise self._unreachable(request, error, isinstance(error, httpx.TimeoutException)) from None
        answer = _Answer(response.status_code, _lower(response.headers), response.content)
        return self._finish(call, answer)


def _item_path(name: str) -> str:
    # Quoted whole: a name with a slash must not reach another route.
    return f"{IMAGES_PATH}/{quote(name, safe='')}"


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _detail(answer: _Answer) -> str:
    """The catalog's reason, from its error bodies (ErrorBody, ValidationErrorBody) or the raw text."""
    if 300 <= answer.status < 400 and "location" in answer.headers:
        return f"redirect to {answer.headers['location'][:_DETAIL_MAX]}"
    try:
        return ErrorBody.model_validate_json(answer.content).detail[:_DETAIL_MAX]
    except ValidationError:
        pass
    try:
        problems = ValidationErrorBody.model_validate_json(answer.content).detail
    except ValidationError:
        return answer.content.decode(errors="replace").strip()[:_DETAIL_MAX] or "(no body)"
    return "; ".join(f"{'.'.join(str(part) for part in p.loc)}: {p.msg}" for p in problems)[:_DETAIL_MAX]


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not retry_after:
        return None
    value = retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
