"""Runs INSIDE a built image (standard library only): is it a working Jupyter image?

Usage: python smoke_probe.py '{"distributions": ["jupyterlab", ...], "commands": ["jupyterhub-singleuser"]}'
Prints one JSON line: {"missing_commands": [...], "failed_imports": {"module": "error"}, "imported": [...]}.
The smoke check on every build sends this file to the image's own `python`.
"""

import importlib
import importlib.metadata
import json
import shutil
import sys

# Top-level names some packages ship that are not meant to be imported on their own.
_NOT_MODULES = {"test", "tests", "testing", "docs", "doc", "examples", "benchmarks", "scripts", "bin"}


def top_level_modules(distribution: str) -> list[str]:
    """The importable top-level modules a distribution installs (top_level.txt, else its file list)."""
    dist = importlib.metadata.distribution(distribution)
    names = set()
    top_level = dist.read_text("top_level.txt")
    if top_level:
        names = {line.strip().replace("/", ".") for line in top_level.splitlines() if line.strip()}
    else:
        for file in dist.files or ():
            parts = file.parts
            if len(parts) == 1 and parts[0].endswith(".py"):
                names.add(parts[0][:-3])
            elif len(parts) > 1 and parts[-1] == "__init__.py" and len(parts) == 2:
                names.add(parts[0])
    return sorted(n for n in names if n and not n.startswith("_") and n not in _NOT_MODULES and "." not in n)


def main() -> int:
    request = json.loads(sys.argv[1])
    report = {"missing_commands": [], "failed_imports": {}, "imported": []}
    for command in request.get("commands", []):
        if shutil.which(command) is None:
            report["missing_commands"].append(command)
    for distribution in request.get("distributions", []):
        try:
            modules = top_level_modules(distribution)
        except importlib.metadata.PackageNotFoundError:
            report["failed_imports"][distribution] = "distribution is not installed"
            continue
        for module in modules:
            try:
                importlib.import_module(module)
                report["imported"].append(module)
            except BaseException as exc:  # a broken import may raise anything, SystemExit included
                report["failed_imports"][module] = f"{type(exc).__name__}: {exc}"[:300]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
