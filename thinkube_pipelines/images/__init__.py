"""Image definitions: the folders under images/ turned into typed, validated specs."""

from thinkube_pipelines.images.loader import load_image_definitions
from thinkube_pipelines.images.spec import (
    BaseImage,
    ImageDefinition,
    ImageDefinitionError,
    ImageSet,
    ImageSpec,
    Problem,
)

__all__ = [
    "BaseImage",
    "ImageDefinition",
    "ImageDefinitionError",
    "ImageSet",
    "ImageSpec",
    "Problem",
    "load_image_definitions",
]
