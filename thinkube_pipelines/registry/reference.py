"""The grammar of OCI image references (the distribution spec), without any HTTP: what the code location
needs at load time, apart from the registry client (which brings `requests`)."""

import hashlib
import re

DEFAULT_TIMEOUT_S = 30.0
"""Seconds a registry request may take."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# The grammar of the distribution spec (https://github.com/opencontainers/distribution-spec).
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def validate_repository(repository: str) -> str:
    if not _REPOSITORY.fullmatch(repository or "") or len(repository) > 255:
        raise ValueError(f"not a valid OCI repository name: {repository!r}")
    return repository


def validate_reference(reference: str) -> str:
    """A tag or a digest."""
    if not (_TAG.fullmatch(reference or "") or _DIGEST.fullmatch(reference or "")):
        raise ValueError(f"not a valid tag or digest: {reference!r}")
    return reference


def validate_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag or ""):
        raise ValueError(f"not a valid tag: {tag!r}")
    return tag


def validate_digest(digest: str) -> str:
    if not _SHA256_DIGEST.fullmatch(digest or ""):
        raise ValueError(f"not a sha256 digest (sha256:<64 hex>): {digest!r}")
    return digest


def image_reference(repository: str, reference: str) -> str:
    """`repository@digest` or `repository:tag`."""
    return f"{repository}@{reference}" if _DIGEST.fullmatch(reference) else f"{repository}:{reference}"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
