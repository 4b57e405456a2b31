"""A Debian base image with Python, made from Debian's own packages (no upstream image registry needed).

`mmdebstrap` writes a root filesystem tarball (cached by suite and package list), which is published to
the registry as a one-layer image. Used where the upstream base registry is out of reach: tests, CI,
`make demo` (as THINKUBE_BASE_MIRROR). Idempotent: an image published with the same key is reused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from thinkube_pipelines.builders.base import LineSink
from thinkube_pipelines.builders.streamed import stream_command
from thinkube_pipelines.registry.client import RegistryClient
from thinkube_pipelines.registry.reference import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from thinkube_pipelines.settings import state_dir

DEFAULT_REPOSITORY_NAME = "thinkube-base"
"""The base's repository inside the registry's project: `<project>/thinkube-base`."""
DEFAULT_TAG = "bookworm"
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


def publish_debian_base(
    client: RegistryClient,
    repository: str,
    tag: str = DEFAULT_TAG,
    suite: str = DEFAULT_SUITE,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    cache_dir: Path | None = None,
    mirror: str | None = None,
    on_line: LineSink | None = None,
) -> str:
    """Publish (or reuse) a one-layer Debian base as `repository:tag` in the registry; its digest.

    The registry is where every builder (buildah here, BuildKit in the cluster) pulls a base from, so the
    base is uploaded straight from the rootfs tarball: no builder is needed. Skips everything when the
    tag already holds an image made from the same suite and packages (one manifest and one config
    request); skips `mmdebstrap` when its tarball is cached.
    """
    key = base_key(suite, packages, mirror)
    if client.digest_of(repository, tag) is not None:
        facts = client.image_facts(repository, tag)
        if facts.labels.get(KEY_LABEL) == key:
            return facts.digest
    tarball = rootfs_tarball(suite, packages, cache_dir, mirror, on_line)
    if on_line is not None:
        on_line(f"compressing {tarball.name} ({tarball.stat().st_size // 1_000_000} MB)")
    raw = tarball.read_bytes()
    layer = gzip.compress(raw, compresslevel=1, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    del raw
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [f"PATH={IMAGE_PATH}"], "Cmd": ["/bin/bash"], "Labels": {KEY_LABEL: key}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"mmdebstrap {suite}"}],
    }
    config_raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    if on_line is not None:
        on_line(f"uploading the layer ({len(layer) // 1_000_000} MB) to {client.url}/{repository}")
    layer_digest = client.push_blob(repository, layer)
    config_digest = client.push_blob(repository, config_raw)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_raw)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}],
    }
    raw_manifest = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = client.put_manifest(repository, tag, raw_manifest, OCI_MANIFEST)
    if on_line is not None:
        on_line(f"{client.host}/{repository}:{tag} -> {digest}")
    return digest
