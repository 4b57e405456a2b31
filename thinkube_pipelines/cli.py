"""`thinkube-pipelines`: the operator's command line for what does not need the Dagster UI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from thinkube_pipelines import settings
from thinkube_pipelines.catalog.client import CatalogClient, CatalogError
from thinkube_pipelines.catalog.entries import catalog_upsert
from thinkube_pipelines.images import ImageDefinitionError, ImageSet, load_image_definitions


class CommandError(Exception):
    """Stops a command with exit status 1; the message says what is wrong and where."""


def _load(images_dir: Path | None) -> ImageSet:
    images_dir = images_dir or settings.default_images_dir()
    try:
        return load_image_definitions(images_dir)
    except ImageDefinitionError as exc:
        lines = [f"{images_dir}: {len(exc.problems)} problem(s) in the image definitions:"]
        lines += [f"  {problem}" for problem in exc.problems]
        raise CommandError("\n".join(lines)) from None


def _images_check(args: argparse.Namespace) -> int:
    print(_describe(_load(args.dir)))
    return 0


def _images_register(args: argparse.Namespace) -> int:
    """Record every image definition in the catalog, inactive until the pipeline publishes it.

    Images the catalog already holds are left as they are: a published entry is never replaced by an
    unbuilt one.
    """
    images = _load(args.dir)
    client = CatalogClient(settings.catalog_url(), token=settings.catalog_token())
    registry, project = settings.registry_host(), settings.registry_project()
    try:
        for d in images:
            if not d.spec.catalog:
                print(f"{d.name}: build-only, not offered to users")
            elif client.get(d.name) is not None:
                print(f"{d.name}: already in the catalog")
            else:
                entry = catalog_upsert(
                    d, registry=registry, repository=f"{project}/{d.name}", tag="latest", active=False
                )
                client.upsert(entry)
                print(f"{d.name}: registered (inactive until built) at {client.item_url(d.name)}")
    except CatalogError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _describe(images: ImageSet) -> str:
    width = max(len(n) for n in images.names)
    lines = []
    for d in images:
        origin = f"parent {d.spec.parent}" if d.spec.base is None else f"base {d.spec.base.image}"
        flags = [f for f, on in (("gpu", d.spec.gpu_required), ("default", d.spec.default)) if on]
        if not d.spec.catalog:
            flags.append("build-only")
        suffix = f"  [{', '.join(flags)}]" if flags else ""
        lines.append(f"{d.name:<{width}}  {origin}  ({len(d.requirements)} pins){suffix}")
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
    register = images_commands.add_parser(
        "register",
        help=f"record the image definitions in the catalog at ${settings.CATALOG_URL_ENV} "
        f"(token: ${settings.CATALOG_TOKEN_ENV}), inactive until built",
    )
    register.add_argument("dir", nargs="?", type=Path, help="images folder (as for check)")
    register.set_defaults(handler=_images_register)
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
