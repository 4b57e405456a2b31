"""The image graph, for real: buildah builds, the CNCF registry with auth, the catalog service over HTTP.

The fixture images (tests/fixtures/images/) are small: a root image with the JupyterHub single-user server
built FROM a Debian base published to the registry here, and a child built FROM the parent's exact digest.
What the registry received is counted in its access log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from tests.fixtures.buildah import base_cache_dir
from tests.fixtures.network import free_port
from thinkube_pipelines.builders.debian_base import publish_debian_base
from thinkube_pipelines.catalog.client import CatalogClient
from thinkube_pipelines.defs.images.assets import FORCE_REBUILD_TAG, image_assets
from thinkube_pipelines.defs.images.automation import AutomationSettings
from thinkube_pipelines.defs.resources import BuildSettings, CatalogResource
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.images.lock import PLATFORM, LockInputs, render_lock, sha256_text
from thinkube_pipelines.registry.client import RegistryClient
from thinkube_pipelines.registry.resource import Registry

FIXTURE_IMAGES = Path(__file__).parent / "fixtures" / "images"
REPO = Path(__file__).resolve().parents[1]
MAX_BUILD_EVENTS = 60


def images_dir(root: Path, *names: str) -> Path:
    target = root / "images"
    for name in names:
        shutil.copytree(FIXTURE_IMAGES / name, target / name)
    return target


@dataclass
class Pipeline:
    """The assets and checks of one images folder, with resources and a Dagster instance that persist
    between materializations (as the embedded instance does between runs). No IO manager is given: the
    assets must not need one."""

    images_dir: Path
    resources: dict
    instance: dg.DagsterInstance
    automation: AutomationSettings | None = None
    """No retries unless a test asks for them (a failed step would wait out the retry delay)."""

    def materialize(
        self, *keys: str, tags: dict | None = None, **resource_overrides
    ) -> dg.ExecuteInProcessResult:
        images = load_image_definitions(self.images_dir)
        selection = [dg.AssetKey(k.split("/")) for k in keys] if keys else None
        return dg.materialize(
            image_assets(images, self.automation),
            selection=selection,
            resources={**self.resources, **resource_overrides},
            instance=self.instance,
            tags=tags,
            raise_on_error=False,
        )

    def registry_client(self) -> RegistryClient:
        return self.resources["registry"].client()

    def catalog_client(self) -> CatalogClient:
        return self.resources["catalog"].client()


def make_pipeline(images: Path, builder, runner, base, registry, catalog, instance=None) -> Pipeline:
    resources = {
        "builder": builder,
        "runner": runner,
        "registry": Registry(url=registry.url, username=registry.username, password=registry.password),
        "catalog": CatalogResource(url=catalog.base_url, token=catalog.token),
        "build_settings": BuildSettings(base_mirror=base),
    }
    return Pipeline(images, resources, instance or dg.DagsterInstance.ephemeral())


def materialization(result: dg.ExecuteInProcessResult, key: str) -> dg.AssetMaterialization:
    [event] = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(key.split("/"))
    ]
    return event


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        "/".join(e.asset_check_evaluation_data.asset_key.path): e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.step_failure_data.error) + str(e.step_failure_data.user_failure_data)
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.STEP_FAILURE
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory, buildah_builder, buildah_runner, registry_debian_base, registry, catalog_server):
    """The parent/child chain materialized once, end to end; later tests look at what it left."""
    tmp = tmp_path_factory.mktemp("chain")
    catalog = catalog_server(f"sqlite:///{tmp / 'catalog.db'}")
    images = images_dir(tmp, "tk-parent", "tk-child")
    # A step no earlier build in the session has made (a nonce), lasting 2 s: the session's buildah storage
    # may hold every other layer already (other tests build these images), and the log test needs a build
    # that takes time and prints lines while it runs.
    dockerfile = images / "tk-parent" / "Dockerfile"
    nonce = uuid.uuid4().hex
    dockerfile.write_text(
        dockerfile.read_text().replace("ENV PATH=", f'RUN echo "chain {nonce}" && sleep 2\nENV PATH=', 1)
    )
    pipeline = make_pipeline(images, buildah_builder, buildah_runner, registry_debian_base, registry, catalog)
    mark = registry.mark()
    result = pipeline.materialize()
    assert result.success, failure_message(result)
    return pipeline, result, mark


def test_chain_is_built_checked_published_and_catalogued(chain, registry_debian_base):
    pipeline, result, _ = chain
    assert {k: c.passed for k, c in check_results(result).items()} == {
        "tk-parent/build": True,
        "tk-child/build": True,
    }

    registry = pipeline.registry_client()
    published = {}
    for name in ("tk-parent", "tk-child"):
        build = materialization(result, f"{name}/build").metadata
        pub = materialization(result, f"{name}/published").metadata
        digest = build["digest"].value
        version_tag = pub["version_tag"].value
        assert build["reused"].value is False
        assert build["build_tag"].value == f"build-{build['build_key'].value}"
        assert registry.digest_of(f"library/{name}", build["build_tag"].value) == digest
        assert pub["tags"].value == [version_tag, "latest"]
        assert registry.digest_of(f"library/{name}", "latest") == digest
        assert registry.digest_of(f"library/{name}", version_tag) == digest
        assert re.fullmatch(r"\d{4}\.\d\d\.\d\d-[0-9a-f]{7}", version_tag)
        assert version_tag.endswith("-" + digest.removeprefix("sha256:")[:7])
        assert pub["size"].value == registry.manifest(f"library/{name}", digest).size > 0
        assert "STEP" in build["log_tail"].value
        facts = registry.image_facts(f"library/{name}", digest)
        assert facts.labels["org.thinkube.build-key"] == build["build_key"].value
        assert facts.labels["org.opencontainers.image.title"] == name
        published[name] = (digest, version_tag, pub["size"].value)

    # The root is built FROM the base's exact digest, the child FROM the parent's.
    assert materialization(result, "tk-parent/build").metadata["base_image"].value == registry_debian_base
    parent_digest = published["tk-parent"][0]
    child_build = materialization(result, "tk-child/build").metadata
    assert child_build["base_image"].value == f"{registry.host}/library/tk-parent@{parent_digest}"
    child_facts = registry.image_facts("library/tk-child", published["tk-child"][0])
    assert child_facts.labels["org.opencontainers.image.base.digest"] == parent_digest
    parent_layers = registry.manifest("library/tk-parent", parent_digest).layer_digests
    child_layers = registry.manifest("library/tk-child", published["tk-child"][0]).layer_digests
    assert child_layers[: len(parent_layers)] == parent_layers and len(child_layers) > len(parent_layers)

    catalog = pipeline.catalog_client()
    for name, (digest, version_tag, size) in published.items():
        item = catalog.get(name)
        assert item is not None and item.is_active
        assert item.metadata.digest == digest == registry.digest_of(f"library/{name}", "latest")
        assert item.metadata.tag == version_tag and item.metadata.image_size == size
        assert item.metadata.registry == registry.host and item.last_built is not None
        entry = materialization(result, f"{name}/catalog_entry").metadata
        assert entry["catalog_item"].value == f"{catalog.base_url}/api/v1/images/{name}"
        assert entry["change"].value == "created"
    assert catalog.get("tk-child").default is True


def test_smoke_check_ran_the_pushed_digest_pulled_from_the_registry(chain, registry):
    _, result, mark = chain
    for name in ("tk-parent", "tk-child"):
        check = check_results(result)[f"{name}/build"]
        digest = materialization(result, f"{name}/build").metadata["digest"].value
        assert check.metadata["digest"].value == digest
        assert check.metadata["imported"].value > 0
        # The runner asked the registry for exactly that digest.
        assert registry.requests("GET", rf"^/v2/library/{name}/manifests/{digest}$", since=mark)


def test_build_log_goes_to_captured_output_and_only_milestones_to_the_event_log(chain):
    pipeline, result, _ = chain
    records = pipeline.instance.all_logs(result.run_id)
    build_records = [r for r in records if r.step_key == "tk_parent"]  # the chain's step
    steps = [r for r in build_records if "STEP 1/" in (r.user_message or "")]
    [done] = [
        r
        for r in build_records
        if r.is_dagster_event
        and r.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and r.dagster_event.asset_key == dg.AssetKey(["tk-parent", "build"])
    ]
    assert steps, "the build's STEP lines should be in the run's log"
    assert done.timestamp - steps[0].timestamp > 1.0, "log lines must arrive during the build, not at its end"
    assert len(build_records) <= MAX_BUILD_EVENTS, f"{len(build_records)} event-log entries for one build"
    assert not any("Collecting " in (r.user_message or "") for r in build_records), "pip output is raw log"


def test_second_materialization_builds_nothing_uploads_nothing_writes_nothing(chain, registry):
    pipeline, first, _ = chain
    items_before = {i.name: i for i in pipeline.catalog_client().list()}
    mark = registry.mark()

    second = pipeline.materialize()
    assert second.success, failure_message(second)
    assert registry.blob_uploads(since=mark) == 0
    assert registry.manifest_puts(since=mark) == 0
    assert registry.requests("POST", since=mark) == []
    for name in ("tk-parent", "tk-child"):
        build = materialization(second, f"{name}/build").metadata
        assert build["reused"].value is True
        assert build["digest"].value == materialization(first, f"{name}/build").metadata["digest"].value
        assert materialization(second, f"{name}/catalog_entry").metadata["change"].value == "unchanged"
        smoke = check_results(second)[f"{name}/build"]
        assert smoke.passed and smoke.metadata["passed_in_run"].value == first.run_id
    assert {i.name: i for i in pipeline.catalog_client().list()} == items_before


def test_forced_rebuild_builds_again_and_never_moves_a_version_tag(chain, registry):
    pipeline, first, _ = chain
    mark = registry.mark()
    forced = pipeline.materialize("tk-parent/build", "tk-parent/published", tags={FORCE_REBUILD_TAG: "true"})
    assert forced.success, failure_message(forced)
    assert materialization(forced, "tk-parent/build").metadata["reused"].value is False
    assert registry.requests("POST", r"^/v2/library/tk-parent/blobs/uploads/$", since=mark), "it built"
    old_version = materialization(first, "tk-parent/published").metadata["version_tag"].value
    old_digest = materialization(first, "tk-parent/build").metadata["digest"].value
    new = materialization(forced, "tk-parent/published").metadata
    client = pipeline.registry_client()
    assert client.digest_of("library/tk-parent", old_version) == old_digest
    assert client.digest_of("library/tk-parent", new["version_tag"].value) == new["digest"].value
    assert registry.manifest_puts("library/tk-parent", old_version, since=mark) == 0


def test_child_chain_alone_in_a_new_process_reads_the_parent_from_the_instance(
    tmp_path, chain, registry, registry_debian_base, buildah_storage, catalog_server
):
    """Parent chain in one process; then, with only the instance database kept under the Dagster home,
    the child's chain in another process builds FROM the parent's exact digest. Then a run that failed at
    its catalog step is re-executed from the failure in a third process."""
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    home = tmp_path / "dagster-home"
    home.mkdir()
    images = images_dir(tmp_path, "tk-parent", "tk-child")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(home),
        "THINKUBE_IMAGES_DIR": str(images),
        "THINKUBE_STATE_DIR": str(buildah_storage),
        "THINKUBE_REGISTRY_URL": registry.url,
        "THINKUBE_REGISTRY_USERNAME": registry.username,
        "THINKUBE_REGISTRY_PASSWORD": registry.password,
        "THINKUBE_BASE_MIRROR": registry_debian_base,
        "THINKUBE_CATALOG_URL": catalog.base_url,
        "THINKUBE_CATALOG_TOKEN": catalog.token,
    }

    def run(code: str, **extra: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", RUNNER + code],
            cwd=REPO,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def keep_only_the_database() -> None:
        for path in home.iterdir():
            if path.name != "history":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        assert {p.name for p in home.iterdir()} <= {"history"}

    parent = run("report(materialize('tk-parent', force=True))")
    assert parent["success"], parent
    keep_only_the_database()
    child = run("report(materialize('tk-child', force=True))")
    assert child["success"], child
    assert child["built"]["tk-child"]["base_image"] == parent["built"]["tk-parent"]["image"]
    assert child["built"]["tk-child"]["reused"] is False

    keep_only_the_database()
    catalog_down = f"http://127.0.0.1:{free_port()}"
    failed = run("report(materialize('tk-child'))", THINKUBE_CATALOG_URL=catalog_down)
    assert not failed["success"] and failed["failed_steps"] == ["tk_child"]
    assert (
        "tk-child/catalog_entry" not in failed["materialized"]
        and "tk-child/published" in failed["materialized"]
    )
    keep_only_the_database()
    mark = registry.mark()
    again = run(f"report(reexecute_from_failure({failed['run_id']!r}))")
    assert again["success"], again
    assert "tk-child/catalog_entry" in again["materialized"]
    # The chain's step runs again whole, and what it had made costs nothing: the build key is reused.
    assert again["built"]["tk-child"]["reused"] is True
    assert registry.blob_uploads(since=mark) == 0 and registry.manifest_puts(since=mark) == 0
    assert (
        CatalogClient(catalog.base_url).get("tk-child").metadata.digest
        == child["built"]["tk-child"]["digest"]
    )


RUNNER = """
import json
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from thinkube_pipelines.definitions import defs
from thinkube_pipelines.defs.images.keys import STAGES

instance = dg.DagsterInstance.get()
job = defs.resolve_implicit_global_asset_job_def()

def materialize(name, force=False):
    return job.execute_in_process(
        instance=instance, raise_on_error=False,
        asset_selection=[dg.AssetKey([name, s]) for s in STAGES],
        tags={'thinkube/force-rebuild': 'true'} if force else None,
    )

def reexecute_from_failure(run_id):
    recon = ReconstructableRepository.for_module('thinkube_pipelines.definitions', 'defs', '.')
    with dg.execute_job(
        recon.get_reconstructable_job(job.name), instance=instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(run_id, instance),
    ) as result:
        return result

def materialized(result):
    return ['/'.join(e.asset_key.path) for e in result.get_asset_materialization_events()]

def report(result):
    built = {}
    for event in result.get_asset_materialization_events():
        key = event.asset_key.path
        if key[1] == 'build':
            built[key[0]] = {k: v.value for k, v in event.materialization.metadata.items() if k != 'log_tail'}
    steps = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS]
    failed = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    print(json.dumps({'success': result.success, 'run_id': result.run_id, 'built': built,
                      'executed_steps': steps, 'failed_steps': failed,
                      'materialized': materialized(result)}, default=str))
"""


@pytest.mark.parametrize("failure", ["wrong password", "registry down"])
def test_published_fails_naming_the_registry_and_writes_no_catalog_entry(
    chain, catalog_server, tmp_path, registry, failure
):
    pipeline, _, _ = chain
    fresh_catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    url = registry.url if failure == "wrong password" else f"http://127.0.0.1:{free_port()}"
    bad_registry = Registry(url=url, username=registry.username, password="not-the-password")
    result = pipeline.materialize(
        "tk-parent/published",
        "tk-parent/catalog_entry",
        registry=bad_registry,
        catalog=CatalogResource(url=fresh_catalog.base_url, token=fresh_catalog.token),
    )
    assert not result.success
    message = failure_message(result)
    assert f"registry {url}" in message
    assert "not-the-password" not in message
    assert CatalogClient(fresh_catalog.base_url).list() == []
    fresh_catalog.stop()


def test_broken_dockerfile_fails_build_naming_the_step(
    tmp_path, buildah_builder, buildah_runner, registry_debian_base, registry, catalog_server
):
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    pipeline = make_pipeline(
        images_dir(tmp_path, "tk-broken"),
        buildah_builder,
        buildah_runner,
        registry_debian_base,
        registry,
        catalog,
    )
    result = pipeline.materialize()
    assert not result.success
    message = failure_message(result)
    assert re.search(r'at STEP 3/\d+: RUN echo "about to fail" && exit 3', message), message
    assert "exit status 3" in message, "the log tail should come with the failing step"
    assert pipeline.registry_client().digest_of("library/tk-broken", "latest") is None
    assert CatalogClient(catalog.base_url).list() == []
    catalog.stop()


def test_a_failed_build_is_retried_per_the_policy_and_does_not_stop_the_other_images(
    tmp_path, buildah_builder, buildah_runner, registry_debian_base, registry, catalog_server
):
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    pipeline = make_pipeline(
        images_dir(tmp_path, "tk-broken", "tk-parent"),
        buildah_builder,
        buildah_runner,
        registry_debian_base,
        registry,
        catalog,
    )
    pipeline.automation = AutomationSettings(retries=1, retry_delay_s=0)
    result = pipeline.materialize()
    assert not result.success
    restarts = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_RESTARTED]
    assert restarts == ["tk_broken"], "the failed build tried once more, the good one ran once"
    failures = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures == ["tk_broken"]
    assert [i.name for i in CatalogClient(catalog.base_url).list()] == ["tk-parent"], "the other image"
    catalog.stop()


def test_failed_smoke_check_publishes_nothing(
    tmp_path, buildah_builder, buildah_runner, registry_debian_base, registry, catalog_server
):
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    images = images_dir(tmp_path, "tk-parent", "tk-smoke-fail")
    pipeline = make_pipeline(images, buildah_builder, buildah_runner, registry_debian_base, registry, catalog)
    result = pipeline.materialize()
    assert not result.success
    checks = check_results(result)
    assert checks["tk-parent/build"].passed
    smoke = checks["tk-smoke-fail/build"]
    assert not smoke.passed and "import six" in smoke.description
    materialized = {"/".join(e.asset_key.path) for e in result.get_asset_materialization_events()}
    assert "tk-smoke-fail/build" in materialized
    assert not {"tk-smoke-fail/published", "tk-smoke-fail/catalog_entry"} & materialized
    assert pipeline.registry_client().digest_of("library/tk-smoke-fail", "latest") is None
    assert [i.name for i in CatalogClient(catalog.base_url).list()] == ["tk-parent"]
    catalog.stop()


def test_the_whole_chain_against_a_token_authenticated_registry(
    tmp_path, buildah_builder, buildah_runner, bearer_registry, catalog_server
):
    """Harbor's scheme: the registry answers 401 with a Bearer challenge and a token service issues tokens."""

    server = bearer_registry.server
    client = RegistryClient(server.url, server.username, server.password)
    base_digest = publish_debian_base(client, "library/thinkube-base", cache_dir=base_cache_dir())
    base = f"{server.host}/library/thinkube-base@{base_digest}"
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    pipeline = make_pipeline(
        images_dir(tmp_path, "tk-parent"), buildah_builder, buildah_runner, base, server, catalog
    )
    result = pipeline.materialize()
    assert result.success, failure_message(result)
    digest = materialization(result, "tk-parent/build").metadata["digest"].value
    assert client.digest_of("library/tk-parent", "latest") == digest
    assert CatalogClient(catalog.base_url).get("tk-parent").metadata.digest == digest


def offline_images(root: Path) -> Path:
    """A parent and a child that build without the network (Docker's BuildKit cannot mount this machine's
    CA bundle into RUN steps, which a TLS-intercepting proxy would need) and pass the smoke check."""
    images = root / "images"
    files = {
        "tk-offline": (
            "name: tk-offline\ndisplay_name: Offline\ndescription: No downloads.\ngpu_required: false\n"
            "cpu_limit: 1\nmem_limit: 1G\nbase:\n  image: docker.io/library/python:3.11-slim-bookworm@sha256:"
            + "2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91\n  python: '3.11'\n",
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN ln -s /usr/bin/python3 /usr/local/bin/python"
            " && printf '#!/bin/sh\\necho singleuser\\n' > /usr/local/bin/jupyterhub-singleuser"
            " && chmod 0755 /usr/local/bin/jupyterhub-singleuser\n",
            (),
        ),
        "tk-offline-child": (
            "name: tk-offline-child\ndisplay_name: Offline child\ndescription: Its parent's digest.\n"
            "gpu_required: false\ncpu_limit: 1\nmem_limit: 1G\nparent: tk-offline\n",
            "ARG PARENT_IMAGE\nFROM ${PARENT_IMAGE}\nRUN echo child > /child.txt\n",
            ("tk-offline",),
        ),
    }
    for name, (spec, dockerfile, parents) in files.items():
        folder = images / name
        folder.mkdir(parents=True)
        (folder / "image.yaml").write_text(spec)
        (folder / "Dockerfile").write_text(dockerfile)
        (folder / "requirements.txt").write_text("")
        locks = {p: (images / p / "requirements.lock").read_bytes() for p in parents}
        inputs = LockInputs(
            python="3.11",
            platform=PLATFORM,
            requirements=sha256_text(b""),
            ancestors=tuple((p, sha256_text(lock)) for p, lock in locks.items()),
        )
        (folder / "requirements.lock").write_text(render_lock(inputs, ""))
    return images


def test_the_same_assets_build_and_check_with_the_docker_engine(
    tmp_path, docker_engine, registry_debian_base, registry, catalog_server
):
    """The seam: the assets do not know which builder and runner they got."""
    from thinkube_pipelines.builders.docker import DockerBuilder, DockerRunner

    engine = {"docker": docker_engine.client, "docker_host": docker_engine.host}
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    pipeline = make_pipeline(
        offline_images(tmp_path),
        DockerBuilder(**engine),
        DockerRunner(**engine),
        registry_debian_base,
        registry,
        catalog,
    )
    result = pipeline.materialize()
    assert result.success, failure_message(result)
    assert {k: c.passed for k, c in check_results(result).items()} == {
        "tk-offline/build": True,
        "tk-offline-child/build": True,
    }
    client = pipeline.registry_client()
    parent = materialization(result, "tk-offline/build").metadata
    child = materialization(result, "tk-offline-child/build").metadata
    assert parent["reused"].value is False and parent["base_image"].value == registry_debian_base
    assert child["base_image"].value == f"{registry.host}/library/tk-offline@{parent['digest'].value}"
    assert client.digest_of("library/tk-offline-child", "latest") == child["digest"].value
    facts = client.image_facts("library/tk-offline-child", child["digest"].value)
    assert facts.labels["org.thinkube.build-key"] == child["build_key"].value
    assert CatalogClient(catalog.base_url).get("tk-offline-child").metadata.digest == child["digest"].value
