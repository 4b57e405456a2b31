"""Jobs over the image graph."""

from __future__ import annotations

import dagster as dg

from thinkube_pipelines.defs.images.keys import IMAGE_PART, OBSERVED_TAG, PART_TAG

FORCE_REBUILD_TAG = "thinkube/force-rebuild"
"""Run tag: `true` builds even when the registry already serves the build key (e.g. for fresh packages)."""
BUILD_RUN_TAG = {"thinkube/run-kind": "image-build"}
"""Runs that build images carry this tag; dagster.yaml's run coordinator caps how many run at once."""

IMAGE_ASSETS = dg.AssetSelection.tag(PART_TAG, IMAGE_PART, include_sources=True)
"""Every asset of every image chain (and their checks), observed or made, and nothing of the hub."""
MADE_IMAGE_ASSETS = IMAGE_ASSETS - dg.AssetSelection.tag(OBSERVED_TAG, "true", include_sources=True)
"""What the image pipeline makes: each image's build, published and catalog_entry, and their checks."""

build_images_job = dg.define_asset_job(
    name="build_images",
    selection=MADE_IMAGE_ASSETS,
    tags=BUILD_RUN_TAG,
    description="Build every image (unless the registry already has its build key), check it, promote it in "
    "the registry and record it in the catalog. Run tag thinkube/force-rebuild=true builds regardless.",
)
