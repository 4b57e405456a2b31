"""What a build will make, decided before anything is built: its inputs, and the key that names them.

The build key is a hash of everything that decides the result: the build context's digest (the image
folder, its lock included), the exact digest it is built FROM (the parent's published digest, or the
current digest of the root image's base), the build arguments, the labels and the target platform. The
registry tag `build-<key>` names the result, so a build whose key the registry already serves is not
built again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thinkube_pipelines.builders.base import BuildContext, BuildRequest, RegistryAccess, registry_host_of
from thinkube_pipelines.images import ImageDefinition
from thinkube_pipelines.images.spec import BASE_IMAGE_ARG, PARENT_IMAGE_ARG

if TYPE_CHECKING:
    from thinkube_pipelines.registry.client import RegistryClient

BUILD_KEY_LABEL = "org.thinkube.build-key"
BUILD_TAG_PREFIX = "build-"
KEY_LENGTH = 32
"""Hex digits of the key in the tag (128 bits)."""


class BaseResolutionError(ValueError):
    """The image a root image builds FROM cannot be pinned to a digest."""


def pinned_base(definition: ImageDefinition, base_mirror: str | None, registry: RegistryClient) -> str:
    """The digest reference a root image builds FROM: its base from image.yaml (pinned by digest), or the
    operator's mirror of it resolved to its current digest in our registry (one manifest request)."""
    assert definition.spec.base is not None, "only root images have a base"
    reference = base_mirror or definition.spec.base.image
    if "@sha256:" in reference:
        return reference
    if registry_host_of(reference) != registry.host:
        raise BaseResolutionError(
            f"base image {reference!r} (THINKUBE_BASE_MIRROR) names neither a digest nor an image in the "
            f"registry {registry.url}; pin it by digest or publish it there"
        )
    repository, _, tag = reference.partition("/")[2].partition(":")
    digest = registry.digest_of(repository, tag or "latest")
    if digest is None:
        raise BaseResolutionError(
            f"base image {reference!r} (THINKUBE_BASE_MIRROR) is not in the registry {registry.url}; "
            "publish it there first (`make base` does so for the local Debian base)"
        )
    return f"{registry.host}/{repository}@{digest}"


@dataclass(frozen=True)
class BuildPlan:
    """One build, fully decided: the request a builder gets, and its key."""

    request: BuildRequest
    key: str
    from_image: str
    repository: str
    """Where it is pushed inside the registry (`project/name`)."""

    @property
    def tag(self) -> str:
        return f"{BUILD_TAG_PREFIX}{self.key}"


def plan_build(
    definition: ImageDefinition,
    *,
    context: BuildContext,
    from_image: str,
    registry_host: str,
    repository: str,
    platform: str,
    registry: RegistryAccess,
) -> BuildPlan:
    """The build of `definition` FROM `from_image` (a digest reference), pushed to `registry_host/repository`
    under `build-<key>`; `registry` says how the builder reaches it."""
    spec = definition.spec
    arg = PARENT_IMAGE_ARG if spec.parent else BASE_IMAGE_ARG
    build_args = {arg: from_image}
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.description": spec.description,
        "org.opencontainers.image.base.name": from_image.split("@", 1)[0],
        "org.opencontainers.image.base.digest": from_image.split("@", 1)[1],
    }
    inputs = {
        "context": context.digest,
        "dockerfile": context.dockerfile,
        "from": from_image,
        "build_args": build_args,
        "labels": labels,
        "platform": platform,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]
    request = BuildRequest(
        image_name=spec.name,
        context=context,
        build_args=build_args,
        target=f"{registry_host}/{repository}:{BUILD_TAG_PREFIX}{key}",
        labels={**labels, BUILD_KEY_LABEL: key},
        platform=platform,
        registry=registry,
    )
    return BuildPlan(request=request, key=key, from_image=from_image, repository=repository)
