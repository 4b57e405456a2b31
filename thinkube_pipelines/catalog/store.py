"""Reading and writing catalog entries: the only module that speaks SQL.

Writes are single statements, so that concurrent writers of one name cannot interleave between a check
and an insert: an upsert is `INSERT … ON CONFLICT (name) DO UPDATE … RETURNING`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from thinkube_pipelines.catalog.contract import CatalogItem, ImageUpsert
from thinkube_pipelines.catalog.db import Image, utc_now

_DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass(frozen=True)
class UpsertResult:
    item: CatalogItem
    created: bool


_TABLE = Image.__table__


def to_item(row: RowMapping) -> CatalogItem:
    """The contract's view of a row of the images table."""
    return CatalogItem(
        name=row["name"],
        display_name=row["display_name"],
        description=row["description"],
        default=row["is_default"],
        category=row["category"],
        tags=list(row["tags"]),
        metadata=row["metadata"],
        last_built=row["last_built"],
        is_active=row["is_active"],
    )


def _row_values(entry: ImageUpsert) -> dict[str, Any]:
    """Column values of an entry; every column but the bookkeeping ones."""
    return {
        "name": entry.name,
        "display_name": entry.display_name,
        "description": entry.description,
        "category": entry.category,
        "is_default": entry.default,
        "tags": list(entry.tags),
        "metadata": entry.metadata.model_dump(mode="json"),
        "last_built": entry.last_built,
        "is_active": entry.is_active,
    }


def upsert(session: Session, entry: ImageUpsert) -> UpsertResult:
    """Create the entry, or replace every field of the one with the same name."""
    dialect = session.get_bind().dialect.name
    try:
        insert = _DIALECT_INSERTS[dialect]
    except KeyError:
        raise RuntimeError(f"the catalog supports SQLite and PostgreSQL, not {dialect}") from None

    now = utc_now()
    values = _row_values(entry)
    statement = insert(_TABLE).values(**values, revision=1, created_at=now, updated_at=now)
    replaced = {column: statement.excluded[column] for column in values if column != "name"}
    statement = statement.on_conflict_do_update(
        index_elements=[_TABLE.c.name],
        set_={**replaced, "revision": _TABLE.c.revision + 1, "updated_at": now},
    ).returning(*_TABLE.c)
    row = session.execute(statement).mappings().one()
    session.commit()
    return UpsertResult(item=to_item(row), created=row["revision"] == 1)


def get(session: Session, name: str) -> CatalogItem | None:
    row = session.execute(select(_TABLE).where(_TABLE.c.name == name)).mappings().one_or_none()
    return to_item(row) if row is not None else None


def list_items(
    session: Session, *, category: str | None = None, active: bool | None = None
) -> list[CatalogItem]:
    """Entries ordered by name, optionally narrowed to a category and to (in)active ones."""
    query = select(_TABLE).order_by(_TABLE.c.name)
    if category is not None:
        query = query.where(_TABLE.c.category == category)
    if active is not None:
        query = query.where(_TABLE.c.is_active == active)
    return [to_item(row) for row in session.execute(query).mappings()]


def deactivate(session: Session, name: str) -> CatalogItem | None:
    """Keep the entry but stop offering it; None when there is no such entry."""
    statement = (
        update(_TABLE)
        .where(_TABLE.c.name == name)
        .values(is_active=False, revision=_TABLE.c.revision + 1, updated_at=utc_now())
        .returning(*_TABLE.c)
    )
    row = session.execute(statement).mappings().one_or_none()
    session.commit()
    return to_item(row) if row is not None else None


def remove(session: Session, name: str) -> bool:
    """Delete the entry; False when there was none."""
    deleted = session.execute(delete(_TABLE).where(_TABLE.c.name == name).returning(_TABLE.c.id)).all()
    session.commit()
    return bool(deleted)


def ping(session: Session) -> None:
    """Raise unless the database answers and holds the catalog's table."""
    session.execute(select(_TABLE.c.id).limit(1)).all()
