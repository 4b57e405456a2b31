"""Figure 1: loading the code location (`dagster definitions validate`) with 50 and 500 image folders,
against a code location of one trivial asset."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.generated_images import generate_images
from bench.timing import BIN, REPO, Sample, log, plain_env, run_timed

BASELINE_MODULE = "bench.trivial_defs"
PROJECT_MODULE = "thinkube_pipelines.definitions"
VALIDATE_TIMEOUT_S = 600.0


@dataclass
class LoadResults:
    baseline: Sample
    sizes: dict[int, Sample]
    repetitions: int
    profile: dict = field(default_factory=dict)
    """Where the load of the smallest size goes (bench/load_profile.py), when it was measured."""


def validate_argv(module: str) -> list[str]:
    return [str(BIN / "dagster"), "definitions", "validate", "-m", module, "-d", str(REPO)]


def check_images(images_dir: Path, env: dict[str, str], cwd: Path) -> None:
    """Every generated folder must pass `thinkube-pipelines images check`."""
    done = subprocess.run(
        [str(BIN / "thinkube-pipelines"), "images", "check", str(images_dir)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"generated images in {images_dir} fail `images check`:\n{done.stdout[-3000:]}")


def run_load(sizes: list[int], repetitions: int, profile: bool = True) -> LoadResults:
    with tempfile.TemporaryDirectory(prefix="thinkube-bench-load-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        env = plain_env(home)
        folders = {}
        for size in sizes:
            folders[size] = generate_images(REPO / "images", root / f"images-{size}", size)
            check_images(folders[size], env, root)
            log(f"load: {size} image folders generated in {folders[size]}, `images check` passes")
        runs = [("baseline", BASELINE_MODULE, env)] + [
            (size, PROJECT_MODULE, plain_env(home, THINKUBE_IMAGES_DIR=str(folders[size]))) for size in sizes
        ]
        for _, module, run_env in runs:  # warm-up: page cache, .pyc files; not counted
            warmup = root / "warmup.log"
            run_timed(
                validate_argv(module), env=run_env, cwd=root, log_file=warmup, timeout_s=VALIDATE_TIMEOUT_S
            )
        baseline = Sample("trivial Definitions (1 asset)")
        samples = {size: Sample(f"{size} image folders") for size in sizes}
        for rep in range(repetitions):  # interleaved, so that a busy moment hits every command alike
            for label, module, run_env in runs:
                out = root / f"validate-{label}.log"
                wall = run_timed(
                    validate_argv(module), env=run_env, cwd=root, log_file=out, timeout_s=VALIDATE_TIMEOUT_S
                )
                (baseline if label == "baseline" else samples[label]).times.append(wall)
                log(f"load: repetition {rep + 1}/{repetitions}, {label}: {wall:.2f} s")
        results = LoadResults(baseline, samples, repetitions)
        if profile:
            smallest = folders[min(sizes)]
            done = subprocess.run(
                [sys.executable, str(REPO / "bench" / "load_profile.py"), str(smallest)],
                env=plain_env(home), cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                results.profile = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                log(f"load: profiling failed:\n{done.stderr[-2000:]}")
        return results
