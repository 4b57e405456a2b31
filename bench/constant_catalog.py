"""The baseline of the catalog load benchmark: a FastAPI app whose one route, GET /api/v1/images/jupyter,
answers a constant, served by uvicorn exactly as `thinkube-catalog serve` serves the catalog
(`uvicorn.run(app, host=..., port=..., log_level=..., timeout_keep_alive=KEEP_ALIVE_S)`, uvicorn's
defaults otherwise: keep `serve_options` in step with `thinkube_pipelines.catalog.cli._serve`).

    python -m bench.constant_catalog --body FILE --mode value|bytes --port PORT [--host] [--log-level]

FILE holds the JSON the catalog answered for that route. `--mode value` (the baseline of the goal) keeps
it as a Python value that the route returns, which FastAPI serializes on each request, as it does for any
endpoint returning data; `--mode bytes` (a reference, for information) keeps it as encoded bytes and
answers `Response(content=bytes, media_type="application/json")`: no serialization at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Response

PATH = "/api/v1/images/jupyter"
MODES = ("value", "bytes")


def create_app(body: bytes, mode: str) -> FastAPI:
    """The app answering `body` at PATH: as a Python value FastAPI serializes (`value`) or as is (`bytes`)."""
    app = FastAPI(title="constant catalog (benchmark baseline)")
    if mode == "value":
        value = json.loads(body)

        @app.get(PATH)
        async def constant_value():  # no return annotation: no response model, as a plain endpoint
            return value

    elif mode == "bytes":

        @app.get(PATH)
        async def constant_bytes() -> Response:
            return Response(content=body, media_type="application/json")

    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return app


def serve_options() -> dict[str, object]:
    """uvicorn's options that `thinkube-catalog serve` sets beyond host, port and log level."""
    from thinkube_pipelines.catalog.cli import KEEP_ALIVE_S

    return {"timeout_keep_alive": KEEP_ALIVE_S}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.constant_catalog", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--body", type=Path, required=True, help="file holding the JSON to answer")
    parser.add_argument("--mode", choices=MODES, default="value")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(args.body.read_bytes(), args.mode)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, **serve_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
