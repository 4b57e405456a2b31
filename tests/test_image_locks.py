"""Image locks: `images lock` pins every package with its hashes, `images check` refuses a stale lock,
and the build's install-requirements installs exactly the lock, refusing a file whose hash is not in it.

The offline tests use the committed fixture locks (tests/fixtures/images/). The slow ones resolve small
sets on the package index with the real `images lock`, check the result with pip's own resolver, and run
the real install-requirements script into a venv on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from thinkube_pipelines.images import ImageDefinitionError, load_image_definitions
from thinkube_pipelines.images.lock import locked_packages, parse_lock, render_lock

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "images"
INSTALL_REQUIREMENTS = REPO / "images" / "jupyter-base" / "install-requirements"
CLI = Path(sys.executable).parent / "thinkube-pipelines"
DIGEST = "sha256:" + "0" * 64
# Debian bookworm (glibc 2.36), x86-64: where the images run.
PIP_PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "linux_x86_64",
]
_PIP_ENV_KEPT = {
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_PROXY",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "PIP_INDEX_URL",
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, cwd=REPO, check=False, timeout=300
    )


def pip_env(**extra: str) -> dict[str, str]:
    """No pip configuration of this machine (find-links, constraints, extra indexes): only the index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in _PIP_ENV_KEPT}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


def copy_fixtures(tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "images"
    for name in names:
        shutil.copytree(FIXTURE_IMAGES / name, target / name)
    return target


def write_image(root: Path, name: str, requirements: str, parent: str | None = None) -> Path:
    spec = {
        "name": name,
        "display_name": name,
        "description": f"The {name} image",
        "gpu_required": False,
        "cpu_limit": 1,
        "mem_limit": "1G",
    }
    if parent:
        spec["parent"] = parent
    else:
        spec["base"] = {"image": f"docker.io/library/python@{DIGEST}", "python": "3.11"}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "image.yaml").write_text(yaml.safe_dump(spec))
    (folder / "requirements.txt").write_text(requirements)
    arg = "PARENT_IMAGE" if parent else "BASE_IMAGE"
    (folder / "Dockerfile").write_text(f"ARG {arg}\nFROM ${{{arg}}}\n")
    return folder


def lock_of(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """A lock read without the module's parser: name -> (version, hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for entry in folder.joinpath("requirements.lock").read_text().replace("\\\n", " ").splitlines():
        match = re.match(r"^([A-Za-z0-9][\w.-]*)==(\S+)", entry)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            entries[name] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return entries


# --- offline: the committed fixture locks and the check --------------------------------------------


def test_fixture_images_carry_the_build_script_of_jupyter_base():
    copy = FIXTURE_IMAGES / "tk-parent" / "install-requirements"
    assert copy.read_bytes() == INSTALL_REQUIREMENTS.read_bytes(), (
        "copy images/jupyter-base/install-requirements"
    )
    assert os.access(copy, os.X_OK) and os.access(INSTALL_REQUIREMENTS, os.X_OK)
    for folder in FIXTURE_IMAGES.iterdir():
        dockerfile = (folder / "Dockerfile").read_text()
        if folder.name != "tk-broken":  # fails before it installs anything
            assert f"COPY requirements.lock /opt/thinkube/requirements/{folder.name}.lock" in dockerfile
            assert f"install-requirements {folder.name}" in dockerfile
        assert "pip install" not in dockerfile, f"{folder.name}: install through install-requirements"


def test_committed_fixture_locks_are_fresh_and_children_keep_the_parent_versions():
    images = load_image_definitions(FIXTURE_IMAGES)  # raises on a missing or stale lock
    parent = lock_of(FIXTURE_IMAGES / "tk-parent")
    assert parent["jupyterhub"][0] == "5.1.0" and len(parent) > 20
    for child in ("tk-child", "tk-smoke-fail"):
        assert images[child].spec.parent == "tk-parent"
        lock = lock_of(FIXTURE_IMAGES / child)
        assert {k: lock.get(k) for k in parent} == parent
        assert lock["six"][0] == "1.17.0"


def test_check_passes_on_fresh_locks(tmp_path):
    images = copy_fixtures(tmp_path, "tk-parent", "tk-child")
    result = run_cli("images", "check", str(images))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("2 image(s) OK")


def _edit_child_requirements(images: Path) -> tuple[str, str]:
    with (images / "tk-child" / "requirements.txt").open("a") as f:
        f.write("toolz==0.12.1\n")
    return "tk-child", f"{images / 'tk-child' / 'requirements.txt'} changed since it was locked"


def _remove_child_lock(images: Path) -> tuple[str, str]:
    (images / "tk-child" / "requirements.lock").unlink()
    return "tk-child", "has no lock: make it with `thinkube-pipelines images lock tk-child`"


def _edit_parent_lock_by_hand(images: Path) -> tuple[str, str]:
    lock = images / "tk-parent" / "requirements.lock"
    lock.write_text(lock.read_text().replace("jupyterhub==5.1.0", "jupyterhub==5.2.0"))
    return "tk-parent", "the lock was edited by hand"


def _change_root_python(images: Path) -> tuple[str, str]:
    spec = images / "tk-parent" / "image.yaml"
    spec.write_text(spec.read_text().replace('python: "3.11"', 'python: "3.12"'))
    return "tk-parent", "locked for python 3.11, the image needs 3.12"


def _relock_parent(images: Path) -> tuple[str, str]:
    """The parent's lock made anew (valid, fresh, different): its children were resolved against the old."""
    path = images / "tk-parent" / "requirements.lock"
    lock = parse_lock(path.read_bytes())
    path.write_text(render_lock(lock.inputs, lock.body + "# made again\n"))
    return "tk-child", f"{path} changed since it was locked"


@pytest.mark.parametrize(
    "break_it",
    [
        _edit_child_requirements,
        _remove_child_lock,
        _edit_parent_lock_by_hand,
        _change_root_python,
        _relock_parent,
    ],
)
def test_check_exits_1_naming_the_image_and_the_file(tmp_path, break_it):
    images = copy_fixtures(tmp_path, "tk-parent", "tk-child")
    image, reason = break_it(images)
    result = run_cli("images", "check", str(images))
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    [problem] = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problem.startswith(f"{images / image / 'requirements.lock'}: ")
    assert f"image '{image}'" in problem
    assert reason in problem
    # the code location's loader refuses the same folder
    with pytest.raises(ImageDefinitionError) as caught:
        load_image_definitions(images)
    assert [str(p) for p in caught.value.problems] == [problem]


def test_lock_check_stays_cheap_with_500_images(tmp_path):
    """The code location checks every lock at each start: hash comparisons only, one read per file."""
    images = tmp_path / "images"
    shutil.copytree(FIXTURE_IMAGES / "tk-parent", images / "tk-parent")
    child = FIXTURE_IMAGES / "tk-child"
    for n in range(499):
        folder = images / f"tk-child-{n}"
        shutil.copytree(child, folder)
        spec = folder / "image.yaml"
        spec.write_text(
            spec.read_text().replace("name: tk-child", f"name: tk-child-{n}").replace("default: true", "")
        )
    code = (
        "import time, sys; from thinkube_pipelines.images import load_image_definitions as load\n"
        "t = time.perf_counter(); n = len(load(sys.argv[1])); print(n, time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(images)], capture_output=True, text=True, check=True
    )
    count, seconds = done.stdout.split()
    assert int(count) == 500
    assert float(seconds) < 5, f"loading 500 locked images took {seconds} s"


# --- with the package index -------------------------------------------------------------------------


@pytest.mark.slow
def test_lock_pins_every_package_with_hashes_and_the_child_keeps_the_parent_versions(tmp_path):
    images = tmp_path / "images"
    # urllib3 1.x is old on purpose: a child resolved on its own would take urllib3 2.x
    write_image(images, "root", "requests==2.31.0\nurllib3==1.26.20\n")
    write_image(images, "leaf", "requests-toolbelt==1.0.0\n", parent="root")

    result = run_cli("images", "lock", "--dir", str(images))
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()][:4] == ["root", "root", "leaf", "leaf"]

    root, leaf = lock_of(images / "root"), lock_of(images / "leaf")
    assert {"requests", "urllib3", "idna", "certifi", "charset-normalizer"} <= set(root)
    assert root["urllib3"][0] == "1.26.20"
    for lock in (root, leaf):
        assert all(hashes for _, hashes in lock.values()), "every package needs at least one hash"
    assert {k: leaf.get(k) for k in root} == root, "the child moved a package its parent locked"
    assert leaf["requests-toolbelt"][0] == "1.0.0"
    assert set(leaf) == set(root) | {"requests-toolbelt"}

    # pip's own resolver, in hash-checking mode, accepts the lock as a complete set: it refuses any
    # dependency that the lock does not pin, and installs nothing beyond it
    for name, lock in (("root", root), ("leaf", leaf)):
        report = tmp_path / f"{name}.json"
        platforms = [arg for p in PIP_PLATFORMS for arg in ("--platform", p)]
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        command += ["--report", str(report), "--require-hashes", "--only-binary=:all:", "--python-version"]
        command += ["3.11", "--implementation", "cp", *platforms, "--target", str(tmp_path / "target")]
        command += ["-r", str(images / name / "requirements.lock")]
        done = subprocess.run(
            command, env=pip_env(), capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
        installed = {
            re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]
        }
        assert installed == {k: version for k, (version, _) in lock.items()}

    assert run_cli("images", "check", str(images)).returncode == 0


@pytest.mark.slow
def test_lock_refreshes_a_stale_lock_and_only_the_named_image_and_its_descendants(tmp_path):
    images = copy_fixtures(tmp_path, "tk-parent", "tk-child", "tk-smoke-fail")
    parent_lock = (images / "tk-parent" / "requirements.lock").read_bytes()
    sibling_lock = (images / "tk-smoke-fail" / "requirements.lock").read_bytes()
    image, _ = _edit_child_requirements(images)
    assert run_cli("images", "check", str(images)).returncode == 1

    result = run_cli("images", "lock", image, "--dir", str(images))
    assert result.returncode == 0, result.stderr
    progress = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert progress == ["tk-child", "tk-child", "1 image(s) locked, 1 lock(s) changed"]
    assert (images / "tk-parent" / "requirements.lock").read_bytes() == parent_lock
    assert (images / "tk-smoke-fail" / "requirements.lock").read_bytes() == sibling_lock

    check = run_cli("images", "check", str(images))
    assert check.returncode == 0, check.stderr
    child = lock_of(images / "tk-child")
    assert child["toolz"][0] == "0.12.1" and child["toolz"][1]
    parent = lock_of(images / "tk-parent")
    assert {k: child.get(k) for k in parent} == parent

    # locking the parent takes its descendants along, parents first
    result = run_cli("images", "lock", "tk-parent", "--dir", str(images))
    assert result.returncode == 0, result.stderr
    names = [line.split(":")[0] for line in result.stdout.splitlines()[:-1]]
    assert names == ["tk-parent", "tk-parent", "tk-child", "tk-child", "tk-smoke-fail", "tk-smoke-fail"]
    assert "0 lock(s) changed" in result.stdout, "same inputs, same index: the same locks"


def test_lock_refuses_an_unknown_image(tmp_path):
    images = copy_fixtures(tmp_path, "tk-parent")
    result = run_cli("images", "lock", "nowhere", "--dir", str(images))
    assert result.returncode == 1
    assert "not an image in the images folder: nowhere" in result.stderr


@pytest.fixture(scope="module")
def six_image(tmp_path_factory):
    """A root image with pip and one tiny pure-Python package, locked with the real `images lock`."""
    root = tmp_path_factory.mktemp("six")
    images = root / "images"
    write_image(images, "six-root", "pip==24.2\nsix==1.17.0\n")
    result = run_cli("images", "lock", "--dir", str(images))
    assert result.returncode == 0, result.stderr
    return images / "six-root"


def make_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


def install_requirements(venv: Path, requirements: Path, lock_text: str) -> subprocess.CompletedProcess[str]:
    """Run the build's install-requirements in `venv`, as an image's Dockerfile does (from another folder)."""
    requirements.mkdir()
    (requirements / "six-root.lock").write_text(lock_text)
    env = pip_env(PATH=f"{venv / 'bin'}:{os.environ['PATH']}", THINKUBE_REQUIREMENTS_DIR=str(requirements))
    return subprocess.run(
        ["sh", str(INSTALL_REQUIREMENTS), "six-root"],
        env=env,
        cwd=REPO,  # a folder with an installed project in it must not count as part of the venv
        capture_output=True,
        text=True,
        timeout=300,
    )


def venv_packages(venv: Path) -> dict[str, str]:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        env=pip_env(),
    )
    return {p["name"].lower(): p["version"] for p in json.loads(done.stdout)}


@pytest.mark.slow
def test_install_requirements_refuses_a_tampered_hash_and_makes_the_venv_equal_the_lock(six_image, tmp_path):
    lock = (six_image / "requirements.lock").read_text()
    assert locked_packages(lock.partition("\n\n")[2]).keys() == {"pip", "six"}
    entry = re.search(r"^six==1\.17\.0 \\\n(?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", lock, re.M)
    assert entry is not None, lock
    # one character of each of six's hashes changed: still well-formed, no longer the file's
    wrong = re.sub(
        r"sha256:([0-9a-f])", lambda m: "sha256:" + ("1" if m.group(1) == "0" else "0"), entry.group(0)
    )
    tampered = lock.replace(entry.group(0), wrong)
    assert tampered != lock

    venv = make_venv(tmp_path)
    done = install_requirements(venv, tmp_path / "tampered", tampered)
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr
    assert "six" not in venv_packages(venv), "nothing of a failed hash check may be installed"

    done = install_requirements(venv, tmp_path / "locked", lock)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removing what" in done.stdout and "setuptools" in done.stdout, "a new venv's setuptools goes"
    assert venv_packages(venv) == {"pip": "24.2", "six": "1.17.0"}
    assert "No broken requirements found" in done.stdout
