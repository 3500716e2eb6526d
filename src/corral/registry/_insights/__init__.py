"""Community analytics and recommendations of the registry server.

What web pages call (``create_app`` puts one :class:`Insights` on ``app.state.insights``;
in a route: ``insights = request.app.state.insights``).  Every figure is plain JSON-ready
data, every chart a self-contained ``<svg>`` string (no script, labels escaped) that a
template inserts as is (mark it safe: ``{{ svg | safe }}``)::

    insights.plugin_stats(plugin_id: str, days: int = 90) -> dict
        # {"id", "days", "downloads": {"total", "in_window", "series": [{"day", "count"}]},
        #  "active_installs", "window_days", "versions": [{"version", "active_installs",
        #  "share"}], "ratings": {"average", "count", "series": [{"day", "count", "average"}]}}
    insights.publisher_stats(publisher: str, days: int = 90) -> dict
        # {"publisher", "days", "plugins", "downloads": {...}, "active_installs",
        #  "ratings": {"count", "average"}, "top": [{"id", "downloads"}]}
    insights.ecosystem(days: int = 30, limit: int = 10) -> dict
        # {"days", "totals": {...}, "top": [{"id", "downloads", "category"}],
        #  "categories": [{"category", "plugins", "downloads"}],
        #  "trending": [{"id", "recent", "previous", "growth"}], "downloads": [{"day", "count"}]}
    insights.recommend(with_ids: Iterable[str], limit: int = 10,
                       corral_version: str | None = None) -> dict
        # {"recommendations": [{"id", "score", "reasons": [str, ...]}]}
    insights.plugin_charts(plugin_id: str, days: int = 90) -> dict[str, str]
        # SVG: "downloads", "versions", "ratings"
    insights.ecosystem_charts(days: int = 30) -> dict[str, str]
        # SVG: "downloads", "categories"
    charts.line_chart(points: Sequence[tuple[str, float]], *, title: str,
                      width: int = 600, height: int = 160, unit: str = "") -> str
    charts.bar_chart(bars: Sequence[tuple[str, float]], *, title: str,
                     width: int = 600, bar_height: int = 16) -> str
    stats.record_rating(conn, plugin_pk: int, stars: int, day: str | None = None) -> None
        # the hook a rating or review writer calls in its transaction (rating trends)

Unknown ids raise :class:`~corral._errors.NotFoundError`, bad input
:class:`~corral._errors.UsageError` (the pages answer 404 / 400).  The JSON API of the
same figures is in :mod:`.routes`.
"""

from __future__ import annotations

from . import charts, stats
from .service import Insights

__all__ = ["Insights", "charts", "stats"]
