"""The catalog's web page: static files at `/` and `/static/`, and the browser's sign-in settings.

The page (catalog/page/) is plain HTML, CSS and JavaScript with no build step, so the catalog image
serves it as it is. It reads the catalog's open APIs and signs users in for Rebuild in the browser itself
(authorization code with PKCE against the realm of THINKUBE_OIDC_ISSUER): the service keeps no session and
no client secret, and `/api/v1/ui-config` hands out only what any browser may know.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from thinkube_pipelines.catalog.settings import CatalogSettings

PAGE_DIR = Path(__file__).parent / "page"


class UiConfig(BaseModel):
    """What the page needs to sign a user in: public data only (a public client has no secret)."""

    issuer: str | None = Field(
        description="The Keycloak realm URL (THINKUBE_OIDC_ISSUER); null when sign-in is not configured."
    )
    client_id: str = Field(description="The realm's public client the page signs users in with.")
    scopes: list[str] = Field(description="Scopes the page asks for.")


def _content_security_policy(issuer: str | None) -> str:
    """Own scripts and styles only; fetches to the catalog and to the realm (discovery, token endpoint).

    `'self'` in connect-src also allows the same-origin WebSocket of the build logs (CSP level 3)."""
    connect = ["'self'"]
    if issuer:
        parts = urlsplit(issuer)
        connect.append(f"{parts.scheme}://{parts.netloc}")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {' '.join(connect)}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def add_page(app: FastAPI, settings: CatalogSettings) -> None:
    """Serve the image management page and its sign-in settings on `app`."""
    page_headers = {
        "Content-Security-Policy": _content_security_policy(settings.oidc_issuer),
        "Cache-Control": "no-cache",
        # the sign-in's code and state come back in the page's URL: never send it elsewhere
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
    ui_config = UiConfig(
        issuer=settings.oidc_issuer.rstrip("/") if settings.oidc_issuer else None,
        client_id=settings.ui_client_id,
        scopes=settings.ui_scopes.split(),
    )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers=page_headers)

    @app.get("/api/v1/ui-config", tags=["page"], response_model=UiConfig)
    async def get_ui_config() -> UiConfig:
        """The web page's sign-in settings: the realm, its public client and the scopes."""
        return ui_config

    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
