"""Where `catalog_entry` registers an image (THINKUBE_REGISTRATION): this project's catalog service,
thinkube-control's discovery ConfigMap written through the Kubernetes API (the simulator), or both.

Each test materializes the real `<image>/catalog_entry` step of the real image graph (images/), with the
resources `resources_for_environment("local")` picks from the environment. Its upstream, `published`, is
recorded in the instance the way the publish step records it (`PublishedImage.metadata()`), so no image
is built: `catalog_entry` reads nothing else (records.py) and talks only to its targets.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from kubernetes import client as k8s

from tests.test_thinkube_control_registration import IMAGES_DIR, PROJECT, REGISTRY, built, digest_of
from tests.thinkube_control import discovery, upstream
from thinkube_pipelines.catalog.client import CatalogClient
from thinkube_pipelines.defs.images.assets import image_assets
from thinkube_pipelines.defs.images.records import PublishedImage
from thinkube_pipelines.defs.images.thinkube_control import (
    MANAGED_BY_LABEL,
    MANIFEST_KEY,
    PublishedFacts,
    configmap_name,
    manifest_configmap,
)
from thinkube_pipelines.defs.resources import (
    REGISTRATION_ENV,
    THINKUBE_CONTROL_NAMESPACE_ENV,
    CatalogResource,
    resources_for_environment,
)
from thinkube_pipelines.images import ImageSet, load_image_definitions
from thinkube_pipelines.kubernetes import cluster as cluster_module
from thinkube_pipelines.kubernetes.cluster import KubernetesCluster, KubernetesError, ensure_config_map

NAMES = ("jupyter-base", "jupyter-ml-gpu")
SIM_TOKEN = "simulator-admin-token"  # tests/fixtures/kubernetes.py's kubeconfig user


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return load_image_definitions(IMAGES_DIR)


@pytest.fixture
def namespace(k8s_core: k8s.CoreV1Api) -> Iterator[str]:
    """A namespace of its own per test (the simulator lives for the session)."""
    name = f"tc-{uuid.uuid4().hex[:8]}"
    k8s_core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    k8s_core.delete_namespace(name)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, k8s_cluster) -> pytest.MonkeyPatch:
    """The local environment's settings, the registry anonymous (never reached by this step) and the
    cluster the simulator's kubeconfig names; no THINKUBE_REGISTRATION (the default) until a test sets it."""
    for name in [n for n in os.environ if n.startswith("THINKUBE_") and n != upstream.GIT_DIR_ENV]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config of the machine's
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("THINKUBE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("THINKUBE_REGISTRY_ANONYMOUS", "true")
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    return monkeypatch


def published(name: str, build: int = 1) -> PublishedImage:
    digest, created, version = built(name, build)
    return PublishedImage(
        image_name=name,
        image=f"{REGISTRY}/{PROJECT}/{name}@{digest}",
        registry=REGISTRY,
        repository=f"{PROJECT}/{name}",
        digest=digest,
        version_tag=version,
        tags=[version, "latest"],
        size=1_000_000 + build,
        created=created,
    )


def facts(record: PublishedImage) -> PublishedFacts:
    """What the mapping's own tests give it for such a record: the moving tag is the row's tag."""
    return PublishedFacts(
        registry=record.registry,
        repository=record.repository,
        harbor_project=PROJECT,
        digest=record.digest,
        version_tag=record.version_tag,
        listed_tag="latest",
        size=record.size,
        built_at=record.created,
    )


def rebuild_facts() -> PublishedFacts:
    return facts(published("jupyter-base", 2))


def record_published(instance: dg.DagsterInstance, *names: str, build: int = 1) -> None:
    """`<name>/published` as the publish step leaves it in the instance."""
    for name in names:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=dg.AssetKey([name, "published"]), metadata=published(name, build).metadata()
            )
        )


def register(
    images: ImageSet, *names: str, resources: dict | None = None
) -> tuple[dg.DagsterInstance, dg.ExecuteInProcessResult]:
    """A new instance with `<name>/published` recorded for `names` (build 1), and the run of their
    `catalog_entry` steps in it."""
    instance = dg.DagsterInstance.ephemeral()
    record_published(instance, *names)
    return instance, materialize_entries(images, instance, *names, resources=resources)


def target(env: pytest.MonkeyPatch, namespace: str, registration: str = "thinkube-control") -> None:
    """THINKUBE_REGISTRATION, and the namespace of thinkube-control's ConfigMaps."""
    env.setenv(REGISTRATION_ENV, registration)
    env.setenv(THINKUBE_CONTROL_NAMESPACE_ENV, namespace)


def materialize_entries(
    images: ImageSet, instance: dg.DagsterInstance, *names: str, resources: dict | None = None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        image_assets(images),
        selection=[dg.AssetKey([name, "catalog_entry"]) for name in names],
        resources=resources or resources_for_environment("local"),
        instance=instance,
        raise_on_error=False,
    )


def entry_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    [event] = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey([name, "catalog_entry"])
    ]
    return {key: value.value for key, value in event.metadata.items()}


def failure_output(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.event_specific_data) + (e.message or "")
        for e in result.all_events
        if e.is_failure or e.event_type == dg.DagsterEventType.RUN_FAILURE
    )


def configmap(k8s_core: k8s.CoreV1Api, namespace: str, name: str) -> dict:
    return json.loads(
        k8s_core.read_namespaced_config_map(configmap_name(name), namespace, _preload_content=False).data
    )


def labelled_configmaps(k8s_core: k8s.CoreV1Api) -> tuple[list[dict], str]:
    """What thinkube-control lists (every namespace, by its label), and the list's resourceVersion: the
    server's write counter, which moves with every write to any object."""
    answer = json.loads(
        k8s_core.list_config_map_for_all_namespaces(
            label_selector="thinkube.io/image-manifest=true", _preload_content=False
        ).data
    )
    return answer["items"], answer["metadata"]["resourceVersion"]


def global_resource_version(k8s_core: k8s.CoreV1Api) -> str:
    return json.loads(k8s_core.list_namespace(_preload_content=False).data)["metadata"]["resourceVersion"]


# --- thinkube-control --------------------------------------------------------------------------------


def test_thinkube_control_target_writes_the_discovery_configmap(
    env, images, k8s_core, namespace, k8s_cluster
):
    target(env, namespace)
    # No catalog token and no catalog service: the catalog is not a target, so nothing asks for them.
    _, result = register(images, *NAMES)

    assert result.success, failure_output(result)
    for name in NAMES:
        stored = configmap(k8s_core, namespace, name)
        wanted = manifest_configmap(images[name], facts(published(name)), namespace=namespace).to_dict()
        assert stored["metadata"]["labels"] == wanted["metadata"]["labels"]
        assert stored["metadata"]["labels"]["thinkube.io/image-manifest"] == "true"
        assert stored["metadata"]["labels"]["thinkube.io/category"] == "user"
        assert stored["metadata"]["annotations"] == wanted["metadata"]["annotations"]
        assert stored["data"] == wanted["data"]
        manifest = json.loads(stored["data"][MANIFEST_KEY])
        assert manifest["manifest_version"] == "1.0"
        [entry] = manifest["images"]
        assert entry["metadata"]["purpose"] == "jupyter"
        assert entry["metadata"]["digest"] == entry["digest"] == digest_of(name, 1)
        assert entry["metadata"]["display_name"] == images[name].spec.display_name
        assert entry["tag"] == "latest" and entry["harbor_project"] == PROJECT
        meta = entry_metadata(result, name)
        assert meta["registration"] == ["thinkube-control"]
        assert meta["thinkube_control_configmap"] == f"{namespace}/{configmap_name(name)}"
        assert meta["thinkube_control_change"] == meta["change"] == "created"
        assert "catalog_item" not in meta and "catalog_change" not in meta

    # What thinkube-control's discovery reads from the cluster (restated rules, tests/thinkube_control).
    items, _ = labelled_configmaps(k8s_core)
    ours = [cm for cm in items if cm["metadata"]["namespace"] == namespace]
    table = discovery.Table()
    table.sync(discovery.discover(ours))
    listed = discovery.jupyter_list(table)
    assert [i["name"] for i in listed] == sorted(NAMES, key=configmap_name)
    assert {i["name"]: i["display_name"] for i in listed} == {n: images[n].spec.display_name for n in NAMES}
    rows = {row.name: row for row in table.rows}
    for name in NAMES:
        assert rows[name].image_metadata["image"] == f"{REGISTRY}/{PROJECT}/{name}@{digest_of(name, 1)}"

    logs = "\n".join(e.message or "" for e in result.all_events)
    assert SIM_TOKEN not in logs and SIM_TOKEN not in json.dumps([entry_metadata(result, n) for n in NAMES])


def test_an_unchanged_image_writes_nothing_and_a_rebuild_updates_in_place(env, images, k8s_core, namespace):
    target(env, namespace)
    instance, first_run = register(images, "jupyter-base")
    assert first_run.success
    first = configmap(k8s_core, namespace, "jupyter-base")
    before = global_resource_version(k8s_core)

    again = materialize_entries(images, instance, "jupyter-base")

    assert again.success, failure_output(again)
    assert entry_metadata(again, "jupyter-base")["change"] == "unchanged"
    assert (
        configmap(k8s_core, namespace, "jupyter-base")["metadata"]["resourceVersion"]
        == (first["metadata"]["resourceVersion"])
    )
    assert global_resource_version(k8s_core) == before, "an unchanged image must not write anything"

    # Someone else's label on our object is kept; a rebuild replaces the manifest in the same object.
    k8s_core.patch_namespaced_config_map(
        configmap_name("jupyter-base"), namespace, {"metadata": {"labels": {"team": "ml"}}}
    )
    record_published(instance, "jupyter-base", build=2)
    rebuilt = materialize_entries(images, instance, "jupyter-base")

    assert rebuilt.success, failure_output(rebuilt)
    assert entry_metadata(rebuilt, "jupyter-base")["thinkube_control_change"] == "updated"
    stored = configmap(k8s_core, namespace, "jupyter-base")
    assert stored["metadata"]["uid"] == first["metadata"]["uid"]
    assert stored["metadata"]["labels"]["team"] == "ml"
    wanted = manifest_configmap(
        images["jupyter-base"], facts(published("jupyter-base", 2)), namespace=namespace
    )
    assert stored["data"] == wanted.to_dict()["data"]
    assert json.loads(stored["data"][MANIFEST_KEY])["images"][0]["digest"] == digest_of("jupyter-base", 2)


def test_both_targets_register_in_the_catalog_and_in_thinkube_control(
    env, images, k8s_core, namespace, catalog_server, tmp_path
):
    catalog = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    target(env, namespace, "both")
    env.setenv("THINKUBE_CATALOG_URL", catalog.base_url)
    env.setenv("THINKUBE_CATALOG_TOKEN", catalog.token)
    instance, result = register(images, "jupyter-ml-gpu")

    assert result.success, failure_output(result)
    meta = entry_metadata(result, "jupyter-ml-gpu")
    assert meta["registration"] == ["catalog", "thinkube-control"]
    assert meta["catalog_change"] == meta["thinkube_control_change"] == meta["change"] == "created"
    item = CatalogClient(catalog.base_url).get("jupyter-ml-gpu")
    assert item is not None and item.metadata.digest == digest_of("jupyter-ml-gpu", 1)
    entry = json.loads(configmap(k8s_core, namespace, "jupyter-ml-gpu")["data"][MANIFEST_KEY])["images"][0]
    assert entry["digest"] == item.metadata.digest

    before = global_resource_version(k8s_core)
    again = materialize_entries(images, instance, "jupyter-ml-gpu")
    assert again.success, failure_output(again)
    meta = entry_metadata(again, "jupyter-ml-gpu")
    assert meta["catalog_change"] == meta["thinkube_control_change"] == meta["change"] == "unchanged"
    assert global_resource_version(k8s_core) == before
    catalog.stop()


def test_a_missing_namespace_fails_naming_the_namespace_and_the_cluster(env, images, k8s_core, k8s_cluster):
    target(env, "no-such-namespace")
    _, result = register(images, "jupyter-base")

    assert not result.success
    output = failure_output(result)
    assert 'namespace "no-such-namespace" not found' in output
    assert f'cluster "sim" ({k8s_cluster.url})' in output
    assert THINKUBE_CONTROL_NAMESPACE_ENV in output
    assert SIM_TOKEN not in output
    assert not result.get_asset_materialization_events()


# --- the setting --------------------------------------------------------------------------------------


def test_registration_defaults_to_the_catalog_and_needs_no_cluster(env):
    env.delenv("KUBECONFIG")
    catalog = resources_for_environment("local")["catalog"]
    assert catalog.registration == "catalog" and catalog.thinkube_control is None
    env.setenv(REGISTRATION_ENV, "thinkube-control")
    catalog = resources_for_environment("local")["catalog"]
    assert catalog.token is None, "the catalog's token is not needed when the catalog is not a target"
    assert catalog.thinkube_control is not None and catalog.thinkube_control.namespace == "thinkube-control"


def test_an_invalid_registration_is_named_before_any_work(env, images):
    others = {k: v for k, v in resources_for_environment("local").items() if k != "catalog"}
    env.setenv(REGISTRATION_ENV, "harbor")
    with pytest.raises(ValueError, match="THINKUBE_REGISTRATION='harbor'"):
        resources_for_environment("local")
    with pytest.raises(ValueError, match="THINKUBE_REGISTRATION='harbor'"):
        resources_for_environment("cluster")
    # Configured directly (not through the environment): the run stops before its step starts.
    resources = {**others, "catalog": CatalogResource(registration="harbor")}
    _, result = register(images, "jupyter-base", resources=resources)
    assert not result.success
    assert "THINKUBE_REGISTRATION='harbor'" in failure_output(result)
    assert not any(e.event_type == dg.DagsterEventType.STEP_START for e in result.all_events)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        (THINKUBE_CONTROL_NAMESPACE_ENV, "Thinkube_Control", "THINKUBE_CONTROL_NAMESPACE='Thinkube_Control'"),
        ("KUBECONFIG", "/nonexistent/kubeconfig", "kubeconfig /nonexistent/kubeconfig does not exist"),
        ("KUBECONFIG", "", "not in a pod: set KUBECONFIG"),
    ],
)
def test_a_wrong_thinkube_control_setting_stops_the_run_before_its_steps(env, images, setting, value, named):
    env.setenv(REGISTRATION_ENV, "thinkube-control")
    env.setenv(setting, value)
    _, result = register(images, "jupyter-base")

    assert not result.success
    assert named in failure_output(result)
    assert not any(e.event_type == dg.DagsterEventType.STEP_START for e in result.all_events)


# --- the write itself ---------------------------------------------------------------------------------


def test_a_concurrent_write_gets_409_and_is_retried_from_a_fresh_read(
    images, k8s_api, k8s_core, namespace, k8s_cluster, monkeypatch
):
    cluster = KubernetesCluster(kubeconfig=str(k8s_cluster.kubeconfig), namespace=namespace)
    body = manifest_configmap(images["jupyter-base"], facts(published("jupyter-base")), namespace=namespace)
    assert cluster.ensure_config_map(body.to_dict()) == "created"

    replace = k8s.CoreV1Api.replace_namespaced_config_map
    calls = []

    def racing_replace(self, name, ns, desired, **kwargs):
        calls.append(desired["metadata"]["resourceVersion"])
        if len(calls) == 1:  # another writer gets in between our read and our write
            k8s_core.patch_namespaced_config_map(name, ns, {"metadata": {"annotations": {"other": "writer"}}})
        return replace(self, name, ns, desired, **kwargs)

    monkeypatch.setattr(k8s.CoreV1Api, "replace_namespaced_config_map", racing_replace)
    rebuilt = manifest_configmap(
        images["jupyter-base"], facts(published("jupyter-base", 2)), namespace=namespace
    )

    assert cluster.ensure_config_map(rebuilt.to_dict()) == "updated"

    assert len(calls) == 2 and calls[0] != calls[1], "the stale write was refused (409) and retried"
    stored = configmap(k8s_core, namespace, "jupyter-base")
    assert stored["metadata"]["annotations"]["other"] == "writer"
    assert stored["data"] == rebuilt.to_dict()["data"]


def test_a_configmap_someone_else_owns_is_never_overwritten(
    images, k8s_api, k8s_core, namespace, k8s_cluster
):
    name = configmap_name("jupyter-base")
    k8s_core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": name, "labels": {MANAGED_BY_LABEL: "helm"}}, "data": {"keep": "me"}},
    )
    body = manifest_configmap(images["jupyter-base"], facts(published("jupyter-base")), namespace=namespace)

    with pytest.raises(KubernetesError, match="not managed by thinkube-pipelines"):
        ensure_config_map(k8s_api, body.to_dict(), cluster="sim")

    assert configmap(k8s_core, namespace, "jupyter-base")["data"] == {"keep": "me"}


def test_throttling_is_waited_out(images, k8s_api, namespace, monkeypatch):
    """A 429 with Retry-After is asked again after that wait (the real API's throttling answer)."""
    read = k8s.CoreV1Api.read_namespaced_config_map
    answers = []
    waits: list[float] = []

    def throttled_read(self, *args, **kwargs):
        if not answers:
            answers.append(429)
            throttled = k8s.exceptions.ApiException(status=429, reason="Too Many Requests")
            throttled.headers = {"Retry-After": "2"}
            raise throttled
        return read(self, *args, **kwargs)

    monkeypatch.setattr(k8s.CoreV1Api, "read_namespaced_config_map", throttled_read)
    monkeypatch.setattr(cluster_module.time, "sleep", waits.append)
    body = manifest_configmap(images["jupyter-base"], facts(published("jupyter-base")), namespace=namespace)

    assert ensure_config_map(k8s_api, body.to_dict(), cluster="sim") == "created"
    assert answers == [429] and waits == [2.0]


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
def test_thinkube_control_own_discovery_lists_them_from_the_cluster(env, images, k8s_core, namespace):
    """thinkube-control's real ImageDiscovery (its source at discovery.COMMIT, run unchanged) with the
    official client's CoreV1Api pointed at the cluster, as in its backend: our images in its Jupyter
    list, exactly as the restatement reads them."""
    target(env, namespace)
    _, result = register(images, *NAMES)
    assert result.success, failure_output(result)

    code = upstream.load()
    control = upstream.Control(code)
    image_discovery = code.image_discovery.__new__(code.image_discovery)
    image_discovery.db, image_discovery.core_v1 = control.db, k8s_core
    found = image_discovery.discover_all()

    ours = {row.name: row for row in control.rows() if row.name in NAMES}
    assert sorted(ours) == sorted(NAMES) and len(found["user"]) >= len(NAMES)
    listed = {item["name"]: item for item in control.jupyter_list()}
    for name in NAMES:
        assert listed[name]["display_name"] == images[name].spec.display_name
        assert ours[name].image_metadata["digest"] == digest_of(name, 1)
        assert ours[name].image_metadata["purpose"] == "jupyter"
    items, _ = labelled_configmaps(k8s_core)
    table = discovery.Table()
    table.sync(discovery.discover(items))
    assert control.jupyter_list() == discovery.jupyter_list(table)


def test_in_a_pod_the_service_account_is_used(monkeypatch, tmp_path):
    """No kubeconfig anywhere, KUBERNETES_SERVICE_HOST set: the pod's ServiceAccount (token, CA, and its
    namespace as the default), as the official client loads it; the token is never in a description."""
    from kubernetes.config import incluster_config

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-service-account-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nplatform\n-----END CERTIFICATE-----\n")
    (account / "namespace").write_text("thinkube-pipelines\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setattr(cluster_module, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    cluster = KubernetesCluster()
    configuration = cluster.configuration()

    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.ssl_ca_cert == str(account / "ca.crt")
    assert configuration.api_key["BearerToken"] == "bearer pod-service-account-token"
    assert cluster.describe() == "the in-cluster API (https://10.96.0.1:443)"
    assert cluster.default_namespace() == "thinkube-pipelines"
    assert KubernetesCluster(namespace="thinkube-control").default_namespace() == "thinkube-control"
    assert "pod-service-account-token" not in repr(cluster) + cluster.describe()
