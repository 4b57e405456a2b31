"""bench/RESULTS.md: the machine, the date, and each figure as a ratio against its baseline, with the
absolute median and the number of repetitions. A missed goal is said as such."""

from __future__ import annotations

import re
import statistics
import subprocess

from bench.timing import REPO, Sample, ratio

LOAD_GOAL_50 = 1.3
RERUN_GOAL_S = 15.0
EVENTS_GOAL = 60
BUILDER_OVERHEAD_GOAL_S = 2.0
HUB_DEPLOY_GOAL = 1.5

HEADER = """# Benchmarks

Written by `make bench` (`python -m bench`); every figure is a ratio against a baseline measured in the
same run, with its absolute median and the number of repetitions. Do not edit by hand.
"""

LOAD_INTRO = """## 1. Code location load

`dagster definitions validate -m thinkube_pipelines.definitions` in a plain environment (only PATH and
HOME; no DAGSTER_HOME) with THINKUBE_IMAGES_DIR pointing at generated image folders: half copies of
images/jupyter-base (root images), half copies of images/jupyter-ml-cpu, each the child of one of
those roots; every folder passes `thinkube-pipelines images check` (locks included). Baseline: the
same command on `bench.trivial_defs`, a Definitions holding one trivial asset. The commands run
interleaved (baseline, 50, 500, baseline, ...) after one warm-up round that is not counted.
"""

PIPELINE_INTRO = """## 2. The pipeline of jupyter-base, end to end

`dagster asset materialize -m thinkube_pipelines.definitions --select jupyter-base/build,
jupyter-base/published,jupyter-base/catalog_entry` (the blocking smoke check of
`build` runs with it), with the environment of the Makefile's PIPELINE_ENV, against services this
benchmark started on free ports: a CNCF registry with htpasswd auth (blob uploads and manifest PUTs
counted in its access log), the catalog service on SQLite (writes counted by its generation, which
every committed write bumps: the step's one POST answered `unchanged` is no write; the item's
`revision` read from its database), the Debian base published to that registry (mmdebstrap
tarball from .state/cache), a Dagster home and a buildah storage ({driver}) in a temporary folder,
the `image_builds` pool limited to 1 as `make demo` does.

Baseline: the same CLI, instance and environment materializing the one trivial asset of
`bench.trivial_defs`: what any Dagster run costs here (process start, code location load, run and
event storage). For the cold build that ratio mostly says how long a real build is; the builder's own
time (`build_duration_s` of the build's materialization) stands beside it, so that the pipeline's
overhead around the builder reads as wall time minus builder time.
"""


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip()


def _commit() -> str:
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + (" (working tree with uncommitted changes)" if dirty else "")


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(context: dict, load, pipeline, catalog=None, kubernetes=None, hub=None, automation=None) -> str:
    lines = [
        HEADER,
        f"- date: {context['date']} (the whole run took {context.get('duration', '?')})",
        f"- commit: {_commit()}",
    ]
    lines += [f"- {key}: {value}" for key, value in context["machine"].items()]
    before, after = context["load_before"], context.get("load_after", "?")
    lines += [
        f"- load average (1, 5, 15 min) before: {before}, after: {after} (the machine is shared with",
        "  other developers' work: it shows as noise, which the interleaved baselines share)",
        "",
    ]
    if load is not None:
        lines += _load_section(load)
    if pipeline is not None:
        lines += _pipeline_section(pipeline)
    if catalog is not None:
        lines += _catalog_section(catalog)
    if kubernetes is not None:
        lines += _kubernetes_section(kubernetes)
    if hub is not None:
        lines += _hub_section(hub)
    if automation is not None:
        from bench.automation import section_lines

        lines += section_lines(automation)
    return "\n".join(lines).rstrip() + "\n"


_SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)


def _sections(text: str) -> tuple[str, dict[int, str]]:
    """The text before the first numbered section (`## N. ...`), and each section by its number."""
    found = list(_SECTION.finditer(text))
    head = text[: found[0].start()] if found else text
    sections = {}
    for match, following in zip(found, [*found[1:], None], strict=True):
        sections[int(match.group(1))] = text[match.start() : following.start() if following else len(text)]
    return head, sections


def splice(existing: str, fresh: str, note: str) -> str:
    """`existing` (a RESULTS.md) with each numbered section of `fresh` in place of its own (or added in
    order), `note` under each such section's heading; the header and the other sections stay as they are."""
    head, sections = _sections(existing)
    for number, section in _sections(fresh)[1].items():
        heading, _, body = section.partition("\n")
        sections[number] = f"{heading}\n\n{note}\n{body}"
    parts = [head.rstrip()] + [sections[number].rstrip() for number in sorted(sections)]
    return "\n\n".join(parts) + "\n"


def alone_note(context: dict, command: str) -> str:
    """Where a section measured on its own (`--only PART --update`) says when and how."""
    before, after = context["load_before"], context.get("load_after", "?")
    return (
        f"Measured on its own by `{command}`: {context['date']} (it took {context.get('duration', '?')}), "
        f"commit {_commit()}, load average before: {before}, after: {after}. The header above describes "
        "the run that wrote the other sections."
    )


def _load_section(load) -> list[str]:
    base = load.baseline
    lines = [
        LOAD_INTRO,
        _row(
            "code location", "median", "min-max", "repetitions", "ratio (medians)", "ratio (minimums)", "goal"
        ),
        _row(*["---"] * 7),
        _row(
            "baseline: 1 trivial asset", _s(base.median), base.spread, len(base.times), "1.00x", "1.00x", ""
        ),
    ]
    for size, sample in sorted(load.sizes.items()):
        r = ratio(sample.median, base.median)
        r_min = ratio(min(sample.times), min(base.times))
        goal = ""
        if size == 50:
            goal = f"within {LOAD_GOAL_50}x by both ratios: {_verdict(max(r, r_min) <= LOAD_GOAL_50)}"
        label = f"{size} image folders ({4 * size} assets, {size} checks)"
        cells = [_s(sample.median), sample.spread, len(sample.times), f"{r:.2f}x", f"{r_min:.2f}x", goal]
        lines.append(_row(label, *cells))
    lines += [
        "",
        "Other work on this shared machine adds the same seconds to any command it overlaps, which shrinks a",
        "ratio of medians; the ratio of the fastest runs (the least disturbed) is the one a quiet machine",
        "shows. The goal counts as met only when both are within it.",
    ]
    sizes = sorted(load.sizes)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        linear = large / small
        verdicts = []
        for name, pick in (("medians", statistics.median), ("minimums", min)):
            extra_small = pick(load.sizes[small].times) - pick(base.times)
            extra_large = pick(load.sizes[large].times) - pick(base.times)
            growth = extra_large / extra_small if extra_small > 0 else float("inf")
            verdicts.append(growth <= linear * 1.1)
            lines += [
                "",
                f"Growth ({name}): the time above the baseline is {_s(extra_small)} at {small} folders "
                f"({1000 * extra_small / small:.1f} ms a folder) and {_s(extra_large)} at {large} "
                f"({1000 * extra_large / large:.1f} ms a folder): {growth:.1f}x for {linear:.0f}x "
                f"the folders (linear: {linear:.0f}x).",
            ]
        lines += ["", f"No faster than linear (10% allowed for noise): {_verdict(all(verdicts))}."]
    if load.profile:
        lines += _summary_lines(load, load.profile)
        lines += _profile_lines(load.profile)
    lines.append("")
    return lines


def _summary_lines(load, profile: dict) -> list[str]:
    """Where the time above the baseline goes, from the stages `bench/load_profile.py` timed."""
    stages = profile["stages_ms"]

    def pick(*prefixes: str) -> float:
        return sum(ms for stage, ms in stages.items() if stage.startswith(prefixes))

    hashing = pick("source_hashes")
    project_imports = pick("import thinkube_pipelines")
    folders = pick("load_image_definitions") + hashing
    decorators = pick("image_assets") - hashing  # image_assets hashes the folders too
    dagster_repo = pick("resolve the repository", "Dagster:")
    size = profile["images"]
    extra = load.sizes[size].median - load.baseline.median if size in load.sizes else None
    measured = f" (measured above: {1000 * extra:.0f} ms at the median)" if extra is not None else ""
    total = project_imports + folders + decorators + dagster_repo + pick("resources_for_environment")
    return [
        "",
        f"Summary: what {size} folders add to a load, {total:.0f} ms in one process{measured}:",
        "",
        f"- the project's own work, {project_imports + folders:.0f} ms: importing its modules (requests,",
        f"  the pydantic models of the image spec and catalog contract) {project_imports:.0f} ms; reading,",
        f"  validating and hashing the folders (image.yaml, pins, locks, context digests) {folders:.0f} ms;",
        f"- Dagster building {size} multi-assets ({4 * size} assets, {size} checks), {decorators:.0f} ms",
        f"  (`inspect.signature`, type hints, Dagster types: {decorators / (5 * size):.1f} ms a definition);",
        "- Dagster resolving, snapshotting and serializing the repository (code server to host and",
        f"  back), {dagster_repo:.0f} ms.",
        "",
        "The second and third are Dagster's per-definition costs, paid by any code location with as many",
        f"assets; the project's own share is {100 * (project_imports + folders) / total:.0f}% of the total.",
    ]


def _profile_lines(profile: dict) -> list[str]:
    lines = [
        "",
        f"### Where the load goes ({profile['images']} folders, one fresh interpreter)",
        "",
        "Measured by `bench/load_profile.py`: wall time of each stage of `build_definitions`, then cProfile.",
        "",
        _row("stage", "ms"),
        _row("---", "---"),
    ]
    lines += [_row(stage, f"{ms:.0f}") for stage, ms in profile["stages_ms"].items()]
    if profile.get("snapshot_kib"):
        sizes = ", ".join(f"{k}: {v}" for k, v in profile["snapshot_kib"].items())
        lines += ["", f"Serialized repository snapshot: {sizes}."]
    lines += [
        "",
        f"cProfile of `build_definitions(images_dir)`: {profile['profile_total_ms']:.0f} ms under the",
        "profiler (which inflates it). The project's functions by cumulative time:",
        "",
        _row("function", "cumulative ms", "own ms", "calls"),
        _row(*["---"] * 4),
    ]
    rows = profile["project_cumulative_ms"]
    lines += [_row(f"`{name}`", f"{cum:.0f}", f"{own:.0f}", n) for own, cum, n, name in rows]
    lines += ["", "Every function by own time:", "", _row("function", "own ms", "cumulative ms", "calls")]
    lines += [_row(*["---"] * 4)]
    rows = profile["top_own_ms"]
    lines += [_row(f"`{name}`", f"{own:.0f}", f"{cum:.0f}", n) for own, cum, n, name in rows]
    return lines


def _pipeline_section(p) -> list[str]:
    from bench.pipeline import BUILD_STEP
    from bench.trivial_defs import TRIVIAL_STEP

    trivial = Sample("trivial", [r.wall_s for r in p.trivial])
    cold = p.cold
    reruns = Sample("reruns", [r.wall_s for r in p.reruns])
    trivial_events = statistics.median(r.events_by_step.get(TRIVIAL_STEP, 0) for r in p.trivial)
    cold_events = cold.events_by_step.get(BUILD_STEP, 0)
    rerun_events = max(r.events_by_step.get(BUILD_STEP, 0) for r in p.reruns)
    uploads = max(r.blob_uploads for r in p.reruns)
    puts = max(r.manifest_puts for r in p.reruns)
    writes = max(r.catalog_writes for r in p.reruns)
    revisions = sorted({r.catalog_revision for r in p.reruns}, key=str)
    rerun_ok = reruns.median < RERUN_GOAL_S and uploads == 0 and puts == 0 and writes == 0
    base_wall = trivial.median
    builder_s = cold.build_duration_s or 0.0
    lines = [
        PIPELINE_INTRO.format(driver=p.storage_driver),
        _row("figure", "median", "repetitions", "ratio to baseline", "goal"),
        _row(*["---"] * 5),
        _row(
            "baseline: trivial one-asset run",
            f"{_s(base_wall)} (min-max {trivial.spread})",
            len(trivial.times),
            "1.00x",
            "",
        ),
        _row(
            "a. cold build (empty buildah storage, registry holds only the base)",
            f"{_s(cold.wall_s)} (builder: {builder_s:.1f} s, all else: {cold.wall_s - builder_s:.1f} s)",
            1,
            f"{ratio(cold.wall_s, base_wall):.1f}x",
            "",
        ),
        _row(
            "b. no-change rerun of the chain",
            f"{_s(reruns.median)} (min-max {reruns.spread})",
            len(reruns.times),
            f"{ratio(reruns.median, base_wall):.2f}x",
            f"under {RERUN_GOAL_S:.0f} s, {uploads} uploads, {puts} manifest PUTs, {writes} catalog writes "
            f"(all zero wanted): {_verdict(rerun_ok)}",
        ),
        _row(
            f"c. event log records of `{BUILD_STEP}`, cold run",
            cold_events,
            1,
            f"{ratio(cold_events, trivial_events):.1f}x",
            f"at most {EVENTS_GOAL}: {_verdict(cold_events <= EVENTS_GOAL)}",
        ),
        _row(
            f"c. event log records of `{BUILD_STEP}`, no-change rerun (the most of them)",
            rerun_events,
            len(p.reruns),
            f"{ratio(rerun_events, trivial_events):.1f}x",
            f"at most {EVENTS_GOAL}: {_verdict(rerun_events <= EVENTS_GOAL)}",
        ),
        _row(
            "c. baseline: event log records of the trivial asset's step",
            f"{trivial_events:g}",
            len(p.trivial),
            "1.00x",
            "",
        ),
        "",
        "What the services received:",
        "",
        _row(
            "run",
            "wall",
            "blob uploads",
            "manifest PUTs",
            "catalog writes",
            "catalog revision after",
            "build reused",
        ),
        _row(*["---"] * 7),
    ]
    for label, r in [("cold", cold), *[(f"rerun {i + 1}", r) for i, r in enumerate(p.reruns)]]:
        lines.append(
            _row(
                label,
                _s(r.wall_s),
                r.blob_uploads,
                r.manifest_puts,
                r.catalog_writes,
                r.catalog_revision,
                r.reused,
            )
        )
    lines += [
        "",
        f"Catalog item revision after each rerun: {revisions} (one value: no write reached the database).",
        f"Publishing the Debian base to the fresh registry took {p.base_publish_s:.1f} s (not counted).",
        "",
        "Event log records per step (the run's own records under `(run)`):",
        "",
    ]
    steps = sorted(set(cold.events_by_step) | {k for r in p.reruns for k in r.events_by_step})
    lines.append(_row("step", "cold", *[f"rerun {i + 1}" for i in range(len(p.reruns))]))
    lines.append(_row(*["---"] * (2 + len(p.reruns))))
    for step in steps:
        counts = [cold.events_by_step.get(step, 0), *[r.events_by_step.get(step, 0) for r in p.reruns]]
        lines.append(_row(f"`{step}`", *counts))
    lines.append("")
    return lines


CATALOG_INTRO = """## 3. The catalog under load

`GET /api/v1/images/jupyter` of the catalog service (the active Jupyter images, which the hub asks at
every spawn) holding {images} active images (`jupyter-bench-000`, ..., registered through
`POST /api/v1/images` with the service token), asked by {connections} concurrent clients:
`{wrk}` with {threads} thread(s) and {connections} connections, each sending its next request when the
answer to the previous one has arrived, for {duration} s a run. Each database is measured with its own
three servers, one uvicorn process each, on 127.0.0.1 of this machine, started as `thinkube-catalog
serve` starts the catalog (`uvicorn.run(app, host=, port=, log_level="{log_level}", {options})`: uvloop,
httptools, no access log):

- baseline: `bench/constant_catalog.py --mode value`, a FastAPI endpoint returning the JSON the catalog
  answered, held as a Python constant, which FastAPI serializes on each request;
- reference, for information only: `--mode bytes`, the same body pre-encoded, answered as
  `Response(content=bytes, media_type="application/json")`, so no serialization at all;
- the catalog service itself (`python -m thinkube_pipelines.catalog serve`), on SQLite (a temporary file)
  or on PostgreSQL (a throwaway cluster on this machine, fsync off).

The runs are interleaved (baseline, reference, catalog, baseline, ...), {repetitions} repetitions after one
{warmup} s warm-up run of each server that is not counted. After each run the server just measured must
settle before the next run starts: its CPU idle and one request answered within {prompt:.0f} s, so that the
requests it had accepted when wrk cut its connections (still being served, or stuck) neither steal from
the next run nor hide their outcome.

- answers/s: answers with a status below 400 per second of the run.
- p50, p99: wrk's latency percentiles of the answers received within the run. The requests still
  unanswered when a run ends are in neither, so a server that answers few requests would look fast:
  p99 is therefore taken as at least a bound over every request sent, answered or not (marked "at
  least"): with each of the {connections} connections always waiting on one request, their waits over a
  run of D s add up to {connections}*D over N answered + {connections} unanswered requests, a mean M, and
  since no wait within the run exceeds D, p99 >= (M - D/100) / 0.99. A run with no answer at all counts
  as infinitely slow.
- errors: wrk's counts, summed over the runs: answers with status 400 or above, and socket errors
  (connect, read, write, and timeouts: answers later than {timeout} s). Server ERROR records: what the
  server itself logged at level ERROR from the start of each run until it had settled (requests that
  failed after wrk had cut their connection included); one failed request may show in both.
- server CPU per answer: the server process's user+system CPU time during the runs over its answers
  (PostgreSQL's own processes not included).
- ratios: the median (over the repetitions) of each figure over the baseline's, from the same run.

Goals (issue 7): 0 errors (wrk's and the server's own), throughput at least 1.0x the baseline's, p99 no
worse than the baseline's; on SQLite and on PostgreSQL.
"""

CATALOG_LABELS = {
    "baseline": "baseline: FastAPI returning the JSON as a constant",
    "bytes": "reference: the same body pre-encoded (information)",
    "catalog": "the catalog service",
}


def _ms(value: float) -> str:
    if value == float("inf"):
        return "none answered"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _x(value: float) -> str:
    if value != value:  # NaN: infinite over infinite
        return "n/a"
    return "inf" if value == float("inf") else f"{value:.2f}x"


def _p99(target) -> str:
    """The judged p99 (median over the runs), marked when the bound over all requests set it."""
    judged = target.median("p99_judged_ms")
    bound = judged > target.median("p99_ms") or any(run.p99_bound_ms > run.p99_ms for run in target.runs)
    return f"at least {_ms(judged)}" if bound and judged != float("inf") else _ms(judged)


def _catalog_goals(db) -> tuple[bool, bool, bool]:
    """(0 errors, throughput >= 1.0x, p99 <= baseline); a baseline that answered nothing judges nothing."""
    catalog, base = db.targets["catalog"], db.targets["baseline"]
    judged = base.median("rps") > 0
    no_errors = catalog.error_count == 0 and catalog.logged == 0
    throughput = judged and ratio(catalog.median("rps"), base.median("rps")) >= 1.0
    p99 = judged and catalog.median("p99_judged_ms") <= base.median("p99_judged_ms")
    return no_errors, throughput, p99


def _catalog_section(results) -> list[str]:
    from bench.catalog_load import PROMPT_S
    from bench.constant_catalog import serve_options

    config = results.config
    lines = [
        CATALOG_INTRO.format(
            images=config.images,
            connections=config.connections,
            threads=config.threads,
            duration=config.duration_s,
            repetitions=config.repetitions,
            warmup=config.warmup_s,
            timeout=config.timeout_s,
            wrk=results.wrk_version,
            log_level="warning",
            prompt=PROMPT_S,
            options=", ".join(f"{key}={value}" for key, value in serve_options().items()),
        ),
        _row("database", "0 errors", "throughput >= 1.0x", "p99 <= baseline", "all goals"),
        _row(*["---"] * 5),
    ]
    for db in results.databases:
        if db.not_measured is not None or not db.targets:
            lines.append(_row(db.database, "not measured", "not measured", "not measured", "**MISSED**"))
            continue
        goals = _catalog_goals(db)
        lines.append(_row(db.database, *(_verdict(ok) for ok in goals), _verdict(all(goals))))
    lines.append("")
    for db in results.databases:
        lines += _catalog_database_lines(db)
    return lines


def _catalog_database_lines(db) -> list[str]:
    lines = [f"### {db.database}", ""]
    if db.not_measured is not None or not db.targets:
        lines += ["Not measured: the setup failed:", "", "```", db.not_measured or "no runs", "```", ""]
        return lines
    base = db.targets["baseline"]
    identical = "identical" if db.bodies_identical else "**not identical**"
    lines += [
        f"{db.items} images registered through the API in {db.populate_s:.1f} s; the answer is {db.items} "
        f"items, {db.body_bytes} bytes, byte for byte {identical} from the three servers.",
        "",
        _row(
            "server",
            "answers/s",
            "min-max",
            "p50",
            "p99",
            "errors (wrk)",
            "server ERROR records",
            "server CPU per answer",
            "throughput ratio",
            "p50 ratio",
            "p99 ratio",
        ),
        _row(*["---"] * 11),
    ]
    for name, target in db.targets.items():
        rps = [run.rps for run in target.runs]
        cpu = target.cpu_ms_per_answer
        lines.append(
            _row(
                CATALOG_LABELS.get(name, name),
                f"{target.median('rps'):.1f}",
                f"{min(rps):.1f}-{max(rps):.1f}",
                _ms(target.median("p50_ms")),
                _p99(target),
                target.error_count,
                target.logged,
                "n/a (no answer)" if cpu != cpu else f"{cpu:.2f} ms",
                _x(ratio(target.median("rps"), base.median("rps"))),
                _x(ratio(target.median("p50_ms"), base.median("p50_ms"))),
                _x(ratio(target.median("p99_judged_ms"), base.median("p99_judged_ms"))),
            )
        )
    no_errors, throughput, p99 = _catalog_goals(db)
    catalog = db.targets["catalog"]
    lines += [
        "",
        f"Goals for the catalog on {db.database}: 0 errors ({catalog.error_count} from wrk, "
        f"{catalog.logged} ERROR records in its log): {_verdict(no_errors)}; throughput at least 1.0x the "
        f"baseline's ({_x(ratio(catalog.median('rps'), base.median('rps')))}): {_verdict(throughput)}; "
        f"p99 no worse than the baseline's ({_p99(catalog)} against {_p99(base)}): {_verdict(p99)}.",
        "",
        "wrk's errors by kind, summed over the runs:",
        "",
        _row("server", "status >= 400", "connect", "read", "write", "timeout"),
        _row(*["---"] * 6),
    ]
    for name, target in db.targets.items():
        errors = target.errors()
        kinds = ("status", "connect", "read", "write", "timeout")
        lines.append(_row(CATALOG_LABELS.get(name, name), *(errors[kind] for kind in kinds)))
    names = list(db.targets)
    lines += [
        "",
        "Each run: answers/s; p99 of the answers (the bound over all requests); wrk errors; server ERROR "
        "records; seconds to settle after it:",
        "",
        _row("repetition", *names),
        _row(*["---"] * (1 + len(names))),
    ]
    for index in range(max(len(target.runs) for target in db.targets.values())):
        cells = []
        for name in names:
            runs = db.targets[name].runs
            if index < len(runs):
                run = runs[index]
                cells.append(
                    f"{run.rps:.1f}; {_ms(run.p99_ms)} ({_ms(run.p99_bound_ms)}); {run.error_count}; "
                    f"{run.logged}; {run.settle_s:.1f} s"
                )
            else:
                cells.append("")
        lines.append(_row(index + 1, *cells))
    for name, target in db.targets.items():
        label = CATALOG_LABELS.get(name, name)
        if target.warmup_logged_errors:
            lines += [
                "",
                f"{label}: {target.warmup_logged_errors} ERROR records in its log during the warm-up run "
                "(not counted above).",
            ]
        if target.log_errors:
            lines += ["", f"{label}: its first ERROR records during the runs:", "", "```"]
            lines += [*target.log_errors, "```"]
    lines.append("")
    return lines


KUBERNETES_INTRO = """## 4. The Kubernetes builder's overhead per build

`KubernetesBuilder.build(request)` (thinkube_pipelines/builders/kubernetes.py: context pushed as a registry
blob, batch/v1 Job created, pod logs streamed, digest read from the termination message and checked against
the registry, succeeded Job deleted) against services this benchmark started on free ports: the Kubernetes
API simulator of the tests (tests/k8s_sim, seed `gpu-cluster`, kubelet step {step:g} s) and a CNCF registry
with htpasswd auth. The build pod is scripted: its `buildkit` container runs T = {run_s:g} s printing
{lines} log lines evenly over the run, and ends with BuildKit's metadata (`containerimage.digest` of an
image pushed beforehand under the build's tag) as its termination message. Each build has a fresh build
key and a fresh context (images/{image} and a nonce file, {kib:.0f} KiB), so its upload and its Job are new.

Baseline: the very Job the builder created (same pod template, same script), under another name, run bare
with the kubernetes client: create, watch until complete, read the pod's termination message, delete.
That is what any Job-based builder pays on this cluster (the Job controller, the scheduler, the kubelet,
the pod's start and end); what the builder adds is its context upload, its look for a Job of the same key,
its log streaming, the registry's check of the digest. The overhead is the wall time minus T. The runs are
interleaved (bare Job, build, bare Job, ...) after one warm-up of each that is not counted; between runs
the namespace is left to empty (Jobs and pods gone), untimed.
"""


def _kubernetes_section(k) -> list[str]:
    from bench.kubernetes_builder import BASELINE_PHASES, BUILDER_PHASES, IMAGE

    base, build = k.sample("baseline"), k.sample("builder")
    base_over, build_over = k.overhead("baseline"), k.overhead("builder")
    goal = BUILDER_OVERHEAD_GOAL_S
    met = build_over.median < goal
    every = max(build_over.times) < goal
    streamed = "yes" if all(run.lines_in_order for run in k.builder) else "**no**"
    counts = [run.log_requests for run in k.builder]
    requests = statistics.median(counts)
    spread = "every build" if min(counts) == max(counts) else f"median; {min(counts)}-{max(counts)}"
    lines = [
        KUBERNETES_INTRO.format(
            step=k.kubelet_step_s, run_s=k.run_s, lines=k.log_lines, image=IMAGE, kib=k.context_bytes / 1024
        ),
        _row(
            "measurement", "median", "min-max", "repetitions", "ratio (medians)", "ratio (minimums)", "goal"
        ),
        _row(*["---"] * 7),
        _row(
            "baseline: the builder's Job run bare",
            _s(base.median),
            base.spread,
            len(base.times),
            "1.00x",
            "1.00x",
            "",
        ),
        _row(
            "`KubernetesBuilder.build`",
            _s(build.median),
            build.spread,
            len(build.times),
            f"{ratio(build.median, base.median):.2f}x",
            f"{ratio(min(build.times), min(base.times)):.2f}x",
            "",
        ),
        _row(
            f"overhead of the bare Job (wall - T = {k.run_s:g} s)",
            _s(base_over.median),
            base_over.spread,
            len(base_over.times),
            "1.00x",
            "1.00x",
            "",
        ),
        _row(
            f"**overhead of the build** (wall - T = {k.run_s:g} s)",
            _s(build_over.median),
            build_over.spread,
            len(build_over.times),
            f"{ratio(build_over.median, base_over.median):.2f}x",
            f"{ratio(min(build_over.times), min(base_over.times)):.2f}x",
            f"under {goal:g} s: {_verdict(met)}",
        ),
        "",
        f"Goal: the builder's overhead per build under {goal:g} s: {_s(build_over.median)} at the median: "
        f"{_verdict(met)}; the slowest build's overhead {_s(max(build_over.times))} "
        f"({'every build under the goal' if every else 'not every build under the goal'}). Of the median, "
        f"{_s(build.median - base.median)} is the builder's own, above the bare Job's median; the rest, "
        f"{_s(base_over.median)}, is the simulated cluster's (a real cluster adds the image pull and the "
        "container start of the BuildKit pod to both).",
        "",
        f"Every build streamed its {k.log_lines} log lines in order, each once: {streamed}. It sent "
        f"{requests:g} pods/log requests (follow) per build ({spread}) for its two "
        "containers, `context` and `buildkit`"
        + (
            ": more than one per container, so a log stream was opened again after it ended. When its stream "
            "ends, the builder's log follower judges whether its container has finished by the pod state its "
            "watch has delivered so far, which can lag the end of the stream; if that says no, it waits "
            "0.1 s and reads the log again from its start, skipping the lines it already has. For `buildkit` "
            "that falls between the container's end and `build` returning (`complete` below)."
            if requests > 2
            else "."
        ),
        "",
        "Where a build's time goes (from the builder's own `[kubernetes]` lines, the first log line it "
        "streamed, the end of its `buildkit` log stream, and its `create_job`, `follower` and `delete_job`"
        " methods timed by a subclass):",
        "",
        *_phase_table(k, "builder", "phase of `build`", BUILDER_PHASES),
        "",
        "`start` ends and `run` begins when the first log line reached the builder, so the opening of the log"
        " stream counts in `start` (and `run` may come out a little under T); `run` ends when the `buildkit`"
        " log stream ended, which the simulator does when the container exits.",
        "",
        *_phase_table(k, "baseline", "phase of the bare Job", BASELINE_PHASES),
        "",
    ]
    return lines


def _phase_table(k, side: str, title: str, phases) -> list[str]:
    """The median and the spread of each of `phases` (name, what it is) of `side` ("builder" or
    "baseline"), a table row each."""
    lines = [_row(title, "median", "min-max", "what"), _row(*["---"] * 4)]
    for phase, what in phases:
        lines.append(_row(phase, f"{k.phase_median(side, phase):.3f} s", k.phase_spread(side, phase), what))
    return lines


HUB_INTRO = """## 5. The hub deploy's own time, and the profile callable per spawn-page load

Against services this benchmark started on free ports: the Kubernetes API simulator of the tests
(tests/k8s_sim, seed `gpu-cluster`: two nodes of 8 H100 and one of 4 L40S, the SeaweedFS CSIDriver object
registered), the Keycloak stand-in (tests/oidc), SeaweedFS (`weed server`, its filer), the catalog service
on SQLite holding {images} Jupyter images ({gpu} of them GPU images, all digest-pinned) and a CNCF registry
with htpasswd auth in Harbor's place.

**a. hub_deploy's own time.** What the four hub_deploy assets (thinkube_pipelines/defs/hub/assets.py) do
before `helm upgrade` runs, in their order and with their library calls: `preflight` (Keycloak's
discovery, the CSIDriver, the filer, the catalog, the registry, then the namespace), the SeaweedFS volumes
applied server-side, the values rendered (the catalog's images and the realm's discovery read again,
`render_release`: typed models, the chart's schema, kubernetes-validate --strict of the manifests for
Kubernetes 1.30 and 1.37), then the release's own manifests (all but the volumes, which the volumes step
applied) and the OAuth Secret applied and the values written to a private file for helm, each step with
its own API client from the kubeconfig; the schema caches are emptied before each deploy (each Dagster
step is a process of its own and loads the schemas it uses). Not in it: helm's upgrade and wait, the
health wait, Dagster's own time (its processes, its event log). A first deploy goes to a fresh namespace
(the preflight creates it, each of the 9 applies creates an object); a redeploy repeats the same settings
at once (all 9 unchanged), as a deploy after a catalog change does.

Baseline: `helm template jupyterhub` of the reference chart (tests/reference/z2jh/jupyterhub-4.4.0.tgz,
{helm}) with the values the first deploy rendered ({values_kib:.0f} KiB of YAML, written beforehand),
which renders {objects} objects: rendering the same chart values alone. The runs are interleaved (helm
template, first deploy, redeploy, ...) after one warm-up of each that is not counted.
"""

HUB_SPAWN_INTRO = """**b. The profile callable per spawn-page load.** thinkube_pipelines/hub/profiles.py
where it runs: in the hub image's packages (the virtual environment of tests/fixtures/hub.py: jupyterhub
5.5.0, jupyterhub-kubespawner 7.0.0, aiohttp 3.14.1, kubernetes-asyncio 36.1.0), driven by
bench/hub_spawn_page.py: `install(c)` on a traitlets Config, KubeSpawner (mock mode, kubeconfig: the
simulator), and `profile_list(spawner)` as KubeSpawner's form calls it, which asks the catalog (a new
aiohttp session each time), reads the nodes when a GPU image is listed (kubespawner's shared
kubernetes_asyncio client; the callable's node cache set to {cache_s} s here) and builds {images} profiles
with their GPU count, GPU product, CPU and memory choices ({catalog_kib:.1f} KiB of catalog answer).
Baseline: a bare aiohttp GET of the same endpoint, its body read, on a session of its own (a new
connection, as the callable opens one), in the same process and event loop. Single loads are interleaved
(every kind in turn), {repetitions} repetitions after {warmup} of each not counted; then bursts of {n} loads
started at once in the one event loop (a hub serving {n} users who open the page together: {n}
KubeSpawners), interleaved, {bursts} of each after one warm-up burst of each. No goal is set for it (issue
9 asks for the comparison).
"""


def _yaml_note() -> str:
    from thinkube_pipelines.hub.render import YAML_DUMPER

    if YAML_DUMPER.__name__ == "CSafeDumper":
        return "written with libyaml's `CSafeDumper`"
    return "this PyYAML has no libyaml: written with the pure-Python `SafeDumper`"


def _kv_version() -> str:
    from importlib.metadata import version

    return version("kubernetes-validate")


def _hub_ms(seconds: float) -> str:
    ms = 1000 * seconds
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def _hub_section(h) -> list[str]:
    from bench.hub import DEPLOY_PHASES

    template, first, again = h.sample("template"), h.sample("first"), h.sample("again")
    goal = HUB_DEPLOY_GOAL
    verdicts = {}
    rows = []
    for label, sample in (
        ("**first deploy**: render + preflight + apply, fresh namespace", first),
        ("**redeploy**: the same, nothing changed", again),
    ):
        r, r_min = ratio(sample.median, template.median), ratio(min(sample.times), min(template.times))
        verdicts[sample.label] = max(r, r_min) <= goal
        rows.append(
            _row(
                label,
                _s(sample.median),
                sample.spread,
                len(sample.times),
                f"{r:.2f}x",
                f"{r_min:.2f}x",
                f"within {goal}x by both ratios: {_verdict(verdicts[sample.label])}",
            )
        )
    lines = [
        HUB_INTRO.format(
            images=h.images,
            gpu=h.gpu_images,
            helm=f"helm {h.helm_version}",
            values_kib=h.values_bytes / 1024,
            objects=h.template_objects,
        ),
        _row(
            "measurement", "median", "min-max", "repetitions", "ratio (medians)", "ratio (minimums)", "goal"
        ),
        _row(*["---"] * 7),
        _row(
            "baseline: `helm template` of the same values",
            _s(template.median),
            template.spread,
            len(template.times),
            "1.00x",
            "1.00x",
            "",
        ),
        *rows,
        "",
        f"Goal (issue 9): hub_deploy's own time within {goal}x of `helm template` of the same values: first "
        f"deploy {_verdict(verdicts['first'])}, redeploy {_verdict(verdicts['again'])}. The warm-ups, not "
        f"counted: helm template {_s(h.warmup['template'])}, first deploy {_s(h.warmup['first'])} (the first "
        f"in this process: it pays the imports and the schema loads, as each Dagster step, a process of its "
        f"own, does), redeploy {_s(h.warmup['again'])}.",
        "",
        "Where a deploy's own time goes (medians of each phase over the repetitions):",
        "",
        _row("phase", "first deploy", "share", "redeploy", "what"),
        _row(*["---"] * 5),
    ]
    total_first = first.median
    for phase, what in DEPLOY_PHASES:
        a, b = h.phase_median("first", phase), h.phase_median("again", phase)
        lines.append(_row(phase, _hub_ms(a), f"{100 * a / total_first:.0f}%", _hub_ms(b), what))
    preflight_first = sum(h.phase_median("first", p) for p, _ in DEPLOY_PHASES if p.startswith("preflight"))
    apply_first = h.phase_median("first", "volumes apply") + h.phase_median("first", "release apply")
    render_first = sum(h.phase_median("first", p) for p, _ in DEPLOY_PHASES if p.startswith("render"))
    validate = h.phase_median("first", "render: kubernetes-validate")
    parses = h.definitions_parse_s
    versions = sorted(parses)
    lines += [
        "",
        f"In sum (first deploy, medians): preflight {_hub_ms(preflight_first)}, render "
        f"{_hub_ms(render_first)} (of which kubernetes-validate {_hub_ms(validate)}), applies "
        f"{_hub_ms(apply_first)}, the rest "
        f"(clients, values file) {_hub_ms(total_first - preflight_first - render_first - apply_first)}.",
        "",
        "kubernetes-validate's schemas: `kubernetes_validate.validate` (kubernetes-validate "
        f"{_kv_version()}) reads and parses the whole `_definitions.json` of the schema version and builds a "
        "new validator on every call (16 calls per render: 8 manifests x 2 versions); "
        "thinkube_pipelines/kubernetes/validation.py validates with the same schema files and the same "
        "strict semantics (tests/test_kubernetes_validation.py checks that both agree), parsing each "
        "version's definitions once per process and building each kind's validator once. So a deploy, "
        "its caches emptied as a new process's are, parses them "
        f"{len(versions)} times: "
        + ", ".join(
            f"{h.definitions_bytes[v] / 1e6:.1f} MB for {v} ({_hub_ms(parses[v])} a parse, measured here)"
            for v in versions
        )
        + f", about {_hub_ms(sum(parses.values()))} of the {_hub_ms(validate)} the step took. Each object "
        "is applied once per deploy (the volumes by the volumes step, the node reader and the OAuth Secret "
        "by the release step: a GET and a PATCH each, 18 requests to the API server in all), and the "
        f"values file is {_yaml_note()}.",
        "",
    ]
    lines += _hub_spawn_lines(h)
    return lines


def _hub_spawn_lines(h) -> list[str]:
    from bench.hub import NODES_CACHE_S, SPAWN_WARMUP

    spawn = h.spawn
    single = {name: Sample(name, times) for name, times in spawn["single"].items()}
    base = single["bare"]
    lines = [
        HUB_SPAWN_INTRO.format(
            cache_s=NODES_CACHE_S,
            images=h.images,
            catalog_kib=spawn["catalog_bytes"] / 1024,
            repetitions=h.spawn_repetitions,
            warmup=SPAWN_WARMUP,
            n=h.concurrency,
            bursts=h.bursts,
        ),
        _row(
            "one spawn-page load", "median", "min-max", "repetitions", "ratio (medians)", "ratio (minimums)"
        ),
        _row(*["---"] * 6),
    ]
    labels = [
        ("bare", "baseline: bare aiohttp GET of /api/v1/images/jupyter (new session)"),
        ("keepalive", "reference: the same GET on a kept-open session (information)"),
        ("cached", "**`profile_list(spawner)`**, nodes cached"),
        ("uncached", "**`profile_list(spawner)`**, nodes not cached (emptied before each call)"),
        ("form", "the whole options form: `get_options_form()` (the callable + KubeSpawner's template)"),
    ]
    for name, label in labels:
        sample = single[name]
        lines.append(
            _row(
                label,
                _hub_ms(sample.median),
                f"{1000 * min(sample.times):.1f}-{1000 * max(sample.times):.1f} ms",
                len(sample.times),
                f"{ratio(sample.median, base.median):.2f}x",
                f"{ratio(min(sample.times), min(base.times)):.2f}x",
            )
        )
    steps = spawn["breakdown"]
    lines += [
        "",
        "The callable's steps, called one by one (medians over the same number of repetitions): "
        + "; ".join(f"`{name}` {_hub_ms(statistics.median(times))}" for name, times in steps.items())
        + f". `fetch_images` is the GET and `parse` (json.loads + `parse_images` of the {h.images} items); "
        "the node list goes to the simulator's API (3 GPU nodes, products "
        + ", ".join(f"{p}: {n}" for p, n in spawn["gpu_products"].items())
        + ").",
        "",
        f"{h.concurrency} loads at once, in one event loop:",
        "",
        _row(
            f"{h.concurrency} at once",
            "burst wall (median)",
            "min-max",
            "bursts",
            "ratio (medians)",
            "one call's latency (median over bursts of the burst's median)",
            "slowest call (median over bursts)",
            "hub-process CPU per call (median)",
            "node lists sent per burst",
        ),
        _row(*["---"] * 9),
    ]
    burst_labels = [
        ("bare", f"baseline: {h.concurrency} bare GETs"),
        ("cached", f"{h.concurrency} `profile_list` calls, nodes cached"),
        ("uncached", f"{h.concurrency} `profile_list` calls, node cache emptied once before the burst"),
    ]
    bursts = spawn["bursts"]
    base_wall = statistics.median(b["wall_s"] for b in bursts["bare"])
    for name, label in burst_labels:
        walls = [b["wall_s"] for b in bursts[name]]
        typical = statistics.median(statistics.median(b["latencies_s"]) for b in bursts[name])
        slowest = statistics.median(max(b["latencies_s"]) for b in bursts[name])
        cpu = statistics.median(b["cpu_s"] for b in bursts[name]) / h.concurrency
        lists = [b["node_lists"] for b in bursts[name]]
        sent = f"{min(lists)}" if min(lists) == max(lists) else f"{min(lists)}-{max(lists)}"
        lines.append(
            _row(
                label,
                _hub_ms(statistics.median(walls)),
                f"{1000 * min(walls):.0f}-{1000 * max(walls):.0f} ms",
                len(walls),
                f"{ratio(statistics.median(walls), base_wall):.2f}x",
                _hub_ms(typical),
                _hub_ms(slowest),
                _hub_ms(cpu),
                sent,
            )
        )
    cold = [b["node_lists"] for b in bursts["uncached"]]
    lines += [
        "",
        "The hub-process CPU is the driver process's user+system time over the burst (the callable, aiohttp, "
        "kubernetes_asyncio and the event loop; the catalog's and the API server's own processes not "
        f"included), over its {h.concurrency} calls. Loads that find the node cache cold while a node list "
        "is under way wait for that list (single flight, per event loop) instead of sending their own: "
        + (f"{min(cold)}" if min(cold) == max(cold) else f"{min(cold)}-{max(cold)}")
        + f" node list(s) per burst of {h.concurrency} cold loads here.",
        "",
    ]
    return lines
