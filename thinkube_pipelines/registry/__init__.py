"""The OCI registry images are published to: the `Registry` resource here; the typed /v2/ client (plus
Harbor's API) in `registry.client`, imported where it is used (it brings `requests`, which the code location
does not need to load), the reference grammar in `registry.reference`."""

from thinkube_pipelines.registry.resource import Registry

__all__ = ["Registry"]
