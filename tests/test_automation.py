"""Change-driven and nightly rebuilds, and the hub's redeploy, with Dagster's own machinery for real.

Each test loads the code location (`build_definitions`) over a copy of the test images in a temporary
folder and a real Dagster instance on SQLite, then ticks what the daemons would tick: the source sensor
(its `SensorResult` recorded in the instance, as the sensor daemon records it, its cursor kept between
ticks), Dagster's automation condition evaluation (`evaluate_automation_conditions`, the function the
automation condition sensor runs, with its cursor kept between ticks), the nightly schedule and the hub
redeploy sensor. What was "built" before a change is recorded as the materializations a build run writes
(their data versions are what the conditions compare); the builds themselves are tested in
test_image_pipeline.py, and a whole change-to-deploy loop with real builds in test_automation_e2e.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.utils import make_new_run_id

from tests.fixtures.automation import Automation, chains
from tests.fixtures.registry import push_test_image
from thinkube_pipelines.defs.hub.sensors import SENSOR_NAME as REDEPLOY_SENSOR
from thinkube_pipelines.defs.images.automation import (
    AUTOMATION_ENV,
    NIGHTLY_CRON_ENV,
    NIGHTLY_FULL_ENV,
    NIGHTLY_SCHEDULE,
    NIGHTLY_TIMEZONE_ENV,
    OBSERVE_BASES_JOB,
    AutomationSettings,
)
from thinkube_pipelines.defs.images.jobs import FORCE_REBUILD_TAG
from thinkube_pipelines.defs.images.sources import SENSOR_NAME as SOURCE_SENSOR
from thinkube_pipelines.defs.images.sources import SourceChangeError

REPO = Path(__file__).resolve().parents[1]
FIXTURE_IMAGES = REPO / "tests" / "fixtures" / "images"
CLI = Path(sys.executable).parent / "thinkube-pipelines"


def copy_images(tmp_path: Path) -> Path:
    """tk-parent with its children tk-child and tk-smoke-fail, and tk-other: an unrelated root image."""
    images = tmp_path / "images"
    for name in ("tk-parent", "tk-child", "tk-smoke-fail"):
        shutil.copytree(FIXTURE_IMAGES / name, images / name)
    shutil.copytree(FIXTURE_IMAGES / "tk-parent", images / "tk-other")
    spec = images / "tk-other" / "image.yaml"
    spec.write_text(spec.read_text().replace("name: tk-parent", "name: tk-other"))
    return images


@pytest.fixture
def automation(tmp_path, monkeypatch) -> Automation:
    monkeypatch.delenv(AUTOMATION_ENV, raising=False)
    images = copy_images(tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        auto = Automation(images, instance)
        # the first look records every folder; everything is then built once
        first = auto.tick_sensor(SOURCE_SENSOR)
        assert isinstance(first, dg.SensorResult)
        assert {e.asset_key for e in first.asset_events} == {
            dg.AssetKey([n, "source"]) for n in ("tk-parent", "tk-child", "tk-smoke-fail", "tk-other")
        }
        auto.record_built("tk-parent", "tk-other", "tk-child", "tk-smoke-fail")
        assert auto.evaluate() == set(), "everything built: the first evaluation requests nothing"
        yield auto


def test_nothing_changed_no_observation_and_no_run(automation):
    result = automation.tick_sensor(SOURCE_SENSOR)
    assert isinstance(result, dg.SkipReason)
    assert "no change in the 4 image folders" in result.skip_message
    observations = automation.instance.fetch_observations(dg.AssetKey(["tk-parent", "source"]), limit=10)
    assert len(observations.records) == 1, "only the first look's observation"
    assert automation.evaluate() == set()
    assert automation.evaluate() == set()


def test_a_changed_folder_rebuilds_that_image_and_its_descendants_only(automation):
    dockerfile = automation.images / "tk-parent" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# a change\n")
    result = automation.tick_sensor(SOURCE_SENSOR)
    assert [e.asset_key for e in result.asset_events] == [dg.AssetKey(["tk-parent", "source"])]
    requested = automation.evaluate()
    assert requested == chains("tk-parent", "tk-child", "tk-smoke-fail"), "not tk-other"
    # the run made them: the next ticks request nothing more
    automation.record_built("tk-parent", "tk-child", "tk-smoke-fail", version="2")
    assert isinstance(automation.tick_sensor(SOURCE_SENSOR), dg.SkipReason)
    assert automation.evaluate() == set()


def _relock(images: Path, name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_INDEX_URL"}
    result = subprocess.run(
        [str(CLI), "images", "lock", name, "--dir", str(images)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_a_changed_requirements_file_is_not_built_until_it_is_locked_then_only_that_chain(automation):
    requirements = automation.images / "tk-child" / "requirements.txt"
    requirements.write_text(requirements.read_text() + "toolz==0.12.1\n")
    # invalid: the lock no longer matches its requirements.txt; the tick fails naming the file, records
    # nothing, keeps its cursor, and nothing is requested
    cursor = automation.cursors[SOURCE_SENSOR]
    with pytest.raises(SourceChangeError) as caught:
        automation.tick_sensor(SOURCE_SENSOR)
    message = str(caught.value)
    assert "tk-child" in message and "requirements.lock" in message, message
    assert "nothing is built until it is fixed" in message
    assert automation.cursors[SOURCE_SENSOR] == cursor
    assert automation.evaluate() == set()
    # locked: the change is observed, and tk-child (which nothing is built FROM) alone is requested
    _relock(automation.images, "tk-child")
    result = automation.tick_sensor(SOURCE_SENSOR)
    assert [e.asset_key for e in result.asset_events] == [dg.AssetKey(["tk-child", "source"])]
    assert automation.evaluate() == chains("tk-child")


def test_a_change_during_a_build_of_that_image_is_recorded_when_the_build_ends(automation):
    """Recorded while the run builds the image, the change would count as handled by that run's own
    materialization; the sensor waits for the run to end, then records it and the image is rebuilt."""
    building = _run(
        automation.instance,
        "build_images",
        {"thinkube/run-kind": "image-build"},
        asset_selection=frozenset(chains("tk-parent")),
    )
    dockerfile = automation.images / "tk-parent" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# changed during its build\n")
    waiting = automation.tick_sensor(SOURCE_SENSOR)
    assert "recorded once their builds have ended and image_automation has evaluated them: tk-parent" in (
        waiting.skip_reason.skip_message
    )
    assert not waiting.asset_events
    assert automation.evaluate() == set()
    automation.instance.report_run_canceled(building)
    result = automation.tick_sensor(SOURCE_SENSOR)
    assert [e.asset_key for e in result.asset_events] == [dg.AssetKey(["tk-parent", "source"])]
    assert automation.evaluate() == chains("tk-parent", "tk-child", "tk-smoke-fail")


def test_a_change_right_after_a_build_is_recorded_once_the_automation_has_seen_the_build(automation):
    """A build ends, then its folder changes before the automation sensor's next tick: recorded then,
    Dagster would see the source's and the build's updates on the same tick and take the change as handled
    (next test). The sensor records it after a completed tick of the automation sensor, and it is built."""
    automation.record_built("tk-other", version="2")
    spec = automation.images / "tk-other" / "Dockerfile"
    spec.write_text(spec.read_text() + "# changed right after its build\n")
    waiting = automation.tick_sensor(SOURCE_SENSOR)
    assert "image_automation has evaluated them: tk-other" in waiting.skip_reason.skip_message
    assert (
        automation.instance.fetch_observations(dg.AssetKey(["tk-other", "source"]), limit=5)
        .records[0]
        .timestamp
        < automation.instance.get_latest_materialization_event(dg.AssetKey(["tk-other", "build"])).timestamp
    ), "nothing observed after the build yet"
    assert automation.evaluate() == set(), "the tick that sees the build alone requests nothing"
    result = automation.tick_sensor(SOURCE_SENSOR)
    assert [e.asset_key for e in result.asset_events] == [dg.AssetKey(["tk-other", "source"])]
    assert automation.evaluate() == chains("tk-other")


def test_dagster_takes_a_source_change_seen_with_the_build_on_one_tick_as_handled(automation):
    """Why the sensor waits (previous test): Dagster's eager condition, given a build and a later source
    observation on the same evaluation, requests nothing (it orders them by materialization timestamps
    only, and an observation has none). If Dagster starts ordering observations too, this fails and the
    wait can go."""
    automation.record_built("tk-other", version="2")
    automation.instance.report_runless_asset_event(
        dg.AssetObservation(asset_key=["tk-other", "source"], tags={DATA_VERSION_TAG: "sha256:changed"})
    )
    assert automation.evaluate() == set()


def test_an_invalid_field_fails_the_tick_naming_file_and_field(automation):
    spec = automation.images / "tk-other" / "image.yaml"
    spec.write_text(spec.read_text().replace("gpu_required: false", "gpu_required: maybe"))
    with pytest.raises(SourceChangeError) as caught:
        automation.tick_sensor(SOURCE_SENSOR)
    assert f"{spec}: gpu_required:" in str(caught.value)
    assert automation.evaluate() == set()


def test_a_new_image_folder_asks_for_a_reload_and_builds_nothing(automation):
    shutil.copytree(automation.images / "tk-other", automation.images / "tk-new")
    spec = automation.images / "tk-new" / "image.yaml"
    spec.write_text(spec.read_text().replace("name: tk-other", "name: tk-new"))
    with pytest.raises(SourceChangeError, match=r"\(new images tk-new\); reload the code location"):
        automation.tick_sensor(SOURCE_SENSOR)
    assert automation.evaluate() == set()


def test_observations_carry_the_content_hash_as_data_version(automation):
    record = automation.instance.fetch_observations(dg.AssetKey(["tk-child", "source"]), limit=1).records[0]
    observation = record.asset_observation
    assert observation.tags[DATA_VERSION_TAG].startswith("sha256:")
    assert observation.metadata["content_hash"].value == observation.tags[DATA_VERSION_TAG]
    # the UI's Observe button records the same hash
    result = dg.materialize(
        [automation.repository.assets_defs_by_key[dg.AssetKey(["tk-child", "source"])]],
        instance=automation.instance,
        selection=[dg.AssetKey(["tk-child", "source"])],
    )
    [observed] = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert (
        observed.event_specific_data.asset_observation.tags[DATA_VERSION_TAG]
        == observation.tags[DATA_VERSION_TAG]
    )


# -- the nightly schedule --------------------------------------------------------------------------------


def test_automation_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv(NIGHTLY_CRON_ENV, "every night")
    with pytest.raises(ValueError, match=f"\\${NIGHTLY_CRON_ENV}: 'every night' is not a cron schedule"):
        AutomationSettings.from_env()
    monkeypatch.setenv(NIGHTLY_CRON_ENV, "30 3 * * *")
    monkeypatch.setenv(NIGHTLY_TIMEZONE_ENV, "Mars/Olympus")
    with pytest.raises(ValueError, match=NIGHTLY_TIMEZONE_ENV):
        AutomationSettings.from_env()
    monkeypatch.setenv(NIGHTLY_TIMEZONE_ENV, "Europe/Madrid")
    monkeypatch.setenv(AUTOMATION_ENV, "sometimes")
    with pytest.raises(ValueError, match=AUTOMATION_ENV):
        AutomationSettings.from_env()


def _nightly(auto: Automation) -> list[dg.RunRequest]:
    schedule = auto.repository.get_schedule_def(NIGHTLY_SCHEDULE)
    context = dg.build_schedule_context(
        instance=auto.instance, scheduled_execution_time=datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    )
    return list(schedule.evaluate_tick(context).run_requests or [])


def _observe_bases(auto: Automation) -> None:
    job = auto.repository.get_job(OBSERVE_BASES_JOB)
    assert job.execute_in_process(instance=auto.instance).success


@pytest.fixture
def with_registry_base(registry, monkeypatch, tmp_path):
    """The roots build FROM a base named by tag alone in the test registry (THINKUBE_BASE_MIRROR)."""
    repository = f"library/tk-nightly-base-{tmp_path.name[-8:]}".lower()
    digest = push_test_image(registry, repository, "bookworm", content=b"base one\n")
    monkeypatch.setenv("THINKUBE_REGISTRY_URL", registry.url)
    monkeypatch.setenv("THINKUBE_REGISTRY_USERNAME", registry.username)
    monkeypatch.setenv("THINKUBE_REGISTRY_PASSWORD", registry.password)
    monkeypatch.setenv("THINKUBE_BASE_MIRROR", f"{registry.host}/{repository}:bookworm")
    monkeypatch.setenv(NIGHTLY_CRON_ENV, "0 2 * * *")
    return repository, digest


def test_nightly_with_nothing_upstream_changed_costs_the_observations_only(
    with_registry_base, registry, automation
):
    repository, digest = with_registry_base
    auto = Automation(automation.images, automation.instance)  # loads the settings set above
    auto.condition_cursor = automation.condition_cursor
    [request] = _nightly(auto)
    assert request.job_name is None and request.tags["thinkube/trigger"] == "nightly"
    assert auto.repository.get_schedule_def(NIGHTLY_SCHEDULE).job_name == OBSERVE_BASES_JOB
    _observe_bases(auto)  # the first observation of the bases: what the builds were built FROM
    assert auto.evaluate() <= chains("tk-parent", "tk-other", "tk-child", "tk-smoke-fail")
    auto.record_built("tk-parent", "tk-other", "tk-child", "tk-smoke-fail", version="nightly-1")
    auto.evaluate()
    # the next night: the base did not move
    mark = registry.mark()
    [request] = _nightly(auto)
    _observe_bases(auto)
    assert auto.evaluate() == set(), "no build requested"
    writes = [r for r in registry.requests(since=mark) if r.method not in ("GET", "HEAD")]
    assert writes == [], "no tag, no push"
    heads = registry.requests("HEAD", r"/manifests/bookworm", since=mark)
    answered = [h for h in heads if h.status == 200]  # besides the first request's 401 challenge
    assert len(answered) == 2, "one tag resolution per root image (tk-parent, tk-other)"
    record = auto.instance.fetch_observations(dg.AssetKey(["tk-parent", "base"]), limit=1).records[0]
    assert record.asset_observation.tags[DATA_VERSION_TAG] == digest
    # the base moves: both roots and everything built FROM them are requested
    moved = push_test_image(registry, repository, "bookworm", content=b"base two\n")
    assert moved != digest
    _observe_bases(auto)
    assert auto.evaluate() == chains("tk-parent", "tk-other", "tk-child", "tk-smoke-fail")


def test_nightly_full_rebuild_option_forces_a_build_run(with_registry_base, automation, monkeypatch):
    monkeypatch.setenv(NIGHTLY_FULL_ENV, "true")
    auto = Automation(automation.images, automation.instance)
    requests = _nightly(auto)
    assert [r.job_name for r in requests] == [None, "build_images"]
    assert requests[1].tags[FORCE_REBUILD_TAG] == "true"


def test_a_base_pinned_by_digest_stays_and_the_observation_reports_a_newer_one(
    with_registry_base, registry, automation, monkeypatch
):
    repository, digest = with_registry_base
    monkeypatch.setenv("THINKUBE_BASE_MIRROR", f"{registry.host}/{repository}:bookworm@{digest}")
    auto = Automation(automation.images, automation.instance)
    _observe_bases(auto)
    moved = push_test_image(registry, repository, "bookworm", content=b"base three\n")
    _observe_bases(auto)
    record = auto.instance.fetch_observations(dg.AssetKey(["tk-parent", "base"]), limit=1).records[0]
    observation = record.asset_observation
    assert observation.tags[DATA_VERSION_TAG] == digest, "stays on the pinned digest"
    assert observation.metadata["newer_available"].value is True
    assert observation.metadata["tag_digest"].value == moved


# -- the hub's redeploy ----------------------------------------------------------------------------------


def _deploy_requests(result) -> list[dg.RunRequest]:
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []


def test_new_digests_request_one_hub_deploy_and_never_two(automation):
    auto = automation
    first = auto.tick_sensor(REDEPLOY_SENSOR)
    assert _deploy_requests(first) == [], "turning it on notes the digests, no deploy"
    assert isinstance(auto.tick_sensor(REDEPLOY_SENSOR), dg.SkipReason)
    # two images get new digests together: one deploy
    auto.record_built("tk-parent", "tk-child", version="2")
    [request] = _deploy_requests(auto.tick_sensor(REDEPLOY_SENSOR))
    assert request.job_name is None and request.tags["thinkube/run-kind"] == "hub-deploy"
    assert request.tags["thinkube/images"] == "tk-child, tk-parent"
    assert auto.tick_sensor(REDEPLOY_SENSOR).__class__ is dg.SkipReason, "the same digests: nothing new"
    # a rebuild that gives the same digests (a catalog entry made again) deploys nothing
    auto.record_built("tk-other")
    assert _deploy_requests(auto.tick_sensor(REDEPLOY_SENSOR)) == []


def _run(instance: dg.DagsterInstance, job: str, tags: dict[str, str], asset_selection=None) -> dg.DagsterRun:
    """A run created and not started yet (what the sensors read of runs)."""
    return instance.add_run(
        dg.DagsterRun(
            job_name=job,
            run_id=make_new_run_id(),
            tags=tags,
            status=dg.DagsterRunStatus.NOT_STARTED,
            asset_selection=asset_selection,
        )
    )


def test_redeploy_waits_for_running_builds_and_for_a_queued_deploy(automation):
    auto = automation
    auto.tick_sensor(REDEPLOY_SENSOR)
    build = _run(auto.instance, "build_images", {"thinkube/run-kind": "image-build"})
    auto.record_built("tk-parent", version="3")
    waiting = auto.tick_sensor(REDEPLOY_SENSOR)
    assert isinstance(waiting, dg.SkipReason) and "image builds are running" in waiting.skip_message
    auto.instance.report_run_canceled(build)
    # a hub_deploy run that has not started yet will read the catalog: no second one
    queued = _run(auto.instance, "hub_deploy", {"thinkube/run-kind": "hub-deploy"})
    result = auto.tick_sensor(REDEPLOY_SENSOR)
    assert _deploy_requests(result) == []
    assert queued.run_id in result.skip_reason.skip_message
    # once it has run, a later change requests a new one
    auto.instance.report_run_canceled(queued)
    auto.record_built("tk-other", version="3")
    [request] = _deploy_requests(auto.tick_sensor(REDEPLOY_SENSOR))
    assert request.tags["thinkube/images"] == "tk-other"
