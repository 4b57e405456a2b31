"""The hub_deploy assets: `hub/preflight -> hub/seaweedfs_volumes -> hub/jupyterhub_values ->
hub/jupyterhub_release`, downstream of every image's `catalog_entry` (the UI shows which image versions a
deployed hub offers; a changed catalog entry makes the hub stale).

Each asset records what it did as materialization metadata; the release reads the values and manifests
that `hub/jupyterhub_values` recorded (the record, not a file on one machine's disk), so the release deploys
exactly what was rendered and reviewed. Each object is applied once per deploy: the volumes by
`hub/seaweedfs_volumes`, the rest of the recorded manifests (the hub's node reader, the image pre-puller)
and the OAuth Secret by `hub/jupyterhub_release`. The pre-puller DaemonSet is applied, not waited for: its
nodes go on pulling the catalog's images after the deploy has returned; the release records its counts as
they are once the hub is up (`image_puller`). A failed preflight fails its step, and Dagster runs none of the
assets downstream of it: nothing is applied. No secret is a setting, a value or a metadata entry: the
OAuth client secret goes from the environment into a Kubernetes Secret, and nowhere else.
"""

import base64
import hashlib
import json
import sys
from typing import Any

import dagster as dg

from thinkube_pipelines.defs.hub.resources import HubDeployment
from thinkube_pipelines.defs.images.keys import OWNERS, PART_TAG, asset_key
from thinkube_pipelines.images import ImageSet

HUB_PART = "hub"
GROUP = "hub"
PREFLIGHT = dg.AssetKey(["hub", "preflight"])
VOLUMES = dg.AssetKey(["hub", "seaweedfs_volumes"])
VALUES = dg.AssetKey(["hub", "jupyterhub_values"])
RELEASE = dg.AssetKey(["hub", "jupyterhub_release"])
HUB_POOL = "hub_deploy"
"""Dagster concurrency pool of the hub steps: one deploy at a time (helm refuses a second operation on a
release in progress)."""
COMMON: dict[str, Any] = {
    "group_name": GROUP,
    "owners": OWNERS,
    "tags": {PART_TAG: HUB_PART},
    "pool": HUB_POOL,
}


class _Log:
    """Lines to the step's captured stdout (the raw log) and the event log."""

    def __init__(self, context: dg.AssetExecutionContext):
        self._log = context.log

    def __call__(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)
        self._log.info(line)


def _api(hub: HubDeployment):
    from kubernetes import client

    configuration = hub.cluster.configuration()
    return client.ApiClient(configuration), hub.cluster.describe(configuration)


def _applied_metadata(applied: list) -> dict[str, Any]:
    counts = {
        outcome: sum(a.outcome == outcome for a in applied)
        for outcome in ("created", "configured", "unchanged")
    }
    return {"applied": [str(a) for a in applied], **counts}


def _sha256(data: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def oidc_secret_manifest(hub: HubDeployment) -> dict[str, Any]:
    """The Kubernetes Secret the chart values name, holding the OAuth client secret (base64, as `data`)."""
    settings = hub.settings
    encoded = base64.b64encode(hub.oidc_client_secret.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": settings.oidc_client_secret_name,
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/managed-by": "thinkube-pipelines"},
        },
        "type": "Opaque",
        "data": {settings.oidc_client_secret_key: encoded},
    }


def hub_assets(images: ImageSet) -> list[dg.AssetsDefinition]:
    """The four hub assets; the preflight depends on the catalog entry of every image in `images`."""
    entries = [asset_key(definition.name, "catalog_entry") for definition in images]

    @dg.asset(key=PREFLIGHT, deps=entries, **COMMON, description=preflight_doc)
    def preflight(context: dg.AssetExecutionContext, hub: HubDeployment) -> dg.MaterializeResult:
        from thinkube_pipelines.hub.preflight import PreflightError
        from thinkube_pipelines.hub.preflight import preflight as run_preflight

        api, cluster = _api(hub)
        with api:
            try:
                report = run_preflight(hub.settings, api, cluster=cluster, timeout_s=hub.preflight_timeout_s)
            except PreflightError as exc:
                raise dg.Failure(
                    str(exc),
                    metadata={"failed": [f.dependency for f in exc.failures], "cluster": cluster},
                ) from None
        for check in report.checks:
            context.log.info(f"{check.dependency}: {check.target}: {check.found}")
        return dg.MaterializeResult(metadata={"cluster": cluster, **report.metadata()})

    @dg.asset(key=VOLUMES, deps=[PREFLIGHT], **COMMON, description=volumes_doc)
    def seaweedfs_volumes(context: dg.AssetExecutionContext, hub: HubDeployment) -> dg.MaterializeResult:
        from thinkube_pipelines.hub.volumes import volume_manifests
        from thinkube_pipelines.kubernetes.apply import apply_manifests

        api, cluster = _api(hub)
        with api:
            applied = apply_manifests(
                api, volume_manifests(hub.settings), cluster=cluster, timeout_s=hub.cluster.timeout_s
            )
        for item in applied:
            context.log.info(str(item))
        return dg.MaterializeResult(metadata={"cluster": cluster, **_applied_metadata(applied)})

    @dg.asset(key=VALUES, deps=[VOLUMES], **COMMON, description=values_doc)
    def jupyterhub_values(context: dg.AssetExecutionContext, hub: HubDeployment) -> dg.MaterializeResult:
        import requests

        from thinkube_pipelines.catalog.client import CatalogClient
        from thinkube_pipelines.hub.preflight import DISCOVERY_PATH
        from thinkube_pipelines.hub.render import render_release

        settings = hub.settings
        with CatalogClient(settings.catalog_url, timeout_s=hub.preflight_timeout_s) as catalog:
            images = catalog.jupyter_images()
        discovery = requests.get(settings.oidc_issuer + DISCOVERY_PATH, timeout=hub.preflight_timeout_s)
        discovery.raise_for_status()
        rendered = render_release(settings, images, discovery.json())
        offered = [
            f"{i.name}@{i.metadata.digest}" if i.metadata.digest else f"{i.name}:{i.metadata.tag}"
            for i in images
        ]
        context.log.info(f"rendered values for {len(images)} image(s): {', '.join(offered)}")
        return dg.MaterializeResult(
            metadata={
                "images": offered,
                "values_sha256": _sha256(rendered.values),
                "values": dg.MetadataValue.json(rendered.values),
                "manifests": dg.MetadataValue.json(rendered.manifests),
            },
            data_version=dg.DataVersion(_sha256([rendered.values, rendered.manifests])),
        )

    @dg.asset(key=RELEASE, deps=[VALUES], **COMMON, description=release_doc)
    def jupyterhub_release(context: dg.AssetExecutionContext, hub: HubDeployment) -> dg.MaterializeResult:
        from thinkube_pipelines.hub.prepuller import prepuller_status
        from thinkube_pipelines.hub.release import deploy_release
        from thinkube_pipelines.hub.render import release_manifests
        from thinkube_pipelines.kubernetes.apply import apply_manifests, describe, read_manifest
        from thinkube_pipelines.kubernetes.cluster import KubernetesError

        event = context.instance.get_latest_materialization_event(VALUES)
        recorded = event.asset_materialization.metadata if event and event.asset_materialization else {}
        if "values" not in recorded or "manifests" not in recorded:
            raise dg.Failure(f"no recorded values: materialize {VALUES.to_user_string()} first")
        values, manifests = recorded["values"].value, recorded["manifests"].value
        settings = hub.settings
        # the volumes: applied by hub/seaweedfs_volumes, not again. The Secret first (the hub reads it), the
        # image puller last (its pods start pulling at once; nothing waits for them)
        own = release_manifests(manifests)
        api, cluster = _api(hub)
        with api:
            applied = apply_manifests(
                api, [oidc_secret_manifest(hub), *own], cluster=cluster, timeout_s=hub.cluster.timeout_s
            )
        log = _Log(context)
        for item in applied:
            log(str(item))
        result = deploy_release(
            settings,
            values,
            helm=hub.helm,
            kubeconfig=hub.cluster.kubeconfig,
            kube_context=hub.cluster.context,
            health_url=hub.health_url,
            log=log,
        )
        puller: dict[str, Any] = {}
        for manifest in (m for m in own if m.get("kind") == "DaemonSet"):
            try:  # one GET: the counts as they are now; the pulls go on after the deploy
                status_api, _ = _api(hub)
                with status_api:
                    live = read_manifest(
                        status_api, manifest, cluster=cluster, timeout_s=hub.cluster.timeout_s
                    )
            except KubernetesError as exc:
                log(f"image pre-puller {manifest['metadata']['name']}: status not read: {exc}")
                continue
            counts = prepuller_status(live)
            puller = {"name": manifest["metadata"]["name"], **counts}
            log(
                f"image pre-puller {puller['name']}: {counts['ready']} of {counts['desired']} node(s) have "
                f"every image ({counts['updated']} with this deploy's); pulls go on after the deploy"
            )
        return dg.MaterializeResult(
            metadata={
                **result.metadata(),
                **({"image_puller": dg.MetadataValue.json(puller)} if puller else {}),
                "duration": dg.MetadataValue.float(round(result.duration_s, 3)),
                "values_sha256": _sha256(values),
                "cluster": cluster,
                **{f"manifests_{k}": v for k, v in _applied_metadata(applied).items()},
                "manifests_applied_by_volumes": [describe(m) for m in manifests if m not in own],
            }
        )

    return [preflight, seaweedfs_volumes, jupyterhub_values, jupyterhub_release]


preflight_doc = (
    "Keycloak's realm discovery (issuer and endpoints), the SeaweedFS CSI driver and filer, the catalog "
    "(at least one Jupyter image) and Harbor answer; the hub's namespace exists or is created. A failure "
    "names each missing dependency, and nothing downstream runs."
)
volumes_doc = (
    "ReadWriteMany PersistentVolumes on the SeaweedFS CSI driver and their claims (notebooks, datasets, "
    "models), server-side applied as field manager thinkube-pipelines (idempotent; conflicts reported)."
)
values_doc = (
    "The z2jh chart values and the manifests applied beside them, rendered from the catalog's current "
    "images and validated (chart schema, kubernetes-validate --strict); recorded as metadata."
)
release_doc = (
    "The recorded manifests other than the volumes (hub/seaweedfs_volumes applied those: the hub's node "
    "reader and the image pre-puller DaemonSet) and the OAuth Secret, server-side applied; then "
    "`helm upgrade --install --wait --rollback-on-failure` of the recorded values, then the hub's health "
    "endpoint; the duration is recorded and the step fails past its budget (THINKUBE_HUB_BUDGET_S). The "
    "pre-puller is not waited for: its counts are recorded, and the images keep pulling after the deploy."
)
