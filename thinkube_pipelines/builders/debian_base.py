"""A Debian base image with Python, made from Debian's own packages (no upstream image registry needed).

`mmdebstrap` writes a root filesystem tarball (cached by suite and package list), which is imported into the
builder's storage as a one-layer image. Used where the upstream base registry is out of reach: tests, CI,
`make demo`. Idempotent: an image already stored with the same key is reused as it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from thinkube_pipelines.builders.base import LineSink
from thinkube_pipelines.builders.buildah import BuildahBuilder, stream_command
from thinkube_pipelines.settings import state_dir

DEFAULT_REFERENCE = "localhost/thinkube-base:bookworm"
DEFAULT_SUITE = "bookworm"
DEFAULT_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "git")
KEY_LABEL = "org.thinkube.base.key"
"""Label on the committed image: the cache key it was made from."""
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MMDEBSTRAP_TIMEOUT_S = 1800.0


class DebianBaseError(RuntimeError):
    """The base image could not be made."""


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/thinkube-pipelines` when set, else `cache/` in the local state folder."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "thinkube-pipelines" if xdg else state_dir() / "cache"


def base_key(suite: str, packages: Sequence[str], mirror: str | None = None) -> str:
    """A short stable key for a suite, a package set (order does not matter) and a mirror."""
    text = "\n".join([suite, ",".join(sorted(set(packages))), mirror or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rootfs_tarball(
    suite: str = DEFAULT_SUITE,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    cache_dir: Path | None = None,
    mirror: str | None = None,
    on_line: LineSink | None = None,
) -> Path:
    """The cached `mmdebstrap` tarball for `suite` + `packages`, made first when it is not there yet."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tarball = cache / f"debian-{suite}-{base_key(suite, packages, mirror)}.tar"
    if tarball.is_file():
        return tarball
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise DebianBaseError("mmdebstrap not found: install the Debian package `mmdebstrap`")
    cache.mkdir(parents=True, exist_ok=True)
    # mmdebstrap picks its output format from the file name: keep `.tar` last, and say it anyway.
    partial = tarball.with_name(f"{tarball.stem}.{os.getpid()}.partial.tar")
    argv = [
        mmdebstrap,
        "--mode=root",
        "--variant=apt",
        "--format=tar",
        f"--include={','.join(packages)}",
        suite,
        str(partial),
    ]
    if mirror:
        argv.append(mirror)
    result = stream_command(argv, on_line, timeout_s=MMDEBSTRAP_TIMEOUT_S)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join(result.lines[-20:])
        raise DebianBaseError(f"mmdebstrap {suite} failed (exit {result.returncode}):\n{tail}")
    partial.replace(tarball)
    return tarball


def make_debian_base(
    builder: BuildahBuilder,
    reference: str = DEFAULT_REFERENCE,
    suite: str = DEFAULT_SUITE,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    cache_dir: Path | None = None,
    mirror: str | None = None,
    on_line: LineSink | None = None,
) -> str:
    """Make (or reuse) `reference` in `builder`'s storage; return its image id.

    Skips everything when an image made from the same suite and packages is already stored under
    `reference`; skips `mmdebstrap` when its tarball is cached.
    """
    key = base_key(suite, packages, mirror)
    if builder.image_exists(reference):
        info = builder.inspect_image(reference)
        labels = (info.get("OCIv1") or {}).get("config", {}).get("Labels") or {}
        if labels.get(KEY_LABEL) == key:
            return info["FromImageID"]
    tarball = rootfs_tarball(suite, packages, cache_dir, mirror, on_line)
    container = builder.create_container("scratch")
    try:
        steps = [
            ["add", container, str(tarball), "/"],
            [
                "config",
                "--env",
                f"PATH={IMAGE_PATH}",
                "--cmd",
                "/bin/bash",
                "--label",
                f"{KEY_LABEL}={key}",
                container,
            ],
            ["commit", "--rm", container, reference],
        ]
        for args in steps:
            if on_line is not None:
                on_line(f"buildah {' '.join(args)}")
            result = stream_command(builder.buildah_argv(*args), on_line, timeout_s=MMDEBSTRAP_TIMEOUT_S)
            if result.returncode != 0:
                tail = "\n".join(result.lines[-20:])
                raise DebianBaseError(f"buildah {args[0]} for {reference} failed:\n{tail}")
    finally:
        builder.remove_container(container)
    return builder.inspect_image(reference)["FromImageID"]
