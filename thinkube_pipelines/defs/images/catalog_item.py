"""How an image definition appears in the catalog: the one mapping from image.yaml to a catalog item.

It lives with the assets, not in the catalog package, so that the catalog service never imports the
pipeline: the service knows the contract (`catalog.contract`), only the pipeline knows image definitions.
"""

from datetime import datetime

from thinkube_pipelines.catalog.contract import JUPYTER_CATEGORY, ImageMetadata, ImageUpsert
from thinkube_pipelines.images import ImageDefinition

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
) -> ImageUpsert:
    """The catalog item for `definition`, published as `registry/repository` at `tag` / `digest`.

    is_active is left unset: a new image is offered, and one an operator deactivated stays deactivated
    when it is rebuilt (the catalog keeps the stored state).
    """
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
    )
