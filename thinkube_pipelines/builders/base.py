"""The seams between the image graph and whatever builds and runs images.

`ImageBuilder` builds a `BuildRequest` and pushes it; `ImageRunner` runs a command in an image pulled by
digest from the registry. Both take only what can travel to another machine (a build context archive with
its digest, credentials, the registry's CA as text), never a path on this machine's disk: in the cluster
the work happens in a Kubernetes Job on a GPU node. What an image *is* (size, creation time, base) is read
afterwards from the registry (`RegistryClient.image_facts`), so that every builder reports the same facts
the same way.

Implementations: `BuildahBuilder`/`BuildahRunner` (builders/buildah.py) and `DockerBuilder`/`DockerRunner`
(builders/docker.py, the local Docker engine); the Kubernetes ones arrive with the cluster environment.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import dagster as dg

LineSink = Callable[[str], None]
"""Receives each log line of a build or run as it is produced (without its trailing newline)."""

LOG_TAIL_LINES = 40
"""How many of the last log lines a result or an error carries."""


def log_tail(lines: Sequence[str]) -> tuple[str, ...]:
    """The last `LOG_TAIL_LINES` lines."""
    return tuple(lines[-LOG_TAIL_LINES:])


DEFAULT_RUN_TIMEOUT_S = 300.0
DEFAULT_PLATFORM = "linux/amd64"
IGNORED_PARTS = frozenset({"__pycache__", ".ipynb_checkpoints", ".git"})
"""Folder names never part of a build context (editor and interpreter droppings)."""


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry host. The password never appears in `repr` (nor in logs)."""

    host: str
    username: str
    password: str = field(repr=False)

    @property
    def basic_token(self) -> str:
        """`base64(username:password)`, as registry auth files (containers-auth.json, Docker's
        config.json) hold it."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class RegistryAccess:
    """How a builder or runner reaches the registry: credentials, TLS verification, a private CA."""

    auth: RegistryAuth | None = None
    tls_verify: bool = True
    """Verify the registry's TLS certificate; False also allows plain HTTP (a local registry)."""
    ca_pem: str | None = field(default=None, repr=False)
    """PEM text of the CA that signed the registry's certificate (a private CA), or None."""

    def secrets(self) -> tuple[str, ...]:
        """What must never reach a log line."""
        if self.auth is None or not self.auth.password:
            return ()
        return (self.auth.password, self.auth.basic_token)


@dataclass(frozen=True)
class BuildContext:
    """A build context that can travel: a reproducible tar archive of an image folder, and its digest.

    The archive is the same bytes for the same files on any machine (sorted entries, no timestamps or
    owners, modes reduced to 0644/0755), so its digest is the folder's content hash.
    """

    archive: bytes = field(repr=False)
    digest: str
    dockerfile: str = "Dockerfile"
    """The Dockerfile's path inside the archive."""

    @classmethod
    def from_files(cls, root: Path, files: Iterable[PurePosixPath], dockerfile: str = "Dockerfile"):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for relative in sorted(files):
                path = root / relative
                info = tarfile.TarInfo(relative.as_posix())
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                info.mtime = 0
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        archive = buffer.getvalue()
        return cls(
            archive=archive, digest="sha256:" + hashlib.sha256(archive).hexdigest(), dockerfile=dockerfile
        )

    @classmethod
    def from_folder(cls, folder: Path, dockerfile: str = "Dockerfile") -> BuildContext:
        """The context of every file under `folder` (except `IGNORED_PARTS`)."""
        return cls.from_files(folder, context_files(folder), dockerfile)

    def verify(self) -> None:
        """Raise unless the archive is the one its digest names (it travelled intact)."""
        actual = "sha256:" + hashlib.sha256(self.archive).hexdigest()
        if actual != self.digest:
            raise ValueError(f"build context: archive digest {actual} is not {self.digest}")

    def extract_to(self, directory: Path) -> Path:
        """Unpack into `directory` after checking the digest; returns `directory`."""
        self.verify()
        directory.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(self.archive), mode="r") as tar:
            tar.extractall(directory, filter="data")
        return directory


def context_files(folder: Path) -> list[PurePosixPath]:
    """The files of a folder that make up its build context, relative to it, sorted. (`os.walk` rather
    than `Path.rglob`: the source sensor lists hundreds of folders on every tick.)"""
    found = []
    root = os.fspath(folder)
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in IGNORED_PARTS]
        relative_dir = os.path.relpath(directory, root)
        for name in files:
            if name in IGNORED_PARTS or not os.path.isfile(os.path.join(directory, name)):
                continue
            found.append(PurePosixPath(name if relative_dir == "." else f"{relative_dir}/{name}"))
    return sorted(found)


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One image to build from a travelling context and push to `target`."""

    image_name: str
    """The image's name in `images/` (used in messages)."""
    context: BuildContext
    build_args: dict[str, str] = field(default_factory=dict)
    target: str
    """Full reference to tag and push, e.g. `127.0.0.1:5000/library/jupyter-x:build-3f2a9c1e…`."""
    labels: dict[str, str] = field(default_factory=dict)
    """Image config labels, applied without a layer of their own."""
    platform: str = DEFAULT_PLATFORM
    registry: RegistryAccess = field(default_factory=RegistryAccess)
    """How to reach the target's registry (also to pull a parent or base image from it)."""

    @property
    def registry_host(self) -> str:
        """The registry part of `target` (`host[:port]`)."""
        return registry_host_of(self.target)


@dataclass(frozen=True)
class BuildResult:
    """What a successful build and push produced. Further facts come from the registry."""

    reference: str
    """The pushed reference (the request's target)."""
    digest: str
    """`sha256:…` of the pushed manifest, exactly as the registry serves it for the tag."""
    duration_s: float
    """Build and push, wall clock."""
    log_tail: tuple[str, ...]
    """The last log lines."""


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """A command to run in an image that the registry serves, named by digest."""

    image: str
    """`host/repository@sha256:…`: never a tag, so what runs is exactly what was built and checked."""
    argv: list[str]
    gpus: int = 0
    """GPUs the command needs (0: none)."""
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    registry: RegistryAccess = field(default_factory=RegistryAccess)

    def __post_init__(self) -> None:
        if "@sha256:" not in self.image:
            raise ValueError(f"run: {self.image!r} is not a digest reference (host/repository@sha256:…)")
        if not self.argv:
            raise ValueError("run: argv is empty")
        if self.gpus < 0:
            raise ValueError(f"run: gpus must be 0 or more, not {self.gpus}")


@dataclass(frozen=True)
class RunResult:
    """A command run inside an image."""

    returncode: int
    """The command's exit status; 124 when it ran past its time limit."""
    output: str
    """Its standard output and standard error, merged line by line."""


class BuildError(Exception):
    """A build or push failed. The message names the image and the failing step and ends with the log tail."""

    def __init__(self, image_name: str, step: str | None, reason: str, log_tail: tuple[str, ...] = ()):
        self.image_name = image_name
        self.step = step
        self.reason = reason
        self.log_tail = tuple(log_tail)
        at = f" at {step}" if step else ""
        tail = "\n".join(f"  | {line}" for line in self.log_tail[-LOG_TAIL_LINES:])
        message = f"image {image_name}: {reason}{at}"
        if tail:
            message += f"\nlast log lines:\n{tail}"
        super().__init__(message)


class RunError(RuntimeError):
    """An image could not be run at all (pull failed, no GPU available, engine down): not the command's
    own failure, which is a `RunResult` with a non-zero return code."""


def registry_host_of(reference: str) -> str:
    """The registry host of a fully qualified image reference (`host[:port]/repo[:tag|@digest]`)."""
    first, _, rest = reference.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        raise ValueError(f"image reference {reference!r} does not start with a registry host")
    return first


class ImageBuilder(dg.ConfigurableResource):
    """Builds an image from a `BuildRequest` and pushes it to the request's target.

    An abstract resource: configure one of its implementations and pass it wherever an asset asks for an
    `ImageBuilder`.
    """

    @abstractmethod
    def build(self, request: BuildRequest, on_line: LineSink | None = None) -> BuildResult:
        """Build `request`, then push it to `request.target`; return the digest the registry now serves.

        Every log line goes to `on_line` as it is produced. Raises `BuildError` naming the failing step.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement ImageBuilder.build")


class ImageRunner(dg.ConfigurableResource):
    """Runs a command in an image pulled by digest from the registry (the smoke check, the GPU test)."""

    @abstractmethod
    def run(self, request: RunRequest, on_line: LineSink | None = None) -> RunResult:
        """Pull `request.image`, run `request.argv` in it within `request.timeout_s` with `request.gpus`
        GPUs, and return its exit status and output. Raises `RunError` when it cannot run at all."""
        raise NotImplementedError(f"{type(self).__name__} does not implement ImageRunner.run")
