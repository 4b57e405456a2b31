"""Writes with Keycloak access tokens, against the real oidc-provider (the Keycloak stand-in).

The catalog accepts a JWT access token when its signature checks against the realm's JWKS, it has not
expired, its issuer is the configured realm, its audience is the configured one, and it carries the
writer role (realm role or client role). Anything else is 401, or 403 when only the role is missing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fixtures.catalog import CatalogServer, CatalogServerFactory, sample_image
from tests.fixtures.network import free_port
from tests.fixtures.oidc import OidcProvider

IMAGES = "/api/v1/images"


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


def _post(server: CatalogServer, token: str, name: str = "jupyter-ml-gpu") -> requests.Response:
    return requests.post(
        f"{server.base_url}{IMAGES}",
        json=sample_image(name),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _assert_unauthorized(response: requests.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert reason in response.json()["detail"]


@pytest.mark.parametrize("client", ["dagster", "ci-writer"], ids=["realm-role", "client-role"])
def test_a_token_with_the_writer_role_can_write(
    catalog: CatalogServer, oidc_provider: OidcProvider, client: str
) -> None:
    response = _post(catalog, oidc_provider.token(client), name=f"jupyter-by-{client}")
    assert response.status_code == 201, response.text
    assert requests.get(f"{catalog.base_url}{IMAGES}/jupyter-by-{client}", timeout=10).status_code == 200
    # The same token may also deactivate and delete.
    token = oidc_provider.token(client)
    headers = {"Authorization": f"Bearer {token}"}
    deactivate = f"{catalog.base_url}{IMAGES}/jupyter-by-{client}/deactivate"
    assert requests.post(deactivate, headers=headers, timeout=10).status_code == 200
    delete = f"{catalog.base_url}{IMAGES}/jupyter-by-{client}"
    assert requests.delete(delete, headers=headers, timeout=10).status_code == 204


def test_the_service_token_still_writes_beside_oidc(catalog: CatalogServer) -> None:
    response = requests.post(
        f"{catalog.base_url}{IMAGES}",
        json=sample_image("jupyter-by-service"),
        headers=catalog.auth_headers,
        timeout=10,
    )
    assert response.status_code == 201


def test_a_token_without_the_writer_role_gets_403_naming_the_role(
    catalog: CatalogServer, oidc_provider: OidcProvider
) -> None:
    response = _post(catalog, oidc_provider.token("viewer"), name="jupyter-by-viewer")
    assert response.status_code == 403, response.text
    assert "image-writer" in response.json()["detail"]
    assert requests.get(f"{catalog.base_url}{IMAGES}/jupyter-by-viewer", timeout=10).status_code == 404


def test_a_token_signed_by_another_key_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    real = oidc_provider.token("dagster")
    claims = _claims(real)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    same_kid = jwt.get_unverified_header(real)["kid"]
    forged = jwt.encode(claims, impostor, algorithm="RS256", headers={"kid": same_kid})
    _assert_unauthorized(_post(catalog, forged), "invalid: Signature verification failed")
    unknown_kid = jwt.encode(claims, impostor, algorithm="RS256", headers={"kid": "not-a-realm-key"})
    _assert_unauthorized(_post(catalog, unknown_kid), "not signed by a key")


@pytest.mark.parametrize("algorithm", ["none", "HS256"])
def test_a_token_without_an_asymmetric_signature_gets_401(
    catalog: CatalogServer, oidc_provider: OidcProvider, algorithm: str
) -> None:
    claims = _claims(oidc_provider.token("dagster"))
    key = None if algorithm == "none" else "guessable-shared-secret-of-32-bytes!"
    _assert_unauthorized(_post(catalog, jwt.encode(claims, key, algorithm=algorithm)), "algorithm")


def test_an_expired_token_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token("short-lived")  # lives one second
    time.sleep(max(0.0, _claims(token)["exp"] - time.time()) + 1.1)
    _assert_unauthorized(_post(catalog, token), "expired")


def test_a_token_from_another_issuer_gets_401(catalog: CatalogServer, oidc_provider: OidcProvider) -> None:
    # The other realm signs with the same key: only the issuer check can refuse this token.
    token = oidc_provider.token("dagster", issuer=oidc_provider.other_issuer)
    assert _claims(token)["iss"] == oidc_provider.other_issuer
    _assert_unauthorized(_post(catalog, token), "not issued by")


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("not-a-jwt", "neither the service token nor a JWT"),  # one segment
        ("a.b.c", "neither the service token nor a JWT"),  # three segments, no JSON header
        # A well-formed RS256 header and empty claims, no key id and no signature:
        ("eyJhbGciOiJSUzI1NiJ9.e30.", "not signed by a key of"),
    ],
    ids=["one-segment", "not-base64-json", "unsigned-rs256"],
)
def test_a_garbled_token_gets_401(
    catalog: CatalogServer, oidc_provider: OidcProvider, garbage: str, reason: str
) -> None:
    response = _post(catalog, garbage)
    _assert_unauthorized(response, reason)
    if reason == "not signed by a key of":
        assert oidc_provider.issuer in response.json()["detail"]


def test_a_token_for_another_audience_gets_401(
    catalog_server: CatalogServerFactory, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    server = catalog_server(
        f"sqlite:///{tmp_path / 'catalog.db'}",
        oidc_issuer=oidc_provider.issuer,
        oidc_audience="urn:other:api",
    )
    try:
        _assert_unauthorized(_post(server, oidc_provider.token("dagster")), "not meant for urn:other:api")
    finally:
        server.stop()


def test_an_unreachable_issuer_is_named_in_a_503(
    catalog_server: CatalogServerFactory, tmp_path: Path
) -> None:
    issuer = f"http://127.0.0.1:{free_port()}/realms/thinkube"
    server = catalog_server(f"sqlite:///{tmp_path / 'catalog.db'}", token=None, oidc_issuer=issuer)
    try:
        token = jwt.encode(
            {"iss": issuer, "exp": int(time.time()) + 60},
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
        )
        response = _post(server, token)
        assert response.status_code == 503
        assert issuer in response.json()["detail"]
    finally:
        server.stop()
