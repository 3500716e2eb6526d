"""The community facade: one call per thing a page or the API does, each in one transaction.

:class:`Community` wraps a :class:`~.._service.Registry` (its database and
catalogue); the JSON API (:mod:`.api`) and the web pages both call it.  It
owns no state of its own: every fact is in the database, so any number of
server processes share sessions, limits and flags.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from corral._errors import NotFoundError, PermissionDenied

from .. import _accounts
from .._db import reviews as review_table
from .._errors import Unauthenticated
from . import flags as _flags
from . import installs as _installs
from . import limits, moderation, ratings, reviews, sessions, threads, tokens, users
from .plugins import plugin_ref
from .sessions import Session
from .users import User

if TYPE_CHECKING:  # the registry imports the rating code of this package: no cycle at run time
    from .._service import Registry

__all__ = ["Community"]


class Community:
    """Accounts, sessions, reviews, discussions, flags and moderation over one registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- accounts ---------------------------------------------------------

    def signup(self, name: str, password: str, *, client: str = "") -> User:
        """Create an account (sign-ups per client address are limited)."""
        with self.registry.write() as conn:
            limits.check(conn, limits.SIGNUPS, f"addr:{client}")
            pk = users.signup(conn, name, password)
            limits.record(conn, limits.SIGNUPS, f"addr:{client}")
            return users.load_user(conn, pk)

    def sign_in(self, name: str, password: str, *, client: str = "",
                old_session: str | None = None) -> Session:
        """Check the password and open a fresh session (ending ``old_session``: no fixation).

        Raises:
            RateLimited: 5 failures in 15 minutes for this account, or 20 from this address.
            Unauthenticated: a wrong name or password (the same message for both).
            PermissionDenied: the account is banned.
        """
        account, address = f"name:{name[:64]}", f"addr:{client}"
        failed: Unauthenticated | None = None
        with self.registry.write() as conn:
            limits.check(conn, limits.SIGNIN, account)
            limits.check(conn, limits.SIGNIN_ADDRESS, address)
            pk = users.check_credentials(conn, name, password)
            if pk is None:
                limits.record(conn, limits.SIGNIN, account)
                limits.record(conn, limits.SIGNIN_ADDRESS, address)
                failed = Unauthenticated("wrong user name or password")
            else:
                user = users.load_user(conn, pk)
                user.require_active()
                sessions.end_session(conn, old_session)
                return sessions.create_session(conn, pk)
        raise failed  # after the commit, so the failure is counted

    def create_session(self, user: User, *, old_session: str | None = None) -> Session:
        """Open a session for ``user`` (e.g. right after sign-up), ending ``old_session``."""
        with self.registry.write() as conn:
            users.load_user(conn, user.pk).require_active()
            sessions.end_session(conn, old_session)
            return sessions.create_session(conn, user.pk)

    def sign_out(self, session_id: str | None) -> None:
        """End a session (an unknown one is ignored)."""
        with self.registry.write() as conn:
            sessions.end_session(conn, session_id)

    def session_user(self, session_id: str | None) -> User:
        """The signed-in, not banned, user of a session (raises Unauthenticated)."""
        with self.registry.read() as conn:
            return self._active(users.load_user(conn, sessions.session_user_pk(conn,
                                                                               session_id)))

    def rotate(self, session_id: str) -> Session:
        """A fresh id for a live session (the old id stops working)."""
        with self.registry.write() as conn:
            return sessions.rotate(conn, session_id)

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token to put in every form of this session."""
        with self.registry.read() as conn:
            return sessions.csrf_token(conn, session_id)

    def check_csrf(self, session_id: str | None, token: str | None) -> bool:
        """Whether a submitted CSRF token belongs to this live session."""
        with self.registry.read() as conn:
            return sessions.check_csrf(conn, session_id, token)

    def authenticate(self, bearer: str | None) -> User:
        """The user a bearer credential (``cru_`` token or ``crs_`` session) stands for."""
        if not bearer:
            raise Unauthenticated("this needs a user token or session "
                                  "(Authorization: Bearer cru_... or crs_...)")
        with self.registry.read() as conn:
            if sessions.is_session_id(bearer):
                pk = sessions.session_user_pk(conn, bearer)
            elif tokens.is_user_token(bearer):
                pk = tokens.token_user_pk(conn, bearer)
            else:
                raise Unauthenticated("this needs a user token (cru_...) or a session "
                                      "(crs_...), not a publisher token")
            return self._active(users.load_user(conn, pk))

    @staticmethod
    def _active(user: User) -> User:
        if user.banned:
            raise Unauthenticated(f"account {user.name!r} is banned")
        return user

    def user(self, name: str) -> User:
        """A user by name."""
        with self.registry.read() as conn:
            return users.get_user(conn, name)

    def set_admin(self, name: str, is_admin: bool = True, *, actor: str = "cli") -> User:
        """Make a user a moderator or take it back (the admin CLI; recorded as an action)."""
        with self.registry.write() as conn:
            moderation.act(conn, self.registry, moderation.Moderator(actor),
                           "moderator" if is_admin else "unmoderator", "user", name)
            return users.get_user(conn, name)

    def link_publisher(self, user: User, publisher_token: str) -> User:
        """Let ``user`` act for the publisher whose live token they present."""
        with self.registry.write() as conn:
            who = _accounts.authenticate(conn, publisher_token)
            who.require("publish")
            users.link_publisher(conn, user.pk, who.publisher_pk)
            return users.load_user(conn, user.pk)

    def link_publisher_by_name(self, user_name: str, publisher: str) -> User:
        """Let a user act for a publisher (the admin CLI)."""
        with self.registry.write() as conn:
            user = users.get_user(conn, user_name)
            users.link_publisher(conn, user.pk, _accounts.publisher_pk(conn, publisher))
            return users.load_user(conn, user.pk)

    def create_token(self, user: User, *, description: str = "",
                     expires_days: int | None = 90) -> dict[str, Any]:
        """A new API token of ``user`` (plaintext in the answer, once)."""
        expires = None if not expires_days else dt.timedelta(days=expires_days)
        with self.registry.write() as conn:
            return tokens.create_token(conn, user.pk, description=description,
                                       expires_in=expires)

    def list_tokens(self, user: User) -> list[dict[str, Any]]:
        """``user``'s tokens (never a secret)."""
        with self.registry.read() as conn:
            return tokens.list_tokens(conn, user.pk)

    def revoke_token(self, user: User, token_id: str) -> None:
        """Revoke one of ``user``'s own tokens (another's answers not found)."""
        with self.registry.write() as conn:
            tokens.revoke_token(conn, user.pk, token_id)

    # -- installs and reviews ------------------------------------------------

    def record_install(self, user: User, plugin_id: str,
                       version: str | None = None) -> dict[str, Any]:
        """Record that ``user`` installed a plugin (the proof a review needs)."""
        with self.registry.write() as conn:
            return _installs.record_install(conn, user.pk, plugin_id, version)

    def record_download(self, bearer: str | None, plugin_id: str, version: str) -> bool:
        """Record a download made with a user's bearer credential as an install.

        Anything else (no credential, a publisher token, an invalid one) records
        nothing and never fails the download.
        """
        if not (sessions.is_session_id(bearer) or tokens.is_user_token(bearer)):
            return False
        try:
            user = self.authenticate(bearer)
            self.record_install(user, plugin_id, version)
        except (Unauthenticated, PermissionDenied, NotFoundError):
            return False
        return True

    def has_installed(self, user: User, plugin_id: str) -> bool:
        """Whether ``user`` has a recorded install of ``plugin_id``."""
        with self.registry.read() as conn:
            return _installs.has_installed(conn, user.pk, int(plugin_ref(conn, plugin_id).pk))

    def reviews(self, plugin_id: str, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A plugin's visible reviews, newest first, with the rating distribution."""
        with self.registry.read() as conn:
            return reviews.list_reviews(conn, plugin_id, limit=limit, offset=offset)

    def review(self, review_id: int) -> dict[str, Any]:
        """One visible review."""
        with self.registry.read() as conn:
            return reviews.get_review(conn, review_id)

    def my_review(self, user: User, plugin_id: str) -> dict[str, Any] | None:
        """``user``'s own review of ``plugin_id``, if any (for an edit form)."""
        with self.registry.read() as conn:
            plugin = plugin_ref(conn, plugin_id)
            t = review_table
            pk = conn.execute(sa.select(t.c.pk).where(
                (t.c.plugin_pk == plugin.pk) & (t.c.user_pk == user.pk)
                & (t.c.deleted == sa.false()))).scalar()
            return None if pk is None else reviews.get_review(conn, int(pk), moderator=True)

    def post_review(self, user: User, plugin_id: str, stars: int,
                    body: str) -> tuple[dict[str, Any], bool]:
        """Write or edit ``user``'s review; ``(review, created)``."""
        with self.registry.write() as conn:
            limits.check(conn, limits.REVIEWS, f"user:{user.pk}")
            out = reviews.upsert_review(conn, user, plugin_id, stars, body)
            limits.record(conn, limits.REVIEWS, f"user:{user.pk}")
            return out

    def delete_review(self, user: User, review_id: int) -> None:
        """Withdraw ``user``'s own review."""
        with self.registry.write() as conn:
            reviews.delete_review(conn, user, review_id)

    def reply_to_review(self, user: User, review_id: int, body: str) -> dict[str, Any]:
        """The publisher's reply to a review."""
        with self.registry.write() as conn:
            limits.check(conn, limits.POSTS, f"user:{user.pk}")
            out = reviews.reply(conn, user, review_id, body)
            limits.record(conn, limits.POSTS, f"user:{user.pk}")
            return out

    def rating_prior(self) -> dict[str, Any]:
        """The Bayesian prior in use: mean ``m`` and weight ``C``."""
        with self.registry.read() as conn:
            return ratings.prior(conn)

    # -- discussions ----------------------------------------------------------

    def threads(self, plugin_id: str, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A plugin's threads, most recently active first."""
        with self.registry.read() as conn:
            return threads.list_threads(conn, plugin_id, limit=limit, offset=offset)

    def thread(self, thread_id: int) -> dict[str, Any]:
        """A thread and its posts."""
        with self.registry.read() as conn:
            return threads.get_thread(conn, thread_id)

    def create_thread(self, user: User, plugin_id: str, title: str, body: str) -> dict[str, Any]:
        """Open a question on a plugin."""
        with self.registry.write() as conn:
            limits.check(conn, limits.POSTS, f"user:{user.pk}")
            out = threads.create_thread(conn, user, plugin_id, title, body)
            limits.record(conn, limits.POSTS, f"user:{user.pk}")
            return out

    def post(self, user: User, thread_id: int, body: str) -> dict[str, Any]:
        """Answer in a thread."""
        with self.registry.write() as conn:
            limits.check(conn, limits.POSTS, f"user:{user.pk}")
            out = threads.post_reply(conn, user, thread_id, body)
            limits.record(conn, limits.POSTS, f"user:{user.pk}")
            return out

    def accept_answer(self, user: User, thread_id: int, post_id: int | None) -> dict[str, Any]:
        """Mark the accepted answer (the author, the publisher or a moderator)."""
        with self.registry.write() as conn:
            return threads.accept_answer(conn, user, thread_id, post_id)

    def close_thread(self, user: User, thread_id: int, closed: bool = True) -> dict[str, Any]:
        """Close or reopen a thread (the author, the publisher or a moderator)."""
        with self.registry.write() as conn:
            return threads.close_thread(conn, user, thread_id, closed)

    # -- flags and moderation -------------------------------------------------

    def flag(self, user: User, kind: str, target: str, reason: str,
             note: str = "") -> dict[str, Any]:
        """Flag a review, reply, thread, post or plugin."""
        with self.registry.write() as conn:
            limits.check(conn, limits.FLAGS, f"user:{user.pk}")
            out = _flags.add_flag(conn, user, kind, target, reason, note)
            limits.record(conn, limits.FLAGS, f"user:{user.pk}")
            return out

    def moderator(self, bearer: str | None) -> moderation.Moderator:
        """Who moderates with this credential: an admin user, or a publisher admin token."""
        if bearer and bearer.startswith("crl_"):
            with self.registry.read() as conn:
                who = _accounts.authenticate(conn, bearer)
            if "admin" not in who.scopes:
                raise PermissionDenied(f"token {who.token_id} lacks the 'admin' scope",
                                       permission="scope:admin")
            return moderation.Moderator(f"token:{who.token_id}")
        return self.moderator_of(self.authenticate(bearer))

    @staticmethod
    def moderator_of(user: User) -> moderation.Moderator:
        """``user`` as a moderator (raises unless they are one)."""
        if not user.is_admin:
            raise PermissionDenied(f"user {user.name!r} is not a moderator",
                                   permission="moderation")
        return moderation.Moderator(f"user:{user.name}", user.pk)

    def moderation_queue(self, who: moderation.Moderator, *,
                         limit: int = 100) -> list[dict[str, Any]]:
        """Flagged targets, highest score first."""
        del who  # the caller proved it is a moderator
        with self.registry.read() as conn:
            return moderation.queue(conn, limit=limit)

    def moderate(self, who: moderation.Moderator, action: str, kind: str, target: str,
                 reason: str = "") -> dict[str, Any]:
        """Take a moderation action (recorded; reversible)."""
        with self.registry.write() as conn:
            out, changed = moderation.act(conn, self.registry, who, action, kind, target,
                                          reason)
        if changed:
            self.registry.reconcile(changed)
        return out

    def reverse(self, who: moderation.Moderator, action_id: int,
                reason: str = "") -> dict[str, Any]:
        """Undo a moderation action (recorded as a new one)."""
        with self.registry.write() as conn:
            out, changed = moderation.reverse(conn, self.registry, who, action_id, reason)
        if changed:
            self.registry.reconcile(changed)
        return out

    def moderation_log(self, who: moderation.Moderator, *, kind: str | None = None,
                       target: str | None = None, limit: int = 100,
                       offset: int = 0) -> list[dict[str, Any]]:
        """The append-only action log, newest first."""
        del who
        with self.registry.read() as conn:
            return moderation.list_actions(conn, kind=kind, target=target, limit=limit,
                                           offset=offset)
