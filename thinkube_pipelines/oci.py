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
_PORT = r"(?::[0-9]{1,5})"
#: A registry host with an optional port, never a scheme or a path, that a container runtime reads as a
#: registry rather than as a Docker Hub namespace: a dotted name, `localhost`, an [IPv6] address, or any
#: single name with a port. `harbor.example.org`, `10.0.0.5:5000`, `[fd00::1]:5000`, `registry:5000`.
DOMAIN_PATTERN = (
    rf"(?:(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+|localhost|\[[0-9a-fA-F:.]+\]){_PORT}?"
    rf"|{_DOMAIN_COMPONENT}{_PORT})"
)
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
    """A registry host[:port] (see DOMAIN_PATTERN) with a port in range."""
    if not _DOMAIN.fullmatch(domain or "") or len(domain) > NAME_TOTAL_LENGTH_MAX:
        raise ValueError(
            f"not a registry host[:port] (a dotted name, localhost or a port; no scheme or path): {domain!r}"
        )
    host, _, port = domain.rpartition(":") if not domain.endswith("]") else (domain, "", "")
    if host and port and not 0 < int(port) < 65536:
        raise ValueError(f"registry port out of range in {domain!r}")
    return domain


def is_digest(reference: str) -> bool:
    return _DIGEST.fullmatch(reference) is not None


def image_reference(repository: str, reference: str) -> str:
    """`repository@digest` or `repository:tag`."""
    return f"{repository}@{reference}" if is_digest(reference) else f"{repository}:{reference}"
