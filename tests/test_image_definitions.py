"""The loader turns images/ into typed specs and refuses bad definitions, naming the file and field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from thinkube_pipelines.images import ImageDefinitionError, load_image_definitions
from thinkube_pipelines.images.lock import PLATFORM, LockInputs, render_lock, sha256_text

REPO = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "a" * 64


def write_image(root: Path, folder: str, requirements: str = "jupyterlab==4.2.5\n", **fields) -> Path:
    """Write one image folder; `fields` override a valid image.yaml (None deletes the field)."""
    spec = {
        "name": folder,
        "display_name": folder.title(),
        "description": f"The {folder} image",
        "gpu_required": False,
        "cpu_limit": 2,
        "mem_limit": "4G",
    }
    if "parent" not in fields:
        spec["base"] = {"image": f"docker.io/library/python@{DIGEST}", "python": "3.11"}
    spec.update(fields)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = root / folder
    path.mkdir(parents=True)
    (path / "image.yaml").write_text(yaml.safe_dump(spec))
    (path / "requirements.txt").write_text(requirements)
    arg = "PARENT_IMAGE" if spec.get("parent") else "BASE_IMAGE"
    (path / "Dockerfile").write_text(f"ARG {arg}\nFROM ${{{arg}}}\n")
    write_lock(root, folder)
    return path


def write_lock(root: Path, folder: str) -> None:
    """A fresh lock made offline (a made-up hash per pin), so that these tests stay about image.yaml and
    requirements.txt; none when an ancestor has no lock (a broken chain reports other problems)."""
    ancestors: list[tuple[str, str]] = []
    parent = yaml.safe_load((root / folder / "image.yaml").read_text()).get("parent")
    while parent:
        lock = root / parent / "requirements.lock"
        if not lock.is_file() or parent in dict(ancestors):
            return
        ancestors.append((parent, sha256_text(lock.read_bytes())))
        try:
            parent = yaml.safe_load((root / parent / "image.yaml").read_text()).get("parent")
        except yaml.YAMLError:
            return
    requirements = root / folder / "requirements.txt"
    inputs = LockInputs("3.11", PLATFORM, sha256_text(requirements.read_bytes()), tuple(ancestors))
    pins = [line.split("#")[0].strip() for line in requirements.read_text().splitlines()]
    body = "".join(f"{pin} --hash=sha256:{'0' * 64}\n" for pin in pins if "==" in pin)
    (root / folder / "requirements.lock").write_text(render_lock(inputs, body))


def problems_of(images_dir: Path) -> list[str]:
    with pytest.raises(ImageDefinitionError) as caught:
        load_image_definitions(images_dir)
    return [str(p) for p in caught.value.problems]


def test_repository_images_load_with_parents_first():
    images = load_image_definitions(REPO / "images")
    names = images.names
    assert {"jupyter-ml-cpu", "jupyter-ml-gpu", "jupyter-agent-dev", "jupyter-fine-tuning"} <= set(names)
    for d in images:
        if d.spec.parent:
            assert names.index(d.spec.parent) < names.index(d.name)
        assert images.root(d.name).spec.base is not None
    gpu_pins = {p.name: p.version for p in images.full_requirements("jupyter-ml-gpu")}
    assert gpu_pins["torch"] == "2.4.1"
    assert gpu_pins["jupyterlab"] == "4.2.5"
    assert [d.name for d in images if d.spec.default] == ["jupyter-ml-cpu"]


def test_chain_helpers(tmp_path):
    write_image(tmp_path, "base-img")
    write_image(tmp_path, "mid", parent="base-img", requirements="torch==2.4.1\n")
    write_image(tmp_path, "leaf", parent="mid", requirements="peft==0.12.0\n")
    images = load_image_definitions(tmp_path)
    assert images.names == ["base-img", "mid", "leaf"]
    assert [d.name for d in images.ancestors("leaf")] == ["mid", "base-img"]
    assert [d.name for d in images.descendants("base-img")] == ["mid", "leaf"]
    assert [p.name for p in images.full_requirements("leaf")] == ["jupyterlab", "torch", "peft"]


def test_missing_field_names_file_and_field(tmp_path):
    write_image(tmp_path, "img", display_name=None)
    [problem] = problems_of(tmp_path)
    assert str(tmp_path / "img" / "image.yaml") in problem
    assert "display_name" in problem and "Field required" in problem


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpu_required", "yes"),
        ("cpu_limit", "8"),
        ("mem_limit", "32 gigs"),
        ("tags", "gpu"),
        ("cpu_limit", 0),
    ],
)
def test_mistyped_field_is_named(tmp_path, field, value):
    write_image(tmp_path, "img", **{field: value})
    [problem] = problems_of(tmp_path)
    assert f"image.yaml: {field}" in problem


def test_unknown_field_is_refused(tmp_path):
    write_image(tmp_path, "img", gpu=True)
    [problem] = problems_of(tmp_path)
    assert "image.yaml: gpu: Extra inputs are not permitted" in problem


def test_unknown_parent(tmp_path):
    write_image(tmp_path, "img", parent="nowhere")
    [problem] = problems_of(tmp_path)
    assert "img/image.yaml: parent: 'nowhere' is not an image in images/" in problem


@pytest.mark.parametrize("breakage", ["field", "dockerfile", "yaml"])
def test_child_of_an_invalid_parent_says_the_parent_is_invalid(tmp_path, breakage):
    parent = write_image(tmp_path, "p", gpu_required="no" if breakage == "field" else False)
    if breakage == "dockerfile":
        (parent / "Dockerfile").unlink()
    if breakage == "yaml":
        (parent / "image.yaml").write_text("name: p\ndisplay_name: [unclosed\n")
    write_image(tmp_path, "c", parent="p")
    problems = problems_of(tmp_path)
    [own] = [p for p in problems if p.startswith(str(parent))]
    [child] = [p for p in problems if p.startswith(str(tmp_path / "c"))]
    assert child == f"{tmp_path / 'c' / 'image.yaml'}: parent: 'p' is invalid, fix it first: {own}"
    assert "is not an image" not in child


def test_parent_named_differently_from_its_folder_is_still_found_invalid(tmp_path):
    write_image(tmp_path, "folder-p", name="p", cpu_limit=0)
    write_image(tmp_path, "c", parent="p")
    problems = problems_of(tmp_path)
    assert any(
        "c/image.yaml: parent: 'p' is invalid, fix it first: " in p and "cpu_limit" in p for p in problems
    )


def test_missing_or_stale_lock_is_reported_once_the_definitions_are_sound(tmp_path):
    write_image(tmp_path, "p")
    write_image(tmp_path, "c", parent="p", requirements="torch==2.4.1\n")
    assert load_image_definitions(tmp_path).names == ["p", "c"]
    (tmp_path / "c" / "requirements.lock").unlink()
    (tmp_path / "c" / "image.yaml").write_text("name: c\nparent: p\n")  # and definition problems
    problems = problems_of(tmp_path)
    assert problems and all(p.startswith(str(tmp_path / "c" / "image.yaml")) for p in problems), (
        "definitions first: the locks are checked once they are sound"
    )
    write_image(tmp_path, "c2", parent="p")
    (tmp_path / "c").rename(tmp_path / ".c")  # hidden folders are not images
    (tmp_path / "c2" / "requirements.lock").unlink()
    [problem] = problems_of(tmp_path)
    assert problem == (
        f"{tmp_path / 'c2' / 'requirements.lock'}: image 'c2' has no lock: "
        "make it with `thinkube-pipelines images lock c2`"
    )
    write_image(tmp_path / "again", "c2", requirements="torch==2.4.1\n")
    (tmp_path / "again" / "c2" / "requirements.txt").write_text("torch==2.5.0\n")
    [problem] = problems_of(tmp_path / "again")
    assert problem.startswith(
        f"{tmp_path / 'again' / 'c2' / 'requirements.lock'}: requirements.txt: image 'c2': stale"
    )
    assert load_image_definitions(tmp_path / "again", check_locks=False).names == ["c2"]


def test_cycle_is_reported_once_with_its_path(tmp_path):
    write_image(tmp_path, "a", parent="b")
    write_image(tmp_path, "b", parent="a")
    [problem] = problems_of(tmp_path)
    assert "parent: cycle: a -> b -> a" in problem


def test_base_names_a_tag_or_a_digest(tmp_path):
    """By tag and digest (stays on it), or by tag alone (follows it); a bare repository is neither."""
    write_image(tmp_path, "img", base={"image": "docker.io/library/python", "python": "3.11"})
    [problem] = problems_of(tmp_path)
    assert "image.yaml: base:" in problem and "names neither a tag nor a digest" in problem
    for index, image in enumerate(
        ("docker.io/library/python:3.11", f"docker.io/library/python:3.11@{DIGEST}")
    ):
        root = tmp_path / f"ok-{index}"
        write_image(root, "img", base={"image": image, "python": "3.11"})
        assert load_image_definitions(root, check_locks=False)["img"].spec.base.image == image


def test_root_and_parent_are_exclusive(tmp_path):
    write_image(tmp_path, "p")
    write_image(tmp_path, "img", parent="p", base={"image": f"x@{DIGEST}", "python": "3.11"})
    [problem] = problems_of(tmp_path)
    assert "exactly one of 'parent'" in problem


@pytest.mark.parametrize("line", ["numpy>=1.26", "numpy", "numpy==1.*", "numpy==1.26,<2", "-r other.txt"])
def test_unpinned_requirement_names_file_and_line(tmp_path, line):
    write_image(tmp_path, "img", requirements=f"jupyterlab==4.2.5\n# comment\n{line}\n")
    [problem] = problems_of(tmp_path)
    assert f"{tmp_path / 'img' / 'requirements.txt'}: line 3:" in problem


def test_pins_with_extras_markers_and_comments_are_accepted(tmp_path):
    reqs = "uvicorn[standard]==0.30.6  # server\npywin32==306; sys_platform == 'win32'\n\n"
    write_image(tmp_path, "img", requirements=reqs)
    [img] = load_image_definitions(tmp_path)
    assert [(p.name, p.version) for p in img.requirements] == [("uvicorn", "0.30.6"), ("pywin32", "306")]


def test_child_repinning_a_parent_package_differently(tmp_path):
    write_image(tmp_path, "p", requirements="torch==2.4.1\n")
    write_image(tmp_path, "c", parent="p", requirements="Torch==2.5.0\n")
    [problem] = problems_of(tmp_path)
    assert (
        "c/requirements.txt: line 1: Torch==2.5.0 conflicts with torch==2.4.1 pinned by parent image 'p'"
        in (problem)
    )


@pytest.mark.parametrize("name", ["Jupyter", "-img", "img_", "img/sub", "a" * 129])
def test_invalid_oci_name(tmp_path, name):
    write_image(tmp_path, "img", name=name)
    [problem] = problems_of(tmp_path)
    assert "image.yaml: name" in problem


def test_duplicate_name_names_both_files(tmp_path):
    write_image(tmp_path, "one", name="same")
    write_image(tmp_path, "two", name="same")
    [problem] = problems_of(tmp_path)
    assert str(tmp_path / "two" / "image.yaml") in problem
    assert f"already defined in {tmp_path / 'one' / 'image.yaml'}" in problem


def test_dockerfile_must_take_its_from_from_the_builder(tmp_path):
    path = write_image(tmp_path, "img")
    (path / "Dockerfile").write_text("FROM python:3.11\n")
    [problem] = problems_of(tmp_path)
    assert "img/Dockerfile: FROM: must build FROM ${BASE_IMAGE}" in problem


def test_missing_files_and_all_problems_reported_together(tmp_path):
    (tmp_path / "empty").mkdir()
    write_image(tmp_path, "img", gpu_required="no")
    problems = problems_of(tmp_path)
    assert len(problems) == 4
    assert any("empty/image.yaml: missing" in p for p in problems)
    assert any("empty/Dockerfile: missing" in p for p in problems)
    assert any("img/image.yaml: gpu_required" in p for p in problems)


def test_no_image_name_is_written_in_python_code():
    names = load_image_definitions(REPO / "images").names
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "thinkube_pipelines").rglob("*.py")
        for name in names
        if name in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "thinkube-pipelines"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=REPO, check=False)


def test_cli_check_prints_each_image_with_its_parent():
    result = run_cli("images", "check")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "parent jupyter-ml-gpu" in lines["jupyter-fine-tuning"]
    assert "[gpu]" in lines["jupyter-ml-gpu"]
    assert result.stdout.rstrip().endswith("image(s) OK")


def test_cli_check_exits_1_naming_file_and_field(tmp_path):
    write_image(tmp_path, "img", requirements="torch>=2\n")
    result = run_cli("images", "check", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'img' / 'requirements.txt'}: line 1: 'torch>=2' is not pinned" in result.stderr
    assert result.stdout == ""


def test_cli_check_missing_folder(tmp_path):
    result = run_cli("images", "check", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "images folder does not exist" in result.stderr


def test_cli_usage_error_is_argparse_style():
    result = run_cli("images")
    assert result.returncode == 2
    assert textwrap.dedent("usage: thinkube-pipelines images") in result.stderr
