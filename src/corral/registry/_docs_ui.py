"""The API pages ``/docs`` (Swagger UI) and ``/redoc``, with their scripts served by the registry.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and fonts from Google,
so they are blank on a machine without internet access, which is where team
registries live.  These pages load only the files vendored under ``static/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

from corral._errors import NotFoundError

__all__ = ["ASSETS", "STATIC_PREFIX", "add_docs_pages"]

STATIC_DIR: Final = Path(__file__).parent / "static"
#: Where the assets are served from (under the app's root path).
STATIC_PREFIX: Final = "/static"
#: Every file served under :data:`STATIC_PREFIX`: URL path -> (file, media type).
ASSETS: Final[dict[str, tuple[Path, str]]] = {
    "swagger-ui/swagger-ui-bundle.js": (STATIC_DIR / "swagger-ui" / "swagger-ui-bundle.js",
                                        "text/javascript; charset=utf-8"),
    "swagger-ui/swagger-ui.css": (STATIC_DIR / "swagger-ui" / "swagger-ui.css",
                                  "text/css; charset=utf-8"),
    "swagger-ui/favicon-32x32.png": (STATIC_DIR / "swagger-ui" / "favicon-32x32.png",
                                     "image/png"),
    "redoc/redoc.standalone.js": (STATIC_DIR / "redoc" / "redoc.standalone.js",
                                  "text/javascript; charset=utf-8"),
}
_OAUTH2_REDIRECT: Final = "/docs/oauth2-redirect"


def add_docs_pages(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect``, ``/redoc`` and the assets to ``app``.

    ``app`` must be made with ``docs_url=None, redoc_url=None``.  URLs carry the
    request's root path, so the pages also work behind a proxy under a prefix.
    """

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '').rstrip('/')}{path}"

    def asset(request: Request, name: str) -> str:
        return url(request, f"{STATIC_PREFIX}/{name}")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, openapi_url), title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=url(request, _OAUTH2_REDIRECT),
            swagger_js_url=asset(request, "swagger-ui/swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui/swagger-ui.css"),
            swagger_favicon_url=asset(request, "swagger-ui/favicon-32x32.png"),
            swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
        )

    @app.get(_OAUTH2_REDIRECT, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, openapi_url), title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc/redoc.standalone.js"),
            redoc_favicon_url=asset(request, "swagger-ui/favicon-32x32.png"),
            with_google_fonts=False,
        )

    @app.get(f"{STATIC_PREFIX}/{{name:path}}", include_in_schema=False)
    def static_asset(name: str) -> FileResponse:
        found = ASSETS.get(name)
        if found is None:  # only the listed files: no path is ever joined from the URL
            raise NotFoundError(f"no asset {name!r}")
        path, media_type = found
        return FileResponse(path, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=86400"})
