"""`python -m bench` (`make bench`): run every benchmark, print progress, write bench/RESULTS.md.

    python -m bench                 everything (about 15-20 minutes: the cold build is a real buildah build)
    python -m bench --quick         the load benchmark at 50 folders, 3 repetitions; prints, writes nothing
    python -m bench --only load     one part (load or pipeline); --out PATH to write its results

Every service the benchmarks start is stopped by its own process handle, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import load_average, machine
from bench.report import render
from bench.timing import REPO, log

RESULTS = REPO / "bench" / "RESULTS.md"


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`, which stops the services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="load benchmark at 50 folders only, 3 repetitions"
    )
    parser.add_argument("--only", choices=["load", "pipeline"], help="run one part")
    parser.add_argument("--repetitions", type=int, default=9, help="repetitions of each load measurement")
    parser.add_argument("--reruns", type=int, default=3, help="no-change reruns of the pipeline")
    parser.add_argument(
        "--out", type=Path, help=f"where to write the results (default {RESULTS}, not with --quick)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    parts = {"load", "pipeline"} if args.only is None else {args.only}
    sizes, repetitions = [50, 500], max(3, args.repetitions)
    if args.quick:
        parts, sizes, repetitions = {"load"}, [50], 3
    out = args.out or (None if args.quick or args.only else RESULTS)

    started = time.monotonic()
    context = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": load_average(),
    }
    log(f"machine: {context['machine']}; load average {context['load_before']}")
    load = pipeline = None
    if "load" in parts:
        from bench.load import run_load

        log(f"code location load: {sizes} image folders, {repetitions} repetitions each, interleaved")
        load = run_load(sizes, repetitions)
    if "pipeline" in parts:
        from bench.pipeline import run_pipeline

        log("pipeline of jupyter-base: services, base image, trivial runs, cold build, no-change reruns")
        pipeline = run_pipeline(reruns=max(1, args.reruns), trivial_runs=3)
    context["load_after"] = load_average()
    context["duration"] = f"{(time.monotonic() - started) / 60:.1f} min"
    text = render(context, load, pipeline)
    print(text, flush=True)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
