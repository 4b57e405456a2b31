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


UPSTREAM_HOSTS = {"docker.io": "registry-1.docker.io"}
"""Hosts whose registry API answers under another name."""


@dataclass(frozen=True)
class BaseReference:
    """An image reference split into its parts: `host/repository[:tag][@digest]`."""

    host: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, reference: str) -> BaseReference:
        host = registry_host_of(reference)
        rest = reference[len(host) + 1 :]
        rest, _, digest = rest.partition("@")
        repository, _, tag = rest.partition(":")
        return cls(host, repository, tag or None, digest or None)

    def by_digest(self, digest: str) -> str:
        return f"{self.host}/{self.repository}@{digest}"

    def __str__(self) -> str:
        return (
            f"{self.host}/{self.repository}"
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


def base_reference(definition: ImageDefinition, base_mirror: str | None) -> BaseReference:
    """What a root image builds FROM: the operator's mirror (THINKUBE_BASE_MIRROR), else image.yaml's base."""
    assert definition.spec.base is not None, "only root images have a base"
    return BaseReference.parse(base_mirror or definition.spec.base.image)


def tag_digest(reference: BaseReference, ours: RegistryClient) -> str:
    """The digest `reference`'s tag names now (one manifest request): through our registry's client when it
    lives there, else anonymously at its upstream registry. BaseResolutionError naming it otherwise."""
    from thinkube_pipelines.registry.client import RegistryClient, RegistryError

    assert reference.tag is not None
    if reference.host == ours.host:
        client, where = ours, f"the registry {ours.url}"
    else:
        host = UPSTREAM_HOSTS.get(reference.host, reference.host)
        client, where = RegistryClient(f"https://{host}"), f"its registry https://{host}"
    try:
        digest = client.digest_of(reference.repository, reference.tag)
    except RegistryError as exc:
        raise BaseResolutionError(f"base image {reference}: {exc}") from exc
    if digest is None:
        hint = " (`make base` publishes the local Debian base)" if client is ours else ""
        raise BaseResolutionError(f"base image {reference} is not in {where}{hint}")
    return digest


def pinned_base(definition: ImageDefinition, base_mirror: str | None, registry: RegistryClient) -> str:
    """The digest reference a root image builds FROM: its base by the digest it names, or, named by tag
    alone, by the digest that tag names now."""
    assert definition.spec.base is not None, "only root images have a base"
    raw = base_mirror or definition.spec.base.image
    if "@sha256:" in raw:
        return raw
    reference = BaseReference.parse(raw)
    return reference.by_digest(tag_digest(reference, registry))


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
