"""The JSON API of community analytics and recommendations, added to the registry's app.

``GET /v1/recommendations``, ``GET /v1/plugins/{id}/stats``, ``GET /v1/stats/ecosystem``,
``GET /v1/stats/publishers/{publisher}`` and ``POST /v1/reports`` (opt-in host reports:
bounded size, rate-limited per address).  Errors use the app's one error model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from corral._analytics.report import MAX_PLUGINS, MAX_REPORT_BYTES
from corral._errors import UsageError

from .._errors import UploadTooLarge
from .service import Insights

__all__ = ["add_insights_routes"]

_SEGMENT: Final = r"^[A-Za-z0-9_][A-Za-z0-9._+!-]*$"
_IDS: Final = r"^[A-Za-z0-9_.,+!-]*$"
#: At most this many ids in ``with``.
MAX_WITH: Final = 200

PluginIdParam = Annotated[str, PathParam(pattern=_SEGMENT, max_length=128,
                                         description="namespace.name")]
PublisherParam = Annotated[str, PathParam(pattern=_SEGMENT, max_length=64)]

_REPORT_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "day", "nonce", "corral_version", "plugins"],
    "properties": {
        "schema": {"type": "integer", "enum": [1]},
        "day": {"type": "string", "format": "date", "description": "today or yesterday, UTC"},
        "nonce": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                  "description": "random, new every day: counts a host once per day"},
        "corral_version": {"type": "string", "maxLength": 64},
        "plugins": {"type": "array", "maxItems": MAX_PLUGINS, "items": {
            "type": "object", "additionalProperties": False, "required": ["id", "version"],
            "properties": {"id": {"type": "string", "maxLength": 128},
                           "version": {"type": "string", "maxLength": 64}}}},
    },
}


def add_insights_routes(app: FastAPI, insights: Insights, prefix: str,
                        errors: Callable[..., dict[int | str, dict[str, Any]]]) -> None:
    """Add the routes to ``app``; ``errors(*statuses)`` gives their OpenAPI error responses."""
    app.state.insights = insights

    @app.get(f"{prefix}/recommendations", tags=["community"], responses=errors(400, 503))
    def recommendations(
        with_: str = Query("", alias="with", max_length=200 * 130, pattern=_IDS,
                           description="the ids a user has, comma separated"),
        limit: int = Query(10, ge=1, le=50),
        corral: str | None = Query(None, max_length=64, pattern=_SEGMENT,
                                   description="the asking host's corral version: "
                                               "incompatible plugins are left out"),
    ) -> dict[str, Any]:
        """Plugins to add to a set, best first, each with its reasons in plain words."""
        ids = [i for i in with_.split(",") if i]
        if len(ids) > MAX_WITH:
            raise UsageError(f"with: at most {MAX_WITH} ids", field="with")
        return insights.recommend(ids, limit=limit, corral_version=corral)

    @app.get(f"{prefix}/plugins/{{plugin_id}}/stats", tags=["community"],
             responses=errors(400, 404, 503))
    def plugin_stats(plugin_id: PluginIdParam,
                     days: int = Query(90, ge=1, le=366)) -> dict[str, Any]:
        """Downloads per day, active installs, version adoption and rating trend."""
        return insights.plugin_stats(plugin_id, days)

    @app.get(f"{prefix}/stats/ecosystem", tags=["community"], responses=errors(400, 503))
    def ecosystem(days: int = Query(30, ge=1, le=366),
                  limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
        """Totals, top plugins, categories and trending plugins (growth over ``days``)."""
        return insights.ecosystem(days, limit)

    @app.get(f"{prefix}/stats/publishers/{{publisher}}", tags=["community"],
             responses=errors(400, 404, 503))
    def publisher_stats(publisher: PublisherParam,
                        days: int = Query(90, ge=1, le=366)) -> dict[str, Any]:
        """A publisher's plugins, downloads per day, active installs and ratings."""
        return insights.publisher_stats(publisher, days)

    @app.post(f"{prefix}/reports", tags=["community"],
              responses=errors(400, 413, 429, 503, 507),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": _REPORT_SCHEMA}}}})
    async def report(request: Request) -> dict[str, Any]:
        """An opt-in host report: installed ids and versions, corral version, a daily nonce."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_REPORT_BYTES):
            raise UploadTooLarge(f"a report is at most {MAX_REPORT_BYTES} bytes",
                                 limit=MAX_REPORT_BYTES)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REPORT_BYTES:
                raise UploadTooLarge(f"a report is at most {MAX_REPORT_BYTES} bytes",
                                     limit=MAX_REPORT_BYTES)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise UsageError("a report is a JSON document", field="report") from None
        client = request.client.host if request.client else "unknown"
        return await run_in_threadpool(insights.receive_report, doc, client)
