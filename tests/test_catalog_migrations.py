"""The catalog's schema comes from its Alembic migrations, on PostgreSQL and on SQLite.

Also the `thinkube-catalog` command: `migrate` brings a database to head, and `serve` refuses a database
it cannot use with exit status 1 and a message naming THINKUBE_CATALOG_DATABASE_URL (and no password).

Several processes migrating one fresh database at once (replicas starting together) migrate it exactly
once: one applies the migrations under the migration lock, the others wait for it and find it at head.
"""

from __future__ import annotations

import fcntl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from tests.fixtures.catalog import catalog_command, catalog_env
from tests.fixtures.network import free_port
from tests.fixtures.processes import stop_process
from thinkube_pipelines.catalog import schema
from thinkube_pipelines.catalog.db import STATEMENT_TIMEOUT_S


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


# -- several processes migrating one fresh database at once ---------------------------------------------

WAITING = "another process is migrating the catalog database"
APPLIED = "migrated to revision"
ALREADY = "already at the current schema"


def _revisions(url: str) -> list[str]:
    """The packaged revisions, oldest first (the last one is head)."""
    script = ScriptDirectory.from_config(schema.alembic_config(url))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def _version_rows(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT version_num FROM catalog_alembic_version"))
            return list(rows.scalars())
    finally:
        engine.dispose()


@contextmanager
def _migration_lock_held(url: str) -> Iterator[None]:
    """Hold the catalog's migration lock from outside the service, as a migrating replica would."""
    lock_path = schema.sqlite_lock_path(url)
    if lock_path is not None:
        with lock_path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": schema.MIGRATION_LOCK_KEY})
            connection.commit()
            yield
    finally:
        engine.dispose()  # closing the session releases its advisory lock


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s} s; logs:\n{logs()}", pytrace=False)
        time.sleep(0.1)


def _assert_migrated_once(url: str, logs: list[str]) -> None:
    """One version row, at head; exactly one process applied every migration, the others none."""
    revisions = _revisions(url)
    head = revisions[-1]
    assert _version_rows(url) == [head]
    applied = [log for log in logs if APPLIED in log]
    assert len(applied) == 1, logs
    assert f"{APPLIED} {head}: applied {', '.join(revisions)}" in applied[0]
    assert applied[0].count("Running upgrade") == len(revisions)
    for log in logs:
        if log is not applied[0]:
            assert f"{ALREADY} (revision {head}): no migration applied" in log, log
            assert "Running upgrade" not in log, log


@contextmanager
def _started_while_locked(
    url: str, commands: list[list[str]], tmp_path: Path
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[Path], Callable[[], str]]]:
    """Start `commands` together while the migration lock is held from outside; once every one of them
    logs that it waits for the lock, release it and hand over (processes, log files, a log dump).

    Holding the lock makes the race certain: without it, interpreter start-up usually staggers two
    processes enough that the second finds the first one's work done.
    """
    log_paths = [tmp_path / f"catalog-{index}.log" for index in range(len(commands))]

    def logs() -> str:
        return "\n".join(f"--- {path.name}:\n{path.read_text()}" for path in log_paths if path.exists())

    processes: list[subprocess.Popen[bytes]] = []
    try:
        with _migration_lock_held(url):
            for command, log_path in zip(commands, log_paths, strict=True):
                with log_path.open("wb") as log:
                    processes.append(
                        subprocess.Popen(
                            command,
                            env=catalog_env(url, token="t"),
                            cwd=tmp_path,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            _wait_for(
                lambda: all(WAITING in path.read_text() for path in log_paths),
                60,
                "not every process waited for the migration lock",
                logs,
            )
            assert all(process.poll() is None for process in processes), logs()
            # While they wait, neither has created anything: the lock is taken before Alembic looks.
            assert not _tables(url) & {"images", "catalog_alembic_version"}, logs()
            # Held past the service's statement timeout: a replica waits as long as the migration takes.
            time.sleep(STATEMENT_TIMEOUT_S + 1)
            assert all(process.poll() is None for process in processes), logs()
        yield processes, log_paths, logs
    finally:
        for process in processes:
            stop_process(process)


def test_two_migrations_started_together_migrate_once(empty_database: str, tmp_path: Path) -> None:
    """Two `migrate` at once: both exit 0, one applied every migration, the other found the schema at head."""
    commands = [catalog_command("migrate"), catalog_command("migrate")]
    with _started_while_locked(empty_database, commands, tmp_path) as (processes, log_paths, logs):
        for process in processes:
            assert process.wait(timeout=60) == 0, logs()
    _assert_migrated_once(empty_database, [path.read_text() for path in log_paths])


def test_two_services_started_together_on_a_fresh_postgres_both_serve(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """Two `serve` at once: both become ready (/healthz 200), the schema was migrated once."""
    ports = [free_port(), free_port()]
    commands = [catalog_command("serve", "--port", str(port), "--log-level", "warning") for port in ports]

    def ready(port: int) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    with _started_while_locked(fresh_postgres_url, commands, tmp_path) as (processes, log_paths, logs):

        def both_ready() -> bool:
            exited = [process.returncode for process in processes if process.poll() is not None]
            if exited:
                pytest.fail(f"a catalog service exited with {exited}:\n{logs()}", pytrace=False)
            return all(ready(port) for port in ports)

        _wait_for(both_ready, 60, "both services did not become ready", logs)
    _assert_migrated_once(fresh_postgres_url, [path.read_text() for path in log_paths])
