"""Running commands with a clean environment and a time limit, and their medians."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
"""The virtual environment's bin folder: `dagster` and the project's commands."""
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def plain_env(home: Path, **settings: str) -> dict[str, str]:
    """A plain shell's environment: PATH (the venv's bin first) and HOME, nothing inherited; plus
    `settings`. No DAGSTER_HOME unless given."""
    return {"PATH": f"{BIN}:{SYSTEM_PATH}", "HOME": str(home), **settings}


class CommandFailed(RuntimeError):
    pass


def run_timed(argv: list[str], *, env: dict[str, str], cwd: Path, log_file: Path, timeout_s: float) -> float:
    """Run `argv` to completion (output to `log_file`); its wall time in seconds. Raises CommandFailed
    with the output's tail when it fails or runs past `timeout_s`."""
    with log_file.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            message = f"{' '.join(argv)}: no end after {timeout_s:.0f} s\n{tail(log_file)}"
            raise CommandFailed(message) from None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        wall = time.perf_counter() - started
    if code != 0:
        raise CommandFailed(f"{' '.join(argv)} exited with {code}:\n{tail(log_file)}")
    return wall


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Sample:
    """Wall times (seconds) of one command repeated."""

    label: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> str:
        return f"{min(self.times):.2f}-{max(self.times):.2f} s"


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("inf")
