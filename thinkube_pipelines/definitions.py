"""The thinkube-pipelines code location: one Definitions object assembled from its parts."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from thinkube_pipelines.defs.hub.assets import hub_assets
from thinkube_pipelines.defs.hub.jobs import hub_deploy_job
from thinkube_pipelines.defs.hub.sensors import hub_redeploy_sensor
from thinkube_pipelines.defs.images.assets import image_assets
from thinkube_pipelines.defs.images.automation import (
    AutomationSettings,
    automation_sensor,
    nightly_schedule,
    observe_bases_job,
)
from thinkube_pipelines.defs.images.jobs import build_images_job
from thinkube_pipelines.defs.images.sources import ImageSource, image_sources_sensor, loaded_folder
from thinkube_pipelines.defs.resources import resources_for_environment
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.settings import default_images_dir


def build_definitions(images_dir: Path | str | None = None) -> dg.Definitions:
    """Everything Dagster loads, for the image definitions in `images_dir` (default: ./images).

    Runs execute in one process: resources (and so every required setting and secret) are initialized
    when the run starts, before any step, and steps exchange nothing but records in the instance. In
    the cluster each run is its own pod, and each build a Kubernetes Job. The sensors and the schedule
    (automation.py, sources.py, hub/sensors.py) start as THINKUBE_AUTOMATION says.
    """
    source = ImageSource.from_env(Path(images_dir or default_images_dir()))
    images = load_image_definitions(loaded_folder(source))
    automation = AutomationSettings.from_env()
    status, poll_s = automation.default_status, automation.source_poll_s
    return dg.Definitions(
        assets=[*image_assets(images, automation, source), *hub_assets(images)],
        jobs=[build_images_job, hub_deploy_job, observe_bases_job(images)],
        schedules=[nightly_schedule(automation)],
        sensors=[
            automation_sensor(automation),
            image_sources_sensor(images, source, interval_s=poll_s, default_status=status),
            hub_redeploy_sensor(images, interval_s=poll_s, default_status=status),
        ],
        resources=resources_for_environment(),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
