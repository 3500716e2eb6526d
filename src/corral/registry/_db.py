"""Registry storage: the SQLAlchemy Core schema and its versioned migrations.

One schema serves SQLite (the embedded default) and PostgreSQL.  Text search
is the one place they differ: SQLite gets an FTS5 table ``plugin_fts`` kept in
step by the service, PostgreSQL a weighted ``tsvector`` column with a GIN index.

Migrations are a numbered list of functions applied in order on start-up and
recorded in ``schema_migrations``.  The pending ones run in one transaction; on
PostgreSQL an advisory lock makes several server processes starting at once
take turns, on SQLite ``BEGIN IMMEDIATE`` does.  Alembic is not used: the
schema is small, the migrations must run unattended inside ``serve``, and
the dialect-specific search DDL reads more plainly as SQL than as Alembic ops.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "COMMUNITY_TABLES",
    "SCHEMA_VERSION",
    "cousage_sets",
    "daily_downloads",
    "daily_installs",
    "daily_ratings",
    "flags",
    "installs",
    "metadata",
    "migrate",
    "moderation_actions",
    "namespace_members",
    "namespaces",
    "open_engine",
    "plugin_tags",
    "plugins",
    "posts",
    "publisher_keys",
    "publishers",
    "rate_events",
    "ratings",
    "review_replies",
    "reviews",
    "threads",
    "tokens",
    "tuf_outbox",
    "usage_reports",
    "user_publishers",
    "user_sessions",
    "user_tokens",
    "users",
    "utcnow",
    "versions",
]

metadata: Final = sa.MetaData()

publishers: Final = sa.Table(
    "publishers",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("display_name", sa.String(200), nullable=False, server_default=""),
    sa.Column("email", sa.String(200)),
    sa.Column("verified", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

namespaces: Final = sa.Table(
    "namespaces",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("skeleton", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

namespace_members: Final = sa.Table(
    "namespace_members",
    metadata,
    sa.Column("namespace_pk", sa.ForeignKey("namespaces.pk"), primary_key=True),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # owner | maintainer
)

tokens: Final = sa.Table(
    "tokens",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("token_id", sa.String(32), nullable=False, unique=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), nullable=False),
    sa.Column("scopes", sa.String(100), nullable=False),  # space separated
    sa.Column("description", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

plugins: Final = sa.Table(
    "plugins",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("id", sa.String(128), nullable=False, unique=True),
    sa.Column("namespace_pk", sa.ForeignKey("namespaces.pk"), nullable=False),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("norm_name", sa.String(200), nullable=False, index=True),
    sa.Column("skeleton", sa.String(200), nullable=False, index=True),
    sa.Column("summary", sa.Text, nullable=False, server_default=""),
    sa.Column("category", sa.String(64), index=True),
    sa.Column("tags", sa.Text, nullable=False, server_default=""),  # space separated
    sa.Column("author", sa.Text, nullable=False, server_default=""),
    sa.Column("latest_version", sa.String(64)),  # newest non-yanked; NULL: all yanked
    sa.Column("downloads", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rating_sum", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rating_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rating", sa.Float, nullable=False, server_default="0"),
    sa.Column("confusable_with", sa.Text),  # ids this one reads like, space separated
    # closed by the moderators: hidden from search, resolve, download and TUF
    sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
    # reviews (visible ones) and the Bayesian average of every star given (_community.ratings)
    sa.Column("review_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bayes_rating", sa.Float, nullable=False, server_default="0"),
    sa.Column("source", sa.String(16), nullable=False, server_default="upload"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Index("ix_plugins_downloads", "downloads"),
    sa.Index("ix_plugins_latest", "latest_version"),
    sa.Index("ix_plugins_rating", "rating"),
    sa.Index("ix_plugins_bayes_rating", "bayes_rating"),
)

plugin_tags: Final = sa.Table(
    "plugin_tags",
    metadata,
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), primary_key=True),
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Index("ix_plugin_tags_tag", "tag"),
)

versions: Final = sa.Table(
    "versions",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),  # JSON of Manifest.to_dict()
    sa.Column("sha256", sa.String(64)),  # NULL: catalogue entry without an artifact
    sa.Column("size", sa.BigInteger),
    sa.Column("signature", sa.String(16), nullable=False, server_default="unsigned"),
    sa.Column("signer", sa.String(64)),  # keyid of the corral.sig signature; NULL: unsigned
    sa.Column("yanked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("yanked_reason", sa.Text),
    sa.Column("downloads", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    # True until the version's TUF target is signed: hidden from every listing till then
    sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()),
    # quarantined by the moderators: kept, but hidden from every listing, resolve and download
    sa.Column("quarantined", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("plugin_pk", "version", name="uq_versions_plugin_version"),
    sa.Index("ix_versions_sha256", "sha256"),
)

publisher_keys: Final = sa.Table(
    "publisher_keys",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), nullable=False),
    sa.Column("keyid", sa.String(64), nullable=False, index=True),
    sa.Column("public_key", sa.String(64), nullable=False),  # base64 of the raw 32 bytes
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("publisher_pk", "keyid", name="uq_publisher_keys_publisher_keyid"),
)

ratings: Final = sa.Table(
    "ratings",
    metadata,
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), primary_key=True),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), primary_key=True),
    sa.Column("stars", sa.Integer, nullable=False),
)

#: Changes committed but not yet signed into the TUF metadata (publish, yank): written in the
#: same transaction as the change, deleted once the signed metadata carries it.
tuf_outbox: Final = sa.Table(
    "tuf_outbox",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("plugin_id", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # publish | yank | unyank | publisher | key
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# -- the community (_community/): accounts, reviews, discussions, flags, moderation --------
# moderation_actions is append-only: no code updates or deletes a row of it; a reversal
# is a new row naming the one it reverses.

def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    """A timezone-aware timestamp column."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


users: Final = sa.Table(
    "users", metadata,
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
    "user_publishers", metadata,
    sa.Column("user_pk", sa.ForeignKey("users.pk"), primary_key=True),
    sa.Column("publisher_pk", sa.ForeignKey("publishers.pk"), primary_key=True),
)

user_sessions: Final = sa.Table(
    "user_sessions", metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("id_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("user_pk", sa.ForeignKey("users.pk"), nullable=False, index=True),
    sa.Column("csrf_secret", sa.String(64), nullable=False),
    _when("created_at"),
    _when("expires_at"),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

user_tokens: Final = sa.Table(
    "user_tokens", metadata,
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
    "rate_events", metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),  # user:<pk> | addr:<ip> | name:<n>
    _when("at"),
    sa.Index("ix_rate_events_lookup", "kind", "subject", "at"),
)

installs: Final = sa.Table(
    "installs", metadata,
    sa.Column("user_pk", sa.ForeignKey("users.pk"), primary_key=True),
    sa.Column("plugin_pk", sa.ForeignKey("plugins.pk"), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    _when("created_at"),
)

reviews: Final = sa.Table(
    "reviews", metadata,
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
    "review_replies", metadata,
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
    "threads", metadata,
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
    "posts", metadata,
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
    "flags", metadata,
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
    "moderation_actions", metadata,
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

#: The community's tables, in creation order (migration 5 creates them).
COMMUNITY_TABLES: Final = (users, user_publishers, user_sessions, user_tokens, rate_events,
                           installs, reviews, review_replies, threads, posts, flags,
                           moderation_actions)


#: Downloads per plugin per day (``day`` is ``YYYY-MM-DD`` UTC), added to by the count batch.
daily_downloads: Final = sa.Table(
    "daily_downloads",
    metadata,
    sa.Column("plugin_pk", sa.Integer, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_daily_downloads_day", "day"),
)

#: Opt-in reports of hosts, one per host per day at most (``nonce`` is random per day).
usage_reports: Final = sa.Table(
    "usage_reports",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("day", sa.String(10), nullable=False, index=True),
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("corral_version", sa.String(64), nullable=False),
    sa.Column("plugins", sa.Text, nullable=False),  # JSON [[id, version], ...]
    sa.UniqueConstraint("day", "nonce", name="uq_usage_reports_day_nonce"),
)

#: Hosts that reported a plugin version on a day (the report table aggregated).
daily_installs: Final = sa.Table(
    "daily_installs",
    metadata,
    sa.Column("plugin_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("hosts", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_daily_installs_day", "day"),
)

#: Co-usage sets seeded from files (``corral registry seed --cousage``).
cousage_sets: Final = sa.Table(
    "cousage_sets",
    metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("source", sa.String(300), nullable=False, server_default=""),  # repo:path
    sa.Column("family", sa.String(64)),
    sa.Column("plugins", sa.Text, nullable=False),  # space separated ids
    sa.Column("weight", sa.Float, nullable=False, server_default="1"),
    sa.UniqueConstraint("source", "family", name="uq_cousage_sets_source_family"),
)

#: Ratings given per plugin per day (the ratings table keeps only the latest of each rater).
daily_ratings: Final = sa.Table(
    "daily_ratings",
    metadata,
    sa.Column("plugin_pk", sa.Integer, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stars_sum", sa.Integer, nullable=False, server_default="0"),
)

_migrations_table: Final = sa.Table(
    "schema_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC (stored as such on both databases)."""
    return dt.datetime.now(dt.UTC)


def _m1_tables(conn: Connection) -> None:
    metadata.create_all(conn)


def _m2_search(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            "CREATE VIRTUAL TABLE plugin_fts USING fts5("
            "name_words, summary, tags, tokenize = 'porter unicode61')"
        )
    else:
        conn.exec_driver_sql(
            "ALTER TABLE plugins ADD COLUMN search tsvector GENERATED ALWAYS AS ("
            "setweight(to_tsvector('english', replace(replace(replace(norm_name, '-', ' '),"
            " '_', ' '), '.', ' ')), 'A') || "
            "setweight(to_tsvector('english', tags), 'B') || "
            "setweight(to_tsvector('english', summary), 'C')) STORED"
        )
        conn.exec_driver_sql("CREATE INDEX ix_plugins_search ON plugins USING gin (search)")


def _m3_signing(conn: Connection) -> None:
    """Signing keys of publishers and the signer of each version (a no-op on fresh databases)."""
    publisher_keys.create(conn, checkfirst=True)
    if "signer" not in {c["name"] for c in sa.inspect(conn).get_columns("versions")}:
        conn.exec_driver_sql("ALTER TABLE versions ADD COLUMN signer VARCHAR(64)")


def _m4_outbox(conn: Connection) -> None:
    """The signing outbox and the ``pending`` flag of versions (no-ops on fresh databases)."""
    tuf_outbox.create(conn, checkfirst=True)
    if "pending" not in {c["name"] for c in sa.inspect(conn).get_columns("versions")}:
        conn.exec_driver_sql(
            "ALTER TABLE versions ADD COLUMN pending BOOLEAN NOT NULL DEFAULT FALSE")


def _m5_community(conn: Connection) -> None:
    """Accounts, reviews, discussions, flags and moderation; closed plugins and quarantine."""
    for table in COMMUNITY_TABLES:
        table.create(conn, checkfirst=True)
    inspector = sa.inspect(conn)
    have = {c["name"] for c in inspector.get_columns("plugins")}
    for column, ddl in (("closed", "BOOLEAN NOT NULL DEFAULT FALSE"),
                        ("review_count", "INTEGER NOT NULL DEFAULT 0"),
                        ("bayes_rating", "FLOAT NOT NULL DEFAULT 0")):
        if column not in have:
            conn.exec_driver_sql(f"ALTER TABLE plugins ADD COLUMN {column} {ddl}")
    if "ix_plugins_bayes_rating" not in {i["name"] for i in inspector.get_indexes("plugins")}:
        conn.exec_driver_sql("CREATE INDEX ix_plugins_bayes_rating ON plugins (bayes_rating)")
    if "quarantined" not in {c["name"] for c in inspector.get_columns("versions")}:
        conn.exec_driver_sql(
            "ALTER TABLE versions ADD COLUMN quarantined BOOLEAN NOT NULL DEFAULT FALSE")
    # the moderation log is append-only in the database itself, not only by convention
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS moderation_actions_no_{op.lower()} "
                f"BEFORE {op} ON moderation_actions "
                "BEGIN SELECT RAISE(ABORT, 'moderation_actions is append-only'); END")
    else:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION moderation_actions_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'moderation_actions is append-only'; END $$")
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS moderation_actions_append_only "
                             "ON moderation_actions")
        conn.exec_driver_sql(
            "CREATE TRIGGER moderation_actions_append_only BEFORE UPDATE OR DELETE "
            "ON moderation_actions FOR EACH ROW "
            "EXECUTE FUNCTION moderation_actions_append_only()")


def _m6_insights(conn: Connection) -> None:
    """Community analytics: daily downloads, reports, installs, co-usage sets, rating days."""
    for table in (daily_downloads, usage_reports, daily_installs, cousage_sets, daily_ratings):
        table.create(conn, checkfirst=True)


#: The migrations, in order; the schema version is the length of this list.
MIGRATIONS: Final[tuple[Callable[[Connection], None], ...]] = (
    _m1_tables, _m2_search, _m3_signing, _m4_outbox,
    _m5_community,
    _m6_insights,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, pool_size=16, max_overflow=16, connect_args={"check_same_thread": False}
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take it over so that
        # writers take the lock up front instead of failing on upgrade.
        sa.event.listen(engine, "connect", _no_pysqlite_begin)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    # no server-side prepared statements: a generic plan cannot see what a text
    # query matches, and would scan every row for a query the GIN index answers
    return sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True,
                            connect_args={"prepare_threshold": None})


def _no_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def migrate(engine: Engine) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return how many steps ran."""
    ran = 0
    with engine.connect() as raw:
        conn = raw.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7346201)")
            _migrations_table.create(conn, checkfirst=True)
            done = {
                row[0] for row in conn.execute(sa.select(_migrations_table.c.version))
            }
            for number, step in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                step(conn)
                conn.execute(
                    _migrations_table.insert().values(version=number, applied_at=utcnow())
                )
                ran += 1
    return ran
