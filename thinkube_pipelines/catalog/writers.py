"""Who may write to the catalog: the service token, or a Keycloak access token carrying the writer role.

Reads stay open (the hub reads at spawn time without credentials); every write goes through
`WriteAccess.authorize`. Tokens are never logged, nor echoed in errors.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from jwt import PyJWKClient

from thinkube_pipelines.catalog.settings import CatalogSettings

log = logging.getLogger(__name__)

#: Only asymmetric signatures: a symmetric one would need a secret shared with every reader of the JWKS.
SIGNING_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]


@dataclass(frozen=True)
class Writer:
    """Who is writing, for the log: a token subject or the service token."""

    name: str


class AccessDenied(Exception):
    """A write refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str, *, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.challenge = challenge


def _invalid_token(detail: str) -> AccessDenied:
    return AccessDenied(401, detail, challenge='Bearer error="invalid_token"')


class OidcTokenVerifier:
    """Validates Keycloak access tokens (JWTs) against the realm's published signing keys.

    The discovery document is read once, on first use, and names the JWKS; PyJWKClient caches the keys
    and fetches them again when a token names a key it has not seen (Keycloak rotates keys).
    """

    def __init__(self, issuer: str, audience: str | None, *, timeout: float = 5.0) -> None:
        self.issuer = issuer
        self.audience = audience
        self._timeout = timeout
        self._jwks: PyJWKClient | None = None
        self._lock = threading.Lock()

    def _jwks_client(self) -> PyJWKClient:
        with self._lock:
            if self._jwks is None:
                discovery_url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
                try:
                    response = requests.get(discovery_url, timeout=self._timeout)
                    response.raise_for_status()
                    discovery = response.json()
                except (requests.RequestException, ValueError) as error:
                    log.warning("OIDC discovery at %s failed: %s", discovery_url, error)
                    raise AccessDenied(
                        503, f"The OIDC issuer {self.issuer} cannot be reached to validate the token"
                    ) from None
                if discovery.get("issuer") != self.issuer or not discovery.get("jwks_uri"):
                    raise AccessDenied(
                        503, f"The discovery document of {self.issuer} names another issuer or no jwks_uri"
                    )
                self._jwks = PyJWKClient(
                    discovery["jwks_uri"], cache_keys=True, lifespan=300, timeout=self._timeout
                )
            return self._jwks

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, expiry, issuer (and audience) hold; else 401."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _invalid_token("The bearer token is neither the service token nor a JWT") from None
        if header.get("alg") not in SIGNING_ALGORITHMS:
            raise _invalid_token("The bearer token is not signed with an accepted algorithm")
        try:
            signing_key = self._jwks_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise AccessDenied(
                503, f"The signing keys of {self.issuer} cannot be fetched to validate the token"
            ) from None
        except jwt.PyJWKClientError:
            raise _invalid_token(f"The bearer token is not signed by a key of {self.issuer}") from None
        try:
            claims = jwt.decode(
                token,
                signing_key.key,
                algorithms=[header["alg"]],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid_token("The bearer token has expired") from None
        except jwt.InvalidIssuerError:
            raise _invalid_token(f"The bearer token was not issued by {self.issuer}") from None
        except jwt.InvalidAudienceError:
            raise _invalid_token(f"The bearer token is not meant for {self.audience}") from None
        except jwt.InvalidTokenError as error:
            raise _invalid_token(f"The bearer token is invalid: {error}") from None
        # Keycloak marks ID and refresh tokens with `typ`; only access tokens may write.
        token_type = claims.get("typ")
        if token_type is not None and str(token_type).lower() != "bearer":
            raise _invalid_token("The bearer token is not an access token")
        return claims


def roles_of(claims: dict[str, Any]) -> set[str]:
    """Keycloak roles in a token: realm roles and every client's roles."""
    roles: set[str] = set()
    realm_access = claims.get("realm_access")
    if isinstance(realm_access, dict):
        roles.update(role for role in realm_access.get("roles") or [] if isinstance(role, str))
    resource_access = claims.get("resource_access")
    if isinstance(resource_access, dict):
        for access in resource_access.values():
            if isinstance(access, dict):
                roles.update(role for role in access.get("roles") or [] if isinstance(role, str))
    return roles


class WriteAccess:
    """Decides whether a bearer token may write, from the settings' token sources."""

    def __init__(self, settings: CatalogSettings) -> None:
        self._service_token = (
            settings.token.get_secret_value().encode() if settings.token is not None else None
        )
        self._verifier = (
            OidcTokenVerifier(settings.oidc_issuer, settings.oidc_audience) if settings.oidc_issuer else None
        )
        self.writer_role = settings.writer_role

    @property
    def configured(self) -> bool:
        return self._service_token is not None or self._verifier is not None

    def authorize(self, token: str | None) -> Writer:
        """The writer behind `token`, or AccessDenied (401 unknown token, 403 no role, 503 no writer)."""
        if not self.configured:
            raise AccessDenied(
                503,
                "The catalog has no writer configured: set THINKUBE_CATALOG_TOKEN or THINKUBE_OIDC_ISSUER",
            )
        if not token:
            raise AccessDenied(
                401, "Writing to the catalog needs an Authorization: Bearer token", challenge="Bearer"
            )
        if self._service_token is not None and hmac.compare_digest(token.encode(), self._service_token):
            return Writer("service token")
        if self._verifier is None:
            raise _invalid_token("The bearer token is not the catalog's service token")
        claims = self._verifier.claims(token)
        who = str(
            claims.get("preferred_username")
            or claims.get("azp")
            or claims.get("client_id")
            or claims.get("sub")
        )
        if self.writer_role not in roles_of(claims):
            raise AccessDenied(
                403,
                f"The token of {who} lacks the role {self.writer_role!r} needed to write to the catalog",
                challenge='Bearer error="insufficient_scope"',
            )
        return Writer(who)
