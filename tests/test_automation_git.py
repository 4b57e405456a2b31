"""The image source as a git remote (a Gitea branch), over git's smart HTTP protocol, for real.

The repository lives on the real git server of tests/fixtures/git_server.py (`git http-backend` behind
HTTP Basic auth, as Gitea serves it); the code location loads its definitions from a checkout of the
branch, the source sensor asks the branch's commit each tick and records the commit it hashed, and the
build reads exactly the files of that commit even after the branch moved on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from tests.fixtures.automation import Automation, chains
from tests.test_automation import FIXTURE_IMAGES
from thinkube_pipelines.builders.base import BuildContext
from thinkube_pipelines.defs.images.sources import SENSOR_NAME as SOURCE_SENSOR
from thinkube_pipelines.defs.images.sources import ImageSource, SourceChangeError, observed_commit
from thinkube_pipelines.images import git_source


@pytest.fixture
def gitea_images(git_server, monkeypatch, tmp_path):
    """A repository holding tk-parent and tk-child under deploy/images, as the code location's source."""
    repo = git_server.create_repo()
    for name in ("tk-parent", "tk-child"):
        repo.copy_tree(FIXTURE_IMAGES / name, f"deploy/images/{name}")
    first = repo.commit({}, "the images")
    monkeypatch.setenv(git_source.URL_ENV, repo.url)
    monkeypatch.setenv(git_source.BRANCH_ENV, "main")
    monkeypatch.setenv(git_source.PATH_ENV, "deploy/images")
    monkeypatch.setenv(git_source.USERNAME_ENV, git_server.username)
    monkeypatch.setenv(git_source.TOKEN_ENV, git_server.token)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        auto = Automation(tmp_path / "not-used", instance)
        yield auto, repo, first


def test_the_git_branch_is_observed_by_commit_and_built_from_the_observed_commit(gitea_images, git_server):
    auto, repo, first = gitea_images
    # the first look: both folders, read at the branch's commit
    result = auto.tick_sensor(SOURCE_SENSOR)
    assert {e.asset_key for e in result.asset_events} == {
        dg.AssetKey(["tk-parent", "source"]),
        dg.AssetKey(["tk-child", "source"]),
    }
    assert observed_commit(auto.instance, "tk-child") == first
    auto.record_built("tk-parent", "tk-child")
    assert auto.evaluate() == set()

    # the branch did not move: one ref listing, nothing fetched, nothing recorded
    before = len(git_server.requests_for(repo))
    still = auto.tick_sensor(SOURCE_SENSOR)
    assert isinstance(still, dg.SkipReason) and first[:12] in still.skip_message
    asked = git_server.requests_for(repo)[before:]
    assert [r.service for r in asked if r.status == 200] == ["info/refs", "git-upload-pack"], "ls-remote"

    # a commit that changes the child's Dockerfile: the child alone is observed, with that commit
    dockerfile = (FIXTURE_IMAGES / "tk-child" / "Dockerfile").read_text() + "# changed in Gitea\n"
    changed = repo.commit({"deploy/images/tk-child/Dockerfile": dockerfile}, "change the child")
    result = auto.tick_sensor(SOURCE_SENSOR)
    assert [e.asset_key for e in result.asset_events] == [dg.AssetKey(["tk-child", "source"])]
    assert result.asset_events[0].metadata["commit"].value == changed
    assert auto.evaluate() == chains("tk-child")

    # the branch moves on before the build runs: the build still gets the observed commit's files
    repo.commit({"deploy/images/tk-child/Dockerfile": dockerfile + "# later\n"}, "a later change")
    source = ImageSource.from_env(Path("unused"))
    commit = observed_commit(auto.instance, "tk-child")
    assert commit == changed
    with source.folder_at(commit) as images:
        built = BuildContext.from_folder(images / "tk-child")
        assert (images / "tk-child" / "Dockerfile").read_text() == dockerfile
    record = auto.instance.fetch_observations(dg.AssetKey(["tk-child", "source"]), limit=1).records[0]
    assert record.asset_observation.tags[DATA_VERSION_TAG].startswith("sha256:")
    assert built.digest.startswith("sha256:")


def test_an_invalid_commit_is_reported_and_observed_once_fixed(gitea_images):
    auto, repo, _ = gitea_images
    auto.tick_sensor(SOURCE_SENSOR)
    spec = (FIXTURE_IMAGES / "tk-parent" / "image.yaml").read_text()
    repo.commit({"deploy/images/tk-parent/image.yaml": spec.replace("cpu_limit:", "cpu_limits:")}, "typo")
    with pytest.raises(SourceChangeError) as caught:
        auto.tick_sensor(SOURCE_SENSOR)
    message = str(caught.value)
    assert "tk-parent/image.yaml" in message and "cpu_limits" in message, message
    assert git_source.TOKEN_ENV not in message and repo.server.token not in message
    fixed = repo.commit({"deploy/images/tk-parent/image.yaml": spec + "# fixed\n"}, "fix")
    result = auto.tick_sensor(SOURCE_SENSOR)
    assert [e.asset_key for e in result.asset_events] == [dg.AssetKey(["tk-parent", "source"])]
    assert result.asset_events[0].metadata["commit"].value == fixed


def test_the_code_location_loads_the_branch(gitea_images, tmp_path):
    auto, _, _ = gitea_images
    keys = set(auto.defs.resolve_all_asset_keys())
    assert dg.AssetKey(["tk-child", "build"]) in keys and dg.AssetKey(["tk-parent", "base"]) in keys
    assert not any(k.path[0] == "tk-smoke-fail" for k in keys), "what the branch holds, not a local folder"
    shutil.rmtree(tmp_path / "dagster", ignore_errors=True)
