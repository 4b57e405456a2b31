"""The hub_deploy job: every asset of the hub part, and nothing of the image chains (it never builds)."""

from __future__ import annotations

import dagster as dg

from thinkube_pipelines.defs.hub.assets import HUB_PART
from thinkube_pipelines.defs.images.keys import PART_TAG

HUB_RUN_TAG = {"thinkube/run-kind": "hub-deploy"}
HUB_ASSETS = dg.AssetSelection.tag(PART_TAG, HUB_PART)

hub_deploy_job = dg.define_asset_job(
    name="hub_deploy",
    selection=HUB_ASSETS,
    tags=HUB_RUN_TAG,
    description="Deploy JupyterHub: check its dependencies (Keycloak, SeaweedFS, the catalog, Harbor), apply "
    "the SeaweedFS volumes, render the chart values from the catalog's images, and `helm upgrade --install` "
    "the release, within its time budget. Builds no image.",
)
