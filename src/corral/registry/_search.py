"""Search: candidates from the database, ordered by :mod:`._rank`.

Text matching is the database's: SQLite FTS5 with BM25 (name words weighted
above tags above summary) or PostgreSQL full text (``ts_rank`` over a
weighted ``tsvector``).  Typo tolerance lives in :class:`NameIndex`, an
in-memory list of names and words that every server process refreshes
incrementally from the database (plugins are only ever added), so several
processes over one PostgreSQL database see the same catalogue.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, final

import sqlalchemy as sa
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA
from sqlalchemy.dialects.postgresql import TSQUERY
from sqlalchemy.engine import Connection

from corral._errors import UsageError

from . import _db
from ._names import ECOSYSTEM_TAGS, normalise_name, query_terms, skeleton, words
from ._rank import Candidate, rank, stem

__all__ = [
    "RESULT_COLUMNS", "SORTS", "NameIndex", "SearchParams", "incompatible", "refold_skeletons",
    "result_dict", "search",
]

SORTS: Final = ("relevance", "downloads", "rating", "updated")
#: How many of the most downloaded plugins the name index keeps words for, and how
#: long (seconds) before it reloads them when no plugin was added.
POPULAR_SIZE: Final = 5000
POPULAR_TTL: Final = 300.0
MAX_QUERY: Final = 200
MAX_PER_PAGE: Final = 100
#: Relevance re-ranks this many text matches at most; deeper pages keep BM25 order.
POOL: Final = 150


@final
@dataclass(frozen=True, slots=True)
class SearchParams:
    """A validated search request."""

    q: str = ""
    category: str | None = None
    tag: str | None = None
    author: str | None = None
    min_rating: float | None = None
    verified: bool | None = None
    sort: str = "relevance"
    page: int = 1
    per_page: int = 20
    #: Only plugins updated at or after this moment.
    updated_since: dt.datetime | None = None
    #: Only plugins whose latest version accepts this corral version (``requires-corral``).
    corral: str | None = None
    #: Plugin keys left out (filled by :func:`search` from ``corral``).
    exclude: tuple[int, ...] = ()
    #: A listing counts its matches up to this many, then ``total`` is this plus one
    #: (None: counted exactly, as the JSON API does).
    count_limit: int | None = None

    def __post_init__(self) -> None:
        if len(self.q) > MAX_QUERY:
            raise UsageError(f"query is {len(self.q)} characters, at most {MAX_QUERY}", field="q")
        if "\x00" in self.q:
            raise UsageError("query contains a NUL character", field="q")
        if self.sort not in SORTS:
            raise UsageError(
                f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}", field="sort"
            )
        if self.page < 1:
            raise UsageError(f"page must be 1 or more, got {self.page}", field="page")
        if not 1 <= self.per_page <= MAX_PER_PAGE:
            raise UsageError(
                f"per_page must be between 1 and {MAX_PER_PAGE}, got {self.per_page}",
                field="per_page",
            )
        if self.corral is not None:
            try:
                Version(self.corral)
            except InvalidVersion:
                raise UsageError(f"corral must be a version such as 1.2, got {self.corral!r}",
                                 field="corral") from None
        if self.min_rating is not None and not 0 <= self.min_rating <= 5:
            raise UsageError(
                f"min_rating must be between 0 and 5, got {self.min_rating}", field="min_rating"
            )


class NameIndex:
    """Normalised names and the word vocabulary, for look-alike candidates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_pk = 0
        self.pks: list[int] = []
        self.names: list[str] = []
        self.vocab: dict[str, int] = {}  # word -> how many plugins use it
        self._by_len: dict[int, list[str]] = {}
        self.compact: dict[str, list[int]] = {}  # name without separators -> pks
        self._names_by_len: dict[int, tuple[list[str], list[int]]] = {}
        #: look-alike skeletons of the names by length: candidates are chosen folded
        self._skels_by_len: dict[int, tuple[list[str], list[int]]] = {}
        #: the most downloaded plugins with their stemmed words, for popular candidates
        self.popular: list[tuple[int, frozenset[str]]] = []
        self._popular_at = 0.0

    def refresh(self, conn: Connection) -> None:
        """Pick up plugins added since the last call (cheap when none were)."""
        with self._lock:
            rows = conn.execute(
                sa.select(_db.plugins.c.pk, _db.plugins.c.norm_name, _db.plugins.c.summary)
                .where(_db.plugins.c.pk > self._last_pk)
                .order_by(_db.plugins.c.pk)
            ).all()
            if rows or time.monotonic() - self._popular_at > POPULAR_TTL:
                self._load_popular(conn)
            if not rows:
                return
            for pk, name, summary in rows:
                self.pks.append(int(pk))
                self.names.append(str(name))
                self.compact.setdefault(str(name).replace("-", ""), []).append(int(pk))
                bucket = self._names_by_len.setdefault(len(str(name)), ([], []))
                bucket[0].append(str(name))
                bucket[1].append(int(pk))
                skel = skeleton(str(name))
                folded = self._skels_by_len.setdefault(len(skel), ([], []))
                folded[0].append(skel)
                folded[1].append(int(pk))
                for word in set(words(f"{name} {summary}")):
                    if word not in self.vocab:
                        self._by_len.setdefault(len(word), []).append(word)
                    self.vocab[word] = self.vocab.get(word, 0) + 1
            self._last_pk = int(rows[-1][0])

    def _load_popular(self, conn: Connection) -> None:
        p = _db.plugins
        rows = conn.execute(
            sa.select(p.c.pk, p.c.norm_name, p.c.summary, p.c.tags)
            .where(p.c.latest_version.is_not(None), p.c.downloads > 0)
            .order_by(p.c.downloads.desc())
            .limit(POPULAR_SIZE)
        ).all()
        self.popular = [
            (int(pk), frozenset(stem(w) for w in words(f"{name} {summary} {tags}")))
            for pk, name, summary, tags in rows
        ]
        self._popular_at = time.monotonic()

    def popular_matches(self, groups: list[tuple[str, ...]], limit: int) -> list[int]:
        """The most downloaded plugins holding any query word (in memory: no big sort)."""
        wanted = {stem(a) for g in groups for a in g}
        out: list[int] = []
        for pk, vocab in self.popular:
            if not wanted.isdisjoint(vocab):
                out.append(pk)
                if len(out) >= limit:
                    break
        return out

    def similar_names(self, name: str, limit: int = 20) -> list[int]:
        """Primary keys of names within typo distance of ``name``."""
        if len(name) < 4 or not self.names:
            return []
        names: list[str] = []
        pks: list[int] = []
        for length in range(len(name) - 3, len(name) + 4):
            bucket = self._names_by_len.get(length)
            if bucket:
                names.extend(bucket[0])
                pks.extend(bucket[1])
        found = process.extract(
            name, names, scorer=fuzz.ratio, limit=limit, score_cutoff=80, processor=None
        )
        return [pks[index] for _, _, index in found]

    def similar_skeletons(self, name: str, limit: int = 20) -> list[int]:
        """Primary keys of names whose skeleton is within one edit of ``name``'s skeleton.

        Folding comes first, so ``nurnpy`` (``numpy``) and ``c1ick`` (``click``)
        find their targets however far apart the raw spellings are.
        """
        skel = skeleton(name)
        if len(skel) < 3:
            return []
        names: list[str] = []
        pks: list[int] = []
        for length in range(len(skel) - 1, len(skel) + 2):
            bucket = self._skels_by_len.get(length)
            if bucket:
                names.extend(bucket[0])
                pks.extend(bucket[1])
        found = process.extract(
            skel, names, scorer=OSA.distance, limit=limit, score_cutoff=1, processor=None
        )
        return [pks[index] for _, _, index in found]

    def idf(self, word: str) -> float:
        """How telling a word is: rare words weigh more (BM25's inverse document frequency)."""
        n = max(len(self.names), 1)
        df = self.vocab.get(word, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def correct(self, word: str) -> str | None:
        """The likeliest known word for an unknown ``word`` (one or two typos)."""
        if len(word) < 4 or word in self.vocab or word.isdigit():
            return None
        pool: list[str] = []
        for length in range(len(word) - 2, len(word) + 3):
            pool.extend(self._by_len.get(length, ()))
        found = process.extract(
            word, pool, scorer=OSA.normalized_similarity, score_cutoff=0.75, limit=8,
            processor=None,
        )
        best: tuple[float, int, str] | None = None
        for cand, sim, _ in found:
            key = (round(float(sim), 3), self.vocab[cand], cand)
            if best is None or key > best:
                best = key
        return None if best is None else best[2]


def refold_skeletons(conn: Connection, *, write: bool = True) -> int:
    """Rewrite stored skeletons folded by an older rule set; return how many are stale."""
    changed = 0
    for table, key in ((_db.plugins, _db.plugins.c.id), (_db.namespaces, _db.namespaces.c.name)):
        rows = conn.execute(sa.select(table.c.pk, key, table.c.skeleton)).all()
        for pk, name, old in rows:
            new = skeleton(str(name))
            if new != old and write:
                conn.execute(table.update().where(table.c.pk == pk).values(skeleton=new))
            changed += new != old
    return changed


def _filters(params: SearchParams) -> list[sa.ColumnElement[bool]]:
    p = _db.plugins
    conds: list[sa.ColumnElement[bool]] = [p.c.latest_version.is_not(None)]
    if params.category:
        conds.append(p.c.category == params.category.lower())
    if params.tag:
        conds.append(
            p.c.pk.in_(
                sa.select(_db.plugin_tags.c.plugin_pk).where(
                    _db.plugin_tags.c.tag == params.tag.lower()
                )
            )
        )
    if params.author:
        conds.append(sa.func.lower(p.c.author).contains(params.author.lower(), autoescape=True))
    if params.min_rating is not None:
        conds.append(p.c.rating >= params.min_rating)
    if params.updated_since is not None:
        conds.append(p.c.updated_at >= params.updated_since)
    if params.exclude:
        conds.append(p.c.pk.not_in(params.exclude))
    if params.verified is not None:
        conds.append(
            p.c.publisher_pk.in_(
                sa.select(_db.publishers.c.pk).where(
                    _db.publishers.c.verified == params.verified
                )
            )
        )
    return conds


#: Above this many matches BM25 is computed over the all-words (AND) matches only.
SCORE_LIMIT: Final = 3000
#: A word matching at most this many plugins counts as rare.
RARE_LIMIT: Final = 1500
#: Candidates taken per query word when the words are scored one by one.
GROUP_POOL: Final = 60


def _text_expr(groups: list[tuple[str, ...]], conn: Connection, *, every: bool) -> str | None:
    """The engine's query: any word (OR) or every word (AND of each word's alternatives).

    On PostgreSQL the query comes back as ``tsquery`` text, stemmed by the server
    once: see :func:`_tsquery_text`.
    """
    alts = [sorted(set(g)) for g in groups if g]
    if not alts:
        return None
    if conn.dialect.name == "sqlite":
        parts = ["(" + " OR ".join(f'"{a}"' for a in g) + ")" for g in alts]
        return (" AND " if every else " OR ").join(parts)
    parts = ["(" + " | ".join(g) + ")" for g in alts]
    return _tsquery_text(conn, (" & " if every else " | ").join(parts))


#: ``to_tsquery('english', expr)`` as text, per ``expr``: the stemmer's answer never changes.
_TSQUERIES: dict[str, str] = {}


def _tsquery_text(conn: Connection, expr: str) -> str:
    """``expr`` stemmed into ``tsquery`` text by the server, remembered.

    ``to_tsquery`` is a STABLE function, so a query that calls it cannot be
    estimated when it is planned: PostgreSQL then scans every row's ``tsvector``
    (~45 ms on 20,000 plugins) where the GIN index answers in well under a
    millisecond.  A ``tsquery`` constant lets the planner see what it matches.
    """
    text = _TSQUERIES.get(expr)
    if text is None:
        text = str(conn.execute(
            sa.select(sa.cast(sa.func.to_tsquery(sa.literal_column("'english'"), expr), sa.Text))
        ).scalar_one())
        if len(_TSQUERIES) >= 4096:
            _TSQUERIES.clear()
        _TSQUERIES[expr] = text
    return text


def _tsquery(text: str) -> sa.ColumnElement[Any]:
    return sa.cast(sa.bindparam(None, text, type_=sa.Text), TSQUERY)


def _matches(dialect: str, expr: str) -> sa.ColumnElement[bool]:
    """``plugins.pk`` matches the text query ``expr``."""
    if dialect == "sqlite":
        sub: Any = sa.select(sa.literal_column("rowid")).select_from(sa.table("plugin_fts")).where(
            sa.text("plugin_fts MATCH :fts_q").bindparams(fts_q=expr)
        )
        return _db.plugins.c.pk.in_(sub)
    return sa.literal_column("plugins.search").op("@@")(_tsquery(expr))


def _scored(
    conn: Connection, dialect: str, expr: str, conds: list[sa.ColumnElement[bool]], pool: int
) -> list[tuple[int, float]]:
    """The ``pool`` best text matches of ``expr`` by BM25 (or ``ts_rank``)."""
    p = _db.plugins
    if dialect == "sqlite":
        fts = sa.table("plugin_fts", sa.column("rowid"))
        score: Any = sa.literal_column("-bm25(plugin_fts, 10.0, 2.0, 4.0)")
        match = sa.text("plugin_fts MATCH :fts_s").bindparams(fts_s=expr)
        if len(conds) > 1:
            stmt = sa.select(p.c.pk, score.label("s")).select_from(
                fts.join(p, p.c.pk == fts.c.rowid)).where(match, *conds)
        else:
            stmt = sa.select(fts.c.rowid, score.label("s")).select_from(fts).where(match)
    else:
        tsq = _tsquery(expr)
        search_col: Any = sa.literal_column("plugins.search")
        stmt = sa.select(p.c.pk, sa.func.ts_rank(search_col, tsq).label("s")).where(
            search_col.op("@@")(tsq), *conds)
    rows = conn.execute(stmt.order_by(sa.desc("s")).limit(pool)).all()
    return [(int(pk), float(s)) for pk, s in rows]


def _count(conn: Connection, conds: list[sa.ColumnElement[bool]]) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(_db.plugins).where(*conds)
    ).scalar_one())


def _count_text(
    conn: Connection, dialect: str, expr: str, conds: list[sa.ColumnElement[bool]]
) -> int:
    """How many listed plugins match ``expr`` (SQLite: counted in FTS5 when unfiltered)."""
    if dialect != "sqlite" or len(conds) > 1:
        return _count(conn, [_matches(dialect, expr), *conds])
    matched = conn.execute(
        sa.text("SELECT count(*) FROM plugin_fts WHERE plugin_fts MATCH :q"), {"q": expr}
    ).scalar_one()
    if conn.execute(sa.text(
        "SELECT 1 FROM plugins WHERE latest_version IS NULL LIMIT 1")).first() is None:
        return int(matched)  # nothing is hidden: the usual case, and much cheaper
    hidden = conn.execute(
        sa.text("SELECT count(*) FROM plugins WHERE latest_version IS NULL AND pk IN "
                "(SELECT rowid FROM plugin_fts WHERE plugin_fts MATCH :q)"), {"q": expr}
    ).scalar_one()
    return int(matched) - int(hidden)


def _more_than(
    conn: Connection, dialect: str, expr: str, conds: list[sa.ColumnElement[bool]], n: int
) -> bool:
    """Whether more than ``n`` listed plugins match ``expr`` (counting stops at ``n + 1``)."""
    if dialect == "sqlite":
        return _count_text(conn, dialect, expr, conds) > n
    first = sa.select(sa.literal(1)).select_from(_db.plugins).where(
        _matches(dialect, expr), *conds).limit(n + 1).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(first)).scalar_one()) > n


def _most_downloaded(
    conn: Connection, dialect: str, expr: str, conds: list[sa.ColumnElement[bool]], limit: int
) -> list[int]:
    """The ``limit`` most downloaded plugins matching ``expr``."""
    if dialect == "sqlite" and len(conds) == 1:
        # walk the downloads index and stop early, instead of sorting every match
        rows = conn.execute(
            sa.text("SELECT pk FROM plugins INDEXED BY ix_plugins_downloads "
                    "WHERE pk IN (SELECT rowid FROM plugin_fts WHERE plugin_fts MATCH :q) "
                    "AND latest_version IS NOT NULL ORDER BY downloads DESC LIMIT :n"),
            {"q": expr, "n": limit},
        ).scalars()
        return [int(pk) for pk in rows]
    p = _db.plugins
    stmt = sa.select(p.c.pk).where(_matches(dialect, expr), *conds)
    return [int(pk) for pk in conn.execute(
        stmt.order_by(p.c.downloads.desc()).limit(limit)).scalars()]


def _text_candidates(
    conn: Connection, index: NameIndex, groups: list[tuple[str, ...]], params: SearchParams,
    pool: int,
) -> tuple[dict[int, float], int]:
    """``{pk: text score}`` of the best text matches, and how many match in all.

    BM25 over tens of thousands of matches is the slow part of a search, so
    when the any-word matches are too many it scores the every-word matches
    only; the most downloaded any-word matches are always added, so that a
    popular plugin missing one query word still competes.
    """
    dialect = conn.dialect.name
    any_expr = _text_expr(groups, conn, every=False)
    if any_expr is None:
        return {}, 0
    conds = _filters(params)
    total = _count_text(conn, dialect, any_expr, conds)
    out: dict[int, float] = {}
    if total <= SCORE_LIMIT:
        out.update(_scored(conn, dialect, any_expr, conds, pool))
    else:
        every = _text_expr(groups, conn, every=True)
        if every and not _more_than(conn, dialect, every, conds, SCORE_LIMIT):
            out.update(_scored(conn, dialect, every, conds, pool))
        if len(groups) > 1 and len(out) < GROUP_POOL:
            # too few match every word: take each rare word's best and most used matches
            for group in groups:
                one = _text_expr([group], conn, every=False)
                if one is None or _more_than(conn, dialect, one, conds, RARE_LIMIT):
                    continue
                for pk, s in _scored(conn, dialect, one, conds, GROUP_POOL):
                    out.setdefault(pk, s / len(groups))
                for pk in _most_downloaded(conn, dialect, one, conds, 20):
                    out.setdefault(pk, 0.0)
    popular = (index.popular_matches(groups, 60) if len(conds) == 1
               else _most_downloaded(conn, dialect, any_expr, conds, 60))
    for pk in popular:
        out.setdefault(pk, 0.0)
    return out, total


_RESULT_COLUMNS: Final = (
    _db.plugins.c.pk,
    _db.plugins.c.id,
    _db.plugins.c.name,
    _db.plugins.c.norm_name,
    _db.plugins.c.summary,
    _db.plugins.c.category,
    _db.plugins.c.tags,
    _db.plugins.c.author,
    _db.plugins.c.latest_version,
    _db.plugins.c.downloads,
    _db.plugins.c.rating,
    _db.plugins.c.rating_count,
    _db.plugins.c.bayes_rating,
    _db.plugins.c.review_count,
    _db.plugins.c.updated_at,
    _db.plugins.c.confusable_with,
    _db.publishers.c.name.label("publisher"),
    _db.publishers.c.verified,
)
#: The columns of one search result (what :func:`result_dict` reads).
RESULT_COLUMNS: Final = _RESULT_COLUMNS


_RANK_COLUMNS: Final = (
    _db.plugins.c.pk,
    _db.plugins.c.id,
    _db.plugins.c.norm_name,
    _db.plugins.c.summary,
    _db.plugins.c.tags,
    _db.plugins.c.downloads,
    _db.plugins.c.rating,
)


def _rows(
    conn: Connection, pks: Iterable[int], params: SearchParams, *, full: bool = True
) -> dict[int, Any]:
    """Rows of the listed plugins among ``pks`` that pass the filters (by pk)."""
    p = _db.plugins
    wanted = list(pks)
    out: dict[int, Any] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        if full:
            stmt = (
                sa.select(*_RESULT_COLUMNS)
                .join(_db.publishers, _db.publishers.c.pk == p.c.publisher_pk)
                .where(p.c.pk.in_(chunk), *_filters(params))
            )
        else:
            stmt = sa.select(*_RANK_COLUMNS).where(p.c.pk.in_(chunk), *_filters(params))
        for row in conn.execute(stmt):
            out[int(row.pk)] = row
    return out


def result_dict(row: Any, score: float | None = None) -> dict[str, Any]:
    """One search result in API spelling."""
    updated = row.updated_at
    if isinstance(updated, dt.datetime) and updated.tzinfo is None:
        updated = updated.replace(tzinfo=dt.UTC)
    out: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "version": row.latest_version,
        "summary": row.summary,
        "downloads": int(row.downloads),
        "rating": round(float(row.rating), 2),
        "rating_count": int(row.rating_count),
        "bayes_rating": round(float(row.bayes_rating), 3),
        "review_count": int(row.review_count),
        "verified": bool(row.verified),
        "publisher": row.publisher,
        "category": row.category,
        "tags": row.tags.split(),
        "updated": updated.isoformat() if isinstance(updated, dt.datetime) else updated,
    }
    if row.confusable_with:
        out["confusable_with"] = row.confusable_with.split()
    if score is not None:
        out["score"] = score
    return out


_ORDER: Final[Mapping[str, tuple[Any, ...]]] = {
    "relevance": (_db.plugins.c.downloads.desc(), _db.plugins.c.id),
    "downloads": (_db.plugins.c.downloads.desc(), _db.plugins.c.id),
    # the Bayesian average of reviews and ratings (_community.ratings): one 5-star
    # review does not outrank forty 4.8-star ones
    "rating": (
        _db.plugins.c.bayes_rating.desc(),
        _db.plugins.c.rating.desc(),
        _db.plugins.c.rating_count.desc(),
        _db.plugins.c.downloads.desc(),
        _db.plugins.c.id,
    ),
    "updated": (_db.plugins.c.updated_at.desc(), _db.plugins.c.id),
}


def _listing(
    conn: Connection, params: SearchParams, pks: sa.ColumnElement[bool] | None
) -> dict[str, Any]:
    """Plain filtered listing in ``params.sort`` order (no query, or a non-relevance sort)."""
    p = _db.plugins
    conds = _filters(params)
    if pks is not None:
        conds.append(pks)
    base = (
        sa.select(*_RESULT_COLUMNS)
        .join(_db.publishers, _db.publishers.c.pk == p.c.publisher_pk)
        .where(*conds)
    )
    if params.count_limit is None:
        total = conn.execute(
            sa.select(sa.func.count()).select_from(p).where(*conds)
        ).scalar_one()
    else:  # stop counting at the limit: a broad filter need not visit every row
        capped = sa.select(p.c.pk).where(*conds).limit(params.count_limit + 1).subquery()
        total = conn.execute(sa.select(sa.func.count()).select_from(capped)).scalar_one()
    rows = conn.execute(
        base.order_by(*_ORDER[params.sort])
        .limit(params.per_page)
        .offset((params.page - 1) * params.per_page)
    ).all()
    return {"results": [result_dict(r) for r in rows], "total": int(total)}


def incompatible(conn: Connection, corral: str) -> tuple[int, ...]:
    """Keys of plugins whose latest version's ``requires-corral`` refuses version ``corral``."""
    v, p = _db.versions, _db.plugins
    rows = conn.execute(
        sa.select(p.c.pk, v.c.manifest)
        .join(v, (v.c.plugin_pk == p.c.pk) & (v.c.version == p.c.latest_version))
        .where(v.c.sha256 > "", v.c.manifest.contains("requires-corral"))
    ).all()
    out: list[int] = []
    for pk, manifest in rows:
        spec = json.loads(manifest).get("plugin", {}).get("requires-corral", "")
        try:
            if spec and not SpecifierSet(spec).contains(corral, prereleases=True):
                out.append(int(pk))
        except InvalidSpecifier:
            out.append(int(pk))
    return tuple(out)


def search(conn: Connection, index: NameIndex, params: SearchParams) -> dict[str, Any]:
    """Run a search; ``{"results": [...], "total": N, "page", "per_page", ...}``."""
    index.refresh(conn)
    if params.corral is not None and not params.exclude:
        params = dataclasses.replace(params, exclude=incompatible(conn, params.corral) or (-1,))
    q = " ".join(params.q.split())
    page_info = {"page": params.page, "per_page": params.per_page, "sort": params.sort}
    if not q:
        return {**_listing(conn, params, None), **page_info, "query": q}
    query_name = normalise_name(q.replace(" ", "-"))
    groups = query_terms(q)
    corrected: dict[str, str] = {}
    for i, group in enumerate(groups):
        fix = index.correct(group[0])
        if fix is not None:
            corrected[group[0]] = fix
            extra = (fix, *query_terms(fix)[0][1:]) if query_terms(fix) else (fix,)
            groups[i] = (*group, *(a for a in extra if a not in group))
    # name candidates: exact, prefix, look-alike
    p = _db.plugins
    q_id = q.lower()
    exact: set[int] = set(
        conn.execute(
            sa.select(p.c.pk).where((p.c.norm_name == query_name) | (p.c.id == q_id))
        ).scalars()
    )
    exact.update(index.compact.get(query_name.replace("-", ""), ()))
    name_pks = set(exact)
    if len(query_name) >= 3:
        name_pks.update(
            conn.execute(
                sa.select(p.c.pk)
                .where(p.c.norm_name > query_name + "-", p.c.norm_name < query_name + "-\x7f")
                .order_by(p.c.downloads.desc())
                .limit(30)
            ).scalars()
        )
    if len(groups) <= 2 and not exact:  # no exact name: maybe a misspelt one
        name_pks.update(index.similar_names(query_name))
    pool = min(max(POOL, params.page * params.per_page), 2000)
    text_scores, text_total = _text_candidates(conn, index, groups, params, pool)
    if params.sort != "relevance":
        any_expr = _text_expr(groups, conn, every=False)
        match: sa.ColumnElement[bool] = p.c.pk.in_(list(name_pks))
        if any_expr is not None:
            match = match | _matches(conn.dialect.name, any_expr)
        return {**_listing(conn, params, match), **page_info, "query": q}
    rows = _rows(conn, set(text_scores) | name_pks, params, full=False)
    candidates = [
        Candidate(
            pk=pk,
            id=row.id,
            norm_name=row.norm_name,
            summary=row.summary,
            tags=row.tags,
            downloads=int(row.downloads),
            rating=float(row.rating),
            text_score=text_scores.get(pk, 0.0),
        )
        for pk, row in rows.items()
    ]
    ranked = rank(
        candidates, query=q, query_name=query_name, groups=groups,
        weights=[index.idf(g[0]) for g in groups], ecosystems=ECOSYSTEM_TAGS,
    )
    start = (params.page - 1) * params.per_page
    page = ranked[start : start + params.per_page]
    total = max(text_total, len(ranked))
    shown = _rows(conn, [c.pk for c in page], params)
    out: dict[str, Any] = {
        "results": [result_dict(shown[c.pk], c.score) for c in page if c.pk in shown],
        "total": total,
        **page_info,
        "query": q,
    }
    if corrected:
        out["corrected"] = corrected
    return out
