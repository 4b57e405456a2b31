"""The catalog's web page in a real browser (Debian's chromium through Playwright).

A real catalog service serves the page over a SQLite catalog seeded through its own write API; a real
Keycloak stand-in signs users in through its login form (authorization code + PKCE from the page, the
public client `thinkube-catalog-ui`). The tests assert what a user sees: the images in their tabs with
their badges, build times and digests, the sign-in, and the words the page shows when a rebuild is refused.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.fixtures.catalog import CatalogServer, sample_image, start_catalog
from tests.fixtures.network import free_port
from tests.fixtures.oidc import OidcProvider, running_oidc_provider

GPU_IMAGE = sample_image(
    "jupyter-ml-gpu",
    display_name="ML (GPU)",
    description="PyTorch, transformers and friends on a GPU.",
    default=True,
)
CPU_IMAGE = sample_image(
    "jupyter-ml-cpu",
    display_name="ML (CPU)",
    description="The scientific Python stack without a GPU.",
    metadata={"gpu_required": False, "digest": "sha256:" + "0badc0de" * 8},
    last_built="2026-11-24T23:05:00Z",
)
OTHER_IMAGE = sample_image(
    "code-server",
    display_name="VS Code in the browser",
    description="code-server for editing repositories.",
    category="tools",
    tags=[],
    metadata={"gpu_required": False, "digest": "sha256:" + "c0de5e4e" * 8},
    last_built=None,
)
ADMIN, USER = "image-admin", "hub-user"  # the stand-in's dev-login users: with and without image-rebuilder


@dataclass
class PageStack:
    url: str
    catalog: CatalogServer
    oidc: OidcProvider


@pytest.fixture(scope="module")
def stack() -> Iterator[PageStack]:
    """A Keycloak stand-in whose public client redirects to the page, and a catalog serving three images."""
    workdir = Path(tempfile.mkdtemp(prefix="thinkube-page-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_oidc_provider(catalog_ui_redirects=[url]) as oidc:
        catalog = start_catalog(
            workdir,
            f"sqlite:///{workdir / 'catalog.db'}",
            oidc_issuer=oidc.issuer,
            oidc_audience=oidc.audience,
            port=port,
        )
        with catalog:
            for image in (GPU_IMAGE, CPU_IMAGE, OTHER_IMAGE):
                written = requests.post(
                    f"{catalog.base_url}/api/v1/images", json=image, headers=catalog.auth_headers, timeout=10
                )
                assert written.status_code == 201, written.text
            yield PageStack(url=url, catalog=catalog, oidc=oidc)


def image_card(page: Page, display_name: str):
    return page.get_by_role("listitem").filter(has=page.get_by_role("heading", name=display_name, exact=True))


def own_errors(stack: PageStack, errors: list[str]) -> list[str]:
    """The errors of the catalog's page (not of the realm's login form, which asks for web fonts)."""
    return [error for error in errors if error.startswith(stack.url)]


def sign_in(page: Page, user: str) -> None:
    """Press Sign in, log in on the realm's form, consent, and land back on the page signed in."""
    page.get_by_role("button", name="Sign in").click()
    page.locator('input[name="login"]').fill(user)
    page.locator('input[name="password"]').fill("any password")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()


def test_page_lists_the_catalog_in_two_tabs(stack: PageStack, page: Page, page_errors: list[str]) -> None:
    page.goto(stack.url)
    expect(page).to_have_title("Thinkube images")

    jupyter_tab = page.get_by_role("tab", name=re.compile(r"^Jupyter"))
    other_tab = page.get_by_role("tab", name=re.compile(r"^Other"))
    expect(jupyter_tab).to_have_attribute("aria-selected", "true")
    expect(jupyter_tab).to_contain_text("(2)")
    expect(other_tab).to_contain_text("(1)")

    gpu = image_card(page, "ML (GPU)")
    expect(gpu).to_be_visible()
    expect(gpu).to_contain_text("PyTorch, transformers and friends on a GPU.")
    expect(gpu.get_by_text("GPU", exact=True)).to_be_visible()
    expect(gpu.get_by_text("Default", exact=True)).to_be_visible()
    expect(gpu.get_by_text("sha256:3f2a9c1e3f2a", exact=True)).to_be_visible()
    expect(gpu.locator("time")).to_have_attribute("datetime", "2026-11-25T02:14:09Z")
    expect(gpu.locator("time")).to_contain_text("11/25/2026, 2:14:09 AM")
    expect(gpu.get_by_role("button", name="Rebuild ML (GPU)")).to_be_visible()

    cpu = image_card(page, "ML (CPU)")
    expect(cpu).to_contain_text("The scientific Python stack without a GPU.")
    expect(cpu.get_by_text("GPU", exact=True)).to_be_hidden()
    expect(cpu.get_by_text("sha256:0badc0de0bad", exact=True)).to_be_visible()
    expect(image_card(page, "VS Code in the browser")).to_be_hidden()

    other_tab.click()
    expect(other_tab).to_have_attribute("aria-selected", "true")
    tools = image_card(page, "VS Code in the browser")
    expect(tools).to_be_visible()
    expect(tools).to_contain_text("code-server for editing repositories.")
    expect(tools.locator(".built")).to_have_text("never")
    # the catalog marks one image of each category default: the only one of its category here
    expect(tools.get_by_text("Default", exact=True)).to_be_visible()
    expect(tools.get_by_text("sha256:c0de5e4ec0de", exact=True)).to_be_visible()
    expect(tools.get_by_role("button", name="Rebuild VS Code in the browser")).to_be_visible()
    expect(gpu).to_be_hidden()

    # the tabs follow the WAI-ARIA pattern: arrow keys move between them
    other_tab.press("ArrowLeft")
    expect(jupyter_tab).to_be_focused()
    expect(jupyter_tab).to_have_attribute("aria-selected", "true")
    expect(gpu).to_be_visible()
    assert own_errors(stack, page_errors) == []


def test_rebuild_asks_to_sign_in_first(stack: PageStack, page: Page) -> None:
    page.goto(stack.url)
    page.get_by_role("button", name="Rebuild ML (GPU)").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Sign in to rebuild images: reading the catalog is open, rebuilding is not."
    )
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()


def test_sign_in_through_the_realm(stack: PageStack, page: Page, page_errors: list[str]) -> None:
    page.goto(stack.url)
    sign_in(page, ADMIN)
    # back on the page itself, the code and state gone from the address
    assert page.url == stack.url
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in")).to_be_hidden()
    expect(image_card(page, "ML (GPU)")).to_be_visible()

    # the token the page holds is the realm's access token for the catalog, with the user's roles
    token = page.evaluate("JSON.parse(sessionStorage.getItem('thinkube-catalog.token')).access_token")
    claims = page.evaluate(
        "(t) => JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')))", token
    )
    assert claims["iss"] == stack.oidc.issuer
    assert claims["aud"] == stack.oidc.audience
    assert claims["azp"] == "thinkube-catalog-ui"
    assert stack.oidc.rebuilder_role in claims["realm_access"]["roles"]

    page.reload()
    expect(page.get_by_text(f"Signed in as {ADMIN}")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_text(f"Signed in as {ADMIN}")).to_be_hidden()
    assert own_errors(stack, page_errors) == []


def test_a_forged_sign_in_answer_is_refused(stack: PageStack, page: Page) -> None:
    """A redirect back with a code the page did not ask for (no matching state) signs nobody in."""
    page.goto(f"{stack.url}?code=stolen&state=forged")
    expect(page.get_by_role("alert")).to_contain_text("Sign-in failed: the answer does not belong")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.url == stack.url


def test_ui_config_and_page_headers(stack: PageStack) -> None:
    """The browser gets the realm, the public client and the scopes, and a page that loads only its own
    scripts and styles."""
    config = requests.get(f"{stack.catalog.base_url}/api/v1/ui-config", timeout=10)
    assert config.json() == {
        "issuer": stack.oidc.issuer,
        "client_id": "thinkube-catalog-ui",
        "scopes": ["openid", "profile"],
    }
    page = requests.get(stack.url, timeout=10)
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    realm_origin = re.match(r"^https?://[^/]+", stack.oidc.issuer)[0]
    assert f"connect-src 'self' {realm_origin}" in policy
    assert requests.get(f"{stack.catalog.base_url}/static/app.js", timeout=10).status_code == 200

