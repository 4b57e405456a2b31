"""Redeploy the hub when the catalog's images change: one `hub_deploy` run for the digests that changed.

`hub_redeploy` reads the latest materialization of every `<image>/catalog_entry` in one query of the
instance (its data version is the digest the catalog holds) and compares it with the digests its cursor
holds:

- while image builds are running (runs tagged thinkube/run-kind=image-build), it waits, so the images of
  one rebuild that finish together give one deploy, not one each;
- a changed digest requests one `hub_deploy` run (run key: the changed digests, so a repeated tick never
  requests it twice); the release's pre-puller then pulls the new digests onto the GPU nodes;
- a `hub_deploy` run that is queued and has not started yet will read the catalog when it starts: no
  second run is requested; one that is already running may have read the catalog before the change, so
  the new run queues behind it (dagster.yaml lets one hub deploy run at a time);
- its first tick only notes the digests (turning the sensor on does not redeploy by itself).
"""

from __future__ import annotations

import hashlib

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from pydantic import BaseModel, ValidationError

from thinkube_pipelines.defs.hub.jobs import HUB_RUN_TAG, hub_deploy_job
from thinkube_pipelines.defs.images.jobs import BUILD_RUN_TAG
from thinkube_pipelines.defs.images.keys import asset_key
from thinkube_pipelines.images import ImageSet

SENSOR_NAME = "hub_redeploy"
CATALOG_STAGE = "catalog_entry"
WAITING = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING)
IN_PROGRESS = (*WAITING, dg.DagsterRunStatus.STARTED)


class RedeployCursor(BaseModel):
    """The digest of each catalog entry the sensor last saw (None before its first tick)."""

    digests: dict[str, str] | None = None

    @classmethod
    def parse(cls, text: str | None) -> RedeployCursor:
        try:
            return cls.model_validate_json(text) if text else cls()
        except ValidationError:
            return cls()


def catalog_digests(instance: dg.DagsterInstance, images: ImageSet) -> dict[str, str]:
    """Image -> the digest of its latest catalog entry, for the images that have one (one query)."""
    keys = [asset_key(d.name, CATALOG_STAGE) for d in images]
    digests = {}
    for record in instance.get_asset_records(keys):
        latest = record.asset_entry.last_materialization
        if latest is None or latest.asset_materialization is None:
            continue
        version = (latest.asset_materialization.tags or {}).get(DATA_VERSION_TAG)
        if version:
            digests[record.asset_entry.asset_key.path[0]] = version
    return digests


def _runs(instance: dg.DagsterInstance, tags: dict[str, str], statuses) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags=tags, statuses=list(statuses)), limit=20))


def hub_redeploy_sensor(
    images: ImageSet, *, interval_s: int, default_status: dg.DefaultSensorStatus
) -> dg.SensorDefinition:
    """The sensor of the module's docstring, over the catalog entries of `images`."""

    @dg.sensor(
        name=SENSOR_NAME,
        job=hub_deploy_job,
        minimum_interval_seconds=interval_s,
        default_status=default_status,
        description="Requests one hub_deploy run when catalog entries get new digests (after the image "
        "builds running together have finished); never a second one while one waits to start.",
    )
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        instance = context.instance
        cursor = RedeployCursor.parse(context.cursor)
        if _runs(instance, BUILD_RUN_TAG, IN_PROGRESS):
            return dg.SkipReason("image builds are running: waiting for them to finish, to deploy once")
        current = catalog_digests(instance, images)
        if cursor.digests is None:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"first look: noted the digests of {len(current)} catalog entries"),
                cursor=RedeployCursor(digests=current).model_dump_json(),
            )
        changed = sorted(name for name, digest in current.items() if cursor.digests.get(name) != digest)
        after = RedeployCursor(digests=current).model_dump_json()
        if not changed:
            return dg.SkipReason(f"no catalog entry changed its digest ({len(current)} entries)")
        waiting = _runs(instance, HUB_RUN_TAG, WAITING)
        if waiting:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"new digests for {', '.join(changed)}; hub_deploy run {waiting[0].run_id} has not "
                    "started yet and will deploy them"
                ),
                cursor=after,
            )
        key = hashlib.sha256("\n".join(f"{n}={current[n]}" for n in changed).encode()).hexdigest()[:16]
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        context.log.info(f"new digests in the catalog for {shown}: requesting hub_deploy")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"redeploy-{key}",
                    tags={
                        **HUB_RUN_TAG,
                        "thinkube/trigger": "new-images",
                        "thinkube/images": shown[:200],
                    },
                )
            ],
            cursor=after,
        )

    return sensor
