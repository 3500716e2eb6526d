"""The marketplace: server-rendered pages of the registry, mounted by :func:`add_web_pages`.

:mod:`.pages` (catalogue pages), :mod:`.accounts` and :mod:`.community` (pages
over the community service, when the app has one), :mod:`.session` (cookies,
CSRF), :mod:`.render` (Jinja2), :mod:`.markdown` (sanitised Markdown),
:mod:`.permissions` (grants in plain language), :mod:`.charts` (SVG),
:mod:`.queries` (read-only queries).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from corral._errors import CorralError
from corral.registry._errors import http_status
from corral.registry._service import Registry

from .accounts import add_account_pages
from .community import add_community_pages, plugin_extras
from .pages import WebPages, static_file
from .queries import installed_by
from .session import WebSession

__all__ = ["add_web_pages"]

#: Paths that are not pages: their errors stay JSON.
_NOT_PAGES: Final = ("/v1/", "/tuf/", "/docs", "/redoc", "/openapi.json", "/static/")


def add_web_pages(app: FastAPI, registry: Registry) -> WebPages:
    """Mount the pages on ``app`` (community pages too when ``app.state.community`` is set)."""
    web = WebPages(registry)
    community = getattr(app.state, "community", None)

    def page(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return app.get(path, include_in_schema=False, response_class=HTMLResponse)

    @page("/")
    async def home(request: Request) -> HTMLResponse:
        return await run_in_threadpool(web.home, request)

    @page("/search")
    async def search(request: Request) -> HTMLResponse:
        return await run_in_threadpool(web.search, request)

    @page("/plugins/{plugin_id}")
    async def plugin(request: Request, plugin_id: str) -> HTMLResponse:
        return await run_in_threadpool(web.plugin, request, plugin_id)

    @page("/publishers/{name}")
    async def publisher(request: Request, name: str) -> HTMLResponse:
        return await run_in_threadpool(web.publisher, request, name)

    @page("/namespaces/{name}")
    async def namespace(request: Request, name: str) -> HTMLResponse:
        return await run_in_threadpool(web.namespace, request, name)

    @app.get("/assets/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        return static_file(name)

    insights = getattr(app.state, "insights", None)
    if insights is not None:
        web.plugin_charts = insights.plugin_charts
        web.together = lambda plugin_id, limit: insights.recommend(
            [plugin_id], limit)["recommendations"]

        def recommended(user: Any, limit: int) -> list[dict[str, Any]]:
            with registry.read() as conn:
                mine = installed_by(conn, user.pk)
            return list(insights.recommend(mine, limit)["recommendations"]) if mine else []

        web.recommend = recommended

    if community is not None:
        session = WebSession(community)
        web.session_context = session.context
        web.current_user = session.user
        web.finish = session.finish
        web.plugin_extras = lambda request, info: plugin_extras(community, session, request,
                                                                info)
        add_account_pages(app, web, session, community)
        add_community_pages(app, web, session, community)

    api_error = app.exception_handlers.get(CorralError)

    async def error_page(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(_NOT_PAGES) or not isinstance(exc, CorralError):
            assert api_error is not None
            answer = api_error(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
        return await run_in_threadpool(web.error, request, exc, http_status(exc))

    if api_error is not None:
        app.add_exception_handler(CorralError, error_page)
    return web
