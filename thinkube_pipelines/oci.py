"""The grammar of OCI image references (distribution spec, and Docker's reference grammar for the
registry host), with nothing but the standard library: the catalog service, the hub and the pipeline all
check names against this one place.

    reference  := [domain '/'] repository [':' tag] ['@' digest]
    domain     := host [':' port]      host: DNS name, IPv4, or [IPv6]
"""

import re

#: One path component of a repository: lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
COMPONENT_PATTERN = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_PATTERN = rf"{COMPONENT_PATTERN}(?:/{COMPONENT_PATTERN})*"
TAG_PATTERN = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
DIGEST_PATTERN = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
SHA256_DIGEST_PATTERN = r"sha256:[a-f0-9]{64}"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
#: A registry host with an optional port, never a scheme or a path: `harbor.example.org`, `10.0.0.5:5000`,
#: `[fd00::1]:5000`, `localhost:5000`.
DOMAIN_PATTERN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
#: Docker's limit on `domain/repository`.
NAME_TOTAL_LENGTH_MAX = 255

_REPOSITORY = re.compile(REPOSITORY_PATTERN)
_TAG = re.compile(TAG_PATTERN)
_DIGEST = re.compile(DIGEST_PATTERN)
_SHA256_DIGEST = re.compile(SHA256_DIGEST_PATTERN)
_DOMAIN = re.compile(DOMAIN_PATTERN)


def validate_repository(repository: str) -> str:
    if not _REPOSITORY.fullmatch(repository or "") or len(repository) > NAME_TOTAL_LENGTH_MAX:
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


def validate_domain(domain: str) -> str:
    """A registry host[:port] that a container runtime reads as a registry, not as a path component:
    it has a dot, a port, brackets, or is `localhost` (else `x/library/y` means Docker Hub's `x`)."""
    if not _DOMAIN.fullmatch(domain or "") or len(domain) > NAME_TOTAL_LENGTH_MAX:
        raise ValueError(f"not a registry host[:port] (no scheme, no path): {domain!r}")
    if not any(mark in domain for mark in ".:[") and domain != "localhost":
        raise ValueError(
            f"{domain!r} would be read as a Docker Hub namespace: a registry host needs a dot or a port"
        )
    port = domain.rpartition(":")[2] if not domain.endswith("]") and ":" in domain else None
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"registry port out of range in {domain!r}")
    return domain


def is_digest(reference: str) -> bool:
    return _DIGEST.fullmatch(reference) is not None


def image_reference(repository: str, reference: str) -> str:
    """`repository@digest` or `repository:tag`."""
    return f"{repository}@{reference}" if is_digest(reference) else f"{repository}:{reference}"
