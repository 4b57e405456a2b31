"""Jobs over the image graph."""

from __future__ import annotations

import dagster as dg

BUILD_RUN_TAG = {"thinkube/run-kind": "image-build"}
"""Runs that build images carry this tag; dagster.yaml's run coordinator caps how many run at once."""

build_images_job = dg.define_asset_job(
    name="build_images",
    selection=dg.AssetSelection.all(),
    tags=BUILD_RUN_TAG,
    description="Build every image, verify and promote it in the registry, and record it in the catalog.",
)
