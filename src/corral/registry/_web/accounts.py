"""Account pages: sign up, sign in, sign out, and the user's API tokens.

Every form is checked by :class:`~.session.WebSession` before anything runs;
signing in starts a new session and ends the one the browser had (no session
fixation).  Failures are shown on the form with the service's message and
status (401 wrong password, 429 too many tries).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from corral._errors import CorralError, UsageError
from corral.registry._errors import http_status

from .pages import SECURITY_HEADERS, WebPages
from .session import WebSession

__all__ = ["add_account_pages", "form_fields", "redirect", "safe_next"]


def redirect(to: str) -> RedirectResponse:
    """A 303 to ``to`` (a path of this site) with the security headers."""
    return RedirectResponse(to, status_code=303, headers=dict(SECURITY_HEADERS))


def safe_next(value: str | None, default: str = "/account") -> str:
    """``value`` when it is a path of this site (never another host), else ``default``."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")) and (
            "\\" not in value) and all(0x20 < ord(c) < 0x7f for c in value):
        return value
    return default


async def form_fields(request: Request, web: WebSession) -> dict[str, str]:
    """The posted form's text fields, after its CSRF token is checked."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    web.check_csrf(request, fields.get("csrf_token"))
    return fields


def add_account_pages(app: FastAPI, pages: WebPages, web: WebSession, community: Any) -> None:
    """Mount ``/account/...`` on ``app``."""

    def client(request: Request) -> str:
        return request.client.host if request.client else ""

    def form_page(request: Request, mode: str, status: int = 200, error: str = "",
                  name: str = "", next_: str = "") -> HTMLResponse:
        return pages.page(request, "auth.html", status, mode=mode, error=error, name=name,
                          next=safe_next(next_, ""))

    @app.get("/account/signup", include_in_schema=False, response_class=HTMLResponse)
    async def signup_form(request: Request) -> Response:
        return form_page(request, "signup", next_=request.query_params.get("next", ""))

    @app.get("/account/signin", include_in_schema=False, response_class=HTMLResponse)
    async def signin_form(request: Request) -> Response:
        return form_page(request, "signin", next_=request.query_params.get("next", ""))

    async def start_session(request: Request, fields: dict[str, str], *, new: bool) -> Response:
        name, password = fields.get("name", ""), fields.get("password", "")
        mode = "signup" if new else "signin"
        try:
            if new:
                if password != fields.get("password2", password):
                    raise UsageError("the two passwords differ", field="password2")
                await run_in_threadpool(community.signup, name, password, client=client(request))
            session = await run_in_threadpool(
                community.sign_in, name, password, client=client(request),
                old_session=web.session_id(request))
        except CorralError as exc:
            failed = form_page(request, mode, http_status(exc), str(exc), name,
                               fields.get("next", ""))
            if getattr(exc, "retry_after", None):
                failed.headers["Retry-After"] = str(exc.retry_after)  # type: ignore[attr-defined]
            return failed
        out = redirect(safe_next(fields.get("next")))
        web.set_session(request, out, session.id)
        return out

    @app.post("/account/signup", include_in_schema=False)
    async def signup(request: Request) -> Response:
        fields = await form_fields(request, web)
        return await start_session(request, fields, new=True)

    @app.post("/account/signin", include_in_schema=False)
    async def signin(request: Request) -> Response:
        fields = await form_fields(request, web)
        return await start_session(request, fields, new=False)

    @app.post("/account/signout", include_in_schema=False)
    async def signout(request: Request) -> Response:
        await form_fields(request, web)
        await run_in_threadpool(community.sign_out, web.session_id(request))
        out = redirect("/")
        web.clear(request, out)
        return out

    def account_page(request: Request, status: int = 200, **extra: Any) -> Response:
        user = web.user(request)
        if user is None:
            return redirect("/account/signin?next=/account")
        tokens = community.list_tokens(user)
        return pages.page(request, "account.html", status, tokens=tokens, **extra)

    @app.get("/account", include_in_schema=False, response_class=HTMLResponse)
    async def account(request: Request) -> Response:
        return await run_in_threadpool(account_page, request)

    @app.post("/account/tokens", include_in_schema=False)
    async def new_token(request: Request) -> Response:
        fields = await form_fields(request, web)
        user = web.user(request)
        if user is None:
            return redirect("/account/signin?next=/account")
        try:
            made = await run_in_threadpool(
                community.create_token, user, description=fields.get("description", ""))
        except CorralError as exc:
            return await run_in_threadpool(account_page, request, http_status(exc),
                                           error=str(exc))
        return await run_in_threadpool(account_page, request, 201, new_token=made)

    @app.post("/account/tokens/{token_id}/revoke", include_in_schema=False)
    async def revoke_token(request: Request, token_id: str) -> Response:
        await form_fields(request, web)
        user = web.user(request)
        if user is None:
            return redirect("/account/signin?next=/account")
        try:
            await run_in_threadpool(community.revoke_token, user, token_id)
        except CorralError as exc:
            return await run_in_threadpool(account_page, request, http_status(exc),
                                           error=str(exc))
        return redirect("/account")
