"""The community's JSON API under ``/v1``: accounts, sessions, tokens, installs, reviews,
discussions, flags and moderation.

Auth is a bearer credential: a user token (``cru_...``) or a session id
(``crs_...``, from ``POST /v1/sessions``); moderation also takes a publisher
token with the ``admin`` scope.  Errors use the registry's one error model
(the ``errors`` helper handed in by :func:`~.._app.create_app`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from .flags import FLAGGABLE, REASONS
from .moderation import ACTIONS
from .service import Community
from .targets import KINDS
from .text import MAX_BODY, MAX_NOTE, MAX_TITLE
from .users import User

__all__ = ["add_community_routes"]

_NO_CONTROLS: Final = r"^[^\x00-\x1f\x7f]*$"
_FREE_TEXT: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_USER: Final = r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$"
_SEGMENT: Final = r"^[A-Za-z0-9_][A-Za-z0-9._+!-]*$"
_MAX_ID: Final = 2 ** 31 - 1

PluginId = Annotated[str, PathParam(pattern=_SEGMENT, max_length=128, description="namespace.name")]
UserName = Annotated[str, PathParam(pattern=_USER, max_length=40)]
TokenId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{12}$")]
RowId = Annotated[int, PathParam(ge=1, le=_MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


class Credentials(BaseModel):
    """A user name and password (sign-up and sign-in)."""

    name: str = Field(pattern=_USER, min_length=1, max_length=40)
    password: str = Field(min_length=8, max_length=200, pattern=_NO_CONTROLS)


class TokenRequest(BaseModel):
    """A new user token: what it is for and how many days it lives (0: no expiry)."""

    description: str = Field(default="", max_length=200, pattern=_NO_CONTROLS)
    expires_days: int = Field(default=90, ge=0, le=3650)


class LinkRequest(BaseModel):
    """A live token of the publisher to act for (proves control of it)."""

    publisher_token: str = Field(min_length=1, max_length=200, pattern=_NO_CONTROLS)


class InstallRequest(BaseModel):
    """The version installed (default: the latest)."""

    version: str | None = Field(default=None, max_length=64, pattern=_SEGMENT)


class ReviewRequest(BaseModel):
    """1-5 stars and a Markdown body (stored raw)."""

    stars: int = Field(ge=1, le=5, strict=True)
    body: str = Field(default="", max_length=10_000, pattern=_FREE_TEXT)


class BodyRequest(BaseModel):
    """A Markdown body (stored raw)."""

    body: str = Field(min_length=1, max_length=MAX_BODY, pattern=_FREE_TEXT)


class ThreadRequest(BaseModel):
    """A question: one-line title and a Markdown body."""

    title: str = Field(min_length=1, max_length=MAX_TITLE, pattern=_NO_CONTROLS)
    body: str = Field(min_length=1, max_length=MAX_BODY, pattern=_FREE_TEXT)


class AcceptRequest(BaseModel):
    """The post to mark as the accepted answer (null: none)."""

    post_id: int | None = Field(default=None, ge=1, le=_MAX_ID)


class CloseRequest(BaseModel):
    """Close (true) or reopen (false)."""

    closed: bool = True


class FlagRequest(BaseModel):
    """What is flagged and why."""

    target_kind: Literal["review", "reply", "thread", "post", "plugin"]
    target: str = Field(min_length=1, max_length=200, pattern=_NO_CONTROLS,
                        description="a numeric id, or a plugin id")
    reason: Literal["spam", "abuse", "malware", "other"]
    note: str = Field(default="", max_length=MAX_NOTE, pattern=_FREE_TEXT)


class ActionRequest(BaseModel):
    """A moderation action on a target, and why."""

    action: Literal["hide", "delete", "restore", "close", "reopen", "quarantine", "release",
                    "ban", "unban", "moderator", "unmoderator"]
    target_kind: Literal["review", "reply", "thread", "post", "plugin", "version", "user"]
    target: str = Field(min_length=1, max_length=200, pattern=_NO_CONTROLS,
                        description="a numeric id, a plugin id, <plugin id>@<version> "
                        "or a user name")
    reason: str = Field(default="", max_length=MAX_NOTE, pattern=_FREE_TEXT)


class ReverseRequest(BaseModel):
    """Why an action is reversed."""

    reason: str = Field(default="", max_length=MAX_NOTE, pattern=_FREE_TEXT)


assert set(FLAGGABLE) == {"review", "reply", "thread", "post", "plugin"}
assert set(REASONS) == {"spam", "abuse", "malware", "other"}
assert set(ACTIONS) == {"hide", "delete", "restore", "close", "reopen", "quarantine",
                        "release", "ban", "unban", "moderator", "unmoderator"}
assert set(KINDS) == {"review", "reply", "thread", "post", "plugin", "version", "user"}


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _me(user: User) -> dict[str, Any]:
    return {**user.public(), "flags_agreed": user.flags_agreed,
            "flags_disagreed": user.flags_disagreed}


def add_community_routes(app: FastAPI, community: Community, *, prefix: str,
                         errors: Callable[..., dict[int | str, dict[str, Any]]]) -> None:
    """Mount the community routes on ``app`` under ``prefix``."""
    auth: dict[str, Any] = {"security": [{"bearer": []}]}
    read = errors(400, 404, 503)
    write = errors(400, 401, 403, 404, 429, 503, 507)

    def user_of(request: Request) -> User:
        return community.authenticate(_bearer(request))

    # -- accounts ------------------------------------------------------------

    @app.post(f"{prefix}/users", tags=["accounts"], status_code=201,
              responses=errors(400, 429, 503, 507))
    def signup(body: Credentials, request: Request) -> dict[str, Any]:
        """Create a user account (sign-ups per address are rate limited)."""
        return community.signup(body.name, body.password, client=_client(request)).public()

    @app.post(f"{prefix}/sessions", tags=["accounts"], status_code=201,
              responses=errors(400, 401, 403, 429, 503, 507))
    def sign_in(body: Credentials, request: Request) -> dict[str, Any]:
        """Sign in: a new session id (use it as a bearer credential) and its CSRF token.

        5 failures in 15 minutes for one account, or 20 from one address, answer 429.
        """
        old = _bearer(request)
        session = community.sign_in(body.name, body.password, client=_client(request),
                                    old_session=old)
        return {**session.to_dict(), "user": body.name}

    @app.delete(f"{prefix}/sessions/current", tags=["accounts"],
                responses=errors(400, 401, 503, 507), openapi_extra=auth)
    def sign_out(request: Request) -> dict[str, Any]:
        """End the session given as the bearer credential."""
        bearer = _bearer(request)
        community.session_user(bearer)
        community.sign_out(bearer)
        return {"signed_out": True}

    @app.get(f"{prefix}/users/me", tags=["accounts"], responses=errors(400, 401, 503),
             openapi_extra=auth)
    def whoami(request: Request) -> dict[str, Any]:
        """The signed-in user."""
        return _me(user_of(request))

    @app.get(f"{prefix}/users/{{name}}", tags=["accounts"], responses=read)
    def user_profile(name: UserName) -> dict[str, Any]:
        """A user's public profile."""
        return community.user(name).public()

    @app.post(f"{prefix}/users/me/publishers", tags=["accounts"], responses=write,
              openapi_extra=auth)
    def link_publisher(body: LinkRequest, request: Request) -> dict[str, Any]:
        """Act for a publisher: present one of its live tokens (``publish`` scope)."""
        return _me(community.link_publisher(user_of(request), body.publisher_token))

    @app.get(f"{prefix}/users/me/tokens", tags=["accounts"], responses=errors(400, 401, 503),
             openapi_extra=auth)
    def list_tokens(request: Request) -> dict[str, Any]:
        """Your API tokens (never their secrets)."""
        return {"tokens": community.list_tokens(user_of(request))}

    @app.post(f"{prefix}/users/me/tokens", tags=["accounts"], status_code=201,
              responses=write, openapi_extra=auth)
    def create_token(request: Request, body: TokenRequest | None = None) -> dict[str, Any]:
        """A new API token (its plaintext is in this answer only)."""
        body = body or TokenRequest()
        return community.create_token(user_of(request), description=body.description,
                                      expires_days=body.expires_days or None)

    @app.delete(f"{prefix}/users/me/tokens/{{token_id}}", tags=["accounts"], responses=write,
                openapi_extra=auth)
    def revoke_token(token_id: TokenId, request: Request) -> dict[str, Any]:
        """Revoke one of your tokens (anyone else's answers 404)."""
        community.revoke_token(user_of(request), token_id)
        return {"revoked": token_id}

    # -- installs and reviews ------------------------------------------------

    @app.post(f"{prefix}/plugins/{{plugin_id}}/installs", tags=["reviews"], status_code=201,
              responses=write, openapi_extra=auth)
    def record_install(plugin_id: PluginId, request: Request,
                       body: InstallRequest | None = None) -> dict[str, Any]:
        """Record that you installed a plugin (what a review needs)."""
        return community.record_install(user_of(request), plugin_id,
                                        body.version if body else None)

    @app.get(f"{prefix}/plugins/{{plugin_id}}/reviews", tags=["reviews"], responses=read)
    def list_reviews(plugin_id: PluginId, limit: Limit = 50,
                     offset: Offset = 0) -> dict[str, Any]:
        """A plugin's reviews, newest first, with the Bayesian rating and distribution."""
        return community.reviews(plugin_id, limit=limit, offset=offset)

    @app.put(f"{prefix}/plugins/{{plugin_id}}/reviews/mine", tags=["reviews"],
             status_code=201, responses={200: {"description": "Your review, edited"}, **write},
             openapi_extra=auth)
    def put_review(plugin_id: PluginId, body: ReviewRequest, request: Request,
                   response: Response) -> dict[str, Any]:
        """Write your review (201) or edit it (200); only after a recorded install."""
        review, created = community.post_review(user_of(request), plugin_id, body.stars,
                                                body.body)
        if not created:
            response.status_code = 200
        return review

    @app.get(f"{prefix}/reviews/{{review_id}}", tags=["reviews"], responses=read)
    def get_review(review_id: RowId) -> dict[str, Any]:
        """One review with the publisher's reply."""
        return community.review(review_id)

    @app.delete(f"{prefix}/reviews/{{review_id}}", tags=["reviews"], responses=write,
                openapi_extra=auth)
    def delete_review(review_id: RowId, request: Request) -> dict[str, Any]:
        """Withdraw your own review."""
        community.delete_review(user_of(request), review_id)
        return {"deleted": review_id}

    @app.put(f"{prefix}/reviews/{{review_id}}/reply", tags=["reviews"], responses=write,
             openapi_extra=auth)
    def reply(review_id: RowId, body: BodyRequest, request: Request) -> dict[str, Any]:
        """The publisher's reply (users who act for the plugin's publisher only)."""
        return community.reply_to_review(user_of(request), review_id, body.body)

    # -- discussions ---------------------------------------------------------

    @app.get(f"{prefix}/plugins/{{plugin_id}}/threads", tags=["discussions"], responses=read)
    def list_threads(plugin_id: PluginId, limit: Limit = 50,
                     offset: Offset = 0) -> dict[str, Any]:
        """A plugin's Q&A threads, most recently active first."""
        return community.threads(plugin_id, limit=limit, offset=offset)

    @app.post(f"{prefix}/plugins/{{plugin_id}}/threads", tags=["discussions"],
              status_code=201, responses=write, openapi_extra=auth)
    def create_thread(plugin_id: PluginId, body: ThreadRequest,
                      request: Request) -> dict[str, Any]:
        """Ask a question about a plugin."""
        return community.create_thread(user_of(request), plugin_id, body.title, body.body)

    @app.get(f"{prefix}/threads/{{thread_id}}", tags=["discussions"], responses=read)
    def get_thread(thread_id: RowId) -> dict[str, Any]:
        """A thread with its posts (``is_publisher`` marks the publisher's answers)."""
        return community.thread(thread_id)

    @app.post(f"{prefix}/threads/{{thread_id}}/posts", tags=["discussions"], status_code=201,
              responses=write, openapi_extra=auth)
    def post(thread_id: RowId, body: BodyRequest, request: Request) -> dict[str, Any]:
        """Answer in a thread (not once it is closed)."""
        return community.post(user_of(request), thread_id, body.body)

    @app.post(f"{prefix}/threads/{{thread_id}}/accept", tags=["discussions"],
              responses=write, openapi_extra=auth)
    def accept(thread_id: RowId, body: AcceptRequest, request: Request) -> dict[str, Any]:
        """Mark the accepted answer (the thread's author, the publisher or a moderator)."""
        return community.accept_answer(user_of(request), thread_id, body.post_id)

    @app.post(f"{prefix}/threads/{{thread_id}}/close", tags=["discussions"],
              responses=write, openapi_extra=auth)
    def close(thread_id: RowId, request: Request,
              body: CloseRequest | None = None) -> dict[str, Any]:
        """Close or reopen a thread (the thread's author, the publisher or a moderator)."""
        return community.close_thread(user_of(request), thread_id,
                                      body.closed if body else True)

    # -- flags and moderation ------------------------------------------------

    @app.post(f"{prefix}/flags", tags=["moderation"], status_code=201, responses=write,
              openapi_extra=auth)
    def flag(body: FlagRequest, request: Request) -> dict[str, Any]:
        """Flag a review, reply, thread, post or plugin (weighted by your trust)."""
        return community.flag(user_of(request), body.target_kind, body.target, body.reason,
                              body.note)

    @app.get(f"{prefix}/moderation/queue", tags=["moderation"],
             responses=errors(400, 401, 403, 503), openapi_extra=auth)
    def moderation_queue(request: Request, limit: Limit = 100) -> dict[str, Any]:
        """Flagged targets, highest score first (moderators)."""
        who = community.moderator(_bearer(request))
        return {"queue": community.moderation_queue(who, limit=limit)}

    @app.get(f"{prefix}/moderation/actions", tags=["moderation"],
             responses=errors(400, 401, 403, 503), openapi_extra=auth)
    def moderation_log(
        request: Request, limit: Limit = 100, offset: Offset = 0,
        target_kind: Annotated[str | None, Query(pattern=r"^[a-z]{1,16}$")] = None,
        target: Annotated[str | None, Query(max_length=200, pattern=_NO_CONTROLS)] = None,
    ) -> dict[str, Any]:
        """The moderation log, newest first (moderators)."""
        who = community.moderator(_bearer(request))
        return {"actions": community.moderation_log(who, kind=target_kind, target=target,
                                                    limit=limit, offset=offset)}

    @app.post(f"{prefix}/moderation/actions", tags=["moderation"], status_code=201,
              responses=write, openapi_extra=auth)
    def moderate(body: ActionRequest, request: Request) -> dict[str, Any]:
        """Hide, delete, restore, close, reopen, quarantine, release, ban, unban; grant or take
        moderation (``moderator``/``unmoderator``: the admin token only)."""
        who = community.moderator(_bearer(request))
        return community.moderate(who, body.action, body.target_kind, body.target,
                                  body.reason)

    @app.post(f"{prefix}/moderation/actions/{{action_id}}/reverse", tags=["moderation"],
              status_code=201, responses=write, openapi_extra=auth)
    def reverse(action_id: RowId, request: Request,
                body: ReverseRequest | None = None) -> dict[str, Any]:
        """Undo a moderation action (recorded as a new action)."""
        who = community.moderator(_bearer(request))
        return community.reverse(who, action_id, body.reason if body else "")
