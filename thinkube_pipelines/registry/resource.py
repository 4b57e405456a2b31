"""The registry every image is published to, as a Dagster resource (a thin layer over RegistryClient).

In production this is Harbor (`flavor="harbor"`); locally the CNCF distribution registry. Credentials come
from the environment in the caller's configuration, e.g.
`Registry(username=dg.EnvVar(USERNAME_ENV), password=dg.EnvVar(PASSWORD_ENV))` with the names below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from thinkube_pipelines.builders.base import RegistryAccess, RegistryAuth
from thinkube_pipelines.oci import validate_digest, validate_repository
from thinkube_pipelines.registry.reference import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from thinkube_pipelines.registry.client import RegistryClient

USERNAME_ENV = "THINKUBE_REGISTRY_USERNAME"
PASSWORD_ENV = "THINKUBE_REGISTRY_PASSWORD"


class Registry(dg.ConfigurableResource):
    """The OCI registry (Harbor, or the CNCF distribution registry locally) that images are pushed to."""

    url: str = Field(
        "http://127.0.0.1:5000",
        description="Base URL of the registry, http(s)://host[:port] (e.g. https://harbor.example.org).",
    )
    project: str = Field(
        "library",
        description="The Harbor project (or, on a plain registry, the namespace) every image lives under.",
    )
    username: str | None = Field(
        None,
        description=f"User (or Harbor robot account) to authenticate as; usually EnvVar({USERNAME_ENV!r}). "
        "None: anonymous.",
    )
    password: str | None = Field(
        None,
        repr=False,
        description=f"Password or robot secret of `username`; usually EnvVar({PASSWORD_ENV!r}).",
    )
    flavor: Literal["distribution", "harbor"] = Field(
        "distribution",
        description="'harbor' enables Harbor's management API (project and artifact checks); "
        "'distribution' speaks only the OCI /v2/ API.",
    )
    verify_tls: bool = Field(True, description="Verify the registry's TLS certificate (https URLs).")
    ca_bundle: str | None = Field(
        None, description="Path of a PEM CA bundle to verify the registry's certificate with (private CAs)."
    )
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, description="Seconds to wait for each registry request.")

    def client(self) -> RegistryClient:
        """A client of this registry: a HarborClient when `flavor` is 'harbor'."""
        from thinkube_pipelines.registry.client import registry_client  # brings requests: not at load time

        verify: bool | str = self.ca_bundle if (self.verify_tls and self.ca_bundle) else self.verify_tls
        return registry_client(
            self.url,
            self.username,
            self.password,
            flavor=self.flavor,
            verify_tls=verify,
            timeout_s=self.timeout_s,
        )

    @property
    def host(self) -> str:
        """host[:port] as image references name the registry, e.g. "127.0.0.1:5000"."""
        return urlsplit(self.url).netloc.rpartition("@")[2]

    def access(self) -> RegistryAccess:
        """How a builder or runner reaches this registry: credentials, TLS verification and our CA as text
        (so that it travels to a build Job on another machine). Plain-http registries skip TLS."""
        https = urlsplit(self.url).scheme == "https"
        auth = None
        if self.username:
            auth = RegistryAuth(host=self.host, username=self.username, password=self.password or "")
        ca_pem = None
        if https and self.verify_tls and self.ca_bundle:
            try:
                ca_pem = Path(self.ca_bundle).read_text()
            except OSError as exc:
                from thinkube_pipelines.registry.client import RegistryError

                raise RegistryError(
                    f"registry {self.url}: cannot read its CA bundle {self.ca_bundle}: {exc.strerror}",
                    registry=self.url,
                    action="read the CA bundle",
                ) from exc
        return RegistryAccess(auth=auth, tls_verify=https and self.verify_tls, ca_pem=ca_pem)

    def repository(self, image_name: str) -> str:
        """The repository of an image inside the registry: "<project>/<image_name>"."""
        return validate_repository(f"{self.project}/{image_name}")

    def reference(self, image_name: str, digest: str) -> str:
        """The pullable, immutable reference "<host>/<project>/<image_name>@<digest>"."""
        return f"{self.host}/{self.repository(image_name)}@{validate_digest(digest)}"

    def check_ready(self, image_name: str) -> None:
        """Fail, naming the registry (and project), unless `image_name` can be pushed here now.

        Checks that the registry answers and accepts the credentials, that the Harbor project exists
        (flavor 'harbor'), and that the credentials may push to the image's repository.
        """
        from thinkube_pipelines.registry.client import HarborClient, RegistryNotFound

        client = self.client()
        repository = self.repository(image_name)
        client.ping()
        if isinstance(client, HarborClient) and not client.project_exists(self.project):
            who = f"user {self.username!r}" if self.username else "anonymous access"
            action = f"look up Harbor project {self.project!r}"
            raise RegistryNotFound(
                f"registry {client.url}: Harbor project {self.project!r} does not exist "
                f"(or is not visible to {who}); create it in Harbor or set the registry's project",
                registry=client.url,
                action=action,
                status=404,
            )
        client.check_push_access(repository)
