"""The code location loads, and its graph follows images/: four assets per image, parents before children."""

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from thinkube_pipelines.definitions import build_definitions, defs
from thinkube_pipelines.images import load_image_definitions

REPO = Path(__file__).resolve().parents[1]
STAGES = ("source", "build", "published", "catalog_entry")


def asset_graph(definitions: dg.Definitions):
    return definitions.resolve_asset_graph()


def test_the_whole_definitions_object_loads():
    dg.Definitions.validate_loadable(defs)
    images = load_image_definitions(REPO / "images")
    keys = set(defs.resolve_all_asset_keys())
    assert keys == {dg.AssetKey([d.name, stage]) for d in images for stage in STAGES}
    assert defs.resolve_job_def("build_images") is not None
    checks = defs.resolve_asset_graph().asset_check_keys
    assert {c.asset_key for c in checks} == {dg.AssetKey([d.name, "build"]) for d in images}
    assert all(c.name == "smoke" for c in checks)


def test_chain_edges_and_parent_edges():
    images = load_image_definitions(REPO / "images")
    graph = asset_graph(defs)
    for d in images:
        key = lambda stage, name=d.name: dg.AssetKey([name, stage])  # noqa: E731
        assert graph.get(key("published")).parent_keys == {key("build")}
        assert graph.get(key("catalog_entry")).parent_keys == {key("published")}
        expected = {key("source")}
        if d.spec.parent:
            expected.add(dg.AssetKey([d.spec.parent, "published"]))
        assert graph.get(key("build")).parent_keys == expected
        assert graph.get(key("build")).group_name == d.name.replace("-", "_")


def copy_images(tmp_path: Path) -> Path:
    target = tmp_path / "images"
    shutil.copytree(REPO / "images", target)
    return target


def test_adding_an_image_folder_adds_its_four_assets(tmp_path):
    images_dir = copy_images(tmp_path)
    new = images_dir / "jupyter-new-thing"
    shutil.copytree(images_dir / "jupyter-ml-cpu", new)
    spec = yaml.safe_load((new / "image.yaml").read_text())
    spec.update(name="jupyter-new-thing", default=False)
    (new / "image.yaml").write_text(yaml.safe_dump(spec))

    keys = set(build_definitions(images_dir).resolve_all_asset_keys())
    assert {dg.AssetKey(["jupyter-new-thing", stage]) for stage in STAGES} <= keys
    assert len(keys) == len(set(defs.resolve_all_asset_keys())) + 4


def test_code_version_follows_the_folder_and_its_parent(tmp_path):
    images_dir = copy_images(tmp_path)
    images = load_image_definitions(images_dir)
    # an image in the middle of a chain: it has a parent and children, and siblings that must not change
    middle = next(d.name for d in images if d.spec.parent and images.children(d.name))
    children = [d.name for d in images.descendants(middle)]
    unrelated = [d.name for d in images if d.name != middle and d.name not in children]
    assert children and len(unrelated) >= 2

    def versions():
        graph = build_definitions(images_dir).resolve_asset_graph()
        return {d.name: graph.get(dg.AssetKey([d.name, "build"])).code_version for d in images}

    before = versions()
    with (images[middle].folder / "Dockerfile").open("a") as f:
        f.write("\n# a change\n")
    after = versions()
    assert after[middle] != before[middle]
    assert all(after[n] != before[n] for n in children), "a parent's change must show on its children too"
    assert all(after[n] == before[n] for n in unrelated)


def test_build_steps_share_one_concurrency_pool_and_runs_are_queued():
    graph = asset_graph(defs)
    pools = [set(graph.get(k).pools) for k in defs.resolve_all_asset_keys() if k.path[-1] == "build"]
    assert pools and all(p == {"image_builds"} for p in pools)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "thinkube/run-kind", "value": "image-build", "limit": 1} in limits
    assert defs.resolve_job_def("build_images").tags["thinkube/run-kind"] == "image-build"


def test_dagster_cli_validates_the_workspace_with_our_instance_config(tmp_path):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env={"PATH": str(Path(sys.executable).parent), "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful for code location thinkube_pipelines" in result.stdout + result.stderr
