"""The catalog's web page in a real browser (Debian's chromium through Playwright).

A real catalog service serves the page over a SQLite catalog seeded through its own write API; a real
Keycloak stand-in signs users in through its login form (authorization code + PKCE from the page, the
public client `thinkube-catalog-ui`). The tests assert what a user sees: the images in their tabs with
their badges, build times and digests, the sign-in, and the words the page shows when a rebuild is refused.
The rebuild itself runs on the shared `image_stack` (a real Dagster webserver and daemon building the test
images with buildah); with THINKUBE_SCREENSHOTS=1 its test writes the README's docs/catalog-page.png.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.fixtures.catalog import sample_image
from tests.fixtures.image_stack import (
    REBUILT_IMAGE,
    RUN_TIMEOUT_S,
    CatalogPage,
    ImageStack,
    running_catalog_page,
)

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
REPO_ROOT = Path(__file__).resolve().parents[1]
README_SCREENSHOT = REPO_ROOT / "docs" / "catalog-page.png"
ADMIN, USER = "image-admin", "hub-user"  # the stand-in's dev-login users: with and without image-rebuilder


@pytest.fixture(scope="module")
def stack() -> Iterator[CatalogPage]:
    """A Keycloak stand-in whose public client redirects to the page, and a catalog serving three images."""
    workdir = Path(tempfile.mkdtemp(prefix="thinkube-page-"))
    with running_catalog_page(workdir, (GPU_IMAGE, CPU_IMAGE, OTHER_IMAGE)) as page:
        yield page


def image_card(page: Page, display_name: str):
    return page.get_by_role("listitem").filter(has=page.get_by_role("heading", name=display_name, exact=True))


def own_errors(stack: CatalogPage, errors: list[str]) -> list[str]:
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


def test_page_lists_the_catalog_in_two_tabs(stack: CatalogPage, page: Page, page_errors: list[str]) -> None:
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


def test_rebuild_asks_to_sign_in_first(stack: CatalogPage, page: Page) -> None:
    page.goto(stack.url)
    page.get_by_role("button", name="Rebuild ML (GPU)").click()
    expect(page.get_by_role("alert")).to_have_text(
        "Sign in to rebuild images: reading the catalog is open, rebuilding is not."
    )
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()


def test_sign_in_through_the_realm(stack: CatalogPage, page: Page, page_errors: list[str]) -> None:
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


def test_a_forged_sign_in_answer_is_refused(stack: CatalogPage, page: Page) -> None:
    """A redirect back with a code the page did not ask for (no matching state) signs nobody in."""
    page.goto(f"{stack.url}?code=stolen&state=forged")
    expect(page.get_by_role("alert")).to_contain_text("Sign-in failed: the answer does not belong")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.url == stack.url


def test_ui_config_and_page_headers(stack: CatalogPage) -> None:
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


def test_a_user_without_the_rebuild_role_is_told_so(stack: CatalogPage, page: Page) -> None:
    page.goto(stack.url)
    sign_in(page, USER)
    page.get_by_role("button", name="Rebuild ML (GPU)").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Signed in as hub-user, you may not rebuild images:")
    expect(alert).to_contain_text(f"lacks the role '{stack.oidc.rebuilder_role}' needed to rebuild images")
    expect(page.locator("#build")).to_be_hidden()


def test_rebuild_without_dagster_says_builds_are_unavailable(stack: CatalogPage, page: Page) -> None:
    """This catalog has no Dagster configured: an allowed rebuild is refused with 503, in words."""
    page.goto(stack.url)
    sign_in(page, ADMIN)
    page.get_by_role("button", name="Rebuild ML (CPU)").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Rebuilds are unavailable right now: Builds need Dagster, and THINKUBE_DAGSTER_GRAPHQL_URL is not set"
    )


def test_an_expired_sign_in_asks_to_sign_in_again(stack: CatalogPage, page: Page) -> None:
    """A token the catalog no longer accepts (here: one signed by another realm) answers 401: the page
    forgets it and says to sign in again."""
    page.goto(stack.url)
    forged = stack.oidc.mint("access", "dagster", realm="other")
    page.evaluate(
        """(token) => sessionStorage.setItem('thinkube-catalog.token',
             JSON.stringify({access_token: token, expires_at: Date.now() + 60000, username: 'someone'}))""",
        forged,
    )
    page.reload()
    expect(page.get_by_text("Signed in as someone")).to_be_visible()
    page.get_by_role("button", name="Rebuild ML (GPU)").click()
    expect(page.get_by_role("alert")).to_contain_text("Your sign-in was not accepted (")
    expect(page.get_by_role("alert")).to_contain_text("sign in again to rebuild.")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_rebuild_shows_the_live_log_and_the_final_status(
    image_stack: ImageStack, page: Page, page_errors: list[str], tmp_path: Path
) -> None:
    """A signed-in image-admin presses Rebuild: a real run starts on Dagster, its log lines appear on the
    page while it runs, then its final status, and the card shows the digest the run catalogued."""
    page.goto(image_stack.page_url)
    sign_in(page, ADMIN)
    title = f"Test image {REBUILT_IMAGE}"
    image_card(page, title).get_by_role("button", name=f"Rebuild {title}").click()

    build = page.get_by_role("region", name=re.compile(rf"^Build of {title}: run "))
    expect(build).to_be_visible()
    run_id = build.get_by_role("heading").inner_text().rsplit("run ", 1)[1]
    log = build.get_by_role("log", name="Build log")
    status = build.locator("#build-status")
    # live: the first lines show while the run still runs
    expect(log).not_to_be_empty(timeout=120_000)
    assert status.get_attribute("data-status") not in ("SUCCESS", "FAILURE", "CANCELED")
    expect(status).to_have_text("Succeeded", timeout=RUN_TIMEOUT_S * 1000)

    run = image_stack.dagster.run(run_id)
    assert run is not None and run["status"] == "SUCCESS", image_stack.dagster.log()
    assert run["tags"]["thinkube/requested-by"] == ADMIN
    # the build's own output came through the step's captured log, with the step's name
    expect(log).to_contain_text(f"[{REBUILT_IMAGE.replace('-', '_')}] STEP 1/")
    expect(log).to_contain_text(re.compile(r"STEP \d+/\d+: FROM"))
    expect(build.get_by_role("link", name="Open the run in Dagster")).to_have_attribute(
        "href", f"{image_stack.dagster.ui_url}/runs/{run_id}"
    )
    # the listing was read again once the run ended: the card shows what the run catalogued (the display
    # name of the image's image.yaml, the new digest)
    item = requests.get(f"{image_stack.catalog.base_url}/api/v1/images/{REBUILT_IMAGE}", timeout=10).json()
    rebuilt = image_card(page, item["display_name"])
    expect(rebuilt.get_by_text(REBUILT_IMAGE, exact=True)).to_be_visible()
    expect(rebuilt.get_by_text(item["metadata"]["digest"][: len("sha256:") + 12], exact=True)).to_be_visible()
    assert [error for error in page_errors if error.startswith(image_stack.page_url)] == []

    target = README_SCREENSHOT if os.environ.get("THINKUBE_SCREENSHOTS") == "1" else tmp_path / "page.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)


def test_the_log_of_an_unknown_run_says_so(image_stack: ImageStack, page: Page) -> None:
    """A link to a build Dagster does not know (the log's WebSocket closes with 4404) says so in words."""
    page.goto(f"{image_stack.page_url}#build=no-such-run")
    expect(page.get_by_role("alert")).to_have_text(
        "The build log is not available: Dagster does not know run no-such-run."
    )
    expect(page.locator("#build-status")).to_have_text("Unknown run")
