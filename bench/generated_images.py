"""Generated image folders for the load benchmark: N folders that each pass `images check`.

Half are copies of images/jupyter-base (root images, their lock copied as is: a root's lock records only
its requirements.txt, Python and platform), half copies of images/jupyter-ml-cpu, each the child of one of
those roots. A child's lock records its ancestors by name and by the digest of their lock: the copied
root's lock is byte for byte jupyter-base's, so only the ancestor's name in the header changes (the body
and its hash stay as they are).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

ROOT_IMAGE = "jupyter-base"
CHILD_IMAGE = "jupyter-ml-cpu"
LOCK_FILE = "requirements.lock"


def _rewrite_spec(folder: Path, name: str, parent: str | None) -> None:
    path = folder / "image.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec["name"] = name
    spec["default"] = False
    if parent is not None:
        spec["parent"] = parent
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def _rename_ancestor(lock: Path, old: str, new: str) -> None:
    text = lock.read_text(encoding="utf-8")
    head, sep, body = text.partition("\n\n")
    head, count = re.subn(rf"^# ancestor {re.escape(old)}: ", f"# ancestor {new}: ", head, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{lock}: expected one `# ancestor {old}` header line, found {count}")
    lock.write_text(head + sep + body, encoding="utf-8")


def generate_images(source: Path, target: Path, count: int) -> Path:
    """Write `count` image folders into `target` (made here), from the real images in `source`."""
    if count < 2 or count % 2:
        raise ValueError(f"count must be an even number >= 2, got {count}")
    target.mkdir(parents=True)
    for i in range(count // 2):
        root, child = f"bench-base-{i:04d}", f"bench-ml-cpu-{i:04d}"
        shutil.copytree(source / ROOT_IMAGE, target / root)
        _rewrite_spec(target / root, root, None)
        shutil.copytree(source / CHILD_IMAGE, target / child)
        _rewrite_spec(target / child, child, root)
        _rename_ancestor(target / child / LOCK_FILE, ROOT_IMAGE, root)
    return target
