"""GET /docs (Swagger UI) and GET /redoc (ReDoc), whose JavaScript, CSS and favicon the service
serves itself under /docs-assets/.

FastAPI's own pages load those files from a public CDN, so on a cluster without internet (common
at operators) /docs stays blank. The files come from the pinned `fastapi-offline` package (Swagger
UI 5 and ReDoc 2 builds, shipped as package data; only its static folder is used here), so the
image carries them and nothing at run time leaves the cluster. No page asks an outside service for
anything: ReDoc without Google Fonts or Redocly's logo, Swagger UI without its online validator.
tests/integration/test_docs_offline.py renders both pages in a headless browser with no network
beyond loopback.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"

# The files the pages load, by their name in the package's static folder.
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
ASSET_FILES = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)

# validatorUrl None: Swagger UI would otherwise send the schema's URL to validator.swagger.io.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {**swagger_ui_default_parameters, "validatorUrl": None}
# ReDoc always shows Redocly's logo from its CDN (it hides the image when that fails): images
# from this service only, so the browser never even asks. Scripts, styles and fetches are left
# alone: the pages' inline scripts and Swagger UI's "Try it out" need them.
PAGE_HEADERS = {"Content-Security-Policy": "img-src 'self' data:"}


def assets_directory() -> Path:
    """The installed folder that holds ASSET_FILES; fails at start-up, naming what is missing,
    rather than serving a blank /docs."""
    directory = Path(str(resources.files("fastapi_offline") / "static"))
    missing = [name for name in ASSET_FILES if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"Swagger UI files missing from {directory}: {', '.join(missing)}")
    return directory


def add_docs(app: FastAPI) -> None:
    """Mount /docs-assets/ and add /docs and /redoc to `app` (built with docs_url=None and
    redoc_url=None, so FastAPI adds no CDN pages of its own)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def prefix(request: Request) -> str:
        # Behind a path prefix (root_path), the pages must load the schema and files through it.
        root_path: str = request.scope.get("root_path", "")
        return root_path.rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        page.headers.update(PAGE_HEADERS)
        return page

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,
        )
        page.headers.update(PAGE_HEADERS)
        return page
