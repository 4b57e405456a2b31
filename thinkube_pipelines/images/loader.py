"""Loading images/ into an ImageSet: every problem is reported with the file and field at fault."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import ValidationError

from thinkube_pipelines.images.lock import lock_problems
from thinkube_pipelines.images.requirements import parse_pinned_requirements
from thinkube_pipelines.images.spec import (
    BASE_IMAGE_ARG,
    DOCKERFILE,
    IMAGE_YAML,
    PARENT_IMAGE_ARG,
    REQUIREMENTS,
    ImageDefinition,
    ImageDefinitionError,
    ImageSet,
    ImageSpec,
    Problem,
)


def load_image_definitions(images_dir: Path | str, *, check_locks: bool = True) -> ImageSet:
    """Load every image folder under `images_dir`, parents ordered before children.

    Raises ImageDefinitionError listing all problems at once, so an operator fixes them in one pass.
    Once the definitions are sound, each image's requirements.lock must be there and match its
    requirements.txt and its ancestors' locks (offline hash comparisons); `check_locks=False` is only
    for `images lock`, which is what makes them match.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ImageDefinitionError([Problem(images_dir, "", "images folder does not exist")])
    problems: list[Problem] = []
    loaded: list[ImageDefinition] = []
    invalid: dict[str, Problem] = {}  # image name (or folder name) -> the first problem of a folder
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        before = len(problems)
        definition = _load_folder(folder, problems)
        if definition is not None:
            loaded.append(definition)
        elif len(problems) > before:
            for name in {folder.name, _declared_name(folder)} - {None}:
                invalid.setdefault(name, problems[before])
    if not loaded and not problems:
        problems.append(Problem(images_dir, "", f"no image folders (each needs an {IMAGE_YAML})"))
    by_name = _reject_duplicates(loaded, problems)
    _check_parents(by_name, invalid, problems)
    ordered = _parents_first(by_name, problems)
    if not problems:
        _check_pins_agree_with_ancestors(ImageSet(tuple(ordered)), problems)
    if not problems and check_locks:
        problems.extend(lock_problems(ImageSet(tuple(ordered))))
    if problems:
        raise ImageDefinitionError(problems)
    return ImageSet(tuple(ordered))


def reload_changed(images: ImageSet, images_dir: Path, changed: list[str]) -> ImageSet:
    """`images` as `images_dir` holds them now, given that only the folders named in `changed` differ from
    what `images` was loaded from: those folders are loaded again and checked as `load_image_definitions`
    checks them (fields, requirements, Dockerfile, parents, pins, and the locks of the changed images and
    of the images built FROM them); the other definitions are taken as they are (their files are the same
    bytes). Raises ImageDefinitionError as `load_image_definitions` does; the caller compares the graph."""
    problems: list[Problem] = []
    by_folder = {d.folder.name: replace(d, folder=images_dir / d.folder.name) for d in images}
    touched: set[str] = set()
    for folder_name in changed:
        definition = _load_folder(images_dir / folder_name, problems)
        if definition is not None:
            by_folder[folder_name] = definition
            touched.add(definition.name)
    if problems:
        raise ImageDefinitionError(problems)
    by_name = _reject_duplicates(list(by_folder.values()), problems)
    _check_parents(by_name, {}, problems)
    ordered = _parents_first(by_name, problems)
    if problems:
        raise ImageDefinitionError(problems)
    current = ImageSet(tuple(ordered))
    affected = touched | {d.name for name in touched for d in current.descendants(name)}
    _check_pins_agree_with_ancestors(current, problems, only=affected)
    if not problems:
        problems.extend(lock_problems(current, names=affected))
    if problems:
        raise ImageDefinitionError(problems)
    return current


def _load_folder(folder: Path, problems: list[Problem]) -> ImageDefinition | None:
    spec_path = folder / IMAGE_YAML
    missing = [n for n in (IMAGE_YAML, DOCKERFILE, REQUIREMENTS) if not (folder / n).is_file()]
    for name in missing:
        problems.append(Problem(folder / name, "", "missing: every image folder needs it"))
    if IMAGE_YAML in missing:
        return None
    try:
        raw = _read_yaml(spec_path)
    except yaml.YAMLError as exc:
        problems.append(Problem(spec_path, "", f"not valid YAML: {exc}"))
        return None
    if not isinstance(raw, dict):
        problems.append(Problem(spec_path, "", "must be a mapping of fields"))
        return None
    try:
        spec = ImageSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(document)"
            problems.append(Problem(spec_path, where, err["msg"]))
        return None
    if missing:
        return None
    pins, pin_problems = parse_pinned_requirements(folder / REQUIREMENTS)
    problems.extend(pin_problems)
    _check_dockerfile(folder / DOCKERFILE, spec, problems)
    return ImageDefinition(spec=spec, folder=folder, requirements=pins)


def _read_yaml(path: Path) -> object:
    """A YAML file's document, parsed by libyaml where PyYAML has it (about 10x faster than the pure-Python
    parser: it counts with hundreds of image folders). On an error the pure-Python parser reads it again,
    for its message, which shows the line at fault with a caret."""
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_FAST_YAML_LOADER)
    except yaml.YAMLError:
        return yaml.safe_load(text)


_FAST_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_dockerfile(path: Path, spec: ImageSpec, problems: list[Problem]) -> None:
    """The builder passes FROM through one build argument; a Dockerfile that ignores it would build
    something other than what image.yaml says."""
    arg = PARENT_IMAGE_ARG if spec.parent else BASE_IMAGE_ARG
    text = path.read_text(encoding="utf-8")
    if not re.search(rf"^\s*FROM\s+\$\{{?{arg}\}}?(\s|$)", text, re.MULTILINE | re.IGNORECASE):
        kind = f"parent '{spec.parent}'" if spec.parent else "pinned base"
        problems.append(Problem(path, "FROM", f"must build FROM ${{{arg}}} (the {kind} the builder passes)"))


def _reject_duplicates(loaded: list[ImageDefinition], problems: list[Problem]) -> dict[str, ImageDefinition]:
    by_name: dict[str, ImageDefinition] = {}
    for d in loaded:
        if d.name in by_name:
            first = by_name[d.name].folder / IMAGE_YAML
            problems.append(
                Problem(d.folder / IMAGE_YAML, "name", f"'{d.name}' is already defined in {first}")
            )
            continue
        by_name[d.name] = d
    return by_name


def _declared_name(folder: Path) -> str | None:
    """The `name` an image.yaml declares, read leniently: for naming a parent that failed to load."""
    try:
        raw = yaml.safe_load((folder / IMAGE_YAML).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else None


def _check_parents(
    by_name: dict[str, ImageDefinition], invalid: dict[str, Problem], problems: list[Problem]
) -> None:
    for d in by_name.values():
        parent = d.spec.parent
        if parent is None or parent in by_name:
            continue
        if parent in invalid:
            message = f"'{parent}' is invalid, fix it first: {invalid[parent]}"
        else:
            message = f"'{parent}' is not an image in images/"
        problems.append(Problem(d.folder / IMAGE_YAML, "parent", message))


def _parents_first(by_name: dict[str, ImageDefinition], problems: list[Problem]) -> list[ImageDefinition]:
    """Order images so each parent precedes its children; report each cycle once."""
    ordered: list[ImageDefinition] = []
    state: dict[str, str] = {}  # name -> "visiting" | "done"
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            if frozenset(cycle) not in reported:
                reported.add(frozenset(cycle))
                d = by_name[name]
                problems.append(Problem(d.folder / IMAGE_YAML, "parent", f"cycle: {' -> '.join(cycle)}"))
            return
        state[name] = "visiting"
        parent = by_name[name].spec.parent
        if parent in by_name:
            visit(parent, [*path, name])
        state[name] = "done"
        ordered.append(by_name[name])

    for name in sorted(by_name):
        visit(name, [])
    return ordered


def _check_pins_agree_with_ancestors(
    images: ImageSet, problems: list[Problem], only: set[str] | None = None
) -> None:
    """A child re-pinning a package its parent already pins to another version would silently replace
    the parent's; report it where it is written (for the images in `only`, when given)."""
    for d in images:
        if only is not None and d.name not in only:
            continue
        inherited = {p.key: (p, a) for a in images.ancestors(d.name) for p in a.requirements}
        for pin in d.requirements:
            if pin.key in inherited and inherited[pin.key][0].version != pin.version:
                theirs, owner = inherited[pin.key]
                problems.append(
                    Problem(
                        d.requirements_file,
                        f"line {pin.lineno}",
                        f"{pin.name}=={pin.version} conflicts with {theirs.name}=={theirs.version} "
                        f"pinned by parent image '{owner.name}'",
                    )
                )
