"""What each asset of an image chain records, and how a later step reads it back.

Nothing travels between steps through an IO manager: in the cluster every run is its own pod, and files
written by one would not be there for the next. Each asset reports what it made as materialization
metadata (one entry per field, as the UI shows it), and a downstream step reads the latest materialization
of its upstream from the instance, whichever run and process made it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Self

import dagster as dg
from pydantic import BaseModel, ConfigDict, ValidationError


def log_block(lines: list[str] | tuple[str, ...]) -> dg.MetadataValue:
    """Log lines as a Markdown code block, how the UI shows them best."""
    return dg.MetadataValue.md("```\n" + "\n".join(lines) + "\n```")


class Record(BaseModel):
    """A typed materialization record: written as metadata, read back from the instance."""

    model_config = ConfigDict(frozen=True)

    def metadata(self) -> dict[str, Any]:
        """One metadata entry per field (datetimes as ISO text, so they read back exactly)."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump(mode="json").items():
            if isinstance(value, bool):
                out[name] = dg.MetadataValue.bool(value)
            elif isinstance(value, int):
                out[name] = dg.MetadataValue.int(value)
            elif isinstance(value, float):
                out[name] = dg.MetadataValue.float(value)
            elif isinstance(value, list):
                out[name] = dg.MetadataValue.json(value)
            elif value is not None:
                out[name] = dg.MetadataValue.text(str(value))
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self:
        values = {name: getattr(entry, "value", entry) for name, entry in metadata.items()}
        return cls.model_validate({name: values[name] for name in cls.model_fields if name in values})

    @classmethod
    def recorded(cls, instance: dg.DagsterInstance, key: dg.AssetKey) -> Self:
        """The latest materialization of `key` in the instance; fails, naming the asset, when there is none
        or it does not hold this record (made by an older version of the code)."""
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            raise dg.Failure(
                description=f"{key.to_user_string()} has never been materialized in this instance: "
                "materialize it first (or select it in this run)"
            )
        try:
            return cls.from_metadata(event.asset_materialization.metadata)
        except ValidationError as exc:
            raise dg.Failure(
                description=f"{key.to_user_string()}: its latest materialization (run {event.run_id}) "
                f"does not record a {cls.__name__}; materialize it again ({exc.error_count()} field(s))"
            ) from exc


class BuiltImage(Record):
    """`<image>/build`: an image in the registry under its build tag, not yet promoted to any public tag."""

    image_name: str
    image: str
    """The immutable reference: registry/repository@digest."""
    registry: str
    repository: str
    digest: str
    build_key: str
    build_tag: str
    base_image: str
    """What the image was built FROM, by digest."""
    size: int
    created: datetime
    reused: bool
    """True when the registry already served the build key and nothing was built."""


class PublishedImage(Record):
    """`<image>/published`: the digest verified in the registry and promoted to its public tags."""

    image_name: str
    image: str
    registry: str
    repository: str
    digest: str
    version_tag: str
    tags: list[str]
    size: int
    created: datetime
