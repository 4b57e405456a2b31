"""Image builders and runners: the seams (`ImageBuilder`, `ImageRunner`) and their implementations."""

from thinkube_pipelines.builders.base import (
    BuildContext,
    BuildError,
    BuildRequest,
    BuildResult,
    ImageBuilder,
    ImageRunner,
    LineSink,
    RegistryAccess,
    RegistryAuth,
    RunError,
    RunRequest,
    RunResult,
)
from thinkube_pipelines.builders.buildah import BuildahBuilder, BuildahNotFound, BuildahRunner
from thinkube_pipelines.builders.docker import DockerBuilder, DockerRunner

__all__ = [
    "BuildContext",
    "BuildError",
    "BuildRequest",
    "BuildResult",
    "BuildahBuilder",
    "BuildahNotFound",
    "BuildahRunner",
    "DockerBuilder",
    "DockerRunner",
    "ImageBuilder",
    "ImageRunner",
    "LineSink",
    "RegistryAccess",
    "RegistryAuth",
    "RunError",
    "RunRequest",
    "RunResult",
]
