"""The image graph, for real: buildah builds, the CNCF registry with auth, the catalog service over HTTP.

The fixture images (tests/fixtures/images/) are small: a root image with the JupyterHub single-user server
built FROM a Debian base made here, and a child built FROM the parent's exact digest.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from tests.fixtures.network import free_port
from thinkube_pipelines.builders.buildah import BuildahBuilder
from thinkube_pipelines.catalog.client import CatalogClient
from thinkube_pipelines.defs.images.assets import image_assets
from thinkube_pipelines.defs.images.checks import smoke_checks
from thinkube_pipelines.defs.resources import CatalogResource
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.registry.client import RegistryClient
from thinkube_pipelines.registry.resource import Registry

FIXTURE_IMAGES = Path(__file__).parent / "fixtures" / "images"


def images_dir(root: Path, *names: str) -> Path:
    target = root / "images"
    for name in names:
        shutil.copytree(FIXTURE_IMAGES / name, target / name)
    return target


@dataclass
class Pipeline:
    """The assets and checks of one images folder, with resources and a Dagster instance that persist
    between materializations (as the embedded instance does between runs)."""

    images_dir: Path
    resources: dict
    instance: dg.DagsterInstance

    def materialize(self, *keys: str, **resource_overrides) -> dg.ExecuteInProcessResult:
        images = load_image_definitions(self.images_dir)
        assets = image_assets(images)
        selection = [dg.AssetKey(k.split("/")) for k in keys] if keys else None
        return dg.materialize(
            [*assets, *smoke_checks(images)],
            selection=selection,
            resources={**self.resources, **resource_overrides},
            instance=self.instance,
            raise_on_error=False,
        )

    def registry_client(self) -> RegistryClient:
        return self.resources["registry"].client()

    def catalog_client(self) -> CatalogClient:
        return self.resources["catalog"].client()


def make_pipeline(tmp: Path, images: Path, builder, base, registry, catalog) -> Pipeline:
    resources = {
        "builder": BuildahBuilder(**{**builder.model_dump(), "base_mirror": base}),
        "registry": Registry(url=registry.url, username=registry.username, password=registry.password),
        "catalog": CatalogResource(url=catalog.base_url, token=catalog.token),
        "io_manager": dg.FilesystemIOManager(base_dir=str(tmp / "storage")),
    }
    return Pipeline(images, resources, dg.DagsterInstance.ephemeral())


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
def chain(tmp_path_factory, buildah_builder, debian_base, registry, catalog_server):
    """The parent/child chain materialized once, end to end; later tests look at what it left."""
    tmp = tmp_path_factory.mktemp("chain")
    catalog = catalog_server(f"sqlite:///{tmp / 'catalog.db'}")
    pipeline = make_pipeline(
        tmp, images_dir(tmp, "tk-parent", "tk-child"), buildah_builder, debian_base, registry, catalog
    )
    result = pipeline.materialize()
    assert result.success, failure_message(result)
    return pipeline, result


def test_chain_is_built_checked_published_and_catalogued(chain):
    pipeline, result = chain
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
        version_tag = pub["tags"].value[0]
        assert pub["tags"].value == [version_tag, "latest"]
        assert registry.digest_of(f"library/{name}", "latest") == digest
        assert registry.digest_of(f"library/{name}", version_tag) == digest
        assert version_tag.endswith("-" + build["source_hash"].value[:7])
        assert pub["size"].value == registry.manifest(f"library/{name}", digest).size > 0
        for key in (
            "image",
            "tags",
            "size",
            "base_image",
            "base_digest",
            "source_hash",
            "build_duration_s",
            "log_tail",
        ):
            assert key in build, key
        assert "STEP" in build["log_tail"].value
        published[name] = (digest, version_tag, pub["size"].value)

    # The child is built FROM the parent's exact digest, and its layers start with the parent's.
    parent_digest = published["tk-parent"][0]
    child_build = materialization(result, "tk-child/build").metadata
    assert child_build["base_image"].value == f"{registry.host}/library/tk-parent@{parent_digest}"
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


def test_build_log_lines_reach_the_run_as_they_happen(chain):
    pipeline, result = chain
    records = pipeline.instance.all_logs(result.run_id)
    steps = [r for r in records if r.step_key == "tk_parent__build" and "STEP 1/" in (r.user_message or "")]
    [done] = [
        r
        for r in records
        if r.is_dagster_event
        and r.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and r.dagster_event.asset_key == dg.AssetKey(["tk-parent", "build"])
    ]
    assert steps, "the build's STEP lines should be in the run's log"
    assert done.timestamp - steps[0].timestamp > 1.0, "log lines must arrive during the build, not at its end"


def test_second_materialization_pushes_nothing_and_changes_nothing(chain, registry):
    pipeline, first = chain
    items_before = {i.name: i for i in pipeline.catalog_client().list()}
    blobs_before = registry.blob_count()

    second = pipeline.materialize()
    assert second.success, failure_message(second)
    assert registry.blob_count() == blobs_before
    for name in ("tk-parent", "tk-child"):
        digest = materialization(first, f"{name}/build").metadata["digest"].value
        assert materialization(second, f"{name}/build").metadata["digest"].value == digest
        assert materialization(second, f"{name}/catalog_entry").metadata["change"].value == "unchanged"
    assert {i.name: i for i in pipeline.catalog_client().list()} == items_before


@pytest.mark.parametrize("failure", ["wrong password", "registry down"])
def test_published_fails_naming_the_registry_and_writes_no_catalog_entry(
    chain, catalog_server, tmp_path, registry, failure
):
    pipeline, _ = chain
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
    tmp_path, buildah_builder, debian_base, registry, catalog_server
):
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    pipeline = make_pipeline(
        tmp_path, images_dir(tmp_path, "tk-broken"), buildah_builder, debian_base, registry, catalog
    )
    result = pipeline.materialize()
    assert not result.success
    message = failure_message(result)
    assert re.search(r'at STEP 3/\d+: RUN echo "about to fail" && exit 3', message), message
    assert "exit status 3" in message, "the log tail should come with the failing step"
    assert pipeline.registry_client().digest_of("library/tk-broken", "latest") is None
    assert CatalogClient(catalog.base_url).list() == []
    catalog.stop()


def test_failed_smoke_check_publishes_nothing(
    tmp_path, buildah_builder, debian_base, registry, catalog_server
):
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    images = images_dir(tmp_path, "tk-parent", "tk-smoke-fail")
    pipeline = make_pipeline(tmp_path, images, buildah_builder, debian_base, registry, catalog)
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
