"""Image locks: every package of an image, pinned with its hashes, and how to tell a stale lock offline.

Each image folder holds `requirements.lock`: the complete set of packages its venv ends up with (its
ancestors' too), each `name==version` with the sha256 of every file PyPI has for that version, resolved
by `uv pip compile` for the Python of the image's root (`base.python`) on Linux x86-64 (manylinux up to
Debian bookworm's glibc 2.36). A child is resolved from its parent's lock plus its own requirements.txt,
with every ancestor's lock as a constraint, so it never moves a package an ancestor locked.

The lock starts with a header that records what it was made from:

    # thinkube-pipelines image lock: made by `thinkube-pipelines images lock`, do not edit by hand.
    # python: 3.11
    # platform: x86_64-manylinux_2_36
    # requirements.txt: sha256:<of this folder's requirements.txt>
    # ancestor <name>: sha256:<of that image's requirements.lock>   (one line per ancestor, nearest first)
    # body: sha256:<of everything after the header's blank line>

so that `lock_problems` can tell, with nothing but hash comparisons, that a lock is missing, was made
from another requirements.txt or ancestor lock, or was edited by hand. The body is uv's output as is.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from thinkube_pipelines.images.spec import LOCK_FILE, REQUIREMENTS, ImageDefinition, ImageSet, Problem

PLATFORM = "x86_64-manylinux_2_36"
"""uv's name for Linux x86-64 with glibc 2.36 (Debian bookworm, the base of every root image)."""

TITLE = "# thinkube-pipelines image lock: made by `thinkube-pipelines images lock`, do not edit by hand."
_HEADER_LINE = re.compile(r"^# (python|platform|requirements\.txt|ancestor [a-z0-9._/-]+|body): (\S+)$")
_PACKAGE_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")
UV_TIMEOUT_S = 900
LOCK_COMMAND = "thinkube-pipelines images lock"


def sha256_text(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LockInputs:
    """What a lock is made from; the header records it, and a lock is fresh while it still holds."""

    python: str
    platform: str
    requirements: str
    """sha256 of the image's requirements.txt."""
    ancestors: tuple[tuple[str, str], ...]
    """(image name, sha256 of its requirements.lock) for each ancestor, nearest first."""

    def header_lines(self) -> list[str]:
        lines = [
            TITLE,
            f"# python: {self.python}",
            f"# platform: {self.platform}",
            f"# requirements.txt: {self.requirements}",
        ]
        lines += [f"# ancestor {name}: {digest}" for name, digest in self.ancestors]
        return lines


@dataclass(frozen=True)
class LockFile:
    """A lock file as read from disk: its recorded inputs, its body and whether the body is intact."""

    inputs: LockInputs
    body: str
    body_intact: bool
    digest: str
    """sha256 of the whole file: what a child's lock records for this ancestor."""


class LockFormatError(ValueError):
    pass


def render_lock(inputs: LockInputs, body: str) -> str:
    """The text of a lock: the header, a blank line, then the body (uv's output)."""
    body = body.strip("\n") + "\n" if body.strip() else ""
    return "\n".join([*inputs.header_lines(), f"# body: {sha256_text(body.encode())}", "", body])


def parse_lock(data: bytes) -> LockFile:
    """Read a lock's header; raises LockFormatError when it is not one this module wrote."""
    text = data.decode("utf-8")
    head, sep, body = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or lines[0] != TITLE:
        raise LockFormatError("not an image lock (its first line is not the thinkube-pipelines lock title)")
    fields: dict[str, str] = {}
    ancestors: list[tuple[str, str]] = []
    for line in lines[1:]:
        match = _HEADER_LINE.match(line)
        if match is None:
            raise LockFormatError(f"unexpected header line {line!r}")
        key, value = match.groups()
        if key.startswith("ancestor "):
            ancestors.append((key.removeprefix("ancestor "), value))
        else:
            fields[key] = value
    missing = [k for k in ("python", "platform", "requirements.txt", "body") if k not in fields]
    if missing:
        raise LockFormatError(f"header lacks {', '.join(missing)}")
    inputs = LockInputs(fields["python"], fields["platform"], fields["requirements.txt"], tuple(ancestors))
    return LockFile(
        inputs=inputs,
        body=body,
        body_intact=sha256_text(body.encode()) == fields["body"],
        digest=sha256_text(data),
    )


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    hashes: tuple[str, ...]

    @property
    def key(self) -> str:
        """The normalized project name (PEP 503)."""
        return canonicalize_name(self.name)


def locked_packages(body: str) -> dict[str, LockedPackage]:
    """The packages of a lock body (requirements format with `--hash` options), by normalized name."""
    packages: dict[str, LockedPackage] = {}
    for entry in body.replace("\\\n", " ").splitlines():
        match = _PACKAGE_LINE.match(entry)
        if match is None:
            continue
        package = LockedPackage(match.group(1), match.group(2), tuple(_HASH.findall(entry)))
        packages[package.key] = package
    return packages


class LockFiles:
    """Reads each file once per pass: the loader checks 500 images with one read per lock."""

    def __init__(self) -> None:
        self._locks: dict[Path, LockFile | LockFormatError | None] = {}

    def lock(self, path: Path) -> LockFile | LockFormatError | None:
        """The parsed lock at `path`, the reason it could not be read as one, or None when missing."""
        if path not in self._locks:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                self._locks[path] = None
            except OSError as exc:
                self._locks[path] = LockFormatError(f"cannot be read: {exc.strerror}")
            else:
                try:
                    self._locks[path] = parse_lock(data)
                except (LockFormatError, UnicodeDecodeError) as exc:
                    self._locks[path] = LockFormatError(str(exc))
        return self._locks[path]


def lock_inputs(images: ImageSet, name: str, locks: LockFiles | None = None) -> LockInputs:
    """The inputs a fresh lock of `name` records, from the files as they are now.

    Raises LockFormatError when an ancestor's lock is missing or unreadable (lock the ancestor first).
    """
    locks = locks or LockFiles()
    definition = images[name]
    root = images.root(name)
    assert root.spec.base is not None
    ancestors = []
    for ancestor in images.ancestors(name):
        lock = locks.lock(ancestor.lock_file)
        if not isinstance(lock, LockFile):
            raise LockFormatError(f"the lock of ancestor '{ancestor.name}' ({ancestor.lock_file}) is missing")
        ancestors.append((ancestor.name, lock.digest))
    return LockInputs(
        python=root.spec.base.python,
        platform=PLATFORM,
        requirements=sha256_text(definition.requirements_file.read_bytes()),
        ancestors=tuple(ancestors),
    )


def lock_problems(images: ImageSet, names: Iterable[str] | None = None) -> list[Problem]:
    """Every image whose lock is missing, unreadable, edited, or made from other inputs than today's.

    Offline and cheap: one read and a few sha256 of each requirements.txt and lock, no resolver. The
    descendants of an image with a problem are not reported: `images lock` of that image locks them too.
    """
    locks = LockFiles()
    problems: list[Problem] = []
    failed: set[str] = set()
    wanted = None if names is None else set(names)
    for definition in images:  # parents first
        if any(a.name in failed for a in images.ancestors(definition.name)):
            failed.add(definition.name)
            continue
        if wanted is not None and definition.name not in wanted:
            continue
        problem = _lock_problem(images, definition, locks)
        if problem is not None:
            failed.add(definition.name)
            problems.append(problem)
    return problems


def _lock_problem(images: ImageSet, definition: ImageDefinition, locks: LockFiles) -> Problem | None:
    name = definition.name
    path = definition.lock_file
    refresh = f"refresh it with `{LOCK_COMMAND} {name}`"
    lock = locks.lock(path)
    if lock is None:
        return Problem(path, "", f"image '{name}' has no lock: make it with `{LOCK_COMMAND} {name}`")
    if isinstance(lock, LockFormatError):
        return Problem(path, "header", f"image '{name}': {lock}; {refresh}")
    if not lock.body_intact:
        return Problem(path, "body", f"image '{name}': the lock was edited by hand; {refresh}")
    try:
        expected = lock_inputs(images, name, locks)
    except LockFormatError:
        return None  # the ancestor's own problem is reported; this lock follows once it is made
    recorded = lock.inputs
    if recorded.requirements != expected.requirements:
        return Problem(
            path,
            REQUIREMENTS,
            f"image '{name}': stale, {definition.requirements_file} changed since it was locked; {refresh}",
        )
    for field in ("python", "platform"):
        if getattr(recorded, field) != getattr(expected, field):
            return Problem(
                path,
                field,
                f"image '{name}': locked for {field} {getattr(recorded, field)}, "
                f"the image needs {getattr(expected, field)}; {refresh}",
            )
    if [a for a, _ in recorded.ancestors] != [a for a, _ in expected.ancestors]:
        chain = " -> ".join(a for a, _ in expected.ancestors) or "none"
        message = f"image '{name}': locked on other ancestors (now: {chain}); {refresh}"
        return Problem(path, "ancestor", message)
    for (ancestor, was), (_, now) in zip(recorded.ancestors, expected.ancestors, strict=True):
        if was != now:
            changed = images[ancestor].lock_file
            return Problem(
                path, "ancestor", f"image '{name}': stale, {changed} changed since it was locked; {refresh}"
            )
    return None


class LockError(RuntimeError):
    """Locking an image failed; the message names the image, its files and the resolver's reasons."""


@dataclass(frozen=True)
class LockResult:
    name: str
    path: Path
    packages: int
    changed: bool
    seconds: float


def uv_binary() -> str:
    """The uv executable of this environment (the pinned `uv` package), else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if found is None:
        raise LockError("uv is not installed: install this project's dev extra (pip install -e '.[dev]')")
    return found


def selection(images: ImageSet, names: Iterable[str] = ()) -> list[ImageDefinition]:
    """The images to lock, parents first: all, or the named ones with their descendants."""
    names = list(names)
    unknown = [n for n in names if n not in images]
    if unknown:
        raise LockError(f"not an image in the images folder: {', '.join(unknown)}")
    if not names:
        return list(images)
    chosen = set(names) | {d.name for n in names for d in images.descendants(n)}
    return [d for d in images if d.name in chosen]


def lock_images(
    images: ImageSet,
    names: Iterable[str] = (),
    *,
    upgrade: bool = False,
    exclude_newer: str | None = None,
    on_line: Callable[[str], None] = print,
) -> list[LockResult]:
    """Write the lock of each selected image, parents before children (see `selection`).

    Versions already in an image's lock are kept where they still fit (uv's preferences), unless
    `upgrade`: then everything resolves to the newest versions its pins allow. `exclude_newer` (a date
    or RFC 3339 time) leaves out files uploaded after it: resolve as of the day the pins were chosen.
    """
    return [
        lock_image(images, d.name, upgrade=upgrade, exclude_newer=exclude_newer, on_line=on_line)
        for d in selection(images, names)
    ]


def lock_image(
    images: ImageSet,
    name: str,
    *,
    upgrade: bool = False,
    exclude_newer: str | None = None,
    on_line: Callable[[str], None] = print,
) -> LockResult:
    definition = images[name]
    try:
        inputs = lock_inputs(images, name)
    except LockFormatError as exc:
        raise LockError(f"image '{name}': {exc}") from None
    parent = images[definition.spec.parent] if definition.spec.parent else None
    on_line(f"{name}: locking for Python {inputs.python} on {inputs.platform} ...")
    started = time.monotonic()
    body = _compile(images, definition, inputs, parent, upgrade, exclude_newer)
    packages = locked_packages(body)
    _verify(definition, parent, packages)
    text = render_lock(inputs, body)
    old = definition.lock_file.read_text(encoding="utf-8") if definition.lock_file.is_file() else None
    if old != text:
        definition.lock_file.write_text(text, encoding="utf-8")
    seconds = time.monotonic() - started
    state = "unchanged" if old == text else "written"
    on_line(f"{name}: {len(packages)} packages, {definition.lock_file} {state} ({seconds:.1f} s)")
    return LockResult(name, definition.lock_file, len(packages), old != text, seconds)


def _compile(
    images: ImageSet,
    definition: ImageDefinition,
    inputs: LockInputs,
    parent: ImageDefinition | None,
    upgrade: bool,
    exclude_newer: str | None,
) -> str:
    """Run `uv pip compile` from the images folder, so that its annotations name relative paths."""
    workdir = definition.folder.parent
    own = definition.requirements_file.relative_to(workdir)

    def rel(path: Path) -> str:
        return os.path.relpath(path, workdir)

    with tempfile.TemporaryDirectory(prefix="image-lock-") as tmp:
        output = Path(tmp) / LOCK_FILE
        if not upgrade and definition.lock_file.is_file():
            # uv keeps the versions of an existing output file where they still fit
            previous = definition.lock_file.read_text(encoding="utf-8").partition("\n\n")[2]
            output.write_text(previous, encoding="utf-8")
        command = [
            uv_binary(),
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--generate-hashes",
            "--annotation-style",
            "line",
            "--python-version",
            inputs.python,
            "--python-platform",
            inputs.platform,
            "--output-file",
            str(output),
        ]
        if upgrade:
            command.append("--upgrade")
        if exclude_newer:
            command += ["--exclude-newer", exclude_newer]
        if parent is not None:
            command.append(rel(parent.lock_file))  # the parent's venv as it is ...
        command.append(str(own))  # ... plus this image's own pins
        for ancestor in images.ancestors(definition.name):
            command += ["-c", rel(ancestor.lock_file)]  # ... moving nothing an ancestor locked
        env = {**os.environ, "UV_NO_CONFIG": "1", "UV_NO_PROGRESS": "1"}
        env.pop("UV_CUSTOM_COMPILE_COMMAND", None)
        done = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=UV_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            ancestors = images.ancestors(definition.name)
            files = [rel(definition.requirements_file), *(rel(a.lock_file) for a in ancestors)]
            reason = "\n".join((done.stderr or done.stdout).strip().splitlines()[-40:])
            raise LockError(
                f"image '{definition.name}': {', '.join(files)} do not resolve for Python {inputs.python} "
                f"on {inputs.platform}. uv says:\n{reason}"
            )
        return output.read_text(encoding="utf-8")


def _verify(
    definition: ImageDefinition, parent: ImageDefinition | None, packages: dict[str, LockedPackage]
) -> None:
    """What the build relies on: a hash for every package, every own pin and every parent version kept."""
    name = definition.name
    unhashed = sorted(p.name for p in packages.values() if not p.hashes)
    if unhashed:
        raise LockError(f"image '{name}': the resolver gave no hash for {', '.join(unhashed)}")
    for pin in definition.requirements:
        got = packages.get(pin.key)
        if got is None or got.version != pin.version:
            have = got.version if got else "nothing"
            raise LockError(f"image '{name}': the lock has {have} for {pin.name}=={pin.version}")
    if parent is not None:
        inherited = locked_packages(parent.lock_file.read_text(encoding="utf-8").partition("\n\n")[2])
        moved = sorted(
            f"{p.name} {p.version} -> {packages[k].version if k in packages else 'removed'}"
            for k, p in inherited.items()
            if k not in packages or packages[k].version != p.version
        )
        if moved:
            raise LockError(f"image '{name}': it would move what '{parent.name}' locked: {', '.join(moved)}")
