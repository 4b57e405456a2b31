"""Bringing a catalog database to the current schema, with Alembic configured from code.

The migrations ship inside the package, so the service needs no alembic.ini and no working directory.

Several processes may migrate the same database at once (replicas of the service starting together): the
migrations run under a lock, so exactly one applies them and the others wait for it, then find the schema
at head and do nothing (see `migration_lock`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

VERSION_TABLE = "catalog_alembic_version"
"""Alembic's version table in the catalog database (not the default name: the database may be shared)."""

MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(f"thinkube_pipelines.catalog:{VERSION_TABLE}".encode()).digest()[:8], "big", signed=True
)
"""The PostgreSQL advisory lock (a signed 64-bit key) held while the catalog's migrations run."""

SQLITE_LOCK_SUFFIX = ".migration-lock"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpgradeResult:
    """What `upgrade` did: the revisions it applied, in order (none when the database was at the target)."""

    applied: tuple[str, ...]
    current: str | None
    """The database's revision afterwards (several heads joined by ", "; None for an empty history)."""


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration pointing at the packaged migrations and at `database_url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> UpgradeResult:
    """Apply every migration up to `revision`; a no-op when the database is already there.

    Safe to run from several processes at once: see `migration_lock`.
    """
    config = alembic_config(database_url)
    command.upgrade(config, revision)
    return UpgradeResult(
        applied=tuple(config.attributes.get("applied_revisions", ())),
        current=config.attributes.get("current_revision"),
    )


def downgrade(database_url: str, revision: str) -> None:
    """Undo migrations down to `revision` (`base` removes the catalog's tables)."""
    command.downgrade(alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise if the mapped tables and the migrated database disagree (a migration is missing)."""
    command.check(alembic_config(database_url))


def sqlite_lock_path(database_url: str | sa.URL) -> Path | None:
    """The file locked while a SQLite database migrates: beside it, named `<file>.migration-lock`.

    None for an in-memory database (no other process can reach it) or any other dialect.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database + SQLITE_LOCK_SUFFIX)


@contextmanager
def migration_lock(connection: sa.Connection) -> Iterator[None]:
    """Hold the catalog's migration lock for the duration: one migrating process at a time per database.

    - PostgreSQL: the session advisory lock `MIGRATION_LOCK_KEY` (`pg_advisory_lock`) on `connection`, the
      migration's own connection, so it is released when the migration ends or the connection drops.
    - SQLite file: an exclusive `flock` on `<file>.migration-lock` beside the database (processes on this
      host; SQLite databases are not shared across hosts).
    - In-memory SQLite: nothing to serialize.

    A process that finds the lock taken logs that it waits, and waits as long as it takes: the holder is
    migrating, and the waiter then finds the schema at head. Leaves `connection` outside a transaction, as
    Alembic expects it.
    """
    if connection.dialect.name == "postgresql":
        with _advisory_lock(connection):
            yield
        return
    lock_path = sqlite_lock_path(connection.engine.url)
    if lock_path is None:
        yield
        return
    with lock_path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is migrating the catalog database (%s held); waiting", lock_path)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(connection: sa.Connection) -> Iterator[None]:
    key = {"key": MIGRATION_LOCK_KEY}
    taken = connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar_one()
    if not taken:
        log.info("another process is migrating the catalog database (advisory lock held); waiting")
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
    # Session-level: the lock outlives this commit, which leaves the connection free for Alembic's own.
    connection.commit()
    try:
        yield
    finally:
        try:
            if connection.in_transaction():
                connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
            connection.commit()
        except sa.exc.SQLAlchemyError as error:
            # The connection broke: the server dropped the session, and its lock with it.
            log.debug("migration lock not released explicitly (%s); it ends with the session", type(error))
