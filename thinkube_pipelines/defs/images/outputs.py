"""What each asset of an image chain hands to the next (stored by Dagster's IO manager between runs)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ImageSource(BaseModel):
    """`<image>/source`: the folder's content hash at the time of the run."""

    model_config = ConfigDict(frozen=True)

    image_name: str
    source_hash: str
    files: tuple[str, ...]

    @property
    def short_hash(self) -> str:
        return self.source_hash[:12]


class BuiltImage(BaseModel):
    """`<image>/build`: an image built and pushed by digest, not yet promoted to any public tag."""

    model_config = ConfigDict(frozen=True)

    image_name: str
    registry: str
    repository: str
    digest: str
    build_tag: str
    source_hash: str
    base_image: str
    base_digest: str | None
    created: datetime
    duration_s: float

    @property
    def reference(self) -> str:
        """The immutable reference: registry/repository@digest."""
        return f"{self.registry}/{self.repository}@{self.digest}"

    @property
    def build_reference(self) -> str:
        """The name the builder pushed (and, for a local builder, stored) the image under."""
        return f"{self.registry}/{self.repository}:{self.build_tag}"


class PublishedImage(BaseModel):
    """`<image>/published`: the digest verified in the registry and promoted to its public tags."""

    model_config = ConfigDict(frozen=True)

    image_name: str
    registry: str
    repository: str
    digest: str
    version_tag: str
    tags: tuple[str, ...]
    size: int
    created: datetime

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"
