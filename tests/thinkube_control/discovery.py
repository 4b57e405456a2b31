"""thinkube-control's image discovery and Jupyter list, restated from its source so tests can run them.

Source: github.com/thinkube/thinkube-control at commit COMMIT (Apache-2.0):
backend/app/services/image_discovery.py (ImageDiscovery), backend/app/models/container_images.py
(ContainerImage) and backend/app/api/jupyter_images.py (get_jupyter_images). This is not a copy: each rule
is written again with the lines it comes from (`:N` is a line of the file named in the docstring), so the
tests can run thinkube-control's behaviour without its PostgreSQL database and FastAPI app. upstream.py
runs the real code, read from a checkout at test time, against the same ConfigMaps to show they agree.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

COMMIT = "77f207fd3d9fbd9cfb88f29300526efd4051035e"
MANIFEST_LABEL = "thinkube.io/image-manifest"
CATEGORY_LABEL = "thinkube.io/category"
CATEGORIES = ("system", "user")
"""container_images.py:30-33 (check constraint) and image_discovery.py:61 (the only keys of the result)."""


@dataclass
class Row:
    """One row of `container_images` (container_images.py:44-97): the columns discovery sets and the
    Jupyter list reads. `digest` and `size_bytes` exist (:91-92) but discovery never sets them."""

    name: Any
    registry: Any
    repository: Any
    tag: Any
    source_url: Any
    destination_url: Any
    description: Any
    category: Any
    source: Any
    protected: Any
    mirror_date: datetime
    image_metadata: Any
    harbor_project: Any
    digest: Any = None
    size_bytes: Any = None


class RowRejected(ValueError):
    """What PostgreSQL answers when a row breaks the table's constraints (the flush at :257 fails)."""


def select(configmaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """image_discovery.py:69-71: every ConfigMap, in every namespace, whose label
    `thinkube.io/image-manifest` equals `true`; in the API's list order (namespace, then name)."""
    chosen = [cm for cm in configmaps if (cm["metadata"].get("labels") or {}).get(MANIFEST_LABEL) == "true"]
    return sorted(chosen, key=lambda cm: (cm["metadata"].get("namespace", ""), cm["metadata"]["name"]))


def discover(configmaps: list[dict[str, Any]]) -> dict[str, list[Row]]:
    """ImageDiscovery.discover_all (image_discovery.py:55-104) up to the sync: rows by category.

    The category comes from the ConfigMap's label, default `user` (:83), and indexes a dict holding only
    `system` and `user` (:61, :84): any other value raises KeyError, which aborts the whole discovery
    (:97-99), not just that ConfigMap.
    """
    images: dict[str, list[Row]] = {"system": [], "user": []}
    for cm in select(configmaps):
        rows = extract(cm)
        if rows:
            category = cm["metadata"]["labels"].get(CATEGORY_LABEL, "user")
            images[category].extend(rows)
    return images


def extract(configmap: dict[str, Any]) -> list[Row]:
    """_extract_images_from_configmap (image_discovery.py:106-157).

    `data["manifest.json"]` (:119), missing or empty: no rows (:120-124); not JSON: no rows (:147-150);
    a `manifest_version` other than "1.0" is only logged (:130-133); each entry of `images` (:136) that
    fails becomes no row and the others stay (:137-145); any other error keeps the rows made so far
    (:151-157).
    """
    rows: list[Row] = []
    try:
        manifest_json = configmap.get("data").get("manifest.json")
        if not manifest_json:
            return rows
        manifest = json.loads(manifest_json)
        for data in manifest.get("images", []):
            try:
                row = create(data)
                if row:
                    rows.append(row)
            except Exception:
                pass
    except Exception:
        pass
    return rows


def create(data: dict[str, Any]) -> Row | None:
    """_create_image_from_manifest (image_discovery.py:159-202): the keys read and their defaults.

    Read: name, registry, repository, tag (default "latest"), source_url, destination_url (no default),
    description, category ("user"), source ("mirrored"), protected (False), mirror_date (ISO 8601, `Z`
    allowed; unparsable or absent: now), metadata ({}), harbor_project ("library") (:182-196). Nothing
    else is read: a `digest` or `size_bytes` in the entry is ignored.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    if data.get("mirror_date"):
        try:
            mirror_date = datetime.fromisoformat(data["mirror_date"].replace("Z", "+00:00"))
        except (ValueError, AttributeError):
            mirror_date = now
    else:
        mirror_date = now
    return Row(
        name=data.get("name"),
        registry=data.get("registry"),
        repository=data.get("repository"),
        tag=data.get("tag", "latest"),
        source_url=data.get("source_url"),
        destination_url=data.get("destination_url"),
        description=data.get("description"),
        category=data.get("category", "user"),
        source=data.get("source", "mirrored"),
        protected=data.get("protected", False),
        mirror_date=mirror_date,
        image_metadata=data.get("metadata", {}),
        harbor_project=data.get("harbor_project", "library"),
    )


def check(row: Row) -> None:
    """The table's constraints (container_images.py:28-97) that a discovered row can break: NOT NULL on
    name (:47), registry (:48), repository (:49), tag (:50), destination_url (:54), category (:58),
    protected (:59), source (:62); category in system/user (:30-33); the VARCHAR lengths (:47-50)."""
    for column in ("name", "registry", "repository", "tag", "destination_url", "category", "protected"):
        if getattr(row, column) is None:
            raise RowRejected(f"{column} is NULL")
    if row.source is None:
        raise RowRejected("source is NULL")
    if row.category not in CATEGORIES:
        raise RowRejected(f"category {row.category!r} violates check_image_category")
    for column, limit in (("name", 255), ("registry", 255), ("repository", 500), ("tag", 128)):
        if len(str(getattr(row, column))) > limit:
            raise RowRejected(f"{column} longer than {limit}")


@dataclass
class Table:
    """`container_images` as ImageDiscovery._sync_images (image_discovery.py:204-274) fills it. `rows` is
    in insertion order: what the Jupyter list's query without ORDER BY (jupyter_images.py:33-35) returns
    on a table that is only inserted into."""

    rows: list[Row] = field(default_factory=list)

    def find(self, registry: Any, repository: Any, tag: Any) -> Row | None:
        """The unique key (registry, repository, tag) (container_images.py:34-37; lookup :233-237)."""
        for row in self.rows:
            if (row.registry, row.repository, row.tag) == (registry, repository, tag):
                return row
        return None

    def sync(self, images: dict[str, list[Row]]) -> None:
        """Upsert only: nothing is ever deleted here.

        Duplicates across ConfigMaps: the last one wins (:215-227). An existing row gets description,
        category, protected and metadata (:239-245), nothing else (not destination_url, not
        mirror_date); a new row is added (:249-254). A row the database rejects rolls back the whole
        transaction (:260-266): every change of this sync made before it is lost too, later ones stay.
        """
        unique: dict[tuple[Any, Any, Any], Row] = {}
        for image_list in images.values():
            for image in image_list:
                unique[(image.registry, image.repository, image.tag)] = image
        committed = copy.deepcopy(self.rows)
        for image in unique.values():
            existing = self.find(image.registry, image.repository, image.tag)
            try:
                if existing is not None:
                    updated = copy.copy(existing)
                    updated.description = image.description
                    updated.category = image.category
                    updated.protected = image.protected
                    updated.image_metadata = image.image_metadata
                    check(updated)
                    self.rows[self.rows.index(existing)] = updated
                else:
                    check(image)
                    self.rows.append(image)
            except RowRejected:
                self.rows = copy.deepcopy(committed)


def jupyter_list(table: Table) -> list[dict[str, Any]]:
    """GET /api/v1/images/jupyter (jupyter_images.py:16-77): the rows whose metadata `purpose` is
    `jupyter` (:46-48), in table order; the first is the default (:57). Served per image: name,
    display_name (metadata's, else the name: :55), description (or a made-up one: :56), default, and
    metadata with image_size (the size_bytes column, which discovery never sets), registry, repository
    and tag (:58-63). No digest and no purpose are served."""
    result = []
    count = 0
    for image in table.rows:
        metadata = image.image_metadata or {}
        if metadata.get("purpose") != "jupyter":
            continue
        count += 1
        display_name = metadata.get("display_name", image.name)
        result.append(
            {
                "name": image.name,
                "display_name": display_name,
                "description": image.description or f"Jupyter notebook: {display_name}",
                "default": count == 1,
                "metadata": {
                    "image_size": image.size_bytes,
                    "registry": image.registry,
                    "repository": image.repository,
                    "tag": image.tag,
                },
            }
        )
    return result
