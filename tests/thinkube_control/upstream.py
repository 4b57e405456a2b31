"""thinkube-control's own discovery code, run against ConfigMaps: the check that discovery.py restates it.

Its three files that discovery reads and serves (the ContainerImage model, ImageDiscovery, the Jupyter images
endpoint) are kept, unchanged, in tests/reference/thinkube-control/ at discovery.COMMIT, with their Apache-2.0
licence; THINKUBE_CONTROL_GIT_DIR, set to a clone of github.com/thinkube/thinkube-control (bare or not),
reads them from that clone at the commit instead (for a newer commit: change discovery.COMMIT too). They run
unchanged: their `app.*` imports are answered by stand-in modules for the app's database session (a
SQLAlchemy declarative Base, SQLite in memory instead of PostgreSQL), and their Kubernetes client by a
CoreV1Api stand-in that answers `list_config_map_for_all_namespaces` with the real client's V1ConfigMapList
(or by the official client itself, pointed at the simulated cluster).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.thinkube_control.discovery import COMMIT

GIT_DIR_ENV = "THINKUBE_CONTROL_GIT_DIR"
KEPT = Path(__file__).resolve().parents[1] / "reference" / "thinkube-control"
"""The files of SOURCES as they are at COMMIT, with the repository's LICENSE."""
SOURCES = {
    "app.models.container_images": "backend/app/models/container_images.py",
    "app.services.image_discovery": "backend/app/services/image_discovery.py",
    "app.api.jupyter_images": "backend/app/api/jupyter_images.py",
}


def git_dir() -> str | None:
    return os.environ.get(GIT_DIR_ENV) or None


def read_source(path: str, repo: str | None = None, commit: str = COMMIT) -> tuple[str, str]:
    """The file's text and the name its code is compiled under: from the clone when one is given, else the
    copy kept in KEPT."""
    if repo is None:
        return (KEPT / path).read_text(), f"{KEPT / path} ({commit})"
    shown = subprocess.run(
        ["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
    )
    return shown.stdout, f"{repo}/{path}@{commit}"


@contextmanager
def _app_modules() -> Iterator[dict[str, types.ModuleType]]:
    """Stand-in `app`, `app.db.session`, ... packages in sys.modules while thinkube-control's files load."""
    from sqlalchemy.orm import declarative_base

    names = ["app", "app.db", "app.db.session", "app.models", "app.services", "app.api", *SOURCES]
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    for name in ("app", "app.db", "app.models", "app.services", "app.api"):
        modules[name].__path__ = []
    session = modules["app.db.session"]
    session.Base = declarative_base()
    session.get_db = lambda: None
    try:
        sys.modules.update(modules)
        yield modules
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@dataclass
class Upstream:
    """thinkube-control's classes and endpoint function, loaded from its source."""

    base: Any
    container_image: Any
    image_discovery: Any
    get_jupyter_images: Any


def load(repo: str | None = None, commit: str = COMMIT) -> Upstream:
    """thinkube-control's code from the clone named by THINKUBE_CONTROL_GIT_DIR, or from the kept copy."""
    repo = repo or git_dir()
    with _app_modules() as modules:
        for name, path in SOURCES.items():
            module = modules[name]
            text, module.__file__ = read_source(path, repo, commit)
            exec(compile(text, module.__file__, "exec"), module.__dict__)
        return Upstream(
            base=modules["app.db.session"].Base,
            container_image=modules["app.models.container_images"].ContainerImage,
            image_discovery=modules["app.services.image_discovery"].ImageDiscovery,
            get_jupyter_images=modules["app.api.jupyter_images"].get_jupyter_images,
        )


class CoreV1:
    """What ImageDiscovery calls of kubernetes.client.CoreV1Api, answering from a list of ConfigMap dicts
    with the real client's models, equality label selectors, in the API's (namespace, name) order."""

    def __init__(self, configmaps: list[dict[str, Any]]):
        self.configmaps = configmaps

    def list_config_map_for_all_namespaces(self, label_selector: str = "") -> Any:
        from kubernetes.client import ApiClient

        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [
            cm
            for cm in self.configmaps
            if all((cm["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        items.sort(key=lambda cm: (cm["metadata"].get("namespace", ""), cm["metadata"]["name"]))
        body = {"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": items}
        return ApiClient()._ApiClient__deserialize(body, "V1ConfigMapList")


class Control:
    """One thinkube-control backend: its table in SQLite, discovery against the given ConfigMaps."""

    def __init__(self, upstream: Upstream):
        from sqlalchemy import create_engine
        from sqlalchemy.orm import sessionmaker

        self.upstream = upstream
        engine = create_engine("sqlite://")
        upstream.base.metadata.create_all(engine)
        self.db = sessionmaker(bind=engine)()

    def discover(self, configmaps: list[dict[str, Any]]) -> dict[str, list[Any]]:
        discovery = self.upstream.image_discovery.__new__(self.upstream.image_discovery)
        discovery.db = self.db
        discovery.core_v1 = CoreV1(configmaps)
        return discovery.discover_all()

    def jupyter_list(self) -> list[dict[str, Any]]:
        return self.upstream.get_jupyter_images(db=self.db)

    def rows(self) -> list[Any]:
        return self.db.query(self.upstream.container_image).all()
