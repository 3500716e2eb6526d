"""Community pages: reviews, discussions, flags and the moderators' queue, over the service.

Forms post here and are answered with a redirect back (303) or with an error
page carrying the service's message and status: a review before an install
is refused (403), a second flag is a conflict, a non-admin never sees the queue.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from corral._errors import PermissionDenied, UsageError

from . import charts
from .accounts import form_fields, redirect, safe_next
from .pages import WebPages
from .render import safe_html
from .session import WebSession

__all__ = ["FLAG_REASONS", "MODERATION_ACTIONS", "add_community_pages", "plugin_extras"]

FLAG_REASONS: Final = ("spam", "abuse", "malware", "other")
MODERATION_ACTIONS: Final = ("hide", "delete", "restore", "close", "reopen", "quarantine",
                             "release", "ban", "unban")


def _number(value: str | None, field: str) -> int:
    if value is None or not value.isdigit():
        raise UsageError(f"{field} must be a number", field=field)
    return int(value)


def plugin_extras(community: Any, web: WebSession, request: Request,
                  info: dict[str, Any]) -> dict[str, Any]:
    """Reviews, threads, the viewer's own review and the rating chart of one plugin page."""
    user = web.user(request)
    raw = request.query_params.get("reviews", "1")
    page = min(int(raw), 10_000) if raw.isdigit() and int(raw) > 0 else 1
    offset = (page - 1) * 20
    reviews = community.reviews(info["id"], limit=20, offset=offset)
    threads = community.threads(info["id"], limit=20)
    mine = community.my_review(user, info["id"]) if user is not None else None
    installed = community.has_installed(user, info["id"]) if user is not None else False
    dist = reviews.get("distribution", {})
    bars = [(f"{n} ★", float(dist.get(str(n), 0))) for n in range(5, 0, -1)]
    return {
        "community": True, "reviews": reviews, "reviews_page": page,
        "more_reviews": reviews.get("total", 0) > offset + 20, "threads": threads,
        "my_review": mine,
        "installed": installed, "flag_reasons": FLAG_REASONS,
        "speaks_for": bool(user is not None and info["publisher"] in user.publishers),
        "rating_chart": safe_html(charts.bar_chart(bars, title="Reviews by stars")),
    }


def add_community_pages(app: FastAPI, pages: WebPages, web: WebSession, community: Any) -> None:
    """Mount the review, thread, flag and moderation routes on ``app``."""

    def signed_in(request: Request) -> Any:
        user = web.user(request)
        if user is None:
            raise PermissionDenied("sign in first", permission="account")
        return user

    @app.post("/plugins/{plugin_id}/reviews", include_in_schema=False)
    async def post_review(request: Request, plugin_id: str) -> Response:
        fields = await form_fields(request, web)
        user = signed_in(request)
        stars = _number(fields.get("stars"), "stars")
        await run_in_threadpool(community.post_review, user, plugin_id, stars,
                                fields.get("body", ""))
        return redirect(f"/plugins/{plugin_id}?saved=review#reviews")

    @app.post("/reviews/{review_id}/reply", include_in_schema=False)
    async def reply(request: Request, review_id: int) -> Response:
        fields = await form_fields(request, web)
        done = await run_in_threadpool(community.reply_to_review, signed_in(request), review_id,
                                       fields.get("body", ""))
        plugin = community.review(review_id).get("plugin") or done.get("plugin", "")
        return redirect(f"/plugins/{plugin}#reviews")

    @app.post("/reviews/{review_id}/delete", include_in_schema=False)
    async def delete_review(request: Request, review_id: int) -> Response:
        fields = await form_fields(request, web)
        await run_in_threadpool(community.delete_review, signed_in(request), review_id)
        return redirect(safe_next(fields.get("back"), "/"))

    @app.post("/plugins/{plugin_id}/threads", include_in_schema=False)
    async def new_thread(request: Request, plugin_id: str) -> Response:
        fields = await form_fields(request, web)
        made = await run_in_threadpool(community.create_thread, signed_in(request), plugin_id,
                                       fields.get("title", ""), fields.get("body", ""))
        return redirect(f"/threads/{made['thread_id']}")

    @app.get("/threads/{thread_id}", include_in_schema=False, response_class=HTMLResponse)
    async def thread(request: Request, thread_id: int) -> Response:
        def show() -> Response:
            found = community.thread(thread_id)
            user = web.user(request)
            info = pages.registry.info(found["plugin"])
            owner = bool(user is not None and info["publisher"] in user.publishers)
            return pages.page(request, "thread.html", thread=found, plugin=info,
                              speaks_for=owner, flag_reasons=FLAG_REASONS)
        return await run_in_threadpool(show)

    @app.post("/threads/{thread_id}/posts", include_in_schema=False)
    async def post(request: Request, thread_id: int) -> Response:
        fields = await form_fields(request, web)
        await run_in_threadpool(community.post, signed_in(request), thread_id,
                                fields.get("body", ""))
        return redirect(f"/threads/{thread_id}#posts")

    @app.post("/threads/{thread_id}/accept", include_in_schema=False)
    async def accept(request: Request, thread_id: int) -> Response:
        fields = await form_fields(request, web)
        post_id = _number(fields.get("post_id"), "post_id")
        await run_in_threadpool(community.accept_answer, signed_in(request), thread_id, post_id)
        return redirect(f"/threads/{thread_id}#posts")

    @app.post("/flags", include_in_schema=False)
    async def flag(request: Request) -> Response:
        fields = await form_fields(request, web)
        await run_in_threadpool(community.flag, signed_in(request), fields.get("kind", ""),
                                fields.get("target", ""), fields.get("reason", ""),
                                fields.get("note", ""))
        back = safe_next(fields.get("back"), "/")
        sep = "&" if "?" in back.split("#")[0] else "?"
        path, _, anchor = back.partition("#")
        return redirect(f"{path}{sep}saved=flag" + (f"#{anchor}" if anchor else ""))

    def moderator(request: Request) -> Any:
        return community.moderator_of(signed_in(request))

    @app.get("/moderation", include_in_schema=False, response_class=HTMLResponse)
    async def queue(request: Request) -> Response:
        def show() -> Response:
            who = moderator(request)
            return pages.page(request, "moderation.html",
                              queue=community.moderation_queue(who, limit=100),
                              log=community.moderation_log(who, limit=50),
                              actions=MODERATION_ACTIONS)
        return await run_in_threadpool(show)

    @app.post("/moderation/actions", include_in_schema=False)
    async def act(request: Request) -> Response:
        fields = await form_fields(request, web)
        action = fields.get("action", "")
        if action not in MODERATION_ACTIONS:
            raise UsageError(f"action must be one of {', '.join(MODERATION_ACTIONS)}",
                             field="action")
        await run_in_threadpool(community.moderate, moderator(request), action,
                                fields.get("kind", ""), fields.get("target", ""),
                                fields.get("reason", ""))
        return redirect("/moderation?saved=action")

    @app.post("/moderation/actions/{action_id}/reverse", include_in_schema=False)
    async def reverse(request: Request, action_id: int) -> Response:
        fields = await form_fields(request, web)
        await run_in_threadpool(community.reverse, moderator(request), action_id,
                                fields.get("reason", ""))
        return redirect("/moderation?saved=reversed")

