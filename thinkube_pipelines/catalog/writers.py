"""Who may write to the catalog: the service token, or a Keycloak access token carrying the writer role.

Reads stay open (the hub reads at spawn time without credentials); every write goes through
`WriteAccess.authorize`. The rule, in the order it is checked:

1. No bearer token: 401 with `WWW-Authenticate: Bearer`. No writer configured at all (neither
   THINKUBE_CATALOG_TOKEN nor THINKUBE_OIDC_ISSUER): 503.
2. The service token (THINKUBE_CATALOG_TOKEN, compared in constant time) writes.
3. Otherwise the token must be a JWT *access token* of the realm THINKUBE_OIDC_ISSUER (401 if not):
   - an access token: its header `typ` is `at+jwt` (RFC 9068, also `application/at+jwt`, any case) or its
     `typ` claim is `Bearer` (Keycloak); a `typ` claim naming another kind (`ID`, `Refresh`, ...) or no
     mark at all is refused, so an ID token or a refresh token never writes;
   - signed with an asymmetric algorithm by a key of the realm's JWKS (the `jwks_uri` of the realm's
     discovery document, which must name the same `issuer`), in the algorithm of that key;
   - `iss` is the issuer; `exp` is in the future; `nbf` and `iat`, when present, are not;
   - `aud` contains THINKUBE_OIDC_AUDIENCE, when it is set.
4. The writer role (THINKUBE_CATALOG_WRITER_ROLE, default `image-writer`) must be a realm role
   (`realm_access.roles`) or a role of the catalog's own client, `resource_access.<audience>.roles` where
   the audience is THINKUBE_OIDC_AUDIENCE: 403 naming the role otherwise. A role of any other client never
   counts; without an audience only realm roles count.

A discovery document or JWKS that cannot be fetched (or is unusable) is the service's problem, not the
token's: 503 naming the issuer. Tokens are never logged, nor echoed in errors.
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

#: Header `typ` values of a JWT access token (RFC 9068 section 2.1), compared case-insensitively.
ACCESS_TOKEN_HEADER_TYPES = frozenset({"at+jwt", "application/at+jwt"})
#: The `typ` claim Keycloak puts in its access tokens.
ACCESS_TOKEN_CLAIM_TYPE = "bearer"
#: Other kinds of Keycloak tokens, by their `typ` claim, to say which one was sent instead.
OTHER_TOKEN_KINDS = {
    "id": "an ID token",
    "refresh": "a refresh token",
    "offline": "an offline (refresh) token",
    "logout": "a logout token",
}


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


def access_token_refusal(header: dict[str, Any], claims: dict[str, Any]) -> str | None:
    """Why a JWT is not an access token, or None when it is one.

    An access token has the header `typ` `at+jwt` (or `application/at+jwt`) or the claim `typ` `Bearer`;
    a `typ` claim naming anything else refuses it even with that header.
    """
    claim_type = claims.get("typ")
    if claim_type is not None:
        kind = str(claim_type).lower()
        if kind == ACCESS_TOKEN_CLAIM_TYPE:
            return None
        sent = OTHER_TOKEN_KINDS.get(kind, "a token of another kind")
        return f"The bearer token is {sent}, not an access token"
    header_type = header.get("typ")
    if isinstance(header_type, str) and header_type.lower() in ACCESS_TOKEN_HEADER_TYPES:
        return None
    return (
        "The bearer token is not an access token: it has neither the header typ at+jwt "
        "nor the claim typ Bearer"
    )


class OidcTokenVerifier:
    """Validates Keycloak access tokens (JWTs) against the realm's published signing keys.

    The discovery document is read on first use (again after a failure) and names the JWKS; PyJWKClient
    keeps the key set for 5 minutes and fetches it again, at most every 30 s, when a token names a key it
    has not seen (Keycloak rotates keys). A key removed from the JWKS stops being accepted once the cached
    set expires.
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
                    if not isinstance(discovery, dict):
                        raise ValueError("the discovery document is not a JSON object")
                except (requests.RequestException, ValueError) as error:
                    log.warning("OIDC discovery at %s failed: %s", discovery_url, error)
                    raise AccessDenied(
                        503, f"The OIDC issuer {self.issuer} cannot be reached to validate the token"
                    ) from None
                named = discovery.get("issuer")
                if named != self.issuer:
                    log.warning("The discovery document of %s names the issuer %r", self.issuer, named)
                    raise AccessDenied(
                        503,
                        f"The discovery document of the OIDC issuer {self.issuer} names another issuer "
                        f"({named!r}): THINKUBE_OIDC_ISSUER must be exactly the realm's issuer",
                    )
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                    raise AccessDenied(
                        503,
                        f"The discovery document of the OIDC issuer {self.issuer} names no http(s) jwks_uri",
                    )
                # The set is cached (lifespan); no per-key cache, which would keep trusting a removed key.
                self._jwks = PyJWKClient(jwks_uri, cache_keys=False, lifespan=300, timeout=self._timeout)
            return self._jwks

    def _keys_unreachable(self) -> AccessDenied:
        return AccessDenied(
            503, f"The signing keys of the OIDC issuer {self.issuer} cannot be fetched to validate the token"
        )

    def _signing_key(self, kid: object) -> jwt.PyJWK:
        """The realm's key named `kid`: 503 when the key set cannot be had, 401 when it lacks that key."""
        client = self._jwks_client()
        try:
            client.get_signing_keys()  # the cached set, fetched when absent or expired
        except jwt.PyJWKClientConnectionError as error:
            log.warning("The signing keys of %s cannot be fetched: %s", self.issuer, error)
            raise self._keys_unreachable() from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as error:
            log.warning("The signing keys of %s are unusable: %s", self.issuer, error)
            raise AccessDenied(
                503, f"The OIDC issuer {self.issuer} publishes no usable signing keys to validate the token"
            ) from None
        try:
            return client.get_signing_key(kid if isinstance(kid, str) else "")
        except jwt.PyJWKClientConnectionError:
            raise self._keys_unreachable() from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError):
            raise _invalid_token(f"The bearer token is not signed by a key of {self.issuer}") from None

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token of the issuer (see the module's rule, step 3); else 401/503."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise _invalid_token("The bearer token is neither the service token nor a JWT") from None
        # Unverified, these only refuse early: acceptance below rests on the verified token alone.
        refusal = access_token_refusal(header, unverified)
        if refusal is not None:
            raise _invalid_token(refusal)
        if header.get("alg") not in SIGNING_ALGORITHMS:
            raise _invalid_token("The bearer token is not signed with an accepted algorithm")
        if unverified.get("iss") != self.issuer:
            raise _invalid_token(f"The bearer token was not issued by {self.issuer}")
        signing_key = self._signing_key(header.get("kid"))
        try:
            # The key's own algorithm verifies the signature, whatever the header claims.
            claims = jwt.decode(
                token,
                signing_key,
                algorithms=SIGNING_ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid_token("The bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid_token(
                "The bearer token is not yet valid: its nbf (or iat) lies in the future "
                "(are the clocks of the catalog and the issuer in step?)"
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid_token(f"The bearer token was not issued by {self.issuer}") from None
        except jwt.InvalidAudienceError:
            raise _invalid_token(f"The bearer token is not meant for {self.audience}") from None
        except jwt.InvalidTokenError as error:
            # PyJWT's messages name the failed check, never the token's contents.
            raise _invalid_token(f"The bearer token is invalid: {error}") from None
        return claims


def roles_of(claims: dict[str, Any], client: str | None) -> set[str]:
    """The Keycloak roles of a token that count for the catalog: its realm roles (`realm_access.roles`)
    and the roles of the catalog's own client `client` (`resource_access.<client>.roles`), if named.
    Roles of every other client are ignored."""
    roles: set[str] = set()

    def add(access: object) -> None:
        if isinstance(access, dict):
            granted = access.get("roles")
            if isinstance(granted, list):
                roles.update(role for role in granted if isinstance(role, str))

    add(claims.get("realm_access"))
    resource_access = claims.get("resource_access")
    if client is not None and isinstance(resource_access, dict):
        add(resource_access.get(client))
    return roles


class RoleAccess:
    """Whether a bearer token may do one thing (`action`): the catalog's service token, or a Keycloak access
    token carrying `role`, counted as the module's docstring says (writes: the writer role; rebuilds:
    builds.py's rebuild role)."""

    def __init__(self, settings: CatalogSettings, role: str, action: str, asking: str) -> None:
        self._service_token = (
            settings.token.get_secret_value().encode() if settings.token is not None else None
        )
        self._verifier = (
            OidcTokenVerifier(settings.oidc_issuer, settings.oidc_audience) if settings.oidc_issuer else None
        )
        self.audience = settings.oidc_audience
        self.role = role
        self.action = action
        """What the role allows, for messages: `write to the catalog`."""
        self.asking = asking
        """Who asks, for messages: `Writing to the catalog`."""

    @property
    def configured(self) -> bool:
        return self._service_token is not None or self._verifier is not None

    def _where_the_role_counts(self) -> str:
        if self.audience is None:
            return "as a realm role (THINKUBE_OIDC_AUDIENCE is unset, so no client role counts)"
        return (
            f"as a realm role or a role of the client {self.audience!r}; roles of other clients do not count"
        )

    def authorize(self, token: str | None) -> Writer:
        """Who is behind `token`, or AccessDenied (401 unknown token, 403 no role, 503 none configured)."""
        if not self.configured:
            raise AccessDenied(
                503,
                "The catalog has no writer configured: set THINKUBE_CATALOG_TOKEN or THINKUBE_OIDC_ISSUER",
            )
        if not token:
            raise AccessDenied(401, f"{self.asking} needs an Authorization: Bearer token", challenge="Bearer")
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
        if self.role not in roles_of(claims, self.audience):
            raise AccessDenied(
                403,
                f"The token of {who} lacks the role {self.role!r} needed to {self.action}, "
                f"{self._where_the_role_counts()}",
                challenge='Bearer error="insufficient_scope"',
            )
        return Writer(who)


class WriteAccess(RoleAccess):
    """Decides whether a bearer token may write, from the settings' token sources."""

    def __init__(self, settings: CatalogSettings) -> None:
        super().__init__(settings, settings.writer_role, "write to the catalog", "Writing to the catalog")
