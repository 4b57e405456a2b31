"""`thinkube-pipelines`: the operator's command line for what does not need the Dagster UI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from thinkube_pipelines import settings
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


def _base_make(args: argparse.Namespace) -> int:
    """Make a Debian base with Python in the local builder's storage, for machines where the upstream
    base registry is out of reach; point THINKUBE_BASE_MIRROR at it."""
    # Imported here: they pull in Dagster, which `images check` does not need.
    from thinkube_pipelines.builders.debian_base import DEFAULT_REFERENCE, DebianBaseError, make_debian_base
    from thinkube_pipelines.defs.resources import local_resources

    reference = args.reference or DEFAULT_REFERENCE
    try:
        image_id = make_debian_base(local_resources()["builder"], reference=reference, on_line=print)
    except DebianBaseError as exc:
        raise CommandError(str(exc)) from None
    print(f"{reference} ({image_id[:19]}): use it with {settings.BASE_MIRROR_ENV}={reference}")
    return 0


def _describe(images: ImageSet) -> str:
    width = max(len(n) for n in images.names)
    lines = []
    for d in images:
        origin = f"parent {d.spec.parent}" if d.spec.base is None else f"base {d.spec.base.image}"
        flags = [f for f, on in (("gpu", d.spec.gpu_required), ("default", d.spec.default)) if on]
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
    base = commands.add_parser("base", help="base images for root images")
    base_commands = base.add_subparsers(dest="base_command", required=True)
    make = base_commands.add_parser(
        "make", help="make a Debian bookworm base with Python (mmdebstrap) in the local buildah storage"
    )
    make.add_argument(
        "--reference", help="name to store it under (default: localhost/thinkube-base:bookworm)"
    )
    make.set_defaults(handler=_base_make)
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
