"""Dagster's own UI in a real browser (Debian's chromium through Playwright), on the shared `image_stack`.

What an operator sees there: the global asset lineage holds every test image's chain (source, build,
published, catalog_entry) and the hub deploy's assets downstream of the catalog entries; after a build,
an image's asset page shows the digest of its latest materialization.
"""

from __future__ import annotations

import re

import requests
from playwright.sync_api import Locator, Page, expect

from tests.fixtures.image_stack import REBUILT_IMAGE, STACK_IMAGES, ImageStack

CHAIN = ("source", "build", "published", "catalog_entry")
HUB_ASSETS = ("preflight", "seaweedfs_volumes", "jupyterhub_values", "jupyterhub_release")
#: Dagster's UI loads a large bundle, then the code location's graph: generous on a loaded machine.
UI_TIMEOUT_MS = 60_000


def open_lineage(page: Page, stack: ImageStack) -> Locator:
    """The global asset lineage with every group expanded; the graph's asset name boxes."""
    # Dagster's first-visit newsletter dialog (CommunityNux) opens a second after the page unless the
    # browser remembers a dismissal; skipping it when it shows could close the settings menu under the
    # click, so the dismissal is stored before the first page script runs. The handler stays for a UI
    # that changes the key.
    page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
    skip = page.get_by_role("button", name="Skip")
    page.add_locator_handler(skip, lambda button: button.click())
    page.goto(f"{stack.dagster.ui_url}/asset-groups")
    page.get_by_role("button", name="settings", exact=True).click(timeout=UI_TIMEOUT_MS)
    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()
    page.keyboard.press("Escape")
    return page.locator("svg foreignObject")


def filter_graph(page: Page, query: str) -> None:
    box = page.get_by_role("textbox", name="Search and filter assets")
    box.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type(query)
    page.keyboard.press("Enter")


def asset_names(graph: Locator, name: str) -> Locator:
    return graph.get_by_text(name, exact=True)


def test_the_lineage_shows_each_image_chain_and_the_hub_downstream(image_stack: ImageStack, page: Page):
    graph = open_lineage(page, image_stack)
    for group in ("hub", *(image.replace("-", "_") for image in STACK_IMAGES)):
        expect(graph.get_by_text(group, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    for stage in CHAIN:
        expect(asset_names(graph, stage)).to_have_count(len(STACK_IMAGES))
    for asset in HUB_ASSETS:
        expect(asset_names(graph, asset)).to_have_count(1)

    # each image's chain, by what Dagster selects downstream of its source: the chain, then the hub
    for image in STACK_IMAGES:
        filter_graph(page, f'key:"{image}/source"+')
        for stage in CHAIN:
            expect(asset_names(graph, stage).first).to_be_visible()
        for asset in HUB_ASSETS:
            expect(asset_names(graph, asset)).to_be_visible()
    # downstream of a catalog entry: the hub deploy's assets only, no build
    filter_graph(page, f'key:"{STACK_IMAGES[-1]}/catalog_entry"+')
    for asset in HUB_ASSETS:
        expect(asset_names(graph, asset)).to_be_visible()
    expect(asset_names(graph, "build")).to_have_count(0)
    expect(asset_names(graph, "published")).to_have_count(0)

    # the hub's first asset names every catalog entry as its upstream
    page.goto(f"{image_stack.dagster.ui_url}/assets/hub/preflight")
    upstream = page.get_by_text("Upstream assets")
    expect(upstream).to_be_visible(timeout=UI_TIMEOUT_MS)
    for image in STACK_IMAGES:
        expect(page.get_by_role("link", name=f"{image} / catalog_entry").first).to_be_visible()


def test_the_latest_materialization_shows_the_digest(
    image_stack: ImageStack, image_materialized: dict, page: Page
):
    item = requests.get(f"{image_stack.catalog.base_url}/api/v1/images/{REBUILT_IMAGE}", timeout=10).json()
    digest = item["metadata"]["digest"]
    assert digest.startswith("sha256:")

    page.goto(f"{image_stack.dagster.ui_url}/assets/{REBUILT_IMAGE}/published")
    expect(page.get_by_text("Latest materialization")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("Never materialized")).to_have_count(0)
    expect(page.get_by_text(digest, exact=True).first).to_be_visible()
