"""Running a builder's command line and handing each line of its output on as it is printed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from thinkube_pipelines.builders.base import LineSink

REDACTED = "********"


@dataclass(frozen=True)
class StreamedCommand:
    """How a streamed command ended."""

    returncode: int
    lines: tuple[str, ...]
    """Every line (a build's full log stays small enough; callers keep only the tail)."""
    last_step: str | None
    """The last line that matched the caller's step pattern (the build step that was running)."""
    timed_out: bool


def stream_command(
    argv: Sequence[str],
    on_line: LineSink | None,
    timeout_s: float,
    *,
    redact: Sequence[str] = (),
    step_pattern: re.Pattern[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> StreamedCommand:
    """Run `argv`, read its merged stdout/stderr line by line and hand each to `on_line` at once.

    Secrets in `redact` are masked before a line goes anywhere. `stdin` (e.g. a build context archive) is
    written from a thread. `on_line` is called on the caller's thread; a timer kills the command's process
    group on timeout.
    """
    lines: list[str] = []
    last_step: str | None = None
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
        env=dict(env) if env is not None else None,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def feed() -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError), process.stdin.buffer as raw:
            raw.write(stdin)

    timer = threading.Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    feeder = threading.Thread(target=feed, daemon=True) if stdin is not None else None
    if feeder is not None:
        feeder.start()
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\r\n")
            for secret in redact:
                if secret:
                    line = line.replace(secret, REDACTED)
            lines.append(line)
            if step_pattern is not None:
                step = step_pattern.search(line)
                if step:
                    last_step = step.group(0)
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if feeder is not None:
            feeder.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
    return StreamedCommand(returncode, tuple(lines), last_step, timed_out.is_set())
