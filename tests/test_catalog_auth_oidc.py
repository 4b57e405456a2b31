"""Writes with Keycloak access tokens, against the real oidc-provider (the Keycloak stand-in).

Every token here is a real token of the stand-in's realms: from a client_credentials grant, or minted by
its test-only endpoint with the realm's own signing key (ID and refresh tokens, tokens not yet valid,
tokens of the lying realms), or forged here where the test is about a forgery. The rule under test
(`thinkube_pipelines/catalog/writers.py`):

- only an access token writes: header `typ` `at+jwt` or claim `typ` `Bearer`; an ID or refresh token is 401;
- signed by a key of the realm's JWKS, issued by the realm, not expired, not before its `nbf`, for the
  configured audience: else 401;
- carrying the writer role as a realm role or a role of the catalog's own client
  (`resource_access.<audience>`): else 403 naming the role; a role of another client never counts;
- the realm's discovery or JWKS out of reach, or a discovery naming another issuer: 503 naming the issuer.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fixtures.catalog import CatalogServer, CatalogServerFactory, sample_image
from tests.fixtures.network import free_port
from tests.fixtures.oidc import OidcProvider

IMAGES = "/api/v1/images"


def _assert_no_token_in_log(server: CatalogServer) -> None:
    log = server.log()
    assert "eyJ" not in log, "a JWT reached the catalog's log"  # base64url of '{"', how every JWT begins
    if server.token is not None:
        assert server.token not in log


@pytest.fixture(scope="module")
def catalog(
    catalog_server: CatalogServerFactory,
    oidc_provider: OidcProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CatalogServer]:
    """A catalog that takes the realm's tokens (audience checked) and also has a service token."""
    database = tmp_path_factory.mktemp("catalog-oidc") / "catalog.db"
    server = catalog_server(
        f"sqlite:///{database}", oidc_issuer=oidc_provider.issuer, oidc_audience=oidc_provider.audience
    )
    yield server
    server.stop()
    _assert_no_token_in_log(server)


@contextmanager
def _catalog(
    catalog_server: CatalogServerFactory, tmp_path: Path, **settings: Any
) -> Iterator[CatalogServer]:
    """A catalog of its own for one test, with other OIDC settings; stopped at the end."""
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}", **settings)
    try:
        yield server
    finally:
        server.stop()
    _assert_no_token_in_log(server)


def _post(server: CatalogServer, token: str, name: str = "jupyter-ml-gpu") -> requests.Response:
    return requests.post(
        f"{server.base_url}{IMAGES}",
        json=sample_image(name),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _exists(server: CatalogServer, name: str) -> bool:
    return requests.get(f"{server.base_url}{IMAGES}/{name}", timeout=10).status_code == 200


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _assert_denied(response: requests.Response, status: int, *reasons: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for reason in reasons:
        assert reason in detail
    # The answer never echoes the token, nor any of its parts.
    sent = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
    for part in sent.split("."):
        assert len(part) < 8 or part not in response.text


def _assert_unauthorized(response: requests.Response, *reasons: str) -> None:
    _assert_denied(response, 401, *reasons)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# --- who writes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["dagster", "ci-writer"], ids=["realm-role", "own-client-role"])
def test_a_token_with_the_writer_role_can_write(
    catalog: CatalogServer, oidc_provider: OidcProvider, client: str
) -> None:
    token = oidc_provider.token(client)
    # oidc-provider marks its JWT access tokens in the header (RFC 9068), not with a `typ` claim.
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    assert "typ" not in _claims(token)
    if client == "ci-writer":
        assert _claims(token)["resource_access"] == {oidc_provider.audience: {"roles": ["image-writer"]}}
    response = _post(catalog, token, name=f"jupyter-by-{client}")
    assert response.status_code == 201, response.text
    assert _exists(catalog, f"jupyter-by-{client}")
    # The same token may also deactivate and delete.
    headers = {"Authorization": f"Bearer {oidc_provider.token(client)}"}
    deactivate = f"{catalog.base_url}{IMAGES}/jupyter-by-{client}/deactivate"
    assert requests.post(deactivate, headers=headers, timeout=10).status_code == 200
    delete = f"{catalog.base_url}{IMAGES}/jupyter-by-{client}"
    assert requests.delete(delete, headers=headers, timeout=10).status_code == 204


@pytest.mark.parametrize("client", ["dagster", "ci-writer"], ids=["realm-role", "own-client-role"])
def test_a_keycloak_shaped_access_token_can_write(
    catalog: CatalogServer, oidc_provider: OidcProvider, client: str
) -> None:
    # Keycloak marks an access token with the claim typ=Bearer; its header says only "JWT".
    token = oidc_provider.mint("access", client)
    assert jwt.get_unverified_header(token)["typ"] == "JWT"
    assert _claims(token)["typ"] == "Bearer"
    response = _post(catalog, token, name=f"jupyter-minted-{client}")
    assert response.status_code == 201, response.text


def test_the_service_token_still_writes_beside_oidc(catalog: CatalogServer) -> None:
    response = requests.post(
        f"{catalog.base_url}{IMAGES}",
        json=sample_image("jupyter-by-service"),
        headers=catalog.auth_headers,
        timeout=10,
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", IMAGES, {}),
        ("POST", f"{IMAGES}/jupyter-by-service/deactivate", {}),
        ("DELETE", f"{IMAGES}/jupyter-by-service", {}),
        ("POST", IMAGES, {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}),
    ],
    ids=["create", "deactivate", "delete", "basic-auth"],
)
def test_a_write_without_a_bearer_token_gets_401_with_a_bearer_challenge(
    catalog: CatalogServer, method: str, path: str, headers: dict[str, str]
) -> None:
    response = requests.request(
        method,
        f"{catalog.base_url}{path}",
        json=sample_image("jupyter-no-token"),
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]
    assert not _exists(catalog, "jupyter-no-token")


def test_a_token_without_the_writer_role_gets_403_naming_the_role(
    catalog: CatalogServer, oidc_provider: OidcProvider
) -> None:
    response = _post(catalog, oidc_provider.token("viewer"), name="jupyter-by-viewer")
    _assert_denied(response, 403, "'image-writer'")
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert not _exists(catalog, "jupyter-by-viewer")


def test_the_writer_role_of_another_client_gets_403(
    catalog: CatalogServer, oidc_provider: OidcProvider
) -> None:
    token = oidc_provider.token("foreign-role")
    # Audience and signature are right; the writer role is a role of the client "gitea", not the catalog's.
    assert _claims(token)["aud"] == oidc_provider.audience
    assert _claims(token)["resource_access"]["gitea"] == {"roles": ["image-writer"]}
    response = _post(catalog, token, name="jupyter-by-foreign-role")
    _assert_denied(response, 403, "'image-writer'", f"a role of the client {oidc_provider.audience!r}")
    assert not _exists(catalog, "jupyter-by-foreign-role")


def test_without_an_audience_only_realm_roles_count(
    catalog_server: CatalogServerFactory, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    with _catalog(catalog_server, tmp_path, token=None, oidc_issuer=oidc_provider.issuer) as server:
        assert _post(server, oidc_provider.token("dagster"), name="jupyter-realm-role").status_code == 201
        response = _post(server, oidc_provider.token("ci-writer"), name="jupyter-client-role")
        _assert_denied(response, 403, "'image-writer'", "THINKUBE_OIDC_AUDIENCE is unset")
        assert not _exists(server, "jupyter-client-role")


def test_a_custom_writer_role_replaces_image_writer(
    catalog_server: CatalogServerFactory, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    role = oidc_provider.custom_writer_role
    assert role == "some-custom-role"
    with _catalog(
        catalog_server,
        tmp_path,
        token=None,
        oidc_issuer=oidc_provider.issuer,
        oidc_audience=oidc_provider.audience,
        writer_role=role,
    ) as server:
        custom = _post(server, oidc_provider.token("custom-writer"), name="jupyter-custom-role")
        assert custom.status_code == 201, custom.text
        # image-writer alone no longer writes, as a realm role or as the catalog client's role.
        for client in ("dagster", "ci-writer"):
            response = _post(server, oidc_provider.token(client), name=f"jupyter-custom-{client}")
            _assert_denied(response, 403, f"'{role}'")
            assert not _exists(server, f"jupyter-custom-{client}")


# --- which tokens are valid --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "header", "claims", "reason"),
    [
        ("id", {}, {}, "is an ID token, not an access token"),
        ("id", {"typ": "at+jwt"}, {}, "is an ID token, not an access token"),
        ("refresh", {}, {}, "is a refresh token, not an access token"),
        ("access", {}, {"typ": None}, "not an access token: it has neither the header typ at+jwt"),
    ],
    ids=["id-token", "id-token-with-at+jwt-header", "refresh-token", "unmarked"],
)
def test_a_token_that_is_not_an_access_token_gets_401(
    catalog: CatalogServer,
    oidc_provider: OidcProvider,
    kind: str,
    header: dict,
    claims: dict,
    reason: str,
) -> None:
    # Otherwise acceptable: signed by the realm, for the catalog's audience, with the writer realm role.
    claims = {"aud": oidc_provider.audience, "realm_access": {"roles": ["image-writer"]}, **claims}
    token = oidc_provider.mint(kind, "dagster", header=header, claims=claims)
    _assert_unauthorized(_post(catalog, token, name=f"jupyter-{kind}-token"), reason)
    assert not _exists(catalog, f"jupyter-{kind}-token")


def test_a_token_signed_by_another_key_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    real = oidc_provider.token("dagster")
    claims = _claims(real)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = {"kid": jwt.get_unverified_header(real)["kid"], "typ": "at+jwt"}
    forged = jwt.encode(claims, impostor, algorithm="RS256", headers=headers)
    _assert_unauthorized(_post(catalog, forged), "invalid: Signature verification failed")
    unknown_kid = jwt.encode(
        claims, impostor, algorithm="RS256", headers={**headers, "kid": "not-a-realm-key"}
    )
    _assert_unauthorized(_post(catalog, unknown_kid), f"not signed by a key of {oidc_provider.issuer}")
    # The realm's key is RSA: a header naming ES256 with its kid must not pick the algorithm.
    ec_forged = jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=headers
    )
    _assert_unauthorized(_post(catalog, ec_forged), "does not match the key's algorithm")


@pytest.mark.parametrize("algorithm", ["none", "HS256"])
def test_a_token_without_an_asymmetric_signature_gets_401(
    catalog: CatalogServer, oidc_provider: OidcProvider, algorithm: str
) -> None:
    claims = _claims(oidc_provider.token("dagster"))
    key = None if algorithm == "none" else "guessable-shared-secret-of-32-bytes!"
    forged = jwt.encode(claims, key, algorithm=algorithm, headers={"typ": "at+jwt"})
    _assert_unauthorized(_post(catalog, forged), "not signed with an accepted algorithm")


def test_an_expired_token_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token("short-lived")  # lives one second
    time.sleep(max(0.0, _claims(token)["exp"] - time.time()) + 1.1)
    _assert_unauthorized(_post(catalog, token), "has expired")


def test_a_token_not_yet_valid_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.mint("access", "dagster", claims={"nbf": int(time.time()) + 300})
    _assert_unauthorized(_post(catalog, token, name="jupyter-not-yet"), "not yet valid")
    assert not _exists(catalog, "jupyter-not-yet")


def test_a_token_from_another_issuer_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    # The other realm signs with the same key: only the issuer check can refuse this token.
    token = oidc_provider.token("dagster", issuer=oidc_provider.other_issuer)
    assert _claims(token)["iss"] == oidc_provider.other_issuer
    _assert_unauthorized(_post(catalog, token), f"not issued by {oidc_provider.issuer}")


@pytest.mark.parametrize(
    "garbage",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.WzFd.sig"],
    ids=["one-segment", "not-base64-json", "list-payload"],
)
def test_a_garbled_token_gets_401(catalog: CatalogServer, garbage: str) -> None:
    _assert_unauthorized(_post(catalog, garbage), "neither the service token nor a JWT")


def test_an_unsigned_token_naming_no_key_gets_401(
    catalog: CatalogServer, oidc_provider: OidcProvider
) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"at+jwt"}').rstrip(b"=").decode()
    claims = {"iss": oidc_provider.issuer, "exp": int(time.time()) + 60, "aud": oidc_provider.audience}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _assert_unauthorized(
        _post(catalog, f"{header}.{payload}."), f"not signed by a key of {oidc_provider.issuer}"
    )


def test_a_token_for_another_audience_gets_401(
    catalog_server: CatalogServerFactory, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    with _catalog(
        catalog_server, tmp_path, oidc_issuer=oidc_provider.issuer, oidc_audience="urn:other:api"
    ) as server:
        _assert_unauthorized(_post(server, oidc_provider.token("dagster")), "not meant for urn:other:api")


# --- the issuer's side: 503, not 401 -----------------------------------------------------------------


def test_an_unreachable_issuer_is_named_in_a_503(
    catalog_server: CatalogServerFactory, tmp_path: Path
) -> None:
    issuer = f"http://127.0.0.1:{free_port()}/realms/thinkube"
    with _catalog(catalog_server, tmp_path, token=None, oidc_issuer=issuer) as server:
        token = jwt.encode(
            {"iss": issuer, "exp": int(time.time()) + 60},
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"typ": "at+jwt"},
        )
        _assert_denied(_post(server, token), 503, f"The OIDC issuer {issuer} cannot be reached")


def test_a_discovery_naming_another_issuer_gets_503(
    catalog_server: CatalogServerFactory, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    lying = oidc_provider.lying_issuer
    discovery = requests.get(f"{lying}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == oidc_provider.issuer  # it claims to be the realm under test
    with _catalog(catalog_server, tmp_path, token=None, oidc_issuer=lying) as server:
        token = oidc_provider.mint("access", "dagster", realm="lying")
        assert _claims(token)["iss"] == lying
        for _ in range(2):  # a failed discovery is not kept: each write asks again, and is refused again
            _assert_denied(_post(server, token), 503, f"The discovery document of the OIDC issuer {lying}")
        assert not _exists(server, "jupyter-ml-gpu")


def test_unreachable_signing_keys_get_503_not_401(
    catalog_server: CatalogServerFactory, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    issuer = oidc_provider.keys_unreachable_issuer
    discovery = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == issuer
    with pytest.raises(requests.ConnectionError):
        requests.get(discovery["jwks_uri"], timeout=10)
    with _catalog(catalog_server, tmp_path, token=None, oidc_issuer=issuer) as server:
        token = oidc_provider.mint("access", "dagster", realm="keyless")
        for _ in range(2):
            _assert_denied(
                _post(server, token), 503, f"The signing keys of the OIDC issuer {issuer} cannot be fetched"
            )
