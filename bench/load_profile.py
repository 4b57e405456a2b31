"""Where a code location load goes, measured in a fresh interpreter (run as a script by bench.load).

    python bench/load_profile.py IMAGES_DIR   ->  one JSON line on stdout

Import times (Dagster alone, then the project's modules), each stage of `build_definitions`, and the
functions with the most own time under cProfile.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(images_dir: str) -> None:
    stages: dict[str, float] = {}
    started = time.perf_counter()
    import dagster as dg

    stages["import dagster"] = time.perf_counter() - started
    mark = time.perf_counter()
    from thinkube_pipelines.defs.images.assets import image_assets
    from thinkube_pipelines.defs.images.jobs import build_images_job
    from thinkube_pipelines.defs.resources import resources_for_environment
    from thinkube_pipelines.images import load_image_definitions
    from thinkube_pipelines.images.source import source_hashes

    stages["import thinkube_pipelines modules"] = time.perf_counter() - mark

    def timed(name, call, *args):
        mark = time.perf_counter()
        value = call(*args)
        stages[name] = time.perf_counter() - mark
        return value

    images = timed("load_image_definitions (yaml, pydantic, pins, locks)", load_image_definitions, images_dir)
    timed("source_hashes (read and hash every folder)", source_hashes, images)
    assets = timed("image_assets (1 @dg.multi_asset of 4 assets and a check per image)", image_assets, images)
    resources = timed("resources_for_environment", resources_for_environment)
    defs = timed(
        "dg.Definitions(...)",
        lambda: dg.Definitions(
            assets=assets,
            jobs=[build_images_job],
            resources=resources,
            executor=dg.in_process_executor,
        ),
    )
    repository = timed("resolve the repository (what validate does next)", defs.get_repository_def)
    # What a workspace does with it: Dagster snapshots the repository in the code server, serializes it
    # for the host process (gRPC), which reads it back. All of it grows with the number of assets.
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster_shared.serdes import deserialize_value, serialize_value

    snap = timed(
        "Dagster: repository snapshot (RepositorySnap.from_def)", RepositorySnap.from_def, repository
    )
    text = timed("Dagster: serialize the snapshot (code server -> host)", serialize_value, snap)
    timed("Dagster: deserialize the snapshot (host)", deserialize_value, text, RepositorySnap)

    # The share of the `build_images` job, which holds every asset again: the same Definitions built
    # anew with and without it, snapshotted and serialized (both after the first snapshot's warm-up).
    def snapshot_text(jobs):
        repo = dg.Definitions(
            assets=image_assets(images),
            jobs=jobs,
            resources=resources,
            executor=dg.in_process_executor,
        ).get_repository_def()
        mark = time.perf_counter()
        value = serialize_value(RepositorySnap.from_def(repo))
        return value, time.perf_counter() - mark

    _, stages["for comparison: snapshot + serialize again, with the build_images job"] = snapshot_text(
        [build_images_job]
    )
    snap_alone, stages["for comparison: the same without the build_images job"] = snapshot_text([])
    sizes_kib = {
        "snapshot with build_images (KiB)": len(text) // 1024,
        "without (KiB)": len(snap_alone) // 1024,
    }

    from thinkube_pipelines.definitions import build_definitions

    profile = cProfile.Profile()
    profile.enable()
    build_definitions(images_dir)
    profile.disable()
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, cumulative, calls, f"{_short(filename)}:{line}({function})"))
    top_own = sorted(rows, reverse=True)[:12]
    project = sorted((r for r in rows if "thinkube_pipelines" in r[3]), key=lambda r: -r[1])[:12]
    print(
        json.dumps(
            {
                "images": len(images),
                "stages_ms": {k: round(v * 1000, 1) for k, v in stages.items()},
                "snapshot_kib": sizes_kib,
                "profile_total_ms": round(sum(r[0] for r in rows) * 1000, 1),
                "top_own_ms": [
                    [round(o * 1000, 1), round(c * 1000, 1), n, name] for o, c, n, name in top_own
                ],
                "project_cumulative_ms": [
                    [round(o * 1000, 1), round(c * 1000, 1), n, name] for o, c, n, name in project
                ],
            }
        )
    )


def _short(filename: str) -> str:
    stdlib = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/"
    for marker in ("site-packages/", f"{REPO}/", stdlib):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


if __name__ == "__main__":
    main(sys.argv[1])
