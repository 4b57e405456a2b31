"""The catalog item: the contract between the image pipeline, the catalog service and the hub.

Kept import-light (pydantic only) so that the pipeline and the hub can import it without pulling in
the service's web and database stack. The shape is a superset of what the real thinkube-control returns
(`name`, `display_name`, `description`, `default`, `metadata.{registry, repository, tag, image_size}`), so
the hub's profile code works against either.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

#: One path component of an OCI repository name (distribution spec): lowercase alphanumerics joined by
#: `.`, `_`, `__` or runs of `-`.
IMAGE_NAME_PATTERN = r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$"
#: A content digest as the registry reports it; the hub pulls `registry/repository@digest`.
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
#: A KubeSpawner memory limit: a positive number with a K, M, G or T suffix (`32G`, `512M`, `1.5G`).
MEM_LIMIT_PATTERN = r"^[0-9]+(?:\.[0-9]+)?[KMGT]$"

ImageName = Annotated[str, StringConstraints(pattern=IMAGE_NAME_PATTERN, max_length=128)]
Digest = Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)]
MemLimit = Annotated[str, StringConstraints(pattern=MEM_LIMIT_PATTERN)]
# Strict numbers: a JSON `true` or `"8"` is a caller's mistake, not a CPU count.
CpuLimit = Annotated[float, Field(gt=0, strict=True)]
ImageSize = Annotated[StrictInt, Field(ge=0)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Category = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
OciTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]


class ImageMetadata(BaseModel):
    """Where the image lives and what it needs to run.

    Extra keys are kept as they are: the real thinkube-control stores more than this service reads, and
    the catalog must not lose them on a round trip.
    """

    model_config = ConfigDict(extra="allow")

    gpu_required: StrictBool = Field(False, description="The image needs an NVIDIA GPU to be useful.")
    cpu_limit: CpuLimit | None = Field(None, description="CPU cores the notebook pod may use.")
    mem_limit: MemLimit | None = Field(None, description="Memory limit for the notebook pod, e.g. 32G.")
    registry: NonEmpty = Field(description="Registry host, e.g. harbor.example.org.")
    repository: NonEmpty = Field(description="Repository inside the registry, e.g. library/<image name>.")
    tag: OciTag | None = Field(None, description="Human-readable tag of the build.")
    digest: Digest | None = Field(None, description="Manifest digest; the hub pulls by digest when set.")
    image_size: ImageSize | None = Field(None, description="Compressed image size in bytes.")

    @model_validator(mode="after")
    def _needs_a_reference(self) -> Self:
        # Without a tag or a digest the hub has nothing it can pull.
        if self.tag is None and self.digest is None:
            raise ValueError("metadata needs a tag or a digest to reference the image")
        return self

    @field_validator("mem_limit")
    @classmethod
    def _positive_memory(cls, value: str | None) -> str | None:
        if value is not None and float(value[:-1]) <= 0:
            raise ValueError("mem_limit must be greater than zero")
        return value

    @property
    def image_reference(self) -> str:
        """What a pod pulls: by digest when known (immutable), else by tag."""
        if self.digest:
            return f"{self.registry}/{self.repository}@{self.digest}"
        return f"{self.registry}/{self.repository}:{self.tag}"


class _CatalogFields(BaseModel):
    name: ImageName = Field(description="Image name; one OCI repository name component.")
    display_name: NonEmpty = Field(description="Name shown on the hub's spawn page.")
    description: str = Field("", max_length=4096, description="One or two sentences for the spawn page.")
    default: StrictBool = Field(False, description="Preselected on the spawn page.")
    category: Category = Field("jupyter", description="Which consumer lists the image.")
    tags: list[Tag] = Field(default_factory=list, description="Free-form labels, e.g. jupyter-compatible.")
    metadata: ImageMetadata
    last_built: AwareDatetime | None = Field(None, description="When the image was built (with a zone).")
    is_active: StrictBool = Field(True, description="Inactive images stay recorded but are not offered.")

    @field_validator("last_built")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None


class ImageUpsert(_CatalogFields):
    """What `POST /api/v1/images` takes: create the image, or replace it if the name exists."""

    model_config = ConfigDict(extra="forbid")


class CatalogItem(_CatalogFields):
    """What the catalog returns for one image."""

    model_config = ConfigDict(extra="ignore")
