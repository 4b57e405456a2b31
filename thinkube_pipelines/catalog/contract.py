"""The catalog item: the contract between the image pipeline, the catalog service and the hub.

Kept import-light (pydantic and the standard library) so that the pipeline and the hub can import it
without the service's web and database stack. The shape is a superset of what the real thinkube-control
returns (`name`, `display_name`, `description`, `default`, `metadata.{registry, repository, tag,
image_size}`), so the hub's profile code works against either.

Every limit is here, once, and shows in the OpenAPI document: what the schema cannot say (a reference
that must parse as a whole, finite JSON in free-form metadata) is checked by validators that name the field.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

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

from thinkube_pipelines import oci

#: Names that are fixed path segments under /api/v1/images/: an image so named could never be read by
#: name (`GET /api/v1/images/jupyter` is the list of Jupyter images).
RESERVED_NAMES = frozenset({"jupyter"})
JUPYTER_CATEGORY = "jupyter"

#: Limits, documented in the OpenAPI schema through the field constraints below.
MAX_BODY_BYTES = 64 * 1024
MAX_TAGS = 32
MAX_METADATA_BYTES = 16 * 1024
MAX_EXTRA_METADATA_KEYS = 32
CPU_LIMIT_MAX = 1024.0
MEM_LIMIT_MAX_BYTES = 64 * 1024**4  # 64 TiB
IMAGE_SIZE_MAX = 1024**4  # 1 TiB

#: KubeSpawner's memory units (jupyterhub.traitlets.ByteSpecification: powers of 1024), plus Kubernetes'
#: binary suffixes, which mean the same: `32G` and `32Gi` are both 32 * 2**30 bytes; plain digits are bytes.
MEMORY_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MEM_LIMIT_PATTERN = r"^(?:[0-9]{1,15}|[0-9]{1,9}(?:\.[0-9]{1,6})?[KMGT]i?)$"
_MEMORY = re.compile(r"^(?P<number>[0-9.]+)(?P<unit>[KMGT]?)i?$")

_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
ImageName = Annotated[
    str, StringConstraints(pattern=rf"^{oci.COMPONENT_PATTERN}$", min_length=1, max_length=128)
]
Digest = Annotated[str, StringConstraints(pattern=rf"^{oci.SHA256_DIGEST_PATTERN}$")]
OciTag = Annotated[str, StringConstraints(pattern=rf"^{oci.TAG_PATTERN}$")]
RegistryHost = Annotated[
    str, StringConstraints(pattern=rf"^{oci.DOMAIN_PATTERN}$", max_length=oci.NAME_TOTAL_LENGTH_MAX)
]
Repository = Annotated[
    str,
    StringConstraints(pattern=rf"^{oci.REPOSITORY_PATTERN}$", max_length=oci.NAME_TOTAL_LENGTH_MAX),
]
MemLimit = Annotated[str, StringConstraints(pattern=MEM_LIMIT_PATTERN)]
# Strict, finite numbers: a JSON `true`, `"8"`, NaN or Infinity is a caller's mistake, not a CPU count.
CpuLimit = Annotated[float, Field(gt=0, le=CPU_LIMIT_MAX, strict=True, allow_inf_nan=False)]
ImageSize = Annotated[StrictInt, Field(ge=0, le=IMAGE_SIZE_MAX)]
DisplayName = Annotated[str, StringConstraints(pattern=_NO_CONTROL, min_length=1, max_length=256)]
Category = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)]


def memory_bytes(mem_limit: str) -> int:
    """What KubeSpawner makes of a memory limit, in bytes (`32G` and `32Gi` alike: 32 * 2**30)."""
    match = _MEMORY.fullmatch(mem_limit)
    if match is None:
        raise ValueError(f"not a memory quantity: {mem_limit!r}")
    return int(float(match["number"]) * MEMORY_UNITS[match["unit"]])


class ImageMetadata(BaseModel):
    """Where the image lives and what it needs to run.

    Extra keys are kept as they are (at most 32 plain keys, 16 KiB of finite JSON in all): the real
    thinkube-control stores more than this service reads, and the catalog must not lose them on a round
    trip.
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"maxProperties": 8 + MAX_EXTRA_METADATA_KEYS},
    )

    gpu_required: StrictBool = Field(False, description="The image needs an NVIDIA GPU to be useful.")
    cpu_limit: CpuLimit | None = Field(
        None, description=f"CPU cores the notebook pod may use: finite, above 0, at most {CPU_LIMIT_MAX:g}."
    )
    mem_limit: MemLimit | None = Field(
        None,
        description=(
            "Memory limit of the notebook pod as KubeSpawner reads it: bytes, or a number with K, M, G, T "
            "(powers of 1024) or Ki, Mi, Gi, Ti; above 0, at most 64Ti. E.g. 32G or 32Gi."
        ),
    )
    registry: RegistryHost = Field(
        description="Registry host[:port], without scheme or path, e.g. harbor.example.org."
    )
    repository: Repository = Field(
        description="Repository inside the registry (OCI path components), e.g. library/<image name>."
    )
    tag: OciTag | None = Field(None, description="Human-readable tag of the build.")
    digest: Digest | None = Field(None, description="Manifest digest; the hub pulls by digest when set.")
    image_size: ImageSize | None = Field(None, description="Compressed image size in bytes (at most 1 TiB).")

    @field_validator("registry")
    @classmethod
    def _registry_host(cls, value: str) -> str:
        return oci.validate_domain(value)

    @field_validator("mem_limit")
    @classmethod
    def _memory_in_bounds(cls, value: str | None) -> str | None:
        if value is not None and not 0 < memory_bytes(value) <= MEM_LIMIT_MAX_BYTES:
            raise ValueError("mem_limit must be above 0 and at most 64Ti")
        return value

    @model_validator(mode="after")
    def _pullable_and_bounded(self) -> Self:
        # Without a tag or a digest the hub has nothing it can pull.
        if self.tag is None and self.digest is None:
            raise ValueError("metadata needs a tag or a digest to reference the image")
        if len(f"{self.registry}/{self.repository}") > oci.NAME_TOTAL_LENGTH_MAX:
            raise ValueError(
                f"registry/repository is longer than {oci.NAME_TOTAL_LENGTH_MAX} characters: not pullable"
            )
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_METADATA_KEYS:
            raise ValueError(f"metadata holds more than {MAX_EXTRA_METADATA_KEYS} extra keys")
        for key in extra:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
                raise ValueError(f"metadata key {key[:64]!r} is not a plain identifier")
        try:
            size = len(json.dumps(extra, allow_nan=False).encode())
        except ValueError:
            raise ValueError("metadata must be finite JSON (no NaN or Infinity)") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"the extra metadata takes more than {MAX_METADATA_BYTES} bytes as JSON")
        return self

    @property
    def image_reference(self) -> str:
        """What a pod pulls: by digest when known (immutable), else by tag."""
        if self.digest:
            return f"{self.registry}/{self.repository}@{self.digest}"
        return f"{self.registry}/{self.repository}:{self.tag}"


class _CatalogFields(BaseModel):
    name: ImageName = Field(
        description="Image name; one OCI repository name component. `jupyter` is reserved (a route)."
    )
    display_name: DisplayName = Field(description="Name shown on the hub's spawn page (one line).")
    description: str = Field("", max_length=4096, description="One or two sentences for the spawn page.")
    default: StrictBool = Field(
        False,
        description=(
            "Preselected on the spawn page. Marking one image unmarks the others of its category; the "
            "catalog answers exactly one default among the active images of a category (the marked one, "
            "else the first by name)."
        ),
    )
    category: Category = Field(JUPYTER_CATEGORY, description="Which consumer lists the image.")
    tags: list[Label] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description=f"Free-form labels, e.g. jupyter-compatible (at most {MAX_TAGS}).",
    )
    metadata: ImageMetadata
    last_built: AwareDatetime | None = Field(None, description="When the image was built (with a zone).")

    @field_validator("last_built")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("last_built is out of range once converted to UTC") from None


class ImageUpsert(_CatalogFields):
    """What `POST /api/v1/images` takes: create the image, or replace its fields if the name exists."""

    model_config = ConfigDict(extra="forbid")

    is_active: StrictBool | None = Field(
        None,
        description=(
            "Only for a new image (default true). An existing image keeps its state: activate or "
            "deactivate it through its own routes; a different value here is refused with 409."
        ),
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(
                f"{value!r} is reserved: GET /api/v1/images/{value} is a route, so an image of that name "
                "could never be read by name"
            )
        return value

    def stored_fields(self) -> dict[str, Any]:
        """The fields a write replaces, as JSON-ready values."""
        return self.model_dump(mode="json", exclude={"is_active"})


class CatalogItem(_CatalogFields):
    """What the catalog returns for one image."""

    model_config = ConfigDict(extra="ignore")

    is_active: StrictBool = Field(True, description="Inactive images stay recorded but are not offered.")


Change = Literal["created", "updated", "unchanged"]


class WriteOutcome(BaseModel):
    """What a write answers: the stored item and what the write did to it."""

    change: Change = Field(description="`unchanged` when the catalog already held exactly this.")
    item: CatalogItem


class ErrorBody(BaseModel):
    """Every refusal but a validation error."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, then the field path.")
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: which fields are wrong and why (the rejected values are not echoed)."""

    detail: list[FieldError]
