"""The catalog's table and how to connect to its database (SQLite or PostgreSQL).

The schema itself is created only by the Alembic migrations beside this module; the mapped class here
must agree with them (a test runs `alembic check`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A zone-aware timestamp stored in UTC; SQLite keeps no zone, so it is put back on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps written to the catalog must carry a time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Image(Base):
    """One image in the catalog, keyed by its name."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(64), index=True)
    is_default: Mapped[bool] = mapped_column(default=False)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # `metadata` is taken by SQLAlchemy's declarative base; the column keeps the contract's name.
    image_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    last_built: Mapped[datetime | None] = mapped_column(UTCDateTime)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Counts writes: 1 right after an insert, so an upsert can tell "created" from "updated" in one
    # statement, whichever dialect runs it.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)


class CatalogState(Base):
    """One row: the catalog's generation, bumped by every write in the write's own transaction.

    Two jobs: every writer locks this row first, so writes are serialized (the one-default rule needs
    that); and a replica knows its cached view is current when the generation has not moved.
    """

    __tablename__ = "catalog_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger)


STATE_ROW_ID = 1
#: Connections per service process. The API never runs more database work at once than this (see
#: `api`), so no request ever waits on the pool itself.
POOL_SIZE = 5
#: Seconds to wait for a TCP connection to PostgreSQL: a database that is down answers 503 this fast.
CONNECT_TIMEOUT_S = 3
#: Seconds one statement may run on PostgreSQL before the server cancels it.
STATEMENT_TIMEOUT_S = 3


def connect(
    database_url: str, *, statement_timeout_s: float | None = STATEMENT_TIMEOUT_S, **engine_options: Any
) -> Engine:
    """An engine for the catalog database, tuned for its dialect.

    PostgreSQL: connections are checked before use (a restarted server is reconnected to by itself), a
    dead server is noticed within seconds (connect timeout, TCP keepalives, statement timeout; the
    migrations pass `statement_timeout_s=None`: DDL and the wait for their lock may take longer).
    A SQLite file: its folder is created, concurrent writers wait for each other instead of failing
    ("database is locked"), and readers do not block the writer (WAL).
    """
    url = make_url(database_url)
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": 0, "pool_timeout": 10}
    options.update(engine_options)
    if options.get("poolclass") is not None:
        for pool_option in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(pool_option)
    if url.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 3,
            "keepalives_count": 3,
        }
        if statement_timeout_s is not None:
            connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **options)

    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30}, **options)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded rows usable after commit (responses are built after it)."""
    return sessionmaker(engine, expire_on_commit=False)
