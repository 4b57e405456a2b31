"""A typed client of the catalog API, used by the pipeline (writes) and the hub's profiles (reads).

Every failure is a CatalogError that names the catalog URL, so an operator knows which service to look at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import requests
from pydantic import TypeAdapter, ValidationError

from thinkube_pipelines.catalog.contract import CatalogItem, ImageUpsert

DEFAULT_TIMEOUT_S = 10.0
_ITEMS = TypeAdapter(list[CatalogItem])


class CatalogError(RuntimeError):
    """The catalog could not be reached, refused the request, or answered something unexpected."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class CatalogClient:
    """The catalog service at `base_url`; `token` (a bearer token) is needed for writes only."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def upsert(self, image: ImageUpsert) -> tuple[CatalogItem, bool]:
        """Create or replace the image by name; returns the stored item and whether it was created."""
        response = self._request("POST", "/api/v1/images", json=image.model_dump(mode="json"), write=True)
        return self._item(response), response.status_code == 201

    def ensure(self, image: ImageUpsert) -> tuple[CatalogItem, str]:
        """Make the catalog hold exactly `image`; returns the item and "created", "updated" or "unchanged".

        An unchanged image is not written again, so a rebuild that changed nothing leaves the item (and
        its updated_at) as it was.
        """
        existing = self.get(image.name)
        if existing is not None and existing == CatalogItem.model_validate(image.model_dump()):
            return existing, "unchanged"
        item, created = self.upsert(image)
        return item, "created" if created else "updated"

    def get(self, name: str) -> CatalogItem | None:
        """The image named `name`, or None when the catalog has no such image."""
        response = self._request("GET", f"/api/v1/images/{name}", allow=(404,))
        return None if response.status_code == 404 else self._item(response)

    def list(self, category: str | None = None) -> list[CatalogItem]:
        params = {"category": category} if category else None
        return self._items(self._request("GET", "/api/v1/images", params=params))

    def jupyter_images(self) -> list[CatalogItem]:
        """What the hub offers: the active Jupyter images (the catalog answers 503 when there are none)."""
        return self._items(self._request("GET", "/api/v1/images/jupyter"))

    def item_url(self, name: str) -> str:
        return f"{self.base_url.rstrip('/')}/api/v1/images/{name}"

    def _request(
        self, method: str, path: str, *, write: bool = False, allow: tuple[int, ...] = (), **kwargs
    ) -> requests.Response:
        url = f"{self.base_url.rstrip('/')}{path}"
        headers = {"Accept": "application/json"}
        if write:
            if not self.token:
                raise CatalogError(f"catalog {self.base_url}: no token configured to write {path}")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise CatalogError(f"catalog {self.base_url} is unreachable: {exc}") from None
        if response.status_code >= 400 and response.status_code not in allow:
            raise CatalogError(
                f"catalog {self.base_url}: {method} {path} answered {response.status_code}: "
                f"{_detail(response)}",
                status=response.status_code,
            )
        return response

    def _item(self, response: requests.Response) -> CatalogItem:
        try:
            return CatalogItem.model_validate_json(response.content)
        except ValidationError as exc:
            raise CatalogError(f"catalog {self.base_url} answered an invalid item: {exc}") from None

    def _items(self, response: requests.Response) -> list[CatalogItem]:
        try:
            return _ITEMS.validate_json(response.content)
        except ValidationError as exc:
            raise CatalogError(f"catalog {self.base_url} answered an invalid list: {exc}") from None


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return str(detail)[:500]
