"""The catalog's schema comes from its Alembic migrations, on PostgreSQL and on SQLite.

Also the `thinkube-catalog` command: `migrate` brings a database to head, and `serve` refuses a database
it cannot use with exit status 1 and a message naming THINKUBE_CATALOG_DATABASE_URL (and no password).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.catalog import catalog_command, catalog_env
from tests.fixtures.network import free_port
from thinkube_pipelines.catalog import schema


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        yield request.getfixturevalue("fresh_postgres_url")


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _insert(connection: sa.Connection, name: str) -> None:
    now = datetime.now(UTC)
    connection.execute(
        sa.text(
            "INSERT INTO images (name, display_name, description, category, is_default, tags, metadata,"
            " is_active, revision, created_at, updated_at)"
            " VALUES (:name, 'x', '', 'jupyter', false, '[]', '{}', true, 1, :now, :now)"
        ),
        {"name": name, "now": now},
    )


def test_upgrade_creates_the_table_with_a_unique_name_and_downgrade_removes_it(empty_database: str) -> None:
    schema.upgrade(empty_database)
    assert "images" in _tables(empty_database)

    engine = sa.create_engine(empty_database)
    try:
        inspector = sa.inspect(engine)
        columns = {column["name"] for column in inspector.get_columns("images")}
        assert columns >= {
            "id",
            "name",
            "display_name",
            "description",
            "category",
            "is_default",
            "tags",
            "metadata",
            "last_built",
            "is_active",
            "created_at",
            "updated_at",
        }
        unique = inspector.get_unique_constraints("images")
        assert {"name": "uq_images_name", "column_names": ["name"]}.items() <= unique[0].items()
        # The constraint is real: a second row with the same name is refused by the database.
        with engine.begin() as connection:
            _insert(connection, "jupyter-ml-cpu")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            _insert(connection, "jupyter-ml-cpu")
    finally:
        engine.dispose()

    schema.check(empty_database)  # the mapped table and the migrations agree
    schema.upgrade(empty_database)  # at head already: nothing to do

    schema.downgrade(empty_database, "base")
    assert "images" not in _tables(empty_database)
    schema.upgrade(empty_database)
    assert "images" in _tables(empty_database)


def test_cli_migrate_upgrades_to_head(empty_database: str, tmp_path: Path) -> None:
    result = subprocess.run(
        catalog_command("migrate"),
        env=catalog_env(empty_database),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {"images", "catalog_alembic_version"} <= _tables(empty_database)


def test_the_default_database_is_a_sqlite_file_under_state(tmp_path: Path) -> None:
    env = catalog_env("unused")
    del env["THINKUBE_CATALOG_DATABASE_URL"]
    result = subprocess.run(
        catalog_command("migrate"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "images" in _tables(f"sqlite:///{tmp_path / '.state' / 'catalog.db'}")


@pytest.mark.parametrize(
    ("database_url", "reason"),
    [
        (f"postgresql+psycopg://catalog:s3cr3t-pw@127.0.0.1:{free_port()}/catalog", "is unusable"),
        ("not a database url s3cr3t-pw", "is not a database URL"),
        ("sqlite:////proc/no-such-dir/catalog.db", "is unusable"),
        ("mysql://catalog:s3cr3t-pw@127.0.0.1/catalog", "runs on sqlite or postgresql"),
    ],
    ids=["postgres-unreachable", "unparsable", "sqlite-unwritable", "unsupported-dialect"],
)
def test_serve_with_an_unusable_database_exits_naming_the_setting(
    tmp_path: Path, database_url: str, reason: str
) -> None:
    result = subprocess.run(
        catalog_command("serve", "--port", str(free_port())),
        env=catalog_env(database_url, token="t"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "THINKUBE_CATALOG_DATABASE_URL" in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr


def test_the_database_password_never_shows_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from thinkube_pipelines.catalog.settings import CatalogSettings

    monkeypatch.setenv(
        "THINKUBE_CATALOG_DATABASE_URL", "postgresql://catalog:s3cr3t-pw@db.example.org/catalog"
    )
    settings = CatalogSettings()
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cr3t-pw" not in shown
    assert settings.database_url.get_secret_value() == (
        "postgresql+psycopg://catalog:s3cr3t-pw@db.example.org/catalog"
    )
