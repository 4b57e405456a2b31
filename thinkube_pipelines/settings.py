"""Settings shared by the command line and the Dagster code location, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

IMAGES_DIR_ENV = "THINKUBE_IMAGES_DIR"
CATALOG_URL_ENV = "THINKUBE_CATALOG_URL"
CATALOG_TOKEN_ENV = "THINKUBE_CATALOG_TOKEN"
REGISTRY_ENV = "THINKUBE_REGISTRY"
REGISTRY_PROJECT_ENV = "THINKUBE_REGISTRY_PROJECT"

DEFAULT_CATALOG_URL = "http://127.0.0.1:8080"
DEFAULT_REGISTRY = "127.0.0.1:5000"
DEFAULT_REGISTRY_PROJECT = "library"


def default_images_dir() -> Path:
    """Where image definitions live: $THINKUBE_IMAGES_DIR, else ./images (the repository's own)."""
    return Path(os.environ.get(IMAGES_DIR_ENV, "images"))


def catalog_url() -> str:
    return os.environ.get(CATALOG_URL_ENV) or DEFAULT_CATALOG_URL


def catalog_token() -> str | None:
    return os.environ.get(CATALOG_TOKEN_ENV) or None


def registry_host() -> str:
    return os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY


def registry_project() -> str:
    """The registry project (Harbor) or namespace every image is pushed under."""
    return os.environ.get(REGISTRY_PROJECT_ENV) or DEFAULT_REGISTRY_PROJECT
