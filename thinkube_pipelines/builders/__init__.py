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

__all__ = [
    "BuildContext",
    "BuildError",
    "BuildRequest",
    "BuildResult",
    "BuildahBuilder",
    "BuildahNotFound",
    "BuildahRunner",
    "ImageBuilder",
    "ImageRunner",
    "LineSink",
    "RegistryAccess",
    "RegistryAuth",
    "RunError",
    "RunRequest",
    "RunResult",
]
