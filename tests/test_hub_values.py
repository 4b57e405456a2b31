"""The hub release as `hub render` and the hub_deploy job make it: the chart values (thinkube_pipelines/hub/
values.py) and the manifests beside them (render.py), from real settings and a real catalog.

Real parts only: the chart's own schema, the real helm (`helm template` of tests/reference/z2jh's chart with
the rendered values), kubernetes-validate --strict on every object the chart renders, the Keycloak stand-in's
discovery document, the catalog service for `hub render`.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

from tests.fixtures.catalog import sample_image
from tests.fixtures.tools import tool_env
from thinkube_pipelines.catalog.client import CatalogClient
from thinkube_pipelines.catalog.contract import CatalogItem, ImageUpsert
from thinkube_pipelines.cli import main
from thinkube_pipelines.hub import profiles
from thinkube_pipelines.hub import settings as hub_settings
from thinkube_pipelines.hub.prepuller import container_name
from thinkube_pipelines.hub.render import (
    KUBERNETES_VERSIONS,
    MANIFESTS_FILE,
    VALUES_FILE,
    release_manifests,
    render_release,
    write_release,
)
from thinkube_pipelines.hub.settings import HubConfigError, HubSettings
from thinkube_pipelines.hub.values import (
    CLIENT_SECRET_ENV,
    HubValuesError,
    chart_defaults,
    coalesce,
    oidc_endpoints,
    validate_values,
    values_schema,
)
from thinkube_pipelines.hub.volumes import claim_name
from thinkube_pipelines.kubernetes import validation

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "tests" / "reference" / "z2jh" / "jupyterhub-4.4.0.tgz"
SCHEMA = REPO / "tests" / "reference" / "z2jh" / "z2jh-4.4.0-values.schema.json"
ISSUER = "https://auth.example.org/realms/thinkube"
BASE_ENV = {
    hub_settings.PUBLIC_URL_ENV: "https://jupyter.example.org",
    hub_settings.OIDC_ISSUER_ENV: ISSUER,
    hub_settings.FILER_URL_ENV: "http://seaweedfs-filer.seaweedfs:8888",
    hub_settings.CATALOG_URL_ENV: "http://127.0.0.1:9",
    hub_settings.HUB_CATALOG_URL_ENV: "http://thinkube-catalog.thinkube-control:8000",
    hub_settings.INGRESS_TLS_SECRET_ENV: "jupyter-tls",
}
# Secrets a careless renderer could pick up from its environment; none may appear in anything rendered.
TEST_SECRETS = {
    CLIENT_SECRET_ENV: "oidc-client-secret-7d1f0c",
    "THINKUBE_CATALOG_TOKEN": "catalog-token-5b2e94",
    "THINKUBE_REGISTRY_PASSWORD": "registry-password-c0ffee",
    "JUPYTERHUB_CRYPT_KEY": "crypt-key-a11ce5",
}
GPU_DIGEST = "sha256:" + "3f2a9c1e" * 8
CPU_DIGEST = "sha256:" + "0b5e77aa" * 8


def catalog_items() -> list[CatalogItem]:
    return [
        CatalogItem.model_validate(sample_image("jupyter-ml-gpu", default=True)),
        CatalogItem.model_validate(
            sample_image(
                "jupyter-ml-cpu",
                display_name="ML (CPU)",
                metadata={"gpu_required": False, "digest": CPU_DIGEST, "cpu_limit": 4, "mem_limit": "8G"},
            )
        ),
    ]


def env_settings(monkeypatch: pytest.MonkeyPatch, **extra: str) -> HubSettings:
    for name, value in {**BASE_ENV, **TEST_SECRETS, **extra}.items():
        monkeypatch.setenv(name, value)
    return HubSettings.from_env()


def helm_template(helm_bin: Path, tmp_path: Path, values_file: Path, namespace: str) -> str:
    result = subprocess.run(
        [str(helm_bin), "template", "jupyterhub", str(CHART), "-n", namespace, "-f", str(values_file)],
        env=tool_env(tmp_path / "tools"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def rendered_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, helm_bin: Path) -> dict[str, Any]:
    """The release for the test settings, written by write_release, and what helm makes of its values."""
    settings = env_settings(monkeypatch)
    release = render_release(settings, catalog_items())
    out = tmp_path / "release"
    write_release(release, out)
    chart_text = helm_template(helm_bin, tmp_path, out / VALUES_FILE, settings.namespace)
    return {
        "settings": settings,
        "release": release,
        "out": out,
        "chart_text": chart_text,
        "objects": [o for o in yaml.safe_load_all(chart_text) if o],
    }


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def _walk(node: Any) -> Any:
    """Every mapping in a nested structure."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# -- the packaged copies ------------------------------------------------------------------------------------


def test_packaged_schema_and_defaults_are_the_charts():
    """The schema and default values the renderer checks against are exactly those inside the chart."""
    with tarfile.open(CHART) as chart:
        schema = json.load(chart.extractfile("jupyterhub/values.schema.json"))
        defaults = yaml.safe_load(chart.extractfile("jupyterhub/values.yaml"))
    assert values_schema() == schema == json.loads(SCHEMA.read_text())
    assert chart_defaults() == defaults


# -- the values ---------------------------------------------------------------------------------------------


def test_values_pass_the_chart_schema(monkeypatch):
    release = render_release(env_settings(monkeypatch), catalog_items())
    # helm checks the schema against the chart's defaults with our values over them
    merged = coalesce(chart_defaults(), release.values)
    jsonschema.Draft7Validator(values_schema()).validate(merged)


def test_a_schema_violation_names_the_values_path():
    with pytest.raises(HubValuesError) as error:
        validate_values({"singleuser": {"storage": {"type": "nfs"}}, "hub": {"extraEnv": 7}})
    message = str(error.value)
    assert "singleuser.storage.type" in message
    assert "hub.extraEnv" in message


def test_oauth_settings_of_the_hub(rendered_release):
    values = rendered_release["release"].values
    oauth = values["hub"]["config"]["GenericOAuthenticator"]
    keycloak = f"{ISSUER}/protocol/openid-connect"
    assert values["hub"]["config"]["JupyterHub"]["authenticator_class"] == "generic-oauth"
    assert oauth["authorize_url"] == f"{keycloak}/auth"
    assert oauth["token_url"] == f"{keycloak}/token"
    assert oauth["userdata_url"] == f"{keycloak}/userinfo"
    assert oauth["oauth_callback_url"] == "https://jupyter.example.org/hub/oauth_callback"
    assert oauth["client_id"] == "jupyterhub"
    assert oauth["username_claim"] == "preferred_username"
    # OAuthenticator 17: groups from the userinfo answer kept in auth_state, only with manage_groups
    assert oauth["manage_groups"] is True
    assert oauth["auth_state_groups_key"] == "oauth_user.groups"
    assert oauth["allowed_groups"] == ["jupyterhub-users"]
    assert oauth["admin_groups"] == ["jupyterhub-admins"]
    assert "client_secret" not in oauth
    assert values["hub"]["extraEnv"][CLIENT_SECRET_ENV] == {
        "valueFrom": {"secretKeyRef": {"name": "jupyterhub-oidc", "key": "client-secret"}}
    }
    # the hub's rendered config: the chart's hub Secret carries the values the hub's config reads
    hub_secret = _find(rendered_release["objects"], "Secret", "hub")
    hub_values = yaml.safe_load(base64.b64decode(hub_secret["data"]["values.yaml"]))
    assert hub_values["hub"]["config"]["GenericOAuthenticator"] == oauth
    hub = _find(rendered_release["objects"], "Deployment", "hub")
    env = {e["name"]: e for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[CLIENT_SECRET_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "jupyterhub-oidc",
        "key": "client-secret",
    }


def test_profile_callable_installed_in_the_hub(rendered_release):
    values = rendered_release["release"].values
    extra_file = values["hub"]["extraFiles"]["thinkube-profiles"]
    assert extra_file["mountPath"] == "/usr/local/etc/jupyterhub/thinkube_profiles.py"
    assert extra_file["stringData"] == Path(profiles.__file__).read_text(encoding="utf-8")
    assert values["hub"]["extraConfig"]["thinkube-profiles"] == (
        'import sys; sys.path.insert(0, "/usr/local/etc/jupyterhub"); '
        "import thinkube_profiles; thinkube_profiles.install(c)"
    )
    env = values["hub"]["extraEnv"]
    assert env[profiles.CATALOG_URL_ENV] == "http://thinkube-catalog.thinkube-control:8000"
    assert float(env[profiles.CATALOG_TIMEOUT_ENV]) == 3.0
    assert env[profiles.GPU_RESOURCE_ENV] == "nvidia.com/gpu"
    assert env[profiles.GPU_PRODUCT_LABEL_ENV] == "nvidia.com/gpu.product"
    assert env[profiles.GPU_TOLERATION_KEY_ENV] == "nvidia.com/gpu"
    # the file reaches the hub pod: in the chart's hub Secret, mounted by the hub Deployment
    objects = rendered_release["objects"]
    hub = _find(objects, "Deployment", "hub")
    mounts = hub["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"mountPath": extra_file["mountPath"], "subPath": "thinkube-profiles", "name": "files"} in mounts
    assert "thinkube-profiles" in _find(objects, "Secret", "hub")["stringData"]
    # no image list anywhere in the hub's configuration: the callable asks the catalog
    assert not values.get("singleuser", {}).get("profileList")


def _puller(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [puller] = [m for m in manifests if m["kind"] == "DaemonSet"]
    return puller


def test_the_charts_image_pullers_are_off(rendered_release):
    """helm 4's --wait waits for a release's DaemonSets to be ready, i.e. until every node has pulled every
    image (10+ GB for a GPU image): the chart renders no image puller, hook or continuous."""
    values = rendered_release["release"].values
    assert values["prePuller"] == {"hook": {"enabled": False}, "continuous": {"enabled": False}}
    objects = rendered_release["objects"]
    assert not [o for o in objects if o["kind"] in {"DaemonSet", "Job"}]
    assert not [o for o in objects if "image-puller" in o["metadata"]["name"]]
    assert not [o for o in objects if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]


def test_our_pre_puller_pulls_every_catalog_image_by_digest_on_every_node(rendered_release):
    settings = rendered_release["settings"]
    puller = _puller(rendered_release["release"].manifests)
    assert puller["apiVersion"] == "apps/v1"
    assert puller["metadata"]["namespace"] == settings.namespace
    assert puller["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "thinkube-pipelines"
    template = puller["spec"]["template"]
    assert puller["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    spec = template["spec"]
    # one init container per catalog image, by digest, doing what the chart's puller does: only end
    assert [(c["name"], c["image"], c["command"]) for c in spec["initContainers"]] == [
        (
            "pull-jupyter-ml-gpu",
            f"harbor.example.org/library/jupyter-ml-gpu@{GPU_DIGEST}",
            ["/bin/sh", "-c", "echo pulled jupyter-ml-gpu"],
        ),
        (
            "pull-jupyter-ml-cpu",
            f"harbor.example.org/library/jupyter-ml-cpu@{CPU_DIGEST}",
            ["/bin/sh", "-c", "echo pulled jupyter-ml-cpu"],
        ),
    ]
    # then the chart's own pause image
    pause = chart_defaults()["prePuller"]["pause"]["image"]
    [main_container] = spec["containers"]
    assert main_container["image"] == f"{pause['name']}:{pause['tag']}" == "registry.k8s.io/pause:3.10.1"
    for container in [*spec["initContainers"], main_container]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in context
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # every worker node, GPU or not: the GPU taint tolerated, no node selector, no affinity
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "nodeSelector" not in spec and "affinity" not in spec
    assert spec["automountServiceAccountToken"] is False
    # a new digest is pulled node by node
    assert puller["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    # applied by the release step (not the volumes' step), beside the release
    assert puller in release_manifests(rendered_release["release"].manifests)


def test_the_pre_puller_follows_the_gpu_toleration_key(monkeypatch):
    settings = env_settings(monkeypatch, **{hub_settings.GPU_TOLERATION_KEY_ENV: "example.com/accelerator"})
    spec = _puller(render_release(settings, catalog_items()).manifests)["spec"]["template"]["spec"]
    assert {"key": "example.com/accelerator", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]


def test_pre_puller_container_names_are_dns_labels():
    assert container_name("jupyter-ml-gpu") == "pull-jupyter-ml-gpu"
    odd = [container_name(n) for n in ("jupyter.ml", "jupyter_ml", "jupyter__ml", "x" * 128)]
    assert len(set(odd)) == len(odd)
    for name in odd:
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_pre_puller_validates_strictly_with_many_images(monkeypatch, version):
    images = [
        CatalogItem.model_validate(sample_image(name))
        for name in ("jupyter.a", "jupyter_b", "j" * 120, *(f"jupyter-{i}" for i in range(20)))
    ]
    puller = _puller(render_release(env_settings(monkeypatch), images).manifests)
    assert len(puller["spec"]["template"]["spec"]["initContainers"]) == len(images)
    assert validation.validate(puller, version, strict=True)


def test_image_without_digest_is_pulled_by_its_tag(monkeypatch):
    """As the profile pulls it (the catalog contract: a tag or a digest, never neither)."""
    untagged = sample_image("jupyter-tagged", metadata={"digest": None})
    release = render_release(env_settings(monkeypatch), [CatalogItem.model_validate(untagged)])
    [pull] = _puller(release.manifests)["spec"]["template"]["spec"]["initContainers"]
    assert pull["image"] == "harbor.example.org/library/jupyter-tagged:2026.11.25-3f2a9c1"


def test_user_storage_per_user_notebooks_shared_data_no_host_path(rendered_release):
    storage = rendered_release["release"].values["singleuser"]["storage"]
    assert storage["type"] == "none"
    volumes = {v["name"]: v for v in storage["extraVolumes"]}
    mounts = {m["name"]: m for m in storage["extraVolumeMounts"]}
    assert mounts["notebooks"] == {
        "name": "notebooks",
        "mountPath": "/home/jovyan",
        "subPath": "{escaped_username}",
        "readOnly": False,
    }
    assert volumes["notebooks"]["persistentVolumeClaim"]["claimName"] == claim_name("notebooks")
    assert "subPath" not in mounts["datasets"] and "subPath" not in mounts["models"]
    assert mounts["datasets"]["mountPath"] == "/home/jovyan/datasets" and not mounts["datasets"]["readOnly"]
    assert mounts["models"]["mountPath"] == "/home/jovyan/models" and mounts["models"]["readOnly"]
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}
    assert mounts["scratch"]["mountPath"] == "/home/jovyan/scratch"
    # the claims the pods mount are the ones the manifests create
    claims = {
        m["metadata"]["name"]
        for m in rendered_release["release"].manifests
        if m["kind"] == "PersistentVolumeClaim"
    }
    assert {
        v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v
    } == claims
    # no hostPath in anything: values, manifests, the chart's objects
    for node in (
        rendered_release["release"].values,
        rendered_release["release"].manifests,
        rendered_release["objects"],
    ):
        assert not [m for m in _walk(node) if "hostPath" in m]


def test_models_writable_when_configured(monkeypatch):
    settings = env_settings(
        monkeypatch, THINKUBE_HUB_MODELS_READ_ONLY="false", THINKUBE_HUB_SCRATCH_SIZE="50Gi"
    )
    storage = render_release(settings, catalog_items()).values["singleuser"]["storage"]
    models = next(m for m in storage["extraVolumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is False
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in storage["extraVolumes"]


def test_hub_database_on_the_configured_storage_class(monkeypatch, tmp_path, helm_bin):
    """The chart keeps the hub's SQLite database on a PVC: on the cluster's default StorageClass unless one is
    named (without a default class the claim never binds and helm's wait fails)."""
    for storage_class, expected in ((None, None), ("longhorn", "longhorn")):
        extra = {"THINKUBE_HUB_DB_STORAGE_CLASS": storage_class} if storage_class else {}
        settings = env_settings(monkeypatch, **extra)
        out = tmp_path / f"release-{storage_class}"
        write_release(render_release(settings, catalog_items()), out)
        objects = [
            o for o in yaml.safe_load_all(helm_template(helm_bin, tmp_path, out / VALUES_FILE, "hub")) if o
        ]
        claim = _find(objects, "PersistentVolumeClaim", "hub-db-dir")
        assert claim["spec"].get("storageClassName") == expected


def test_no_node_selector_or_affinity_for_users(rendered_release):
    values = rendered_release["release"].values
    merged = coalesce(chart_defaults(), values)
    assert "nodeSelector" not in values["singleuser"]
    assert merged["singleuser"]["nodeSelector"] == {}
    assert merged["singleuser"]["extraNodeAffinity"] == {"required": [], "preferred": []}
    assert merged["scheduling"]["userPods"]["nodeAffinity"]["matchNodePurpose"] == "ignore"
    assert merged["scheduling"]["userScheduler"]["enabled"] is False
    # the hub's config sees the same: what jupyterhub_config.py reads comes from the hub Secret
    hub_secret = _find(rendered_release["objects"], "Secret", "hub")
    hub_values = yaml.safe_load(base64.b64decode(hub_secret["data"]["values.yaml"]))
    assert hub_values["scheduling"]["userPods"]["nodeAffinity"]["matchNodePurpose"] == "ignore"
    assert not hub_values["singleuser"].get("nodeSelector")


def test_ingress_from_the_public_url(rendered_release):
    ingress = _find(rendered_release["objects"], "Ingress", "jupyterhub")
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["jupyter.example.org"]
    assert ingress["spec"]["tls"] == [{"hosts": ["jupyter.example.org"], "secretName": "jupyter-tls"}]
    proxy = _find(rendered_release["objects"], "Service", "proxy-public")
    assert proxy["spec"]["type"] == "ClusterIP"


def test_node_reader_rbac_for_the_charts_hub_service_account(rendered_release):
    manifests = rendered_release["release"].manifests
    role = next(m for m in manifests if m["kind"] == "ClusterRole")
    binding = next(m for m in manifests if m["kind"] == "ClusterRoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # the subject is the ServiceAccount the chart renders for the hub Deployment
    namespace = rendered_release["settings"].namespace
    account = _find(rendered_release["objects"], "ServiceAccount", "hub")
    hub = _find(rendered_release["objects"], "Deployment", "hub")
    assert hub["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": namespace}]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(rendered_release, version):
    """Every object `helm template` renders from the values, and every manifest, for the oldest and
    newest supported Kubernetes minor."""
    objects = rendered_release["objects"]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "Secret", "Ingress", "ServiceAccount"} <= kinds
    assert "DaemonSet" in {m["kind"] for m in rendered_release["release"].manifests}
    for obj in [*objects, *rendered_release["release"].manifests]:
        name = f"{obj['kind']} {obj['metadata']['name']}"
        assert validation.validate(obj, version, strict=True), name


def test_no_secret_anywhere(rendered_release, helm_bin, tmp_path):
    """The test secrets were in the environment while rendering: none is in the files, nor in what the
    chart makes of them."""
    out = rendered_release["out"]
    texts = {
        VALUES_FILE: (out / VALUES_FILE).read_text(),
        MANIFESTS_FILE: (out / MANIFESTS_FILE).read_text(),
        "helm template": rendered_release["chart_text"],
    }
    decoded = []
    for obj in rendered_release["objects"]:
        if obj["kind"] == "Secret":
            decoded += [
                base64.b64decode(v).decode(errors="replace") for v in (obj.get("data") or {}).values()
            ]
    texts["decoded Secrets"] = "\n".join(decoded)
    for where, text in texts.items():
        for secret in TEST_SECRETS.values():
            assert secret not in text, f"{secret} in {where}"


def test_endpoints_from_the_realms_discovery_document(oidc_provider, monkeypatch):
    discovery = requests.get(f"{oidc_provider.issuer}/.well-known/openid-configuration", timeout=10).json()
    settings = env_settings(monkeypatch, THINKUBE_OIDC_ISSUER=oidc_provider.issuer)
    oauth = render_release(settings, catalog_items(), discovery).values["hub"]["config"][
        "GenericOAuthenticator"
    ]
    assert oauth["authorize_url"] == discovery["authorization_endpoint"]
    assert oauth["token_url"] == discovery["token_endpoint"]
    assert oauth["userdata_url"] == discovery["userinfo_endpoint"]
    # the stand-in lays the realm out as Keycloak does: the same URLs as without the document
    assert {k: v for k, v in oidc_endpoints(settings).items() if k != "end_session"} == {
        k: oauth[k] for k in ("authorize_url", "token_url", "userdata_url")
    }
    # a document of another realm is refused, naming the setting
    lying = requests.get(f"{oidc_provider.lying_issuer}/.well-known/openid-configuration", timeout=10).json()
    other = env_settings(monkeypatch, THINKUBE_OIDC_ISSUER=oidc_provider.lying_issuer)
    with pytest.raises(HubValuesError, match=hub_settings.OIDC_ISSUER_ENV):
        render_release(other, catalog_items(), lying)


# -- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (hub_settings.PUBLIC_URL_ENV, ""),
        (hub_settings.PUBLIC_URL_ENV, "jupyter.example.org"),
        (hub_settings.PUBLIC_URL_ENV, "https://example.org/jupyter"),
        (hub_settings.OIDC_ISSUER_ENV, ""),
        (hub_settings.FILER_URL_ENV, ""),
        (hub_settings.NAMESPACE_ENV, "Jupyter_Hub"),
        (hub_settings.CATALOG_TIMEOUT_ENV, "soon"),
        (hub_settings.BUDGET_ENV, "-5"),
        (hub_settings.ALLOWED_GROUPS_ENV, " , "),
        ("THINKUBE_HUB_NOTEBOOKS_SIZE", "lots"),
        ("THINKUBE_HUB_MODELS_READ_ONLY", "perhaps"),
        (hub_settings.GPU_RESOURCE_ENV, "nvidia gpu"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch, name, value):
    for key, default in BASE_ENV.items():
        monkeypatch.setenv(key, default)
    monkeypatch.setenv(name, value)
    with pytest.raises(HubConfigError) as error:
        HubSettings.from_env()
    assert name in str(error.value)
    if name == hub_settings.ALLOWED_GROUPS_ENV:
        # an empty list would let nobody in: it is not the default's silent stand-in
        assert "at least 1" in str(error.value)


def test_settings_from_the_environment(monkeypatch):
    settings = env_settings(
        monkeypatch,
        THINKUBE_HUB_ALLOWED_GROUPS="ml-team, data-team",
        THINKUBE_HUB_OIDC_SCOPES="openid profile",
        THINKUBE_HUB_DATASETS_COLLECTION="shared-datasets",
    )
    assert settings.allowed_groups == ["ml-team", "data-team"]
    assert settings.oidc_scopes == ["openid", "profile"]
    assert settings.volumes["datasets"].collection == "shared-datasets"
    assert settings.ingress_host == "jupyter.example.org"
    assert settings.hub_catalog_url == "http://thinkube-catalog.thinkube-control:8000"
    monkeypatch.delenv(hub_settings.HUB_CATALOG_URL_ENV)
    assert HubSettings.from_env().hub_catalog_url == "http://127.0.0.1:9"


# -- write_release and `hub render` -------------------------------------------------------------------------


def test_write_release_replaces_whole_files(monkeypatch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / VALUES_FILE).write_text("old: values\n")
    release = render_release(env_settings(monkeypatch), catalog_items())
    written = write_release(release, out)
    assert (
        sorted(p.name for p in written)
        == sorted(p.name for p in out.iterdir())
        == [MANIFESTS_FILE, VALUES_FILE]
    )
    assert yaml.safe_load((out / VALUES_FILE).read_text()) == release.values
    assert list(yaml.safe_load_all((out / MANIFESTS_FILE).read_text())) == release.manifests


def test_hub_render_against_a_real_catalog(catalog_server, monkeypatch, tmp_path, capsys):
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    writer = CatalogClient(base_url=server.base_url, token=server.token)
    for item in catalog_items():
        writer.upsert(ImageUpsert.model_validate(item.model_dump(mode="json", exclude={"is_active"})))
    env_settings(monkeypatch, THINKUBE_CATALOG_URL=server.base_url)
    out = tmp_path / "review"
    assert main(["hub", "render", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFESTS_FILE, VALUES_FILE]
    values = yaml.safe_load((out / VALUES_FILE).read_text())
    assert values["prePuller"]["continuous"] == {"enabled": False}
    manifests = list(yaml.safe_load_all((out / MANIFESTS_FILE).read_text()))
    pulls = _puller(manifests)["spec"]["template"]["spec"]["initContainers"]
    assert {c["image"] for c in pulls} == {
        f"harbor.example.org/library/jupyter-ml-gpu@{GPU_DIGEST}",
        f"harbor.example.org/library/jupyter-ml-cpu@{CPU_DIGEST}",
    }
    kinds = [m["kind"] for m in manifests]
    assert kinds.count("PersistentVolume") == kinds.count("PersistentVolumeClaim") == 3
    assert "ClusterRoleBinding" in kinds
    assert "2 image(s)" in capsys.readouterr().out


def test_hub_render_with_the_catalog_down(catalog_server, monkeypatch, tmp_path, capsys):
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    server.stop()
    env_settings(monkeypatch, THINKUBE_CATALOG_URL=server.base_url)
    out = tmp_path / "review"
    assert main(["hub", "render", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "catalog" in err and hub_settings.CATALOG_URL_ENV in err and server.base_url in err
    assert not out.exists()


def test_hub_render_with_an_empty_catalog(catalog_server, monkeypatch, tmp_path, capsys):
    """Our catalog answers 503 when it has no image: nothing to offer, nothing written."""
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}")
    env_settings(monkeypatch, THINKUBE_CATALOG_URL=server.base_url)
    out = tmp_path / "review"
    assert main(["hub", "render", "--out", str(out)]) == 1
    assert server.base_url in capsys.readouterr().err
    assert not out.exists()


def test_hub_render_with_a_missing_setting(monkeypatch, tmp_path, capsys):
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(hub_settings.PUBLIC_URL_ENV)
    assert main(["hub", "render", "--out", str(tmp_path / "review")]) == 1
    assert f"{hub_settings.PUBLIC_URL_ENV} is not set" in capsys.readouterr().err
    assert not (tmp_path / "review").exists()
