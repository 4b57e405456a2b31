"""The thinkube-pipelines code location: one Definitions object assembled from its parts."""

from __future__ import annotations

import dagster as dg

from thinkube_pipelines.defs.hub.assets import hub_assets
from thinkube_pipelines.defs.hub.jobs import hub_deploy_job
from thinkube_pipelines.defs.images.assets import image_assets
from thinkube_pipelines.defs.images.jobs import build_images_job
from thinkube_pipelines.defs.resources import resources_for_environment
from thinkube_pipelines.images import load_image_definitions
from thinkube_pipelines.settings import default_images_dir


def build_definitions(images_dir=None) -> dg.Definitions:
    """Everything Dagster loads, for the image definitions in `images_dir` (default: ./images).

    Runs execute in one process: resources (and so every required setting and secret) are initialized
    when the run starts, before any step, and steps exchange nothing but records in the instance. In
    the cluster each run is its own pod, and each build a Kubernetes Job.
    """
    images = load_image_definitions(images_dir or default_images_dir())
    return dg.Definitions(
        assets=[*image_assets(images), *hub_assets(images)],
        jobs=[build_images_job, hub_deploy_job],
        resources=resources_for_environment(),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
