"""`BuildahBuilder`: builds with `buildah bud` and pushes with `buildah push`, for machines without a cluster.

Runs unprivileged-friendly settings that work without Docker and without cgroups: vfs storage under a
project-local root and chroot isolation for `RUN`. Every line buildah prints is handed to the caller as it
is printed. The registry password only ever lives in a 0600 auth file that is removed after the build.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from thinkube_pipelines.builders.base import (
    DEFAULT_RUN_TIMEOUT_S,
    LOG_TAIL_LINES,
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    LineSink,
    RegistryAuth,
    RunResult,
)

STEP_LINE = re.compile(r"STEP \d+/\d+: .*")
"""buildah announces each Dockerfile instruction as `STEP n/m: INSTRUCTION ...` (prefixed by the stage)."""
BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"
FROM_STEP = re.compile(r"STEP \d+/\d+: FROM (\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
REDACTED = "********"


class BuildahNotFound(RuntimeError):
    """The `buildah` binary is not installed."""


@dataclass(frozen=True)
class StreamedCommand:
    """How a streamed command ended."""

    returncode: int
    lines: tuple[str, ...]
    """Every line (a build's full log stays small enough; callers keep only the tail)."""
    last_step: str | None
    timed_out: bool


class BuildahBuilder(ImageBuilder):
    """Builds and pushes images with buildah (Debian package `buildah`); no container engine needed."""

    buildah: str = Field(default="buildah", description="The buildah binary: a path, or a name on PATH.")
    storage_root: str = Field(
        default=".state/containers/root",
        description="buildah's image and layer storage (`--root`); relative paths are from the working dir.",
    )
    run_root: str = Field(
        default=".state/containers/run",
        description="buildah's runtime state (`--runroot`); relative paths are from the working dir.",
    )
    storage_driver: str = Field(
        default="vfs",
        description="Storage driver (`--storage-driver`). vfs works everywhere (no overlay mounts) but "
        "copies the whole filesystem for every layer.",
    )
    isolation: Literal["chroot", "oci", "rootless"] = Field(
        default="chroot",
        description="How RUN steps are isolated. The default OCI runtime needs cgroups, which containers "
        "and CI runners often lack; chroot works there.",
    )
    layers: bool = Field(
        default=True,
        description="Keep and reuse a layer per Dockerfile step (`--layers`), so that rebuilding an "
        "unchanged image is fast and yields the very same image (and digest).",
    )
    format: Literal["oci", "docker"] = Field(
        default="oci",
        description="Manifest and config format of the built and pushed image: OCI, or Docker schema 2.",
    )
    ca_bundle: str | None = Field(
        default=None,
        description="A CA bundle on this machine bind-mounted read-only over the image's CA bundle paths "
        "(`ca_bundle_paths`) during RUN steps only, e.g. to download through a TLS-intercepting proxy. "
        "Never written into the image: neither the file nor any environment variable.",
    )
    ca_bundle_paths: list[str] = Field(
        default=["/etc/ssl/certs/ca-certificates.crt"],
        description="Where `ca_bundle` is mounted inside RUN steps. Each must already exist in the image "
        "being built (a missing one would be created empty and kept).",
    )
    pull: Literal["missing", "always", "never", "newer"] = Field(
        default="missing",
        description="When to pull the FROM image: `missing` (only if not stored locally), `always` (the "
        "nightly rebuild, for fresh base layers), `newer` (if the registry has a newer one), `never`.",
    )
    build_timeout_s: float = Field(
        default=3600.0, description="Kill a build (or a push) that runs longer than this."
    )

    # ---------------------------------------------------------------------------------------------
    # ImageBuilder

    def build(self, request: BuildRequest, on_line: LineSink | None = None) -> BuildResult:
        """`buildah bud` then `buildah push` of `request`; returns the digest the registry serves."""
        started = time.monotonic()
        secrets = _secrets_of(request.push_auth)
        with self._auth_file(request.push_auth) as authfile:
            bud = stream_command(
                self._bud_argv(request, authfile),
                on_line,
                timeout_s=self.build_timeout_s,
                redact=secrets,
            )
            if bud.returncode != 0:
                reason = (
                    "build timed out" if bud.timed_out else f"build failed (buildah exit {bud.returncode})"
                )
                raise BuildError(request.image_name, bud.last_step, reason, _tail(bud.lines))
            with tempfile.TemporaryDirectory(prefix="thinkube-push-") as tmp:
                digestfile = Path(tmp) / "digest"
                push = stream_command(
                    self._push_argv(request, authfile, digestfile),
                    on_line,
                    timeout_s=self.build_timeout_s,
                    redact=secrets,
                )
                lines = bud.lines + push.lines
                step = f"push to registry {request.registry_host}"
                if push.returncode != 0:
                    reason = "timed out" if push.timed_out else f"buildah exit {push.returncode}"
                    raise BuildError(request.image_name, step, f"push failed ({reason})", _tail(lines))
                digest = digestfile.read_text().strip() if digestfile.is_file() else ""
                if not digest.startswith("sha256:"):
                    raise BuildError(request.image_name, step, "push wrote no manifest digest", _tail(lines))
        info = self.inspect_image(request.target)
        return BuildResult(
            reference=request.target,
            digest=digest,
            base_digest=self._base_digest(info, bud.lines),
            created=_parse_created(info),
            duration_s=time.monotonic() - started,
            log_tail=_tail(lines),
            image_id=info.get("FromImageID"),
        )

    def run(
        self,
        reference: str,
        argv: list[str],
        on_line: LineSink | None = None,
        timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
    ) -> RunResult:
        """Run `argv` in a throwaway container of the locally stored image `reference`.

        `reference` is the tag that `build` pushed (or an image id). Not `repo@<pushed digest>`: the local
        storage keeps its own manifest (uncompressed layers), whose digest differs from the pushed one.
        """
        if not argv:
            raise ValueError("run: argv is empty")
        container = self.create_container(reference)
        try:
            ran = stream_command(
                [*self._global_argv(), "run", "--isolation", self.isolation, container, "--", *argv],
                on_line,
                timeout_s=timeout_s,
            )
        finally:
            self.remove_container(container)
        lines = list(ran.lines)
        if ran.returncode != 0:
            # buildah reports a non-zero exit on the same stderr; that is not the command's output.
            noise = {
                f"subprocess exited with status {ran.returncode}",
                f"Error: exit status {ran.returncode}",
            }
            lines = [line for line in lines if line not in noise]
        returncode = 124 if ran.timed_out else ran.returncode
        return RunResult(returncode=returncode, output="".join(f"{line}\n" for line in lines))

    # ---------------------------------------------------------------------------------------------
    # Helpers for callers

    def image_exists(self, reference: str) -> bool:
        """Whether `reference` (a name or an image id) is in this builder's storage."""
        return self._run_buildah(["inspect", "--type", "image", reference], check=False).returncode == 0

    def inspect_image(self, reference: str) -> dict[str, Any]:
        """`buildah inspect --type image` of a locally stored image."""
        return json.loads(self._run_buildah(["inspect", "--type", "image", reference]).stdout)

    def remove_image(self, reference: str) -> None:
        """Remove `reference` from storage if it is there."""
        self._run_buildah(["rmi", "--force", reference], check=False)

    def buildah_argv(self, *args: str) -> list[str]:
        """A full buildah command line with this builder's storage options, for anything not wrapped here."""
        return self._global_argv() + list(args)

    def create_container(self, image: str) -> str:
        """`buildah from` a locally stored image (or `scratch`); returns the working container's id."""
        created = self._run_buildah(["from", "--pull=never", image], check=False)
        if created.returncode != 0:
            raise RuntimeError(f"buildah from {image} failed: {created.stdout.strip()[-2000:]}")
        return created.stdout.strip().splitlines()[-1]

    def remove_container(self, container: str) -> None:
        """`buildah rm` a working container; quiet when it is already gone."""
        self._run_buildah(["rm", container], check=False)

    # ---------------------------------------------------------------------------------------------
    # Internals

    def _binary(self) -> str:
        found = shutil.which(self.buildah)
        if found is None:
            raise BuildahNotFound(
                f"buildah not found ({self.buildah!r}): install the Debian package `buildah`"
            )
        return found

    def _global_argv(self) -> list[str]:
        root = Path(self.storage_root).absolute()
        run_root = Path(self.run_root).absolute()
        return [
            self._binary(),
            "--root",
            str(root),
            "--runroot",
            str(run_root),
            "--storage-driver",
            self.storage_driver,
        ]

    def _bud_argv(self, request: BuildRequest, authfile: Path | None) -> list[str]:
        argv = [
            *self._global_argv(),
            "bud",
            f"--layers={str(self.layers).lower()}",
            # A failed build otherwise leaves its working container behind (with vfs, a full rootfs copy).
            "--force-rm",
            "--isolation",
            self.isolation,
            "--format",
            self.format,
            f"--pull={self.pull}",
            f"--tls-verify={str(request.tls_verify).lower()}",
            "-f",
            str(request.dockerfile),
        ]
        if authfile is not None:
            argv += ["--authfile", str(authfile)]
        for key, value in request.build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in request.labels.items():
            argv += ["--label", f"{key}={value}"]
        if self.ca_bundle:
            bundle = Path(self.ca_bundle).resolve()
            if not bundle.is_file():
                raise BuildError(request.image_name, None, f"CA bundle {bundle} is not a file")
            for inside in self.ca_bundle_paths:
                argv += ["--volume", f"{bundle}:{inside}:ro"]
        argv += ["-t", request.target, str(request.context_dir)]
        return argv

    def _push_argv(self, request: BuildRequest, authfile: Path | None, digestfile: Path) -> list[str]:
        argv = [
            *self._global_argv(),
            "push",
            "--digestfile",
            str(digestfile),
            "--format",
            "oci" if self.format == "oci" else "v2s2",
            f"--tls-verify={str(request.tls_verify).lower()}",
        ]
        if authfile is not None:
            argv += ["--authfile", str(authfile)]
        argv += [request.target, f"docker://{request.target}"]
        return argv

    def _base_digest(self, info: dict[str, Any], lines: Sequence[str]) -> str | None:
        """The stored digest of the image the final stage was built FROM.

        Not buildah's `org.opencontainers.image.base.digest` annotation: with `--layers`, buildah 1.28 puts
        the digest of the previous step's intermediate image there. Its `base.name` annotation is right;
        else the last `FROM` the log announced (build args already substituted) names the base.
        """
        name = (info.get("ImageAnnotations") or {}).get(BASE_NAME_ANNOTATION)
        if not name:
            stages: set[str] = set()
            for line in lines:
                match = FROM_STEP.search(line)
                if match:
                    name = None if match.group(1).lower() in stages else match.group(1)
                    if match.group(2):
                        stages.add(match.group(2).lower())
        if not name or name == "scratch":
            return None
        with contextlib.suppress(RuntimeError, ValueError):
            return self.inspect_image(name).get("FromImageDigest") or None
        return None

    @contextlib.contextmanager
    def _auth_file(self, auth: RegistryAuth | None) -> Iterator[Path | None]:
        """A containers-auth.json holding `auth` (mode 0600, in a 0700 directory), removed afterwards."""
        if auth is None:
            yield None
            return
        directory = Path(tempfile.mkdtemp(prefix="thinkube-auth-"))
        try:
            path = directory / "auth.json"
            token = _basic_token(auth)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"auths": {auth.host: {"auth": token}}}, handle)
            yield path
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _run_buildah(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            self._global_argv() + args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=600,
        )
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"buildah {args[0]} failed (exit {completed.returncode}): {completed.stdout.strip()[-2000:]}"
            )
        return completed


def stream_command(
    argv: Sequence[str],
    on_line: LineSink | None,
    timeout_s: float,
    redact: Sequence[str] = (),
) -> StreamedCommand:
    """Run `argv`, read its merged stdout/stderr line by line and hand each to `on_line` at once.

    `on_line` is called on the caller's thread; a timer kills the command's process group on timeout.
    """
    lines: list[str] = []
    last_step: str | None = None
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\r\n")
            for secret in redact:
                if secret:
                    line = line.replace(secret, REDACTED)
            lines.append(line)
            step = STEP_LINE.search(line)
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
        if process.stdout is not None:
            process.stdout.close()
    return StreamedCommand(returncode, tuple(lines), last_step, timed_out.is_set())


def _secrets_of(auth: RegistryAuth | None) -> tuple[str, ...]:
    """What must never reach a log line: the password and the auth file's encoding of it."""
    if auth is None or not auth.password:
        return ()
    return (auth.password, _basic_token(auth))


def _basic_token(auth: RegistryAuth) -> str:
    return base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()


def _tail(lines: Sequence[str]) -> tuple[str, ...]:
    return tuple(lines[-LOG_TAIL_LINES:])


def _parse_created(info: dict[str, Any]) -> datetime:
    """The image config's creation time, as an aware UTC datetime (buildah prints nanoseconds)."""
    raw = (info.get("OCIv1") or {}).get("created") or (info.get("Docker") or {}).get("created")
    if not raw:
        raise ValueError("image config has no creation time")
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", raw)
    if match is None:
        raise ValueError(f"unexpected image creation time {raw!r}")
    whole, fraction, zone = match.groups()
    text = whole + (f".{(fraction or '0')[:6]:0<6}") + ("+00:00" if zone == "Z" else zone)
    return datetime.fromisoformat(text).astimezone(UTC)
