"""Every image's requirements pin with ==, and its committed requirements.lock pins its full set with hashes.

The full set of an image is what ends up in its venv: jupyter-base's packages, then each child's on top,
following the `parent` chain of image.yaml. `thinkube-pipelines images lock` resolves it once, for the
Python version of the root ancestor's base image on Linux x86-64 (manylinux, glibc 2.36 of Debian
bookworm), into images/<name>/requirements.lock; the build installs exactly that lock with hash checking.
These tests check the committed locks instead of re-resolving every image: offline, that each is made
from today's requirements.txt and ancestor locks, hashes every package, carries every pin of the chain and
keeps its parent's versions; with the package index (slow), that each lock is closed under dependencies.
They read image.yaml and the locks with PyYAML and regular expressions on purpose, so they do not depend
on the code location's own loader.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
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

LOCK = "requirements.lock"
CLOSURE_TIMEOUT_S = 300


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


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Lock:
    header: dict[str, str]  # "python", "requirements.txt", "ancestor <name>", ...
    packages: dict[str, tuple[str, list[str]]]  # canonical name -> (version, sha256 hashes)


def read_lock(folder: Path) -> Lock:
    text = (folder / LOCK).read_text()
    head, _, body = text.partition("\n\n")
    header = dict(line[2:].split(": ", 1) for line in head.splitlines()[1:])
    packages = {}
    for entry in body.replace("\\\n", " ").splitlines():
        match = re.match(r"^([A-Za-z0-9][\w.-]*)(?:\[[^\]]*\])?==(\S+)", entry)
        if match:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)
            packages[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return Lock(header, packages)


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
    # every image installs its lock the same way: exactly its packages, hash-checked
    assert f"COPY {LOCK} /opt/thinkube/requirements/{image}.lock" in text, f"images/{image}/Dockerfile"
    assert re.search(rf"\binstall-requirements {image}$", text, re.M), f"images/{image}/Dockerfile"
    assert "pip install" not in text, f"images/{image}/Dockerfile: install through install-requirements"
    if not SPECS[image].parent:  # children inherit the entry point
        assert 'CMD ["jupyterhub-singleuser"]' in text


@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_lock_is_made_from_todays_files_and_pins_the_full_set_with_hashes(image: str):
    chain = lineage(SPECS, image)
    folder = IMAGES_DIR / image
    assert (folder / LOCK).is_file(), (
        f"images/{image}/{LOCK} is missing: thinkube-pipelines images lock {image}"
    )
    lock = read_lock(folder)
    assert lock.header["python"] == chain[0].python
    assert lock.header["requirements.txt"] == sha256_of(folder / "requirements.txt"), (
        f"images/{image}/{LOCK} is stale: thinkube-pipelines images lock {image}"
    )
    recorded = [(k.removeprefix("ancestor "), v) for k, v in lock.header.items() if k.startswith("ancestor ")]
    assert recorded == [(s.name, sha256_of(s.folder / LOCK)) for s in reversed(chain[:-1])]

    unhashed = [name for name, (_, hashes) in lock.packages.items() if not hashes]
    assert not unhashed, f"images/{image}/{LOCK}: no hash for {unhashed}"
    locked = {name: version for name, (version, _) in lock.packages.items()}
    wanted = full_pins(SPECS, image)
    differs = {k: (locked.get(k), v) for k, v in wanted.items() if locked.get(k) != v}
    assert not differs, (
        f"images/{image}/{LOCK} differs from the pins of its chain (locked, pinned): {differs}"
    )
    assert len(locked) > len(wanted), "the lock pins the dependencies too, not only the top-level pins"
    if SPECS[image].parent:
        parent = read_lock(IMAGES_DIR / SPECS[image].parent).packages
        moved = {
            k: (lock.packages.get(k, ("-",))[0], v[0]) for k, v in parent.items() if lock.packages.get(k) != v
        }
        assert not moved, f"image {image} moves what its parent locked (here, parent): {moved}"


def test_the_gpu_locks_carry_torch_with_its_cuda_wheels():
    for image in ("jupyter-ml-gpu", "jupyter-fine-tuning"):
        packages = read_lock(IMAGES_DIR / image).packages
        assert packages["torch"][0] == "2.4.1"
        cuda = {name for name in packages if name.startswith("nvidia-") and name.endswith("-cu12")}
        assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-nccl-cu12"} <= cuda
        assert "triton" in packages
    # the drift the lock exists for: JupyterLab 4.2 with the IPython of its time
    assert read_lock(IMAGES_DIR / "jupyter-base").packages["ipython"][0].startswith("8.")


@pytest.mark.slow
@pytest.mark.parametrize("image", IMAGE_NAMES)
def test_lock_is_closed_under_dependencies(image: str, tmp_path: Path):
    """Resolving the lock itself adds nothing and moves nothing: every dependency is in it."""
    from uv import find_uv_bin

    python = lineage(SPECS, image)[0].python
    assert python is not None
    command = [find_uv_bin(), "pip", "compile", "--quiet", "--no-header", "--no-annotate"]
    command += ["--python-version", python, "--python-platform", "x86_64-manylinux_2_36"]
    command += [str(IMAGES_DIR / image / LOCK), "--output-file", str(tmp_path / "out.txt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CLOSURE_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"images/{image}/{LOCK} does not resolve as it is:\n{done.stderr}"
    resolved = {}
    for line in (tmp_path / "out.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            resolved[canonicalize_name(name)] = version.strip()
    locked = {name: version for name, (version, _) in read_lock(IMAGES_DIR / image).packages.items()}
    assert resolved == locked
