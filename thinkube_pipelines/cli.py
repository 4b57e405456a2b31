"""`thinkube-pipelines`: the operator's command line for what does not need the Dagster UI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from thinkube_pipelines import settings
from thinkube_pipelines.images import ImageDefinitionError, ImageSet, load_image_definitions
from thinkube_pipelines.images.lock import LockError, lock_images, lock_problems, locked_packages


class CommandError(Exception):
    """Stops a command with exit status 1; the message says what is wrong and where."""


def _load(images_dir: Path | None, *, check_locks: bool = True) -> ImageSet:
    images_dir = images_dir or settings.default_images_dir()
    try:
        return load_image_definitions(images_dir, check_locks=check_locks)
    except ImageDefinitionError as exc:
        lines = [f"{images_dir}: {len(exc.problems)} problem(s) in the image definitions:"]
        lines += [f"  {problem}" for problem in exc.problems]
        raise CommandError("\n".join(lines)) from None


def _images_check(args: argparse.Namespace) -> int:
    print(_describe(_load(args.dir)))
    return 0


def _images_lock(args: argparse.Namespace) -> int:
    """Refresh the locks of the named images and their descendants (all images when none is named)."""
    images = _load(args.dir, check_locks=False)
    try:
        results = lock_images(
            images, args.names, upgrade=args.upgrade, exclude_newer=args.exclude_newer, on_line=print
        )
    except LockError as exc:
        raise CommandError(str(exc)) from None
    changed = sum(r.changed for r in results)
    print(f"{len(results)} image(s) locked, {changed} lock(s) changed")
    left = lock_problems(images)
    if left:
        print(f"{len(left)} other image(s) still need a new lock:")
        print("\n".join(f"  {problem}" for problem in left))
    return 0


def _base_make(args: argparse.Namespace) -> int:
    """Publish a Debian base with Python to the registry, for machines where the upstream base registry is
    out of reach; point THINKUBE_BASE_MIRROR at it. Uses the registry settings of the code location."""
    # Imported here: they pull in Dagster, which `images check` does not need.
    from dagster import DagsterError

    from thinkube_pipelines.builders.debian_base import (
        DEFAULT_REPOSITORY_NAME,
        DEFAULT_TAG,
        DebianBaseError,
        publish_debian_base,
    )
    from thinkube_pipelines.defs.resources import local_resources
    from thinkube_pipelines.registry.client import RegistryError

    try:
        registry = local_resources()["registry"].process_config_and_initialize()
    except DagsterError as exc:
        raise CommandError(f"registry settings: {exc}") from None
    repository = registry.repository(DEFAULT_REPOSITORY_NAME)
    try:
        digest = publish_debian_base(registry.client(), repository, DEFAULT_TAG, on_line=print)
    except (DebianBaseError, RegistryError) as exc:
        raise CommandError(str(exc)) from None
    reference = f"{registry.host}/{repository}:{DEFAULT_TAG}"
    print(f"{reference} ({digest}): use it with {settings.BASE_MIRROR_ENV}={reference}")
    return 0


def _hub_render(args: argparse.Namespace) -> int:
    """Render the hub release (chart values and the manifests applied beside the chart) from the settings
    and the live catalog, validate it and write it to --out; no cluster is touched."""
    # Imported here: `images check` needs none of this.
    from thinkube_pipelines.catalog.client import CatalogClient, CatalogError
    from thinkube_pipelines.hub.render import render_release, write_release
    from thinkube_pipelines.hub.settings import CATALOG_URL_ENV, HubConfigError, HubSettings
    from thinkube_pipelines.hub.values import HubValuesError

    try:
        hub = HubSettings.from_env()
    except HubConfigError as exc:
        raise CommandError(str(exc)) from None
    catalog = CatalogClient(base_url=hub.catalog_url, timeout_s=hub.catalog_timeout_s)
    try:
        images = catalog.jupyter_images()
    except CatalogError as exc:
        raise CommandError(f"the catalog ({CATALOG_URL_ENV}={hub.catalog_url}): {exc}") from None
    try:
        rendered = render_release(hub, images)
    except HubValuesError as exc:
        raise CommandError(str(exc)) from None
    for path in write_release(rendered, args.out):
        print(path)
    names = ", ".join(item.name for item in images)
    print(f"hub release {hub.release} in {hub.namespace}: {len(images)} image(s) ({names})")
    return 0


def _describe(images: ImageSet) -> str:
    width = max(len(n) for n in images.names)
    lines = []
    for d in images:
        origin = f"parent {d.spec.parent}" if d.spec.base is None else f"base {d.spec.base.image}"
        flags = [f for f, on in (("gpu", d.spec.gpu_required), ("default", d.spec.default)) if on]
        suffix = f"  [{', '.join(flags)}]" if flags else ""
        locked = locked_packages(d.lock_file.read_text(encoding="utf-8")) if d.lock_file.is_file() else {}
        counts = f"{len(d.requirements)} pins, {len(locked)} locked"
        lines.append(f"{d.name:<{width}}  {origin}  ({counts}){suffix}")
    lines.append(f"{len(images)} image(s) OK")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkube-pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    images = commands.add_parser("images", help="work with the image definitions in images/")
    images_commands = images.add_subparsers(dest="images_command", required=True)
    check = images_commands.add_parser(
        "check", help="load and validate an images folder; print each image with its parent"
    )
    check.add_argument(
        "dir", nargs="?", type=Path, help=f"images folder (default: ${settings.IMAGES_DIR_ENV} or ./images)"
    )
    check.set_defaults(handler=_images_check)
    lock = images_commands.add_parser(
        "lock",
        help="resolve each image's requirements.lock (every package with its hashes), parents first",
        description="Write images/<name>/requirements.lock with `uv pip compile` for the image's Python on "
        "Linux x86-64: the named images and their descendants, or every image when none is named. "
        "Versions already locked are kept where they still fit, unless --upgrade.",
    )
    lock.add_argument("names", nargs="*", metavar="NAME", help="images to lock (default: all)")
    lock.add_argument(
        "--dir", type=Path, help=f"images folder (default: ${settings.IMAGES_DIR_ENV} or ./images)"
    )
    lock.add_argument(
        "--upgrade", action="store_true", help="resolve everything anew instead of keeping locked versions"
    )
    lock.add_argument(
        "--exclude-newer",
        metavar="DATE",
        help="leave out files uploaded after DATE (e.g. 2024-09-25): resolve as of when the pins were chosen",
    )
    lock.set_defaults(handler=_images_lock)
    base = commands.add_parser("base", help="base images for root images")
    base_commands = base.add_subparsers(dest="base_command", required=True)
    make = base_commands.add_parser(
        "make", help="make a Debian bookworm base with Python (mmdebstrap) in the local buildah storage"
    )
    make.add_argument(
        "--reference", help="name to store it under (default: localhost/thinkube-base:bookworm)"
    )
    make.set_defaults(handler=_base_make)
    hub = commands.add_parser("hub", help="the JupyterHub release (hub_deploy)")
    hub_commands = hub.add_subparsers(dest="hub_command", required=True)
    render = hub_commands.add_parser(
        "render",
        help="write the hub's chart values and manifests for review; touches no cluster",
        description="Render the JupyterHub release from the THINKUBE_HUB_* settings and the live catalog "
        f"(${settings.CATALOG_URL_ENV}): values.yaml (the chart's values, checked against its schema) and "
        "manifests.yaml (the SeaweedFS volumes and the hub's node-reader RBAC, checked with "
        "kubernetes-validate --strict), written to DIR. Nothing is written unless all of it is valid.",
    )
    render.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    render.set_defaults(handler=_hub_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
