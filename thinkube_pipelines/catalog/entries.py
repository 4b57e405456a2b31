"""How an image definition appears in the catalog: the one mapping from image.yaml to a catalog item."""

from __future__ import annotations

from datetime import datetime

from thinkube_pipelines.catalog.contract import ImageMetadata, ImageUpsert
from thinkube_pipelines.images import ImageDefinition

JUPYTER_CATEGORY = "jupyter"
JUPYTER_COMPATIBLE_TAG = "jupyter-compatible"


def catalog_upsert(
    definition: ImageDefinition,
    *,
    registry: str,
    repository: str,
    tag: str | None = None,
    digest: str | None = None,
    image_size: int | None = None,
    last_built: datetime | None = None,
    active: bool = True,
) -> ImageUpsert:
    """The catalog item for `definition`, published as `registry/repository` at `tag` / `digest`."""
    spec = definition.spec
    tags = [JUPYTER_COMPATIBLE_TAG, *(t for t in spec.tags if t != JUPYTER_COMPATIBLE_TAG)]
    return ImageUpsert(
        name=spec.name,
        display_name=spec.display_name,
        description=spec.description,
        default=spec.default,
        category=JUPYTER_CATEGORY,
        tags=tags,
        metadata=ImageMetadata(
            gpu_required=spec.gpu_required,
            cpu_limit=spec.cpu_limit,
            mem_limit=spec.mem_limit,
            registry=registry,
            repository=repository,
            tag=tag,
            digest=digest,
            image_size=image_size,
        ),
        last_built=last_built,
        is_active=active,
    )
