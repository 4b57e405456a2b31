"""Alembic environment of the catalog: configured from code (see `thinkube_pipelines.catalog.schema`).

The database URL arrives in `config.attributes["database_url"]` rather than in an ini option, so that a
password with `%` in it survives and no alembic.ini is needed at run time.

Online, the migrations run under the catalog's migration lock (`schema.migration_lock`: a PostgreSQL
advisory lock on the migration connection, a file lock beside a SQLite file), taken before Alembic reads the
version table: a second process migrating the same database waits, then finds it at head. What ran is left
in `config.attributes` for `schema.upgrade`: "applied_revisions" (in order) and "current_revision".
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationInfo
from sqlalchemy import pool

from thinkube_pipelines.catalog.db import Base, connect
from thinkube_pipelines.catalog.schema import VERSION_TABLE, migration_lock

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to the catalog migrations")
    return url


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade --sql`)."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _record_applied(*, step: MigrationInfo, **_: Any) -> None:
    if step.is_upgrade and not step.is_stamp:
        config.attributes.setdefault("applied_revisions", []).append(step.up_revision_id)


def run_migrations_online() -> None:
    engine = connect(_database_url(), poolclass=pool.NullPool, statement_timeout_s=None)
    try:
        with engine.connect() as connection, migration_lock(connection):
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                version_table=VERSION_TABLE,
                # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                on_version_apply=_record_applied,
            )
            with context.begin_transaction():
                context.run_migrations()
                heads = context.get_context().get_current_heads()
            config.attributes["current_revision"] = ", ".join(heads) or None
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
