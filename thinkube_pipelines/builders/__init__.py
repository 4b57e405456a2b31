"""Image builders: the `ImageBuilder` interface and its implementations."""

from thinkube_pipelines.builders.base import (
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    LineSink,
    RegistryAuth,
    RunResult,
)
from thinkube_pipelines.builders.buildah import BuildahBuilder, BuildahNotFound
from thinkube_pipelines.builders.debian_base import make_debian_base

__all__ = [
    "BuildError",
    "BuildRequest",
    "BuildResult",
    "BuildahBuilder",
    "BuildahNotFound",
    "ImageBuilder",
    "LineSink",
    "RegistryAuth",
    "RunResult",
    "make_debian_base",
]
