"""Settings of the catalog service, read from the environment.

The defaults run locally (a SQLite file, no writer). Writes are never open by default: without a service
token or an OIDC issuer the service refuses every write.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DATABASE_URL_ENV = "THINKUBE_CATALOG_DATABASE_URL"
DEFAULT_DATABASE_URL = f"sqlite:///{Path('.state') / 'catalog.db'}"


class CatalogSettings(BaseSettings):
    """Everything the catalog service reads from its environment."""

    model_config = SettingsConfigDict(validate_by_name=True, validate_by_alias=True, extra="ignore")

    database_url: SecretStr = Field(
        SecretStr(DEFAULT_DATABASE_URL),
        validation_alias=DATABASE_URL_ENV,
        description=(
            "SQLAlchemy URL of the catalog database: sqlite:///path/to/catalog.db or "
            "postgresql+psycopg://user:password@host/db (postgresql:// means psycopg 3). "
            "Default: a SQLite file at ./.state/catalog.db (its folder is created)."
        ),
    )
    token: SecretStr | None = Field(
        None,
        validation_alias="THINKUBE_CATALOG_TOKEN",
        description="Service token that may write to the catalog (sent as `Authorization: Bearer`).",
    )
    oidc_issuer: str | None = Field(
        None,
        validation_alias="THINKUBE_OIDC_ISSUER",
        description=(
            "Keycloak realm URL (e.g. https://auth.example.org/realms/thinkube), exactly the `issuer` its "
            "discovery document names: its JWT access tokens may write, given the writer role. Only access "
            "tokens (header `typ` at+jwt, or claim `typ` Bearer as Keycloak marks them); ID and refresh "
            "tokens are refused (401). The discovery document names the signing keys (JWKS); a discovery "
            "or JWKS out of reach, or a discovery naming another issuer, answers 503 naming the issuer."
        ),
    )
    oidc_audience: str | None = Field(
        None,
        validation_alias="THINKUBE_OIDC_AUDIENCE",
        description=(
            "The catalog's client id in the realm (e.g. thinkube-control). When set, an access token must "
            "carry it in `aud`, and the writer role counts as a client role only under "
            "`resource_access.<this value>.roles`. Unset: `aud` is not checked and only realm roles count."
        ),
    )
    writer_role: str = Field(
        "image-writer",
        min_length=1,
        validation_alias="THINKUBE_CATALOG_WRITER_ROLE",
        description=(
            "Role an OIDC access token needs to write: a realm role (`realm_access.roles`) or a role of "
            "the catalog's own client (`resource_access.<THINKUBE_OIDC_AUDIENCE>.roles`); a role of any "
            "other client does not count (403)."
        ),
    )

    rebuild_role: str = Field(
        "image-rebuilder",
        min_length=1,
        validation_alias="THINKUBE_CATALOG_REBUILD_ROLE",
        description=(
            "Role an OIDC access token needs to ask for a rebuild (POST /api/v1/images/{name}/rebuild), "
            "counted as the writer role is: a realm role or a role of the catalog's own client. The "
            "service token may always ask."
        ),
    )
    dagster_graphql_url: str | None = Field(
        None,
        validation_alias="THINKUBE_DAGSTER_GRAPHQL_URL",
        description=(
            "Dagster's GraphQL endpoint (e.g. http://dagster-webserver:3000/graphql): rebuilds are "
            "launched and builds followed through it. Unset: rebuilds and build status answer 503 "
            "naming this setting; reads of the catalog are unaffected."
        ),
    )
    dagster_ui_url: str | None = Field(
        None,
        validation_alias="THINKUBE_DAGSTER_UI_URL",
        description=(
            "Dagster's UI as users reach it (e.g. https://dagster.example.org): builds link to "
            "<this>/runs/<run_id>. Unset: no link (null)."
        ),
    )
    dagster_timeout_s: float = Field(
        10.0,
        gt=0,
        validation_alias="THINKUBE_DAGSTER_TIMEOUT_S",
        description="Seconds one request to Dagster's GraphQL API may take before it counts as unreachable.",
    )
    build_log_poll_s: float = Field(
        0.5,
        gt=0,
        le=60,
        validation_alias="THINKUBE_CATALOG_BUILD_LOG_POLL_S",
        description="Seconds between two polls of Dagster for a build's new log lines and status.",
    )

    ui_client_id: str = Field(
        "thinkube-catalog-ui",
        min_length=1,
        validation_alias="THINKUBE_CATALOG_UI_CLIENT_ID",
        description=(
            "Client id the catalog's web page signs users in with, in the realm of THINKUBE_OIDC_ISSUER: "
            "a PUBLIC client (no secret) with the standard flow (authorization code, PKCE S256), the page's "
            "URL as redirect URI and its origin as web origin (CORS), and an audience mapper adding "
            "THINKUBE_OIDC_AUDIENCE to its access tokens. Sent to the browser: never a secret."
        ),
    )
    ui_scopes: str = Field(
        "openid profile",
        min_length=1,
        validation_alias="THINKUBE_CATALOG_UI_SCOPES",
        description="Space-separated scopes the web page asks for when it signs a user in.",
    )

    @field_validator("database_url")
    @classmethod
    def _parsable_url(cls, value: SecretStr) -> SecretStr:
        """A parsable URL of a supported database, held as a secret: it may carry a password, so no
        repr, log line or error shows it (`.get_secret_value()` where it is used)."""
        try:
            url = make_url(value.get_secret_value())
        except ArgumentError:
            # The message must not echo the value: it may hold a password.
            raise ValueError("is not a database URL (expected e.g. sqlite:///catalog.db)") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"names a {url.get_backend_name()} database; the catalog runs on sqlite or postgresql"
            )
        # Bare postgresql:// would pick psycopg2; the catalog is written for psycopg 3.
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return SecretStr(url.render_as_string(hide_password=False))

    @field_validator(
        "token", "oidc_issuer", "oidc_audience", "dagster_graphql_url", "dagster_ui_url", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An exported-but-empty variable must not become an empty (and thus guessable) token.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def has_writer(self) -> bool:
        """Whether any source of write credentials is configured."""
        return self.token is not None or self.oidc_issuer is not None
