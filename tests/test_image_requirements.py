"""Every image's requirements pin with ==, and each image's full set (its own plus its ancestors') resolves.

The full set of an image is what ends up in its venv: jupyter-base's requirements, then each child's on
top, following the `parent` chain of image.yaml. pip's resolver checks that set for the Python version of
the root ancestor's base image, on the Linux x86_64 platform of Debian bookworm, without installing
anything (`pip install --dry-run --report`). These tests read image.yaml with PyYAML on purpose, so they
do not depend on the code location's own loader.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
IMAGE_NAMES = sorted(p.name for p in IMAGES_DIR.iterdir() if (p / "image.yaml").is_file())

# The plan's seed pins for the GPU image (jupyterlab may come from an ancestor).
PLAN_GPU_PINS = {
    "jupyterlab": "4.2.5",
    "torch": "2.4.1",
    "torchvision": "0.19.1",
    "transformers": "4.44.2",
    "accelerate": "0.33.0",
    "datasets": "2.21.0",
    "tensorboard": "2.17.1",
    "mlflow": "2.16.0",
    "nvitop": "1.3.2",
    "jupyterlab-nvdashboard": "0.11.0",
}

# Debian bookworm ships glibc 2.36: every manylinux wheel up to that runs on both supported bases.
BOOKWORM_GLIBC_MINOR = 36
TARGET_PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(BOOKWORM_GLIBC_MINOR, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
# pip settings from the environment that may stay: how to reach an index, not what to install.
_PIP_ENV_KEPT = {
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_PROXY",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "PIP_INDEX_URL",
    "PIP_TRUSTED_HOST",
}
RESOLVE_TIMEOUT_S = 600


@dataclass(frozen=True)
class ImageSpec:
    name: str
    folder: Path
    parent: str | None
    python: str | None  # only on root images (base.python)

    @property
    def requirements(self) -> Path:
        return self.folder / "requirements.txt"


def read_images(images_dir: Path) -> dict[str, ImageSpec]:
    specs = {}
    for meta in sorted(images_dir.glob("*/image.yaml")):
        data = yaml.safe_load(meta.read_text()) or {}
        base = data.get("base") or {}
        specs[meta.parent.name] = ImageSpec(
            name=meta.parent.name,
            folder=meta.parent,
            parent=data.get("parent"),
            python=str(base["python"]) if "python" in base else None,
        )
    return specs


def lineage(specs: dict[str, ImageSpec], name: str) -> list[ImageSpec]:
    """The image and its ancestors, root first."""
    chain: list[ImageSpec] = []
    current: str | None = name
    while current is not None:
        assert current in specs, f"{name}: ancestor {current!r} has no folder with an image.yaml"
        assert current not in [s.name for s in chain], f"{name}: parent cycle through {current!r}"
        chain.append(specs[current])
        current = specs[current].parent
    chain.reverse()
    assert chain[0].python, f"{name}: root ancestor {chain[0].name} has no base.python in its image.yaml"
    return chain


def unpinned_lines(path: Path) -> list[str]:
    """Every non-comment line of a requirements file that is not a plain `name==version` pin."""
    problems = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        where = f"{path.name}:{number}: {raw.strip()!r}"
        if line.startswith("-"):
            problems.append(f"{where} is a pip option, not a pinned requirement")
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{where} is not a valid requirement ({exc})")
            continue
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"{where} does not pin an exact version with ==")
    return problems


def pins(path: Path) -> dict[str, str]:
    result = {}
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            result[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return result


def full_pins(specs: dict[str, ImageSpec], name: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for spec in lineage(specs, name):
        merged.update(pins(spec.requirements))
    return merged


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in _PIP_ENV_KEPT}
    # No pip configuration files: a machine's find-links, extra indexes or constraints must not change
    # the answer. The image build sees only the public index.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


_PIP_PROGRESS = ("Collecting ", "  Downloading ", "  Using cached ", "  Obtaining ", "[notice]")


def _pip_explanation(output: str) -> str:
    """pip's output without its progress lines: the errors and "The conflict is caused by:" section."""
    lines = [line for line in output.splitlines() if not line.startswith(_PIP_PROGRESS)]
    return "\n".join(lines).strip()


@dataclass(frozen=True)
class Resolution:
    ok: bool
    installed: dict[str, str]  # canonical name -> version, when ok
    explanation: str  # pip's stderr, when not
    seconds: float


def resolve(requirement_files: list[Path], python_version: str, workdir: Path) -> Resolution:
    report = workdir / "report.json"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--progress-bar=off",
        "--report",
        str(report),
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        *(arg for platform in TARGET_PLATFORMS for arg in ("--platform", platform)),
        "--target",
        str(workdir / "target"),
    ]
    for path in requirement_files:
        command += ["-r", str(path)]
    started = time.monotonic()
    done = subprocess.run(
        command,
        env=_pip_env(),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RESOLVE_TIMEOUT_S,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return Resolution(False, {}, _pip_explanation(done.stdout), seconds)
    items = json.loads(report.read_text())["install"]
    installed = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    return Resolution(True, installed, "", seconds)


def _explain(image: str, chain: list[ImageSpec], python: str, resolution: Resolution) -> str:
    files = ", ".join(f"images/{s.name}/requirements.txt" for s in chain)
    tail = "\n".join(resolution.explanation.splitlines()[-80:])
    return (
        f"image {image}: its full requirement set ({files}) does not resolve for Python {python} "
        f"on manylinux x86_64 (glibc 2.{BOOKWORM_GLIBC_MINOR}). pip says:\n{tail}"
    )


def check_full_set_resolves(images_dir: Path, name: str, workdir: Path) -> Resolution:
    specs = read_images(images_dir)
    chain = lineage(specs, name)
    python = chain[0].python
    assert python is not None
    resolution = resolve([s.requirements for s in chain], python, workdir)
    assert resolution.ok, _explain(name, chain, python, resolution)
    return resolution


SPECS = read_images(IMAGES_DIR)


def test_the_five_images_are_there():
    plan = {"jupyter-ml-cpu", "jupyter-ml-gpu", "jupyter-agent-dev", "jupyter-fine-tuning"}
    assert set(IMAGE_NAMES) == plan | {"jupyter-base"}


@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_image_folder_is_complete(image: str):
    folder = IMAGES_DIR / image
    for file in ("Dockerfile", "requirements.txt", "image.yaml"):
        assert (folder / file).is_file(), f"images/{image}/{file} is missing"
    data = yaml.safe_load((folder / "image.yaml").read_text())
    assert data["name"] == image, f"images/{image}/image.yaml: name {data['name']!r} differs from the folder"
    assert ("parent" in data) != ("base" in data), f"images/{image}/image.yaml: one of parent/base, not both"
    lineage(SPECS, image)


@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_requirements_pin_every_line(image: str):
    path = IMAGES_DIR / image / "requirements.txt"
    assert pins(path), f"images/{image}/requirements.txt pins nothing"
    problems = unpinned_lines(path)
    assert not problems, f"image {image}:\n" + "\n".join(problems)


def test_pin_check_catches_loose_lines(tmp_path: Path):
    path = tmp_path / "requirements.txt"
    path.write_text(
        "# a comment\n"
        "numpy==1.26.4  # pinned, fine\n"
        "\n"
        "pandas>=2\n"
        "scipy\n"
        "torch==2.*\n"
        "jupyterlab==4.2.5,<5\n"
        "-r other.txt\n"
        "git+https://example.org/x.git\n"
        "uvicorn[standard]==0.30.6\n"
    )
    problems = unpinned_lines(path)
    flagged = [p.split(":")[1] for p in problems]
    assert flagged == ["4", "5", "6", "7", "8", "9"], problems


def test_gpu_image_carries_the_plan_pins():
    merged = full_pins(SPECS, "jupyter-ml-gpu")
    wrong = {k: (merged.get(k), v) for k, v in PLAN_GPU_PINS.items() if merged.get(k) != v}
    assert not wrong, f"jupyter-ml-gpu's full set differs from the plan (have, want): {wrong}"
    # The fine-tuning image is built FROM the GPU image, so it keeps them too.
    merged = full_pins(SPECS, "jupyter-fine-tuning")
    assert all(merged.get(k) == v for k, v in PLAN_GPU_PINS.items())


def test_children_do_not_repin_their_ancestors_packages_differently():
    for name in IMAGE_NAMES:
        seen: dict[str, tuple[str, str]] = {}
        for spec in lineage(SPECS, name):
            for package, version in pins(spec.requirements).items():
                if package in seen:
                    assert seen[package][1] == version, (
                        f"image {name}: {package} is pinned to {seen[package][1]} in {seen[package][0]} "
                        f"and to {version} in {spec.name}"
                    )
                seen[package] = (spec.name, version)


@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_dockerfile_follows_the_builder_conventions(image: str):
    text = (IMAGES_DIR / image / "Dockerfile").read_text()
    arg = "PARENT_IMAGE" if SPECS[image].parent else "BASE_IMAGE"
    first_from = next(line for line in text.splitlines() if line.startswith("FROM"))
    assert first_from.strip() == f"FROM ${{{arg}}}", f"images/{image}/Dockerfile must build FROM ${{{arg}}}"
    assert re.search(rf"^ARG {arg}\s*$", text, re.M), f"images/{image}/Dockerfile: ARG {arg} needs no default"
    # every image installs its own requirements the same way: its pins, its ancestors' as constraints
    assert re.search(rf"\binstall-requirements {image}$", text, re.M), f"images/{image}/Dockerfile"
    if not SPECS[image].parent:  # children inherit the entry point
        assert 'CMD ["jupyterhub-singleuser"]' in text


@pytest.mark.slow
@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_full_requirement_set_resolves(image: str, tmp_path: Path):
    resolution = check_full_set_resolves(IMAGES_DIR, image, tmp_path)
    expected = full_pins(SPECS, image)
    got = resolution.installed
    differs = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not differs, f"image {image}: pip resolved other versions than pinned (got, pinned): {differs}"
    print(f"{image}: {len(resolution.installed)} packages resolved in {resolution.seconds:.1f} s")


@pytest.mark.slow
def test_resolver_check_reports_a_conflict_naming_the_image_and_packages(tmp_path: Path):
    images = tmp_path / "images"
    (images / "root").mkdir(parents=True)
    (images / "root" / "image.yaml").write_text("name: root\nbase:\n  image: x\n  python: '3.11'\n")
    (images / "root" / "requirements.txt").write_text("jupyterlab==4.2.5\n")
    (images / "leaf").mkdir()
    (images / "leaf" / "image.yaml").write_text("name: leaf\nparent: root\n")
    # jupyterlab 4.2.5 needs jupyter_server>=2.4.0,<3: pinning 1.24.0 in the child cannot resolve.
    (images / "leaf" / "requirements.txt").write_text("jupyter-server==1.24.0\n")
    workdir = tmp_path / "work"
    workdir.mkdir()

    with pytest.raises(AssertionError) as excinfo:
        check_full_set_resolves(images, "leaf", workdir)

    message = str(excinfo.value)
    assert "image leaf" in message
    assert "images/root/requirements.txt, images/leaf/requirements.txt" in message
    assert "The conflict is caused by:" in message
    assert "jupyterlab 4.2.5 depends on jupyter-server" in message.replace("_", "-")
    assert "jupyter-server==1.24.0" in message.replace("_", "-")
    assert "Collecting " not in message, "pip's progress lines should be left out"
