"""The OCI registry images are published to: a typed /v2/ client (plus Harbor's API) and its resource."""

from thinkube_pipelines.registry.client import (
    DigestMismatch,
    HarborArtifact,
    HarborClient,
    Manifest,
    RegistryClient,
    RegistryError,
    RegistryForbidden,
    RegistryNotFound,
    RegistryUnauthorized,
    RegistryUnreachable,
    registry_client,
)
from thinkube_pipelines.registry.resource import Registry

__all__ = [
    "DigestMismatch",
    "HarborArtifact",
    "HarborClient",
    "Manifest",
    "Registry",
    "RegistryClient",
    "RegistryError",
    "RegistryForbidden",
    "RegistryNotFound",
    "RegistryUnauthorized",
    "RegistryUnreachable",
    "registry_client",
]
