"""The image builder interface: what the build assets ask of whatever builds and pushes an image.

`BuildahBuilder` (buildah, vfs storage, chroot isolation) implements it on development machines and CI; a
BuildKit builder that runs as a Kubernetes Job on a GPU node implements the same two methods in
production. Assets declare a resource of type `ImageBuilder` and get either one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

LineSink = Callable[[str], None]
"""Receives each log line of a build or run as it is produced (without its trailing newline)."""

LOG_TAIL_LINES = 40
"""How many of the last log lines a result or an error carries."""

DEFAULT_RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry host. The password never appears in `repr` (nor in logs)."""

    host: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One image to build from a Dockerfile and push to `target`."""

    image_name: str
    """The image's name in `images/` (used in messages)."""
    context_dir: Path
    """The build context."""
    dockerfile: Path
    """The Dockerfile (usually `context_dir / "Dockerfile"`)."""
    build_args: dict[str, str] = field(default_factory=dict)
    target: str
    """Full reference to tag and push, e.g. `127.0.0.1:5000/library/jupyter-x:src-3f2a9c1e`."""
    labels: dict[str, str] = field(default_factory=dict)
    push_auth: RegistryAuth | None = None
    """Credentials for the target's registry (also used to pull a parent image from it)."""
    tls_verify: bool = True
    """Verify the registry's TLS certificate; False also allows plain HTTP (a local test registry)."""

    @property
    def registry_host(self) -> str:
        """The registry part of `target` (`host[:port]`)."""
        return registry_host_of(self.target)


@dataclass(frozen=True)
class BuildResult:
    """What a successful build and push produced."""

    reference: str
    """The pushed reference (the request's target)."""
    digest: str
    """`sha256:…` of the pushed manifest, exactly as the registry serves it for the tag."""
    base_digest: str | None
    """Digest of the image the Dockerfile's (last) FROM resolved to, when the builder can tell."""
    created: datetime
    """When the image config says it was created (UTC)."""
    duration_s: float
    """Build and push, wall clock."""
    log_tail: tuple[str, ...]
    """The last log lines."""
    image_id: str | None = None
    """The builder's local id of the image (its config digest), when it keeps one."""


@dataclass(frozen=True)
class RunResult:
    """A command run inside a built image."""

    returncode: int
    output: str
    """Its standard output and standard error, merged line by line (lines of one stream keep their order;
    between the two streams the order is not guaranteed)."""


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


def registry_host_of(reference: str) -> str:
    """The registry host of a fully qualified image reference (`host[:port]/repo[:tag|@digest]`)."""
    first, _, rest = reference.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        raise ValueError(f"image reference {reference!r} does not start with a registry host")
    return first


class ImageBuilder(dg.ConfigurableResource):
    """Builds an image from a Dockerfile, pushes it, and runs commands in built images.

    An abstract resource: configure one of its implementations (`BuildahBuilder`, or the Kubernetes
    BuildKit builder) and pass it wherever an asset asks for an `ImageBuilder`.
    """

    base_mirror: str | None = Field(
        default=None,
        description="An image reference to build root images FROM instead of their upstream base, for "
        "machines that cannot reach the upstream registry (see `with_base_mirror`).",
    )

    def with_base_mirror(self, build_args: dict[str, str], arg: str = "BASE_IMAGE") -> dict[str, str]:
        """`build_args` with `arg` set to `base_mirror` when one is configured (for root images only:
        the caller decides which images and which argument)."""
        if not self.base_mirror:
            return dict(build_args)
        return {**build_args, arg: self.base_mirror}

    @abstractmethod
    def build(self, request: BuildRequest, on_line: LineSink | None = None) -> BuildResult:
        """Build `request`, then push it to `request.target`; return what the registry now serves.

        Every log line goes to `on_line` as it is produced. Raises `BuildError` naming the failing step.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement ImageBuilder.build")

    @abstractmethod
    def run(
        self,
        reference: str,
        argv: list[str],
        on_line: LineSink | None = None,
        timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
    ) -> RunResult:
        """Run `argv` inside the built image `reference` and return its exit code and output."""
        raise NotImplementedError(f"{type(self).__name__} does not implement ImageBuilder.run")
