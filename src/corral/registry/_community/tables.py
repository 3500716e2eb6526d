"""The community schema: users, sessions, tokens, installs, reviews, threads, flags, actions.

Tables live in the registry's one :data:`~.._db.metadata` (foreign keys reach
plugins and publishers); migration ``_m5_community`` creates them with
:func:`create_tables`.  ``moderation_actions`` is append-only: no code path
updates or deletes a row of it; a reversal is a new row naming the one reversed.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import _db

__all__ = [
    "TABLES",
    "create_tables",
    "flags",
    "installs",
    "moderation_actions",
    "posts",
    "rate_events",
    "review_replies",
    "reviews",
    "threads",
    "user_publishers",
    "user_sessions",
    "user_tokens",
    "users",
]

_m: Final = _db.metadata


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


users: Final = sa.Table(
    "users", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(200), nullable=False),  # scrypt$n$r$p$salt$hash
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("banned", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("trust_level", sa.Integer, nullable=False, server_default="0"),
    sa.Column("flags_agreed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("flags_disagreed", sa.Integer, nullable=False, server_default="0"),
    _when("created_at"),
)

#: Publishers a user acts for (proved with one of the publisher's tokens, or by an admin).
user_publishers: Final = sa.Table(
    "user_publishers", _m,
    sa.Column("user_pk", sa.ForeignKey("users.pk"), primary_key=True),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), primary_key=True),
)

user_sessions: Final = sa.Table(
    "user_sessions", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("id_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False, index=True),
    sa.Column("csrf_secret", sa.String(64), nullable=False),
    _when("created_at"),
    _when("expires_at"),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

user_tokens: Final = sa.Table(
    "user_tokens", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("token_id", sa.String(32), nullable=False, unique=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False, index=True),
    sa.Column("description", sa.String(200), nullable=False, server_default=""),
    _when("created_at"),
    _when("expires_at", nullable=True),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

#: Timestamps of rate-limited events: sign-in failures, reviews, posts, flags, sign-ups.
rate_events: Final = sa.Table(
    "rate_events", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),  # user:<pk> | addr:<ip> | name:<n>
    _when("at"),
    sa.Index("ix_rate_events_lookup", "kind", "subject", "at"),
)

installs: Final = sa.Table(
    "installs", _m,
    sa.Column("user_pk", sa.ForeignKey("users.pk"), primary_key=True),
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    _when("created_at"),
)

reviews: Final = sa.Table(
    "reviews", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), nullable=False),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False),
    sa.Column("stars", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # Markdown, stored raw
    sa.Column("version", sa.String(64)),  # the installed version reviewed
    _when("created_at"),
    _when("updated_at"),
    sa.Column("edits", sa.Integer, nullable=False, server_default="0"),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("plugin_pk", "user_pk", name="uq_reviews_plugin_user"),
)

#: The publisher's answer to a review (one per review, editable).
review_replies: Final = sa.Table(
    "review_replies", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("review_pk", sa.ForeignKey("reviews.pk"), nullable=False, unique=True),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    _when("created_at"),
    _when("updated_at"),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)

threads: Final = sa.Table(
    "threads", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), nullable=False, index=True),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    _when("created_at"),
    _when("updated_at"),
    sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("accepted_post_pk", sa.Integer),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)

posts: Final = sa.Table(
    "posts", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("thread_pk", sa.ForeignKey("threads.pk"), nullable=False, index=True),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # the author acted for the plugin's publisher when posting (computed by the server)
    sa.Column("is_publisher", sa.Boolean, nullable=False, server_default=sa.false()),
    _when("created_at"),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)

flags: Final = sa.Table(
    "flags", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("target_kind", sa.String(16), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),  # spam | abuse | malware | other
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("weight", sa.Float, nullable=False),  # the flagger's score when flagging
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    _when("created_at"),
    _when("resolved_at", nullable=True),
    sa.UniqueConstraint("target_kind", "target", "user_pk", name="uq_flags_target_user"),
    sa.Index("ix_flags_status_target", "status", "target_kind", "target"),
)

moderation_actions: Final = sa.Table(
    "moderation_actions", _m,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("actor", sa.String(100), nullable=False),  # user:<name> | token:<id> | system
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("target_kind", sa.String(16), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("reverses_pk", sa.Integer, index=True),  # the action this one undoes
    sa.Column("before", sa.String(200), nullable=False, server_default="{}"),  # JSON state
    sa.Column("after", sa.String(200), nullable=False, server_default="{}"),
    _when("created_at"),
)

#: Every community table, in creation order.
TABLES: Final = (users, user_publishers, user_sessions, user_tokens, rate_events, installs,
                 reviews, review_replies, threads, posts, flags, moderation_actions)


def create_tables(conn: Connection) -> None:
    """Create the community tables that do not exist yet."""
    for table in TABLES:
        table.create(conn, checkfirst=True)
