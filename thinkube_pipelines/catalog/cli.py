"""`thinkube-catalog`: run the catalog service, or bring its database to the current schema.

    thinkube-catalog serve [--host 127.0.0.1] [--port 8080]   migrate, then serve the API
    thinkube-catalog migrate                                  upgrade the database to head

Both log which migrations they applied, or that the database was already at the current schema. Several
processes may start at once against one database: one migrates, the others wait for it (see
`schema.migration_lock`).

Settings come from the environment (see `CatalogSettings`). A database that cannot be used stops the
command with exit status 1 and a message naming THINKUBE_CATALOG_DATABASE_URL, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from thinkube_pipelines.catalog.settings import DATABASE_URL_ENV, CatalogSettings

log = logging.getLogger("thinkube_pipelines.catalog")

#: Seconds an idle HTTP connection is kept open (uvicorn's default is 5; load balancers use 60-350).
KEEP_ALIVE_S = 75


class SetupError(Exception):
    """A setting that stops the service from starting; the message names it."""


def _settings() -> CatalogSettings:
    try:
        return CatalogSettings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        raise SetupError(f"invalid catalog settings: {problems}") from None


def _migrate(settings: CatalogSettings) -> None:
    from thinkube_pipelines.catalog import schema

    shown = make_url(settings.database_url.get_secret_value()).render_as_string(hide_password=True)
    try:
        result = schema.upgrade(settings.database_url.get_secret_value())
    except (SQLAlchemyError, OSError, ImportError) as error:
        reason = getattr(error, "orig", None) or error
        first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        raise SetupError(f"{DATABASE_URL_ENV}={shown} is unusable: {first_line}") from None
    if result.applied:
        log.info(
            "catalog database %s migrated to revision %s: applied %s",
            shown,
            result.current,
            ", ".join(result.applied),
        )
    else:
        log.info(
            "catalog database %s already at the current schema (revision %s): no migration applied",
            shown,
            result.current,
        )


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from thinkube_pipelines.catalog.api import create_app

    settings = _settings()
    _migrate(settings)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # Longer than any client keeps an idle connection: a server that closes a kept-alive connection
        # while a client sends on it makes that request fail ("closed without response").
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkube-catalog", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="migrate the database, then serve the catalog API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    commands.add_parser("migrate", help="upgrade the catalog database to the current schema")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            _serve(args)
        else:
            _migrate(_settings())
    except SetupError as error:
        print(f"thinkube-catalog: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
