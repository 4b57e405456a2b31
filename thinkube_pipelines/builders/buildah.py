"""buildah: the builder and runner of machines without a cluster or a container engine.

`BuildahBuilder` unpacks the travelling build context, runs `buildah bud` and pushes with `buildah push`;
`BuildahRunner` pulls an image by digest from the registry and runs a command in it. Both use chroot
isolation (the default OCI runtime needs cgroups, which containers and CI runners often lack) and kernel
overlay storage where this machine can mount it, vfs otherwise. Every line buildah prints is handed to the
caller as it is printed. Credentials only ever live in a 0600 auth file, removed afterwards; a private CA
in a certificate folder beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from thinkube_pipelines.builders.base import (
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    ImageRunner,
    LineSink,
    RegistryAccess,
    RunError,
    RunRequest,
    RunResult,
    log_tail,
    registry_host_of,
)
from thinkube_pipelines.builders.streamed import stream_command

STEP_LINE = re.compile(r"STEP \d+/\d+: .*")
"""buildah announces each Dockerfile instruction as `STEP n/m: INSTRUCTION ...` (prefixed by the stage)."""
StorageDriver = Literal["auto", "overlay", "vfs"]


class BuildahNotFound(RuntimeError):
    """The `buildah` binary is not installed."""


class BuildahStorage(dg.ConfigurableResource):
    """What the buildah builder and runner share: the binary, its storage and how RUN steps are isolated."""

    buildah: str = Field(default="buildah", description="The buildah binary: a path, or a name on PATH.")
    storage_root: str = Field(
        default=".state/containers/root",
        description="buildah's image and layer storage (`--root`); relative paths are from the working dir.",
    )
    run_root: str = Field(
        default=".state/containers/run",
        description="buildah's runtime state (`--runroot`); relative paths are from the working dir.",
    )
    storage_driver: StorageDriver = Field(
        default="auto",
        description="Storage driver (`--storage-driver`): `auto` takes kernel overlay where this machine "
        "can mount it on the storage's filesystem, else vfs (which copies the whole filesystem for every "
        "layer: 5-10x slower).",
    )
    isolation: Literal["chroot", "oci", "rootless"] = Field(
        default="chroot",
        description="How RUN steps are isolated. The default OCI runtime needs cgroups, which containers "
        "and CI runners often lack; chroot works there.",
    )

    def buildah_argv(self, *args: str) -> list[str]:
        """A full buildah command line with this storage's options."""
        found = shutil.which(self.buildah)
        if found is None:
            raise BuildahNotFound(
                f"buildah not found ({self.buildah!r}): install the Debian package `buildah`"
            )
        root = Path(self.storage_root).absolute()
        driver = self.storage_driver
        if driver == "auto":
            driver = fastest_storage_driver(str(root.parent))
        return [found, "--root", str(root), "--runroot", str(Path(self.run_root).absolute()),
                "--storage-driver", driver, *args]  # fmt: skip

    def remove_container(self, container: str) -> None:
        """`buildah rm` a working container; quiet when it is already gone."""
        subprocess.run(self.buildah_argv("rm", container), capture_output=True, check=False, timeout=120)


class BuildahBuilder(BuildahStorage, ImageBuilder):
    """Builds and pushes images with buildah (Debian package `buildah`); no container engine needed."""

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
        description="When to pull the FROM image: `missing` (only if not stored locally; FROM names a "
        "digest, so a stored copy is exactly it), `always`, `newer`, `never`.",
    )
    build_timeout_s: float = Field(
        default=3600.0, description="Kill a build (or a push) that runs longer than this."
    )

    def build(self, request: BuildRequest, on_line: LineSink | None = None) -> BuildResult:
        """`buildah bud` then `buildah push` of `request`; returns the digest the registry serves."""
        started = time.monotonic()
        secrets = request.registry.secrets()
        with tempfile.TemporaryDirectory(prefix="thinkube-build-") as tmp:
            context_dir = request.context.extract_to(Path(tmp) / "context")
            dockerfile = labelled_dockerfile(
                context_dir / request.context.dockerfile, request.labels, Path(tmp)
            )
            with registry_files(request.registry, request.registry_host) as (authfile, cert_dir):
                bud = stream_command(
                    self._bud_argv(request, context_dir, dockerfile, authfile, cert_dir),
                    on_line,
                    timeout_s=self.build_timeout_s,
                    redact=secrets,
                    step_pattern=STEP_LINE,
                )
                if bud.returncode != 0:
                    reason = (
                        "build timed out"
                        if bud.timed_out
                        else f"build failed (buildah exit {bud.returncode})"
                    )
                    raise BuildError(request.image_name, bud.last_step, reason, log_tail(bud.lines))
                digestfile = Path(tmp) / "digest"
                push = stream_command(
                    self._push_argv(request, authfile, cert_dir, digestfile),
                    on_line,
                    timeout_s=self.build_timeout_s,
                    redact=secrets,
                )
            lines = bud.lines + push.lines
            step = f"push to registry {request.registry_host}"
            if push.returncode != 0:
                reason = "timed out" if push.timed_out else f"buildah exit {push.returncode}"
                raise BuildError(request.image_name, step, f"push failed ({reason})", log_tail(lines))
            digest = digestfile.read_text().strip() if digestfile.is_file() else ""
            if not digest.startswith("sha256:"):
                raise BuildError(request.image_name, step, "push wrote no manifest digest", log_tail(lines))
        return BuildResult(
            reference=request.target,
            digest=digest,
            duration_s=time.monotonic() - started,
            log_tail=log_tail(lines),
        )

    def _bud_argv(
        self,
        request: BuildRequest,
        context_dir: Path,
        dockerfile: Path,
        authfile: Path | None,
        cert_dir: Path | None,
    ) -> list[str]:
        argv = self.buildah_argv(
            "bud",
            f"--layers={str(self.layers).lower()}",
            # A failed build otherwise leaves its working container behind (with vfs, a full rootfs copy).
            "--force-rm",
            "--isolation",
            self.isolation,
            "--format",
            self.format,
            f"--pull={self.pull}",
            "--platform",
            request.platform,
            *_registry_flags(request.registry, authfile, cert_dir),
            "-f",
            str(dockerfile),
        )
        for key, value in request.build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        if self.ca_bundle:
            bundle = Path(self.ca_bundle).resolve()
            if not bundle.is_file():
                raise BuildError(request.image_name, None, f"CA bundle {bundle} is not a file")
            for inside in self.ca_bundle_paths:
                argv += ["--volume", f"{bundle}:{inside}:ro"]
        return [*argv, "-t", request.target, str(context_dir)]

    def _push_argv(
        self, request: BuildRequest, authfile: Path | None, cert_dir: Path | None, digestfile: Path
    ) -> list[str]:
        return self.buildah_argv(
            "push",
            "--digestfile",
            str(digestfile),
            "--format",
            "oci" if self.format == "oci" else "v2s2",
            *_registry_flags(request.registry, authfile, cert_dir),
            request.target,
            f"docker://{request.target}",
        )


class BuildahRunner(BuildahStorage, ImageRunner):
    """Runs commands in images pulled by digest from the registry, in a throwaway buildah container."""

    pull_timeout_s: float = Field(default=1800.0, description="Give up pulling an image after this long.")

    def run(self, request: RunRequest, on_line: LineSink | None = None) -> RunResult:
        if request.gpus:
            raise RunError(
                f"{request.image}: buildah cannot give a container GPUs; run GPU tests with the Docker "
                "runner on a GPU workstation or in the cluster"
            )
        host = registry_host_of(request.image)
        with registry_files(request.registry, host) as (authfile, cert_dir):
            created = stream_command(
                self.buildah_argv(
                    "from",
                    "--pull=missing",
                    *_registry_flags(request.registry, authfile, cert_dir),
                    f"docker://{request.image}",
                ),
                None,
                timeout_s=self.pull_timeout_s,
                redact=request.registry.secrets(),
            )
        if created.returncode != 0 or not created.lines:
            tail = "\n".join(created.lines[-10:])
            raise RunError(f"could not pull {request.image} (buildah exit {created.returncode}):\n{tail}")
        container = created.lines[-1].strip()
        try:
            ran = stream_command(
                self.buildah_argv("run", "--isolation", self.isolation, container, "--", *request.argv),
                on_line,
                timeout_s=request.timeout_s,
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


def labelled_dockerfile(dockerfile: Path, labels: dict[str, str], folder: Path) -> Path:
    """A copy of `dockerfile` in `folder` ending with one LABEL instruction holding every label.

    buildah 1.28 turns each `--label` into a LABEL step of its own (one image commit each); one
    instruction costs one step. Values are quoted, with `\\`, `"` and `$` escaped (LABEL expands variables).
    """
    if not labels:
        return dockerfile
    for key, value in labels.items():
        if "\n" in key or "\n" in value or not key:
            raise ValueError(f"label {key!r}: keys must be non-empty and neither may hold a newline")

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'

    instruction = "LABEL " + " ".join(f"{quoted(k)}={quoted(v)}" for k, v in labels.items())
    copy = folder / "Dockerfile.labelled"
    copy.write_text(dockerfile.read_text().rstrip("\n") + "\n" + instruction + "\n")
    return copy


@contextlib.contextmanager
def registry_files(access: RegistryAccess, host: str) -> Iterator[tuple[Path | None, Path | None]]:
    """A containers-auth.json (mode 0600) and a certificate folder with the registry's CA, as buildah and
    skopeo read them; both in a 0700 folder that is removed afterwards. None for what is not configured."""
    if access.auth is None and access.ca_pem is None:
        yield None, None
        return
    directory = Path(tempfile.mkdtemp(prefix="thinkube-registry-"))
    try:
        authfile = cert_dir = None
        if access.auth is not None:
            authfile = directory / "auth.json"
            token = access.auth.basic_token
            fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"auths": {host: {"auth": token}}}, handle)
        if access.ca_pem is not None:
            cert_dir = directory / "certs"
            cert_dir.mkdir()
            (cert_dir / "ca.crt").write_text(access.ca_pem)
        yield authfile, cert_dir
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _registry_flags(access: RegistryAccess, authfile: Path | None, cert_dir: Path | None) -> list[str]:
    flags = [f"--tls-verify={str(access.tls_verify).lower()}"]
    if authfile is not None:
        flags += ["--authfile", str(authfile)]
    if cert_dir is not None:
        flags += ["--cert-dir", str(cert_dir)]
    return flags


@cache
def fastest_storage_driver(scratch: str) -> str:
    """`overlay` where this kernel lets us mount an overlay on `scratch`'s filesystem, else `vfs`.

    vfs works everywhere but copies the whole root filesystem for every working container and step (~12 s
    a step for a ~300 MB Debian base on a 2-core machine). Probed once per process and folder.
    """
    Path(scratch).mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=scratch))
    try:
        dirs = {name: probe / name for name in ("lower", "upper", "work", "merged")}
        for path in dirs.values():
            path.mkdir()
        options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(dirs["merged"])],
            capture_output=True,
            check=False,
        )
        if mounted.returncode == 0:
            subprocess.run(["umount", str(dirs["merged"])], capture_output=True, check=False)
        return "overlay" if mounted.returncode == 0 else "vfs"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
