"""Who is signed in, from the session cookie, and the CSRF check every form goes through.

The session cookie holds the community service's session id: ``HttpOnly``,
``SameSite=Lax``, ``Secure`` when the page is served over https.  A signed-in
form carries the session's CSRF token (the service checks it); a form sent
before signing in (sign up, sign in) carries a random token that must equal
the ``HttpOnly``, ``SameSite=Strict`` cookie set with the form (double submit).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Final

from fastapi import Request
from starlette.responses import Response

from corral._errors import CorralError, PermissionDenied

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "WebSession"]

SESSION_COOKIE: Final = "corral_session"
CSRF_COOKIE: Final = "corral_csrf"
#: How long the session cookie lives in the browser (the server decides its real expiry).
SESSION_MAX_AGE: Final = 14 * 24 * 3600


class WebSession:
    """Session cookies and CSRF tokens over the community service's sessions."""

    def __init__(self, community: Any) -> None:
        self.community = community

    def session_id(self, request: Request) -> str | None:
        """The session cookie's value, if any."""
        return request.cookies.get(SESSION_COOKIE) or None

    def user(self, request: Request) -> Any | None:
        """The signed-in user, or None (no cookie, expired, signed out or banned)."""
        if getattr(request.state, "user_known", False):
            return request.state.user
        found = None
        sid = self.session_id(request)
        if sid is not None:
            try:
                found = self.community.session_user(sid)
            except CorralError:
                found = None
        request.state.user = found
        request.state.user_known = True
        return found

    def context(self, request: Request) -> dict[str, Any]:
        """What the base template needs: the user (name, admin) and this page's CSRF token."""
        user = self.user(request)
        if user is not None:
            token = self.community.csrf_token(self.session_id(request))
            return {"accounts": True, "csrf": token,
                    "user": {"name": user.name, "admin": user.is_admin,
                             "publishers": list(user.publishers)}}
        token = request.cookies.get(CSRF_COOKIE) or ""
        if len(token) < 32:
            token = secrets.token_urlsafe(32)
            request.state.new_csrf = token
        return {"accounts": True, "csrf": token, "user": None}

    def finish(self, request: Request, response: Response) -> None:
        """Set the anonymous CSRF cookie when this page made a new token."""
        token = getattr(request.state, "new_csrf", None)
        if token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")

    def check_csrf(self, request: Request, token: str | None) -> None:
        """Raise :class:`PermissionDenied` unless ``token`` is this browser's CSRF token."""
        sid = self.session_id(request)
        if sid is not None and self.user(request) is not None:
            if self.community.check_csrf(sid, token or ""):
                return
        else:
            cookie = request.cookies.get(CSRF_COOKIE) or ""
            if len(cookie) >= 32 and token and hmac.compare_digest(cookie, token):
                return
        raise PermissionDenied("the form's CSRF token is missing or wrong: reload the page "
                               "and send it again", permission="csrf")

    def set_session(self, request: Request, response: Response, session_id: str) -> None:
        """Put a new session's id in the cookie."""
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/",
                            max_age=SESSION_MAX_AGE)

    def clear(self, request: Request, response: Response) -> None:
        """Remove the session cookie."""
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                               secure=request.url.scheme == "https")
