"""The content hash of an image's sources: what makes Dagster show an image as changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from thinkube_pipelines.images.spec import ImageDefinition, ImageSet

_IGNORED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".git"}


def source_files(definition: ImageDefinition) -> list[Path]:
    """The files of an image's folder that make up its build context, relative to it, sorted."""
    files = (p.relative_to(definition.folder) for p in definition.folder.rglob("*") if p.is_file())
    return sorted(f for f in files if not _IGNORED_PARTS.intersection(f.parts))


def source_hash(images: ImageSet, name: str) -> str:
    """sha256 over every file of the image's folder (path and bytes), chained with its parent's hash.

    Chaining means a change in a parent's folder changes every descendant's hash too, so the whole
    chain shows as changed in the UI, not only the image whose files moved.
    """
    definition = images[name]
    digest = hashlib.sha256()
    if definition.spec.parent is not None:
        digest.update(f"parent:{source_hash(images, definition.spec.parent)}\n".encode())
    for relative in source_files(definition):
        path = definition.folder / relative
        digest.update(f"file:{relative.as_posix()}:{path.stat().st_size}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
