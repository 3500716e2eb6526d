"""The marketplace's HTML pages, mounted on the registry's FastAPI app by :func:`add_web_pages`.

Server-rendered (:mod:`.render`), readable with no script at all; the one
script (``static/site.js``) only adds the copy button.  Every HTML answer
carries the security headers of :data:`SECURITY_HEADERS` (a CSP that allows
no inline script), and a page that does not exist is an HTML 404, not JSON.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from packaging.version import Version

from corral._errors import CorralError, NotFoundError, UsageError
from corral._version import __version__
from corral.registry import _db
from corral.registry._search import SORTS, SearchParams
from corral.registry._service import Registry

from . import charts, permissions, queries
from .markdown import render_markdown
from .render import STATIC_DIR, render, safe_html

__all__ = ["CSP", "NOTICES", "SECURITY_HEADERS", "WebPages", "html_response", "static_file"]

CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
              "base-uri 'none'")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
PER_PAGE: Final = 20
#: A search page counts a listing's matches up to this many ("more than 1,000").
COUNT_LIMIT: Final = 1000
#: Longest README read from an archive, in bytes (the rest is not shown).
MAX_README: Final = 60_000
_README_NAMES: Final = ("README.md", "readme.md", "README.markdown", "README.txt", "README")
#: What ``?saved=`` after a form says (fixed texts: a URL never puts words in the page).
NOTICES: Final = {"review": "Your review is saved.",
                  "flag": "Thank you: the moderators will look at it.",
                  "action": "Done: the action is in the moderation log.",
                  "reversed": "Reversed: the log keeps both actions."}
_STATIC_TYPES: Final = {".css": "text/css; charset=utf-8",
                        ".js": "text/javascript; charset=utf-8",
                        ".svg": "image/svg+xml"}


def html_response(body: str, status: int = 200, *, private: bool = False,
                  headers: Mapping[str, str] | None = None) -> HTMLResponse:
    """An HTML answer with the security headers (``private``: never cached by others)."""
    out = HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
    out.headers["Cache-Control"] = "private, no-store" if private else "no-cache"
    return out


@functools.lru_cache(maxsize=256)
def _readme_from(path: Path) -> str | None:
    """The README inside a ``.corral`` archive (at its root or in its one folder), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.split("/", 1)[-1] if n.count("/") == 1 else n: n for n in zf.namelist()}
            for want in _README_NAMES:
                if want in names:
                    with zf.open(names[want]) as f:
                        return f.read(MAX_README).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def _date_param(value: str, field: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{field} must be a date such as 2024-01-31, got {value!r}",
                         field=field) from None
    return dt.datetime.combine(day, dt.time(), dt.UTC)


class WebPages:
    """The page handlers over one registry (and, when given, community and insight hooks)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.categories = queries.Cached(self._categories, ttl=60.0)
        self.home_lists = queries.Cached(self._home_lists, ttl=30.0)
        #: ``(plugin_id, limit) -> [{"id", "reasons"}]``: "used together with" (optional).
        self.together: Callable[[str, int], list[dict[str, Any]]] | None = None
        #: ``(user, limit) -> [{"id", "reasons"}]``: "recommended for you" (optional).
        self.recommend: Callable[[Any, int], list[dict[str, Any]]] | None = None
        #: ``plugin_id -> {"downloads": svg, "versions": svg, ...}``: charts over time (optional).
        self.plugin_charts: Callable[[str], dict[str, str]] | None = None
        #: ``request -> dict``: the signed-in user and CSRF token for the base template.
        self.session_context: Callable[[Request], dict[str, Any]] = lambda _r: {}
        #: ``request -> user or None``: who is signed in (the community's ``User``).
        self.current_user: Callable[[Request], Any] = lambda _r: None
        #: ``(request, info) -> dict``: what the community blocks of a plugin page need.
        self.plugin_extras: Callable[[Request, dict[str, Any]], dict[str, Any]] = (
            lambda _r, _i: {})
        #: ``(request, response)``: last touches on every page (a new CSRF cookie).
        self.finish: Callable[[Request, Response], None] = lambda _r, _a: None

    # -- shared ---------------------------------------------------------------

    def _categories(self) -> list[dict[str, Any]]:
        with self.registry.read() as conn:
            return queries.categories(conn)

    def _home_lists(self) -> dict[str, Any]:
        reg = self.registry
        popular = reg.search(SearchParams(sort="downloads", per_page=8))
        newest = reg.search(SearchParams(sort="updated", per_page=8))
        with reg.read() as conn:
            latest = conn.execute(sa.select(sa.func.max(_db.plugins.c.updated_at))).scalar()
        trending: list[dict[str, Any]] = []
        if isinstance(latest, dt.datetime):
            since = latest - dt.timedelta(days=90)
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.UTC)
            trending = reg.search(SearchParams(sort="downloads", per_page=8,
                                               updated_since=since))["results"]
        return {"popular": popular["results"], "total": popular["total"],
                "newest": newest["results"], "trending": trending}

    def page(self, request: Request, template: str, status: int = 200,
             **context: Any) -> HTMLResponse:
        """Render ``template`` with the session's context; private when signed in."""
        session = self.session_context(request)
        notice = NOTICES.get(request.query_params.get("saved", ""), "")
        body = render(template, **{"version": __version__, "accounts": False, "notice": notice,
                                   **session, **context})
        out = html_response(body, status, private=bool(session.get("user") or
                                                       session.get("csrf")))
        self.finish(request, out)
        return out

    def error(self, request: Request, exc: CorralError, status: int) -> HTMLResponse:
        """The HTML page for a service error (its message, its status)."""
        titles = {400: "Bad request", 401: "Sign in first", 403: "Not allowed",
                  404: "Not found", 409: "Conflict", 429: "Too many tries"}
        out = self.page(request, "error.html", status, title=titles.get(status, "Error"),
                        message=str(exc))
        retry = getattr(exc, "retry_after", None)
        if status == 429 and retry:
            out.headers["Retry-After"] = str(retry)
        return out

    def not_found(self, request: Request, message: str) -> HTMLResponse:
        """The HTML 404 page."""
        return self.page(request, "error.html", 404, title="Not found", message=message)

    # -- pages ----------------------------------------------------------------

    def home(self, request: Request) -> HTMLResponse:
        """Search box, categories, popular, trending, new, and recommendations if any."""
        lists = self.home_lists.get()
        user = self.current_user(request)
        recommended: list[dict[str, Any]] = []
        if user is not None and self.recommend is not None:
            try:
                recommended = self.recommend(user, 6)
            except CorralError:
                recommended = []
        return self.page(request, "home.html", categories=self.categories.get()[:16],
                         recommended=recommended, **lists)

    def search(self, request: Request) -> HTMLResponse:
        """Results with facets, sorts, pagination and the corrected query."""
        args = request.query_params
        form = {k: args.get(k, "") for k in ("category", "tag", "min_rating", "updated_since",
                                             "corral", "sort", "verified")}
        form["sort"] = form["sort"] or "relevance"
        query = args.get("q", "")
        status, error = 200, ""
        try:
            page = int(args.get("page", "1") or "1")
            min_rating = float(form["min_rating"]) if form["min_rating"] else None
            params = SearchParams(
                q=query, category=form["category"] or None, tag=form["tag"] or None,
                min_rating=min_rating, verified=True if form["verified"] else None,
                sort=form["sort"], page=min(page, 10_000), per_page=PER_PAGE,
                updated_since=_date_param(form["updated_since"], "updated_since"),
                corral=form["corral"] or None, count_limit=COUNT_LIMIT,
            )
            found = self.registry.search(params)
        except (UsageError, ValueError) as exc:
            status, error = 400, str(exc)
            found, page = {"results": [], "total": 0}, 1
        total = int(found["total"])
        listing = not query.strip() or form["sort"] != "relevance"
        capped = listing and total == COUNT_LIMIT + 1
        pages = max(1, math.ceil(total / PER_PAGE))
        if capped and len(found["results"]) == PER_PAGE:
            pages = max(pages, page + 1)

        def page_url(n: int) -> str:
            kept = [(k, v) for k, v in args.multi_items() if k != "page" and v]
            return "/search?" + urlencode([*kept, ("page", str(n))])

        corrected_query = corrected_url = ""
        if found.get("corrected"):
            fixes = found["corrected"]
            corrected_query = " ".join(fixes.get(w.lower(), w) for w in query.split())
            corrected_url = "/search?" + urlencode({"q": corrected_query})
        return self.page(
            request, "search.html", status, query=query, items=found["results"],
            total=total, capped=capped, page=page, pages=pages, page_url=page_url, form=form,
            sorts=SORTS,
            categories=self.categories.get(), error=error,
            corrected_query=corrected_query, corrected_url=corrected_url,
        )

    def plugin(self, request: Request, plugin_id: str) -> HTMLResponse:
        """Everything about one plugin (see the module's docstring)."""
        try:
            info = self.registry.info(plugin_id)
        except NotFoundError as exc:
            return self.not_found(request, str(exc))
        args = request.query_params
        with self.registry.read() as conn:
            held = queries.quarantined(conn, info["id"])
        versions = sorted([*info["versions"], *held], key=lambda v: Version(v["version"]),
                          reverse=True)
        by_version = {v["version"]: v for v in versions}
        latest = by_version.get(info["latest_version"] or "") or (
            info["versions"][0] if info["versions"] else None)
        shown = by_version.get(args.get("version", "")) or latest
        manifest = shown["manifest"] if shown else {}
        grants = permissions.describe(manifest)
        diff = None
        diff_from, diff_to = args.get("from", ""), args.get("to", "")
        if diff_from in by_version and diff_to in by_version:
            diff = permissions.diff(by_version[diff_from]["manifest"],
                                    by_version[diff_to]["manifest"])
        elif len(versions) > 1:
            diff_from, diff_to = versions[1]["version"], versions[0]["version"]
        readme_text = None
        if latest and latest.get("sha256"):
            path = self.registry.store.local_path(latest["sha256"])
            readme_text = _readme_from(path) if path is not None else None
        readme = render_readme(readme_text, info["summary"])
        series = [(f"{v['version']} ({(v['published_at'] or '')[:10]})", float(v["downloads"]))
                  for v in reversed(versions)]
        drawn = {"downloads": charts.line_chart(series, title="Downloads by version")}
        if self.plugin_charts is not None:
            with contextlib.suppress(CorralError):
                drawn = self.plugin_charts(info["id"])
        with self.registry.read() as conn:
            stars = queries.rating_distribution(conn, info["id"])
            used_by = queries.dependents(conn, info["id"])
        together: list[dict[str, Any]] = []
        if self.together is not None:
            try:
                together = self.together(info["id"], 8)
            except CorralError:
                together = []
        deps = sorted(((latest or {}).get("manifest", {}).get("dependencies") or {}).items())
        base = str(request.base_url).rstrip("/")
        context: dict[str, Any] = dict(
            p=info, versions=versions, latest=latest,
            shown_version=shown["version"] if shown else "", grants=grants, diff=diff,
            diff_from=diff_from, diff_to=diff_to, readme=readme,
            install=f"corral install {info['id']} --source {base}",
            downloads_chart=safe_html(drawn["downloads"]),
            adoption_chart=safe_html(drawn.get("versions", "")),
            rating_chart=safe_html(charts.bar_chart(
                [(f"{n} ★", float(stars[n])) for n in range(5, 0, -1)],
                title="Ratings by stars")),
            together=together, dependencies=deps, dependents=used_by, closed=False,
        )
        context.update(self.plugin_extras(request, info))  # community blocks win
        return self.page(request, "plugin.html", **context)

    def publisher(self, request: Request, name: str) -> HTMLResponse:
        """A publisher: verified or not, its namespaces, its plugins by downloads."""
        page = _page_number(request)
        with self.registry.read() as conn:
            pub = queries.publisher_info(conn, name)
            if pub is None:
                return self.not_found(request, f"no publisher {name!r} in this registry")
            items, total = queries.plugins_where(
                conn, _db.plugins.c.publisher_pk == pub["pk"], page, PER_PAGE)
        facts = [("Namespace", f"{n} ({role})", f"/namespaces/{n}")
                 for n, role in pub["namespaces"]]
        facts.append(("Member since", str(pub["created"])[:10], ""))
        return self.page(request, "listing.html", title=pub["name"],
                         subtitle=pub["display_name"], verified=pub["verified"], facts=facts,
                         items=items, total=total, page=page, cap=queries.COUNT_CAP,
                         pages=max(1, math.ceil(total / PER_PAGE)))

    def namespace(self, request: Request, name: str) -> HTMLResponse:
        """A namespace: its owners and maintainers, its plugins by downloads."""
        page = _page_number(request)
        with self.registry.read() as conn:
            ns = queries.namespace_info(conn, name)
            if ns is None:
                return self.not_found(request, f"no namespace {name!r} in this registry")
            items, total = queries.plugins_where(
                conn, _db.plugins.c.namespace_pk == ns["pk"], page, PER_PAGE)
        facts = [(role.title(), member + (" (verified)" if verified else ""),
                  f"/publishers/{member}") for member, role, verified in ns["members"]]
        return self.page(request, "listing.html", title=f"Namespace {ns['name']}",
                         subtitle="", verified=False, facts=facts, items=items, total=total,
                         page=page, cap=queries.COUNT_CAP,
                         pages=max(1, math.ceil(total / PER_PAGE)))


def render_readme(text: str | None, summary: str) -> Any:
    """The README as sanitised HTML, or the summary when the plugin has none."""
    return safe_html(render_markdown(text if text is not None else summary or ""))


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return max(1, min(int(raw), 10_000)) if raw.isdigit() else 1


def static_file(name: str) -> Response:
    """A file of ``static/`` (only names listed there; cached for a year: URLs carry a digest)."""
    path = STATIC_DIR / name
    kind = _STATIC_TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})
    return Response(path.read_bytes(), media_type=kind, headers={
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff"})
