"""Jobs over the image graph."""

from __future__ import annotations

import dagster as dg

from thinkube_pipelines.defs.images.keys import IMAGE_PART, PART_TAG

BUILD_RUN_TAG = {"thinkube/run-kind": "image-build"}
"""Runs that build images carry this tag; dagster.yaml's run coordinator caps how many run at once."""

IMAGE_ASSETS = dg.AssetSelection.tag(PART_TAG, IMAGE_PART)
"""Every asset of every image chain (and their checks), and nothing of the other parts (the hub)."""

build_images_job = dg.define_asset_job(
    name="build_images",
    selection=IMAGE_ASSETS,
    tags=BUILD_RUN_TAG,
    description="Build every image (unless the registry already has its build key), check it, promote it in "
    "the registry and record it in the catalog. Run tag thinkube/force-rebuild=true builds regardless.",
)
