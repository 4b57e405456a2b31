"""`python -m bench` (`make bench`): run every benchmark, print progress, write bench/RESULTS.md.

    python -m bench                 everything (about 30 minutes: the cold build is a real buildah build,
                                    the catalog's load runs 2 databases x 3 servers x 3 repetitions x 30 s)
    python -m bench --quick         the load benchmark at 50 folders, the catalog's load at 10 s a run, the
                                    Kubernetes builder and the hub, 3 repetitions each; prints, writes
                                    nothing
    python -m bench --only load     one part (load, pipeline, catalog, kubernetes, hub or automation);
                                    --out PATH to write its results
    python -m bench --only catalog --quick   the catalog's load only, shortened
    python -m bench --only kubernetes --update   one part, its section replaced in bench/RESULTS.md (or
                                    --out PATH), the header and the other sections kept as they are

Every service the benchmarks start is stopped by its own process handle, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.catalog_load import CatalogLoadConfig, run_catalog_load, wrk_binary
from bench.machine import load_average, machine
from bench.report import alone_note, render, splice
from bench.timing import REPO, log

RESULTS = REPO / "bench" / "RESULTS.md"


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`, which stops the services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="load benchmark at 50 folders, catalog load at 10 s a run, Kubernetes builder, hub, 3 "
        "repetitions each (with --only: that part, shortened; the pipeline has no short form)",
    )
    parser.add_argument(
        "--only",
        choices=["load", "pipeline", "catalog", "kubernetes", "hub", "automation"],
        help="run one part",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help=f"with --only: replace that part's section in {RESULTS} (or --out PATH), keeping the header "
        "and the other sections; the section says when it was measured",
    )
    parser.add_argument("--repetitions", type=int, default=9, help="repetitions of each load measurement")
    parser.add_argument("--reruns", type=int, default=3, help="no-change reruns of the pipeline")
    parser.add_argument(
        "--catalog-repetitions", type=int, default=3, help="repetitions of each catalog load measurement"
    )
    parser.add_argument("--catalog-duration", type=int, default=30, help="seconds of each catalog load run")
    parser.add_argument(
        "--catalog-database",
        action="append",
        choices=["sqlite", "postgresql"],
        help="database(s) of the catalog load benchmark (default: both)",
    )
    parser.add_argument(
        "--kubernetes-repetitions",
        type=int,
        default=9,
        help="builds (and bare Jobs) of the Kubernetes builder",
    )
    parser.add_argument(
        "--hub-repetitions",
        type=int,
        default=9,
        help="hub deploys (first and again) and helm templates; the spawn page's repetitions are fixed",
    )
    parser.add_argument(
        "--out", type=Path, help=f"where to write the results (default {RESULTS}, not with --quick)"
    )
    args = parser.parse_args(argv)
    if args.update and (args.only is None or args.quick):
        parser.error("--update needs --only, and writes nothing with --quick")
    signal.signal(signal.SIGTERM, _terminate)

    every = {"load", "pipeline", "catalog", "kubernetes", "hub", "automation"}
    parts = every if args.only is None else {args.only}
    sizes, repetitions = [50, 500], max(3, args.repetitions)
    builds = max(3, args.kubernetes_repetitions)
    hub_options = {"repetitions": max(3, args.hub_repetitions)}
    catalog_config = CatalogLoadConfig(
        repetitions=max(1, args.catalog_repetitions),
        duration_s=max(1, args.catalog_duration),
        databases=tuple(args.catalog_database or ("sqlite", "postgresql")),
    )
    if args.quick:
        parts = {"load", "catalog", "kubernetes", "hub"} if args.only is None else {args.only}
        sizes, repetitions, builds = [50], 3, 3
        hub_options = {"repetitions": 3, "spawn_repetitions": 10, "bursts": 3}
        catalog_config = replace(catalog_config, repetitions=3, duration_s=10, warmup_s=2)
    out = args.out or (None if args.quick or (args.only and not args.update) else RESULTS)
    if "catalog" in parts:
        wrk_binary()  # missing wrk stops the run now, not after the other parts

    started = time.monotonic()
    context = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": load_average(),
    }
    log(f"machine: {context['machine']}; load average {context['load_before']}")
    load = pipeline = catalog = kubernetes = hub = automation = None
    if "load" in parts:
        from bench.load import run_load

        log(f"code location load: {sizes} image folders, {repetitions} repetitions each, interleaved")
        load = run_load(sizes, repetitions)
    if "pipeline" in parts:
        from bench.pipeline import run_pipeline

        log("pipeline of jupyter-base: services, base image, trivial runs, cold build, no-change reruns")
        pipeline = run_pipeline(reruns=max(1, args.reruns), trivial_runs=3)
    if "catalog" in parts:
        log(
            f"catalog load: {catalog_config.images} images, {catalog_config.connections} clients, "
            f"{catalog_config.duration_s} s a run, {catalog_config.repetitions} repetitions, interleaved, "
            f"on {', '.join(catalog_config.databases)}"
        )
        catalog = run_catalog_load(catalog_config)
    if "kubernetes" in parts:
        from bench.kubernetes_builder import run_kubernetes_builder

        log(
            f"Kubernetes builder against the API simulator: {builds} builds and {builds} bare Jobs, "
            "interleaved"
        )
        kubernetes = run_kubernetes_builder(builds)
    if "hub" in parts:
        from bench.hub import run_hub

        log(
            f"hub deploy against the simulator and real services: {hub_options['repetitions']} first "
            "deploys, redeploys and helm templates, interleaved; then the profile callable per spawn-page "
            "load"
        )
        hub = run_hub(**hub_options)
    if "automation" in parts:
        from bench.automation import run_automation

        log("change-driven rebuilds: the source sensor over 500 folders, then requirement changes end to end")
        automation = run_automation(repetitions=repetitions, changes=3 if args.quick else 5)
    context["load_after"] = load_average()
    context["duration"] = f"{(time.monotonic() - started) / 60:.1f} min"
    text = render(context, load, pipeline, catalog, kubernetes, hub, automation)
    print(text, flush=True)
    if out is not None:
        if args.update and out.exists():
            command = f"python -m bench --only {args.only} --update"
            text = splice(out.read_text(encoding="utf-8"), text, alone_note(context, command))
        out.write_text(text, encoding="utf-8")
        log(f"{'updated' if args.update else 'wrote'} {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
