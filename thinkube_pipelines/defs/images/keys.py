"""How the image graph names things in Dagster: asset keys, groups, tags, pools."""

import re

import dagster as dg

STAGES = ("build", "published", "catalog_entry")
"""The assets the pipeline makes of one image, in the order it makes them."""
OBSERVED_STAGES = ("source", "base")
"""What it observes of one image: its folder (`source`) and, for a root image, its upstream base (`base`)."""
BUILD_POOL = "image_builds"
"""Dagster concurrency pool of every image chain: builds are heavy, the instance caps how many run at once."""
PART_TAG = "thinkube/part"
"""Asset tag that says which part of the platform an asset belongs to (`image`, later `hub`)."""
IMAGE_PART = "image"
OWNERS = ["team:platform"]
OBSERVED_TAG = "thinkube/observed"
"""Asset tag (`true`) of what the pipeline observes and never makes: image sources, upstream bases."""
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


def observed_spec(image_name: str, stage: str, kind: str, description: str) -> dg.AssetSpec:
    """The spec of something the pipeline observes of an image (its folder, a root's upstream base): in the
    image's group, tagged as observed so that builds do not wait for its first observation."""
    return dg.AssetSpec(
        asset_key(image_name, stage),
        group_name=group_name(image_name),
        owners=OWNERS,
        tags={PART_TAG: IMAGE_PART, "thinkube/image": image_name, OBSERVED_TAG: "true"},
        kinds={kind},
        description=description,
    )
