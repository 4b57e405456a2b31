"""How the image graph names things in Dagster: asset keys, groups, tags, pools."""

import re

import dagster as dg

STAGES = ("source", "build", "published", "catalog_entry")
"""The assets of one image, in the order they are made."""
BUILD_POOL = "image_builds"
"""Dagster concurrency pool of every image chain: builds are heavy, the instance caps how many run at once."""
PART_TAG = "thinkube/part"
"""Asset tag that says which part of the platform an asset belongs to (`image`, later `hub`)."""
IMAGE_PART = "image"
OWNERS = ["team:platform"]
SMOKE_CHECK = "smoke"
GPU_CHECK = "gpu"


def group_name(image_name: str) -> str:
    """Dagster group (and op) names are identifiers: `my-image` -> `my_image`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", image_name)


def asset_key(image_name: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([image_name, stage])


def smoke_check_key(image_name: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(asset_key(image_name, "build"), SMOKE_CHECK)


def gpu_check_key(image_name: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(asset_key(image_name, "build"), GPU_CHECK)
