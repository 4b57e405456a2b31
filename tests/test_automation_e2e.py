"""From a requirements change to the hub's redeploy, with real builds and Dagster's real daemon.

A real `dagster-webserver` and `dagster-daemon` (tests/fixtures/dagster_server.py) run the code location
over a small images folder with its automation on (THINKUBE_AUTOMATION=running, every sensor ticking
each 5 s): the daemon ticks the source sensor, Dagster's automation condition sensor and the hub redeploy
sensor, and launches the runs they request; the runs build with buildah, push to the test registry and
write the catalog service. The test only changes files and watches what Dagster, the registry and the
catalog report.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.fixtures.dagster_server import TERMINAL_STATUSES, fixture_images, pipeline_env
from tests.fixtures.polling import wait_until
from tests.test_automation import _relock
from thinkube_pipelines.catalog.client import CatalogClient

POLL_S = 5
CHAIN = ["tk-child/build", "tk-child/catalog_entry", "tk-child/published"]
AUTOMATION = {"thinkube/trigger": "automation"}
DEPLOY = {"thinkube/run-kind": "hub-deploy"}


def _settled(dagster) -> bool:
    runs = dagster.runs({"thinkube/run-kind": "image-build"})
    return bool(runs) and all(r["status"] in TERMINAL_STATUSES for r in runs)


@pytest.mark.slow
def test_a_requirements_change_rebuilds_catalogues_and_requests_one_redeploy(
    tmp_path, dagster_server, buildah_storage, registry, registry_debian_base, catalog_server
):
    catalog_service = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog = CatalogClient(catalog_service.base_url)
    images = fixture_images(tmp_path / "images", "tk-parent", "tk-child")
    env = pipeline_env(
        images,
        state_dir=buildah_storage,
        registry=registry,
        base=registry_debian_base,
        catalog_url=catalog_service.base_url,
        catalog_token=catalog_service.token,
        extra={"THINKUBE_AUTOMATION": "running", "THINKUBE_SOURCE_POLL_S": str(POLL_S)},
    )
    # the change, locked beforehand in a scratch copy: it lands in the folder at once, as a commit would
    scratch = fixture_images(tmp_path / "scratch", "tk-parent", "tk-child")
    requirements = scratch / "tk-child" / "requirements.txt"
    requirements.write_text(requirements.read_text() + "toolz==0.12.1\n")
    _relock(scratch, "tk-child")

    dagster = dagster_server(env)
    # first: the sources are observed and everything (missing) is built by the automation, in one run
    wait_until(
        lambda: _settled(dagster) and catalog.get("tk-child"),
        900,
        "the first automated build",
        details=dagster.log,
    )
    [first] = dagster.runs(AUTOMATION)
    assert first["status"] == "SUCCESS", dagster.log()
    before = catalog.get("tk-child")
    time.sleep(3 * POLL_S)  # the redeploy sensor has seen the first digests
    deploys = len(dagster.runs(DEPLOY))

    mark = registry.mark()
    for name in ("requirements.txt", "requirements.lock"):
        shutil.copy(scratch / "tk-child" / name, images / "tk-child" / name)

    def rebuilt():
        runs = dagster.runs(AUTOMATION)
        return len(runs) == 2 and runs[0]["status"] in ("SUCCESS", "FAILURE") and runs[0]

    second = wait_until(rebuilt, 900, "the automated rebuild of tk-child", details=dagster.log)
    assert second["status"] == "SUCCESS", dagster.log()
    assert second["assetSelection"] == CHAIN, "tk-child's chain alone, in one run"
    project = env["THINKUBE_REGISTRY_PROJECT"]
    assert registry.manifest_puts(f"{project}/tk-child", since=mark) >= 1, "built and pushed"
    assert registry.manifest_puts(f"{project}/tk-parent", since=mark) == 0, "the parent was not touched"
    after = catalog.get("tk-child")
    assert after.metadata.digest != before.metadata.digest, "a new digest in the catalog"

    wait_until(lambda: len(dagster.runs(DEPLOY)) > deploys, 120, "a hub_deploy run", details=dagster.log)
    time.sleep(3 * POLL_S)
    requested = dagster.runs(DEPLOY)
    assert len(requested) == deploys + 1, "exactly one hub_deploy run for the new digest"
    assert requested[0]["tags"]["thinkube/images"] == "tk-child"
    assert len(dagster.runs(AUTOMATION)) == 2, "nothing else ran"
