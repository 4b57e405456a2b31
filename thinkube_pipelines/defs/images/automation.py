"""How images rebuild on their own: Dagster's declarative automation over the image graph.

- Each image chain's assets (build, published, catalog_entry) and their checks carry `BUILD_CONDITION`,
  Dagster's `eager()`: requested when an upstream asset has a new data version (a source folder's content
  hash, a root image's upstream base digest, the parent's published digest), or will be requested on the
  same tick. A changed folder therefore requests that image and every image built FROM it, in one run, on
  one tick of the automation sensor (`image_automation`); nothing else runs.
- `<root>/base` is an observable source asset per root image: its data version is the digest its base
  builds FROM. A base named by tag alone follows the tag (the data version is the tag's current digest);
  a base named by tag and digest stays on that digest (the data version is that digest) and the
  observation only reports, in its metadata, that the tag names a newer one.
- The nightly schedule (`nightly_rebuild`, THINKUBE_NIGHTLY_CRON / THINKUBE_NIGHTLY_TIMEZONE, default 02:00
  UTC) runs the `observe_upstream_bases` job: observations only. When no base moved, that is all it costs:
  no build, no tag, no catalog write, no redeploy. THINKUBE_NIGHTLY_FULL_REBUILD=true also requests a run
  of `build_images` with `thinkube/force-rebuild=true`.
- Retries: a failed chain step is retried THINKUBE_BUILD_RETRIES times (default 1) after
  THINKUBE_BUILD_RETRY_DELAY_S (default 60 s, doubling), except failures that another try cannot fix
  (an invalid definition, a failed smoke or GPU check, a moved version tag), which are not retried.
  A failure of one image never stops the others in the run; only the images built FROM it are skipped.

Sensors and the schedule start as THINKUBE_AUTOMATION says (`running`, or `stopped` by default on a
workstation: an operator turns them on in the UI; deploy/ sets `running` in the cluster).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import dagster as dg
from dagster._utils.schedules import is_valid_cron_schedule
from pydantic import BaseModel, Field, ValidationError

from thinkube_pipelines.defs.images.build_plan import (
    BaseReference,
    BaseResolutionError,
    base_reference,
    tag_digest,
)
from thinkube_pipelines.defs.images.jobs import (
    BUILD_RUN_TAG,
    FORCE_REBUILD_TAG,
    IMAGE_ASSETS,
    build_images_job,
)
from thinkube_pipelines.defs.images.keys import OBSERVED_TAG, asset_key, observed_spec
from thinkube_pipelines.images import ImageSet
from thinkube_pipelines.settings import setting

if TYPE_CHECKING:
    from thinkube_pipelines.registry.client import RegistryClient

BASE_STAGE = "base"

BUILD_CONDITION = (
    dg.AutomationCondition.eager()
    .replace(
        "any_deps_missing",
        dg.AutomationCondition.any_deps_missing().ignore(
            dg.AssetSelection.tag(OBSERVED_TAG, "true", include_sources=True)
        ),
    )
    .with_label("eager_to_sources")
)
"""On every image chain asset and check: Dagster's `eager()`, except that a source or base not observed
yet does not hold a build back (a base is first observed on the first night; a source change before then
must still rebuild). See the module's docstring."""

AUTOMATION_ENV = "THINKUBE_AUTOMATION"
SOURCE_POLL_ENV = "THINKUBE_SOURCE_POLL_S"
NIGHTLY_CRON_ENV = "THINKUBE_NIGHTLY_CRON"
NIGHTLY_TIMEZONE_ENV = "THINKUBE_NIGHTLY_TIMEZONE"
NIGHTLY_FULL_ENV = "THINKUBE_NIGHTLY_FULL_REBUILD"
RETRIES_ENV = "THINKUBE_BUILD_RETRIES"
RETRY_DELAY_ENV = "THINKUBE_BUILD_RETRY_DELAY_S"


class AutomationSettings(BaseModel):
    """The automation's settings, from the environment (names above); a bad value stops the load."""

    status: Literal["running", "stopped"] = "stopped"
    source_poll_s: int = Field(15, ge=5)
    nightly_cron: str = "0 2 * * *"
    nightly_timezone: str = "UTC"
    nightly_full_rebuild: bool = False
    retries: int = Field(1, ge=0, le=10)
    retry_delay_s: float = Field(60.0, ge=0)

    @classmethod
    def from_env(cls) -> AutomationSettings:
        names = {
            "status": AUTOMATION_ENV,
            "source_poll_s": SOURCE_POLL_ENV,
            "nightly_cron": NIGHTLY_CRON_ENV,
            "nightly_timezone": NIGHTLY_TIMEZONE_ENV,
            "nightly_full_rebuild": NIGHTLY_FULL_ENV,
            "retries": RETRIES_ENV,
            "retry_delay_s": RETRY_DELAY_ENV,
        }
        values = {field: value for field, env in names.items() if (value := setting(env)) is not None}
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"${names[str(e['loc'][0])]}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"automation settings: {problems}") from None
        if not is_valid_cron_schedule(settings.nightly_cron):
            raise ValueError(f"${NIGHTLY_CRON_ENV}: {settings.nightly_cron!r} is not a cron schedule")
        try:
            zoneinfo.ZoneInfo(settings.nightly_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"${NIGHTLY_TIMEZONE_ENV}: {settings.nightly_timezone!r} is not a time zone name"
            ) from None
        return settings

    @property
    def default_status(self) -> dg.DefaultSensorStatus:
        return dg.DefaultSensorStatus.RUNNING if self.status == "running" else dg.DefaultSensorStatus.STOPPED

    @property
    def schedule_status(self) -> dg.DefaultScheduleStatus:
        running = self.status == "running"
        return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

    def retry_policy(self) -> dg.RetryPolicy | None:
        if not self.retries:
            return None
        return dg.RetryPolicy(
            max_retries=self.retries, delay=self.retry_delay_s, backoff=dg.Backoff.EXPONENTIAL
        )


def upstream_bases(images: ImageSet) -> dg.AssetsDefinition | None:
    """`<root>/base` of every root image: the upstream image it builds FROM, observed (see the docstring)."""
    roots = [d for d in images if d.spec.base is not None]
    if not roots:
        return None
    specs = [
        observed_spec(
            d.name,
            BASE_STAGE,
            "docker",
            f"The upstream image {d.name} builds FROM ({d.spec.base.image if d.spec.base else ''}, or "
            "THINKUBE_BASE_MIRROR): its data version is the digest builds use.",
        )
        for d in roots
    ]

    @dg.multi_observable_source_asset(
        specs=specs,
        name="upstream_bases",
        can_subset=True,
        required_resource_keys={"registry", "build_settings"},
    )
    def observe(context) -> Iterator[dg.ObserveResult]:  # no annotation: Dagster checks it at runtime
        client = context.resources.registry.client()
        mirror = context.resources.build_settings.base_mirror
        for key in sorted(context.selected_asset_keys, key=lambda k: k.path):
            reference = base_reference(images[key.path[0]], mirror)
            yield observe_base(context, key, reference, client)

    return observe


def observe_base(
    context: dg.AssetExecutionContext, key: dg.AssetKey, reference: BaseReference, client: RegistryClient
) -> dg.ObserveResult:
    """One base: its data version, and whether its tag names a newer digest than a pinned one."""
    current = None
    problem = None
    if reference.tag is not None:
        try:
            current = tag_digest(reference, client)
        except BaseResolutionError as exc:
            if reference.digest is None:
                raise dg.Failure(description=f"{key.to_user_string()}: {exc}") from exc
            problem = str(exc)
    used = reference.digest or current
    assert used is not None
    metadata: dict[str, object] = {
        "reference": str(reference),
        "digest": used,
        "follows_tag": reference.digest is None,
    }
    if reference.digest is not None and reference.tag is not None:
        metadata["tag_digest"] = current or ""
        metadata["newer_available"] = current is not None and current != reference.digest
        if current is not None and current != reference.digest:
            context.log.info(
                f"{key.to_user_string()}: {reference.host}/{reference.repository}:{reference.tag} now names "
                f"{current}; the image stays on {reference.digest} (pinned in image.yaml)"
            )
        if problem:
            metadata["tag_check"] = problem
    return dg.ObserveResult(asset_key=key, data_version=dg.DataVersion(used), metadata=metadata)


OBSERVE_BASES_JOB = "observe_upstream_bases"
NIGHTLY_SCHEDULE = "nightly_rebuild"
AUTOMATION_SENSOR = "image_automation"


def observe_bases_job(images: ImageSet) -> dg.UnresolvedAssetJobDefinition:
    """Observations of every root image's base, and nothing else."""
    keys = [asset_key(d.name, BASE_STAGE) for d in images if d.spec.base is not None]
    return dg.define_asset_job(
        OBSERVE_BASES_JOB,
        selection=dg.AssetSelection.assets(*keys),
        description="Observe every root image's upstream base: its tag resolved to its current digest. The "
        "automation sensor rebuilds the images whose base moved, and the images built FROM them.",
    )


def nightly_schedule(settings: AutomationSettings) -> dg.ScheduleDefinition:
    """The nightly look upstream (see the module's docstring)."""

    @dg.schedule(
        name=NIGHTLY_SCHEDULE,
        cron_schedule=settings.nightly_cron,
        execution_timezone=settings.nightly_timezone,
        job_name=OBSERVE_BASES_JOB,
        default_status=settings.schedule_status,
        description=f"Observes the upstream bases at {settings.nightly_cron} ({settings.nightly_timezone}); "
        "the automation sensor rebuilds what moved. "
        + (
            "Also a forced rebuild of every image (THINKUBE_NIGHTLY_FULL_REBUILD)."
            if settings.nightly_full_rebuild
            else ""
        ),
    )
    def nightly(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        requests = [dg.RunRequest(run_key=f"observe-bases-{day}", tags={"thinkube/trigger": "nightly"})]
        if settings.nightly_full_rebuild:
            requests.append(
                dg.RunRequest(
                    run_key=f"full-rebuild-{day}",
                    job_name=build_images_job.name,
                    tags={FORCE_REBUILD_TAG: "true", "thinkube/trigger": "nightly", **BUILD_RUN_TAG},
                )
            )
        return requests

    return nightly


def automation_sensor(settings: AutomationSettings) -> dg.AutomationConditionSensorDefinition:
    """Dagster's automation condition sensor over the image chains (never the hub: it has its own sensor)."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=IMAGE_ASSETS,
        run_tags={**BUILD_RUN_TAG, "thinkube/trigger": "automation"},
        default_status=settings.default_status,
        minimum_interval_seconds=settings.source_poll_s,
        emit_backfills=False,
        description="Requests the image chains whose sources, bases or parents have a new data version, in "
        "one run per tick.",
    )
