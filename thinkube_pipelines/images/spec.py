"""Typed image definitions: what one folder of images/ promises the build, the catalog and the hub."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from thinkube_pipelines.catalog.contract import CpuLimit, ImageName, MemLimit

DOCKERFILE = "Dockerfile"
REQUIREMENTS = "requirements.txt"
IMAGE_YAML = "image.yaml"
LOCK_FILE = "requirements.lock"
"""Every package of the image (its ancestors' too) pinned with its hashes; made by `images lock`."""

# Build arguments through which the builder hands an image its FROM: root images get their pinned base
# (an operator may point it at a mirror), children get their parent's exact digest.
BASE_IMAGE_ARG = "BASE_IMAGE"
PARENT_IMAGE_ARG = "PARENT_IMAGE"


class BaseImage(BaseModel):
    """The upstream image a root image is built FROM: `repo:tag@sha256:...` stays on that digest (a rebuild
    is reproducible; the nightly observation only reports a newer digest of the tag), `repo:tag` follows
    the tag (each build, and each nightly observation, resolves it to its current digest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: Annotated[str, Field(pattern=r"^[^\s@]+(@sha256:[0-9a-f]{64})?$")]
    """registry/repository with a tag, a digest, or both."""
    python: Annotated[str, Field(pattern=r"^3\.[0-9]+$")]

    @model_validator(mode="after")
    def _tag_or_digest(self) -> BaseImage:
        if "@sha256:" not in self.image and ":" not in self.image.rpartition("/")[2]:
            raise ValueError(f"{self.image!r} names neither a tag nor a digest: add :tag, @sha256:..., both")
        return self


class ImageSpec(BaseModel):
    """The contents of image.yaml: the single source of truth for an image's metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ImageName
    display_name: Annotated[str, Field(min_length=1)]
    description: Annotated[str, Field(min_length=1)]
    gpu_required: StrictBool
    cpu_limit: CpuLimit
    """Cores a user's server may use (KubeSpawner's cpu_limit)."""
    mem_limit: MemLimit
    parent: ImageName | None = None
    base: BaseImage | None = None
    default: StrictBool = False
    tags: tuple[Annotated[str, Field(min_length=1)], ...] = ()

    @model_validator(mode="after")
    def _exactly_one_origin(self) -> ImageSpec:
        if (self.parent is None) == (self.base is None):
            raise ValueError("exactly one of 'parent' (another image in images/) or 'base' must be set")
        return self


@dataclass(frozen=True)
class PinnedRequirement:
    """One `name==version` line of a requirements.txt."""

    name: str
    version: str
    line: str
    lineno: int

    @property
    def key(self) -> str:
        """The normalized project name (PEP 503), so `Foo_Bar` and `foo-bar` compare equal."""
        return canonicalize_name(self.name)


@dataclass(frozen=True)
class ImageDefinition:
    """An image folder, loaded and validated: its spec, its pinned requirements and its build context."""

    spec: ImageSpec
    folder: Path
    requirements: tuple[PinnedRequirement, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dockerfile(self) -> Path:
        return self.folder / DOCKERFILE

    @property
    def requirements_file(self) -> Path:
        return self.folder / REQUIREMENTS

    @property
    def lock_file(self) -> Path:
        return self.folder / LOCK_FILE


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition, located as precisely as we can: file, then field or line."""

    path: Path
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: {self.message}" if self.where else f"{self.path}: {self.message}"


class ImageDefinitionError(ValueError):
    """Raised when images/ holds a definition that cannot be built; lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class ImageSet:
    """All image definitions, ordered so that every parent comes before its children."""

    definitions: tuple[ImageDefinition, ...]
    _by_name: dict[str, ImageDefinition] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {d.name: d for d in self.definitions})

    def __iter__(self) -> Iterator[ImageDefinition]:
        return iter(self.definitions)

    def __len__(self) -> int:
        return len(self.definitions)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> ImageDefinition:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.definitions]

    def ancestors(self, name: str) -> list[ImageDefinition]:
        """The parent chain of an image, nearest first, ending at its root image."""
        chain = []
        parent = self[name].spec.parent
        while parent is not None:
            chain.append(self[parent])
            parent = self[parent].spec.parent
        return chain

    def root(self, name: str) -> ImageDefinition:
        """The root image an image descends from (itself when it has no parent)."""
        chain = self.ancestors(name)
        return chain[-1] if chain else self[name]

    def children(self, name: str) -> list[ImageDefinition]:
        return [d for d in self.definitions if d.spec.parent == name]

    def descendants(self, name: str) -> list[ImageDefinition]:
        """Every image built FROM this one, directly or through others, parents before children."""
        found: set[str] = {name}
        out = []
        for d in self.definitions:
            if d.spec.parent in found:
                found.add(d.name)
                out.append(d)
        return out

    def full_requirements(self, name: str) -> list[PinnedRequirement]:
        """Everything pip installs into an image: its ancestors' pins, root first, then its own."""
        out: list[PinnedRequirement] = []
        for d in [*reversed(self.ancestors(name)), self[name]]:
            out.extend(d.requirements)
        return out
