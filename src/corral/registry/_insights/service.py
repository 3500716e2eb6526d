"""``Insights``: the one object the API and the web pages ask for community figures,
charts and recommendations, over one :class:`~corral.registry._service.Registry`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from corral._analytics.recommend import Params

from .. import _db
from . import charts, stats
from .recommendations import RecommendationModel, seed_cousage
from .reports import RateLimiter, store_report

if TYPE_CHECKING:
    from .._service import Registry

__all__ = ["Insights"]

#: The ecosystem summary is reused for this many seconds (it scans every plugin).
ECOSYSTEM_TTL: Final = 30.0
#: Reports accepted per client address per minute.
REPORTS_PER_MINUTE: Final = 10


class Insights:
    """Community analytics and recommendations of one registry (thread-safe)."""

    def __init__(self, registry: Registry, params: Params | None = None) -> None:
        self.registry = registry
        self.recommendations = RecommendationModel(registry.engine, params)
        self.report_limit = RateLimiter(REPORTS_PER_MINUTE, 60.0)
        self._lock = threading.Lock()
        self._ecosystem: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}

    def start_warming(self) -> None:
        """Build the recommender in a background thread, so the first request need not."""

        def warm() -> None:
            try:
                self.recommendations.warm()
            except (sa.exc.SQLAlchemyError, OSError):  # the first request builds it then
                return

        threading.Thread(target=warm, name="corral-insights-warm", daemon=True).start()

    # -- figures --------------------------------------------------------------

    def plugin_stats(self, plugin_id: str, days: int = 90) -> dict[str, Any]:
        """Downloads per day, active installs, version adoption and rating trend of a plugin."""
        with self.registry.read() as conn:
            out = stats.plugin_stats(conn, plugin_id, days=days)
            pk = conn.execute(sa.select(_db.plugins.c.pk).where(
                _db.plugins.c.id == out["id"])).scalar()
        out["downloads"]["total"] += self.registry.downloads.pending_plugin(int(pk or 0))
        return out

    def publisher_stats(self, publisher: str, days: int = 90) -> dict[str, Any]:
        """A publisher's totals and downloads per day over its plugins."""
        with self.registry.read() as conn:
            return stats.publisher_stats(conn, publisher, days=days)

    def ecosystem(self, days: int = 30, limit: int = 10) -> dict[str, Any]:
        """Totals, top plugins, categories, trending plugins, all downloads per day."""
        key = (days, limit)
        with self._lock:
            hit = self._ecosystem.get(key)
            if hit is not None and time.monotonic() - hit[0] < ECOSYSTEM_TTL:
                return hit[1]
        with self.registry.read() as conn:
            doc = stats.ecosystem_stats(conn, days=days, limit=limit)
        with self._lock:
            self._ecosystem[key] = (time.monotonic(), doc)
        return doc

    # -- charts (inline SVG) --------------------------------------------------

    def plugin_charts(self, plugin_id: str, days: int = 90) -> dict[str, str]:
        """SVG charts of a plugin: ``downloads``, ``versions`` (adoption), ``ratings``."""
        doc = self.plugin_stats(plugin_id, days)
        return {
            "downloads": charts.line_chart(
                [(s["day"], s["count"]) for s in doc["downloads"]["series"]],
                title=f"Downloads per day, last {days} days", unit="downloads"),
            "versions": charts.bar_chart(
                [(v["version"], round(100 * v["share"], 1)) for v in doc["versions"]],
                title="Share of active installs per version (%)"),
            "ratings": charts.line_chart(
                [(s["day"], s["count"]) for s in doc["ratings"]["series"]],
                title=f"Ratings given per day, last {days} days", unit="ratings"),
        }

    def ecosystem_charts(self, days: int = 30) -> dict[str, str]:
        """SVG charts of the registry: ``downloads`` per day and ``categories``."""
        doc = self.ecosystem(days)
        return {
            "downloads": charts.line_chart(
                [(s["day"], s["count"]) for s in doc["downloads"]],
                title=f"Downloads per day, last {days} days", unit="downloads"),
            "categories": charts.bar_chart(
                [(c["category"], c["plugins"]) for c in doc["categories"][:12]],
                title="Plugins per category"),
        }

    # -- recommendations and reports ------------------------------------------

    def recommend(self, with_ids: Iterable[str], limit: int = 10,
                  corral_version: str | None = None) -> dict[str, Any]:
        """``{"recommendations": [{"id", "score", "reasons"}, ...]}`` for a set of ids."""
        got = self.recommendations.recommend(with_ids, limit=limit,
                                             corral_version=corral_version)
        return {"recommendations": [r.to_dict() for r in got]}

    def receive_report(self, doc: Any, client: str) -> dict[str, Any]:
        """Take one opt-in report from ``client`` (its address, for the rate limit only)."""
        self.report_limit.check(client)
        for attempt in (1, 2):
            try:
                with self.registry.write() as conn:
                    out = store_report(conn, doc)
                break
            except sa.exc.IntegrityError:  # the same report or day row raced in
                if attempt == 2:
                    raise
        self.recommendations.invalidate()
        return out

    def seed_cousage(self, path: Path, namespace: str = "pypi") -> dict[str, int]:
        """Load a co-usage TSV (``corral registry seed --cousage FILE``)."""
        counts = seed_cousage(self.registry.engine, path, namespace=namespace)
        self.recommendations.invalidate()
        return counts
