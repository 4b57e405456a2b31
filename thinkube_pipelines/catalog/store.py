"""Reading and writing catalog entries: the only module that speaks SQL.

Every write transaction starts by bumping the generation in `catalog_state`. That first statement takes
the row's lock (PostgreSQL) or the database's write lock (SQLite), so writers run one at a time and the
rules that span rows (one default per category) cannot interleave. A write that would change nothing is
rolled back, generation and all: the catalog, its `updated_at` and every replica's cached view stay as
they were.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import RowMapping, delete, insert, select, update
from sqlalchemy.orm import Session

from thinkube_pipelines.catalog.contract import CatalogItem, Change, ImageUpsert
from thinkube_pipelines.catalog.db import STATE_ROW_ID, CatalogState, Image, utc_now

log = logging.getLogger(__name__)

_TABLE = Image.__table__
_STATE = CatalogState.__table__
#: Tries at reading a consistent catalog while writers keep committing.
_CONSISTENT_READ_TRIES = 20


class StateConflict(Exception):
    """A write asked for an activity change that has its own route; the message says which."""


@dataclass(frozen=True)
class Written:
    """A write's result: the stored row, what the write did, and whether readers now see it as default."""

    row: RowMapping
    change: Change
    default: bool

    @property
    def item(self) -> CatalogItem:
        return to_item(self.row, default=self.default)


@dataclass(frozen=True)
class CatalogRows:
    """Every row of the catalog as of one generation."""

    generation: int
    rows: list[RowMapping]


def to_item(row: RowMapping, *, default: bool | None = None) -> CatalogItem:
    """The contract's view of a row; `default` overrides the stored mark with the effective one."""
    return CatalogItem(
        name=row["name"],
        display_name=row["display_name"],
        description=row["description"],
        default=row["is_default"] if default is None else default,
        category=row["category"],
        tags=list(row["tags"]),
        metadata=row["metadata"],
        last_built=row["last_built"],
        is_active=row["is_active"],
    )


def valid_items(rows: Iterable[RowMapping]) -> list[CatalogItem]:
    """Rows as contract items. A row the contract refuses (written before a rule existed) is left out
    with an error in the log, rather than failing every read of the catalog."""
    items = []
    for row in rows:
        try:
            items.append(to_item(row))
        except ValidationError as error:
            log.error("catalog row %r breaks the contract and is not served: %s", row["name"], error)
    return items


def _row_values(entry: ImageUpsert) -> dict[str, Any]:
    """Column values of an entry; every column but activity and the bookkeeping ones."""
    return {
        "name": entry.name,
        "display_name": entry.display_name,
        "description": entry.description,
        "category": entry.category,
        "is_default": entry.default,
        "tags": list(entry.tags),
        "metadata": entry.metadata.model_dump(mode="json"),
        "last_built": entry.last_built,
    }


def _stored_fields(row: RowMapping) -> dict[str, Any]:
    return to_item(row).model_dump(mode="json", exclude={"is_active"})


def _begin_write(session: Session) -> int:
    """Bump the generation, taking the writers' lock; the new generation."""
    return session.execute(
        update(_STATE)
        .where(_STATE.c.id == STATE_ROW_ID)
        .values(generation=_STATE.c.generation + 1)
        .returning(_STATE.c.generation)
    ).scalar_one()


def _written(session: Session, row: RowMapping, change: Change) -> Written:
    """The result of a write of `row`, with the default readers see: the marked active image of its
    category, else the first active one by name (as `view.effective_defaults` decides)."""
    chosen = session.execute(
        select(_TABLE.c.name)
        .where(_TABLE.c.category == row["category"], _TABLE.c.is_active.is_(True))
        .order_by(_TABLE.c.is_default.desc(), _TABLE.c.name)
        .limit(1)
    ).scalar_one_or_none()
    return Written(row, change, chosen == row["name"])


def _row(session: Session, name: str) -> RowMapping | None:
    return session.execute(select(_TABLE).where(_TABLE.c.name == name)).mappings().one_or_none()


def _unmark_other_defaults(session: Session, category: str, name: str) -> None:
    session.execute(
        update(_TABLE)
        .where(_TABLE.c.category == category, _TABLE.c.name != name, _TABLE.c.is_default.is_(True))
        .values(is_default=False, revision=_TABLE.c.revision + 1, updated_at=utc_now())
    )


def upsert(session: Session, entry: ImageUpsert) -> Written:
    """Create the entry, or replace its fields; activity changes only through `set_active`."""
    _begin_write(session)
    existing = _row(session, entry.name)
    if existing is not None:
        if entry.is_active is not None and entry.is_active != existing["is_active"]:
            session.rollback()
            route = "activate" if entry.is_active else "deactivate"
            raise StateConflict(
                f"Image {entry.name!r} is {'inactive' if not existing['is_active'] else 'active'}; "
                f"POST /api/v1/images/{entry.name}/{route} to change that, or leave is_active out"
            )
        if _stored_fields(existing) == entry.model_dump(mode="json", exclude={"is_active"}):
            written = _written(session, existing, "unchanged")
            session.rollback()
            return written
    if entry.default:
        _unmark_other_defaults(session, entry.category, entry.name)
    now = utc_now()
    values = _row_values(entry)
    if existing is None:
        active = True if entry.is_active is None else entry.is_active
        statement = insert(_TABLE).values(
            **values, is_active=active, revision=1, created_at=now, updated_at=now
        )
        change: Change = "created"
    else:
        statement = (
            update(_TABLE)
            .where(_TABLE.c.name == entry.name)
            .values(**values, revision=_TABLE.c.revision + 1, updated_at=now)
        )
        change = "updated"
    row = session.execute(statement.returning(*_TABLE.c)).mappings().one()
    written = _written(session, row, change)
    session.commit()
    return written


def set_active(session: Session, name: str, active: bool) -> Written | None:
    """Offer the image again, or stop offering it (it stays recorded); None when there is no such image."""
    _begin_write(session)
    existing = _row(session, name)
    if existing is None or existing["is_active"] == active:
        written = None if existing is None else _written(session, existing, "unchanged")
        session.rollback()
        return written
    row = (
        session.execute(
            update(_TABLE)
            .where(_TABLE.c.name == name)
            .values(is_active=active, revision=_TABLE.c.revision + 1, updated_at=utc_now())
            .returning(*_TABLE.c)
        )
        .mappings()
        .one()
    )
    written = _written(session, row, "updated")
    session.commit()
    return written


def remove(session: Session, name: str) -> bool:
    """Delete the entry; False when there was none."""
    _begin_write(session)
    deleted = session.execute(delete(_TABLE).where(_TABLE.c.name == name).returning(_TABLE.c.id)).all()
    if deleted:
        session.commit()
    else:
        session.rollback()
    return bool(deleted)


def generation(session: Session) -> int:
    """The catalog's current generation: one indexed read, the cost of knowing a cached view is current."""
    value = session.execute(select(_STATE.c.generation).where(_STATE.c.id == STATE_ROW_ID)).scalar_one()
    session.rollback()
    return value


def read_all(session: Session) -> CatalogRows:
    """Every row, as of one generation, on either dialect and any isolation level.

    The generation is read before and after the rows: every commit bumps it, so when both reads agree no
    write landed in between and the rows are exactly that generation's catalog.
    """
    for _ in range(_CONSISTENT_READ_TRIES):
        before = generation(session)
        rows = list(session.execute(select(_TABLE).order_by(_TABLE.c.name)).mappings())
        session.rollback()
        if generation(session) == before:
            return CatalogRows(before, rows)
    raise RuntimeError(f"the catalog kept changing during {_CONSISTENT_READ_TRIES} reads")


def ping(session: Session) -> None:
    """Raise unless the database answers and holds the catalog's tables."""
    generation(session)
    session.execute(select(_TABLE.c.id).limit(1)).all()
    session.rollback()
