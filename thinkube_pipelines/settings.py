"""The environment variables the command line and the code location read: names and defaults in one place.

Secrets (registry password, catalog token) are only ever passed on by name (dagster.EnvVar), never read
into configuration values that Dagster would show or store.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGES_DIR_ENV = "THINKUBE_IMAGES_DIR"
STATE_DIR_ENV = "THINKUBE_STATE_DIR"
ENVIRONMENT_ENV = "THINKUBE_ENVIRONMENT"
CATALOG_URL_ENV = "THINKUBE_CATALOG_URL"
CATALOG_TOKEN_ENV = "THINKUBE_CATALOG_TOKEN"
REGISTRY_URL_ENV = "THINKUBE_REGISTRY_URL"
REGISTRY_PROJECT_ENV = "THINKUBE_REGISTRY_PROJECT"
REGISTRY_FLAVOR_ENV = "THINKUBE_REGISTRY_FLAVOR"
BASE_MIRROR_ENV = "THINKUBE_BASE_MIRROR"
BUILD_CA_BUNDLE_ENV = "THINKUBE_BUILD_CA_BUNDLE"
BUILD_PLATFORM_ENV = "THINKUBE_BUILD_PLATFORM"
BUILDER_ENV = "THINKUBE_BUILDER"
GPU_TEST_ENV = "THINKUBE_GPU_TEST"
DOCKER_HOST_ENV = "DOCKER_HOST"
REGISTRY_ANONYMOUS_ENV = "THINKUBE_REGISTRY_ANONYMOUS"
REGISTRY_CA_BUNDLE_ENV = "THINKUBE_REGISTRY_CA_BUNDLE"

DEFAULT_CATALOG_URL = "http://127.0.0.1:8080"
DEFAULT_REGISTRY_URL = "http://127.0.0.1:5000"
DEFAULT_REGISTRY_PROJECT = "library"


def setting(name: str, default: str | None = None) -> str | None:
    """The variable's value; an empty one counts as unset."""
    return os.environ.get(name) or default


def default_images_dir() -> Path:
    """Where image definitions live: $THINKUBE_IMAGES_DIR, else ./images (the repository's own)."""
    return Path(setting(IMAGES_DIR_ENV, "images"))


def state_dir() -> Path:
    """Where local state lives (buildah storage, caches): $THINKUBE_STATE_DIR, else ./.state."""
    return Path(setting(STATE_DIR_ENV, ".state"))
