"""The code location loads, and its graph follows images/: four assets per image, parents before children."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import requests
import yaml

from tests.fixtures.network import free_port
from thinkube_pipelines.definitions import build_definitions, defs
from thinkube_pipelines.defs.images.keys import STAGES
from thinkube_pipelines.images import load_image_definitions

REPO = Path(__file__).resolve().parents[1]
HUB_ASSETS = ("preflight", "seaweedfs_volumes", "jupyterhub_values", "jupyterhub_release")


def observed_keys(images) -> set[dg.AssetKey]:
    """Each image's observed source, and each root image's observed upstream base."""
    return {dg.AssetKey([d.name, "source"]) for d in images} | {
        dg.AssetKey([d.name, "base"]) for d in images if d.spec.base is not None
    }


def asset_graph(definitions: dg.Definitions):
    return definitions.resolve_asset_graph()


def test_the_whole_definitions_object_loads():
    dg.Definitions.validate_loadable(defs)
    images = load_image_definitions(REPO / "images")
    keys = set(defs.resolve_all_asset_keys())
    hub = {dg.AssetKey(["hub", name]) for name in HUB_ASSETS}
    made = {dg.AssetKey([d.name, stage]) for d in images for stage in STAGES}
    assert keys == made | observed_keys(images) | hub
    assert defs.resolve_job_def("build_images") is not None
    assert defs.resolve_job_def("hub_deploy") is not None
    checks = defs.resolve_asset_graph().asset_check_keys
    # The smoke check on every build; the GPU test on the builds of the GPU images only.
    assert checks == {dg.AssetCheckKey(dg.AssetKey([d.name, "build"]), "smoke") for d in images} | {
        dg.AssetCheckKey(dg.AssetKey([d.name, "build"]), "gpu") for d in images if d.spec.gpu_required
    }
    assert any(d.spec.gpu_required for d in images)


def test_chain_edges_and_parent_edges():
    images = load_image_definitions(REPO / "images")
    graph = asset_graph(defs)
    for d in images:
        key = lambda stage, name=d.name: dg.AssetKey([name, stage])  # noqa: E731
        assert graph.get(key("published")).parent_keys == {key("build")}
        assert graph.get(key("catalog_entry")).parent_keys == {key("published")}
        expected = {key("source")}
        expected.add(dg.AssetKey([d.spec.parent, "published"]) if d.spec.parent else key("base"))
        assert graph.get(key("build")).parent_keys == expected
        assert graph.get(key("build")).group_name == d.name.replace("-", "_")


def copy_images(tmp_path: Path) -> Path:
    target = tmp_path / "images"
    shutil.copytree(REPO / "images", target)
    return target


def test_adding_an_image_folder_adds_its_assets(tmp_path):
    images_dir = copy_images(tmp_path)
    new = images_dir / "jupyter-new-thing"
    shutil.copytree(images_dir / "jupyter-ml-cpu", new)
    spec = yaml.safe_load((new / "image.yaml").read_text())
    spec.update(name="jupyter-new-thing", default=False)
    (new / "image.yaml").write_text(yaml.safe_dump(spec))

    keys = set(build_definitions(images_dir).resolve_all_asset_keys())
    assert {dg.AssetKey(["jupyter-new-thing", stage]) for stage in (*STAGES, "source")} <= keys
    assert len(keys) == len(set(defs.resolve_all_asset_keys())) + 4, "3 made, 1 observed (no base: a child)"


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
    # Each image's chain is one step (a multi-asset): its three made assets share the pool of its build
    # (observing a folder or a base is light: no pool).
    made = [k for k in defs.resolve_all_asset_keys() if k.path[0] != "hub" and k.path[1] in STAGES]
    pools = {k: set(graph.get(k).pools) for k in made}
    assert pools and all(p == {"image_builds"} for p in pools.values())
    # one hub deploy at a time (helm refuses a second operation on a release in progress)
    assert all(set(graph.get(dg.AssetKey(["hub", n])).pools) == {"hub_deploy"} for n in HUB_ASSETS)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "thinkube/run-kind", "value": "image-build", "limit": 1} in limits
    assert {"key": "thinkube/run-kind", "value": "hub-deploy", "limit": 1} in limits
    assert defs.resolve_job_def("hub_deploy").tags["thinkube/run-kind"] == "hub-deploy"
    assert defs.resolve_job_def("build_images").tags["thinkube/run-kind"] == "image-build"


def test_the_instance_limits_the_build_and_hub_pools_only(tmp_path):
    """What `make` does to the instance (the pools.stamp target's commands, run as written): the build and the
    hub pools get one slot each, any other pool stays unlimited."""
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    makefile = (REPO / "Makefile").read_text()
    commands = re.findall(r"dagster instance concurrency set (\S+) (\d+)", makefile)
    assert sorted(commands) == [("hub_deploy", "1"), ("image_builds", "1")]
    dagster = str(Path(sys.executable).parent / "dagster")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    for pool, slots in commands:
        subprocess.run(
            [dagster, "instance", "concurrency", "set", pool, slots], env=env, check=True, timeout=120
        )
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.event_log_storage.get_concurrency_info("image_builds").slot_count == 1
        assert instance.event_log_storage.get_concurrency_info("hub_deploy").slot_count == 1
        assert instance.get_concurrency_config().pool_config.default_pool_limit is None
        assert instance.event_log_storage.get_concurrency_info("other").slot_count == 0


def test_build_images_selects_the_image_assets_only(tmp_path):
    @dg.asset(key=["hub", "release"], deps=[dg.AssetKey(["jupyter-base", "catalog_entry"])])
    def hub_release() -> None: ...

    images = load_image_definitions(REPO / "images")
    mixed = dg.Definitions.merge(defs, dg.Definitions(assets=[hub_release]))
    selected = mixed.resolve_job_def("build_images").asset_layer.selected_asset_keys
    assert selected == {dg.AssetKey([d.name, stage]) for d in images for stage in STAGES}
    assert dg.AssetKey(["hub", "release"]) in set(mixed.resolve_all_asset_keys())


def test_image_assets_carry_owners_tags_and_descriptions():
    graph = asset_graph(defs)
    images = load_image_definitions(REPO / "images")
    for d in images:
        for stage in STAGES:
            node = graph.get(dg.AssetKey([d.name, stage]))
            assert node.owners == ["team:platform"]
            assert node.tags["thinkube/part"] == "image" and node.tags["thinkube/image"] == d.name
            assert (node.tags.get("thinkube/gpu") == "true") == d.spec.gpu_required
            assert node.description and d.spec.display_name in node.description


def plain_shell(tmp_path: Path) -> dict[str, str]:
    """What a new user's shell has: PATH (with the venv's dagster) and HOME; no DAGSTER_HOME, no settings."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}


def test_dagster_definitions_validate_works_in_a_plain_shell(tmp_path):
    result = subprocess.run(
        ["dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=plain_shell(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful for code location thinkube_pipelines" in result.stdout + result.stderr


def test_dagster_dev_serves_the_graph_in_a_plain_shell(tmp_path):
    port = free_port()
    homes_before = set(REPO.glob(".tmp_dagster_home_*"))  # left by an earlier run that was killed
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=plain_shell(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped whole below, by its id
        )
    try:
        query = "{ assetNodes { assetKey { path } } }"
        nodes = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=5)
                nodes = answer.json()["data"]["assetNodes"]
                if nodes:
                    break
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            time.sleep(1)
        assert nodes, log.read_text()[-3000:]
        images = load_image_definitions(REPO / "images")
        assert {tuple(n["assetKey"]["path"]) for n in nodes} == {
            (d.name, s) for d in images for s in STAGES
        } | {tuple(k.path) for k in observed_keys(images)} | {("hub", n) for n in HUB_ASSETS}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    left = set(REPO.glob(".tmp_dagster_home_*")) - homes_before
    assert not left, f"dagster dev left its temporary home behind: {sorted(left)}"
