"""The content hash of an image's sources: what makes Dagster show an image as changed.

An image folder's own hash is the digest of its reproducible build context (builders/base.py), so the
hash the UI shows and the context a builder receives can never disagree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from thinkube_pipelines.builders.base import IGNORED_PARTS, BuildContext
from thinkube_pipelines.images.spec import ImageDefinition, ImageSet


def folder_digest(definition: ImageDefinition) -> str:
    """The digest of the image folder's build context."""
    return BuildContext.from_folder(definition.folder).digest


def folder_content_hash(folder: Path) -> str:
    """The content hash of an image folder as its sources are observed: every file of its build context
    (the files `context_files` lists: `IGNORED_PARTS` left out), its relative path, whether it is
    executable, and its bytes, hashed as a stream. Any change to what a build would receive changes it.
    The source sensor hashes every folder on every tick, so this walks with `os.scandir` (one stat per
    file) instead of listing the context first."""
    digest = hashlib.sha256()
    for relative, path, mode in _walk(os.fspath(folder), ""):
        with open(path, "rb") as handle:
            data = handle.read()
        digest.update(f"{relative}\0{'x' if mode & 0o111 else '-'}\0{len(data)}\0".encode())
        digest.update(data)
    return "sha256:" + digest.hexdigest()


def _walk(directory: str, prefix: str) -> list[tuple[str, str, int]]:
    """(relative path, path, mode) of every file under `directory`, sorted by relative path."""
    found: list[tuple[str, str, int]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name in IGNORED_PARTS:
                continue
            relative = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                found.extend(_walk(entry.path, relative + "/"))
            elif entry.is_file():
                found.append((relative, entry.path, entry.stat().st_mode))
    found.sort()
    return found


def chained_hash(parent_hash: str | None, own: str) -> str:
    """An image's hash: its own folder's digest chained with its parent's chained hash."""
    digest = hashlib.sha256()
    if parent_hash is not None:
        digest.update(f"parent:{parent_hash}\n".encode())
    digest.update(f"context:{own}\n".encode())
    return digest.hexdigest()


def source_hashes(images: ImageSet) -> dict[str, str]:
    """Every image's folder hash chained with its parent's, each folder read once (parents come first).

    Chaining means a change in a parent's folder changes every descendant's hash too, so the whole
    chain shows as changed in the UI, not only the image whose files moved.
    """
    hashes: dict[str, str] = {}
    for definition in images:
        parent = definition.spec.parent
        hashes[definition.name] = chained_hash(hashes[parent] if parent else None, folder_digest(definition))
    return hashes


def source_hash(images: ImageSet, name: str, own_digest: str | None = None) -> str:
    """One image's chained hash, reading only its own and its ancestors' folders (not its own when the
    caller already has `own_digest`)."""
    current: str | None = None
    for ancestor in reversed(images.ancestors(name)):
        current = chained_hash(current, folder_digest(ancestor))
    return chained_hash(current, own_digest or folder_digest(images[name]))
