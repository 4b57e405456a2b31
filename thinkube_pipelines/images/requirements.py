"""Parsing requirements.txt under the rule that makes builds reproducible: every line pins with `==`."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from thinkube_pipelines.images.spec import PinnedRequirement, Problem


def parse_pinned_requirements(path: Path) -> tuple[tuple[PinnedRequirement, ...], list[Problem]]:
    """Read a requirements file; every requirement must be `name==version` (extras and markers allowed).

    pip options (`-r`, `--index-url`, ...) are refused too: they would let an image pull packages from
    somewhere the definition does not show.
    """
    pins: list[PinnedRequirement] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {lineno}"
        if line.startswith("-"):
            problems.append(Problem(path, where, f"pip options are not allowed here: {line!r}"))
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(Problem(path, where, f"not a valid requirement {line!r}: {exc}"))
            continue
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(
                Problem(path, where, f"{line!r} is not pinned: write it as {req.name}==<exact version>")
            )
            continue
        pin = PinnedRequirement(name=req.name, version=specs[0].version, line=line, lineno=lineno)
        if pin.key in seen:
            problems.append(Problem(path, where, f"{req.name} is already pinned on line {seen[pin.key]}"))
            continue
        seen[pin.key] = lineno
        pins.append(pin)
    return tuple(pins), problems
