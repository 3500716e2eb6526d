"""The registry's recommender: the pure algorithm of :mod:`corral._analytics.recommend`
fed from the database (plugins, seeded co-usage sets, recent opt-in reports), kept
in memory and rebuilt when what it learned from changes.

A candidate is refused when it cannot be installed: every version yanked, its
latest version quarantined (when the moderation column ``quarantined`` exists),
or its latest version's ``requires-corral`` excluding the asking host's corral.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from sqlalchemy.engine import Connection, Engine

from corral._analytics.recommend import CoUsage, Item, Params, Recommendation, Recommender, UsageSet
from corral._errors import ManifestError, UsageError
from corral._model.manifest import check_id

from .. import _db
from .._names import ecosystem_of
from .cousage import read_cousage

__all__ = [
    "MIN_REPORTS",
    "REPORT_WEIGHT",
    "RecommendationModel",
    "seed_cousage",
]

#: Reports only teach "used together" once this many arrived in the window.
MIN_REPORTS: Final = 20
#: What one host's daily reports over the window weigh together, against one seeded set.
REPORT_WEIGHT: Final = 0.5
#: Days of reports learned from.
REPORT_DAYS: Final = 7
#: Reports are learned again each time this many more arrived (or the day changes).
RELEARN_STEP: Final = 100
#: How often (seconds) the model checks whether its sources changed.
CHECK_EVERY: Final = 5.0


def seed_cousage(engine: Engine, path: Path, *, namespace: str = "pypi") -> dict[str, int]:
    """Load a co-usage TSV as ``<namespace>.<name>`` sets; rows already seeded are skipped."""
    rows = read_cousage(path)
    c = _db.cousage_sets
    added = skipped = 0
    with engine.connect() as raw:
        conn = raw.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            seen = {(s, f) for s, f in conn.execute(sa.select(c.c.source, c.c.family))}
            for row in rows:
                source = f"{row.repo}:{row.source_path}"[:300]
                ids = sorted({f"{namespace}.{name}" for name in row.plugins})
                if len(ids) < 2 or (source, row.family) in seen:
                    skipped += 1
                    continue
                seen.add((source, row.family))
                conn.execute(c.insert().values(source=source, family=row.family,
                                               plugins=" ".join(ids), weight=1.0))
                added += 1
    return {"added": added, "skipped": skipped}


def compatible(spec: str, corral_version: str) -> bool:
    """Whether a ``requires-corral`` specifier admits ``corral_version`` (empty: any)."""
    if not spec:
        return True
    try:
        return Version(corral_version) in SpecifierSet(spec, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


@dataclass(frozen=True, slots=True)
class _Built:
    recommender: Recommender
    blocked: frozenset[str]  # yanked or quarantined: never recommended
    requires: dict[str, str]  # id -> requires-corral of the latest version (when set)
    signature: tuple[tuple[Any, ...], ...]


class RecommendationModel:
    """Recommendations from the registry's database; thread-safe, rebuilt on change."""

    def __init__(self, engine: Engine, params: Params | None = None) -> None:
        self._engine = engine
        self._params = params or Params()
        self._lock = threading.Lock()
        self._built: _Built | None = None
        self._checked = 0.0
        self._rebuilding = False

    @staticmethod
    def quarantine_supported() -> bool:
        """Whether versions carry a ``quarantined`` flag (moderation) in this schema."""
        return "quarantined" in _db.versions.c

    def _signature(self, conn: Connection) -> tuple[tuple[Any, ...], ...]:
        """What the plugins are, what may be installed, and what co-usage is learned from
        (reports in steps of :data:`RELEARN_STEP`)."""
        p, v, c, r = _db.plugins, _db.versions, _db.cousage_sets, _db.usage_reports
        plugins = tuple(conn.execute(sa.select(sa.func.count(), sa.func.max(p.c.pk))).one())
        hidden = [sa.func.count(), sa.func.max(v.c.pk),
                  sa.func.sum(sa.case((v.c.yanked == sa.true(), 1), else_=0))]
        if self.quarantine_supported():
            hidden.append(sa.func.sum(sa.case((v.c.quarantined == sa.true(), 1), else_=0)))
        installable = tuple(conn.execute(sa.select(*hidden)).one())
        sets = tuple(conn.execute(sa.select(sa.func.count(), sa.func.max(c.c.pk))).one())
        reports = int(conn.execute(sa.select(sa.func.count()).select_from(r)).scalar() or 0)
        step = reports if reports < MIN_REPORTS else reports // RELEARN_STEP
        return plugins, installable, (*sets, step, _db.utcnow().date().isoformat())

    def invalidate(self) -> None:
        """Check the sources on the next request (after a seed or a report)."""
        self._checked = 0.0

    def model(self) -> _Built:
        """The current model, rebuilt first if its sources changed."""
        with self._lock:
            now = time.monotonic()
            if self._built is not None and now - self._checked < CHECK_EVERY:
                return self._built
            with self._engine.connect() as conn:
                sig = self._signature(conn)
                built = self._built
                if built is not None and built.signature[0] != sig[0]:
                    # new plugins: index them in the background, answer from the old index
                    self._rebuild_later()
                    sig = (built.signature[0], *sig[1:])
                if built is None:
                    built = self._build(conn, sig)
                elif built.signature != sig:  # the same plugins: keep the content index
                    rec = built.recommender
                    if built.signature[2] != sig[2]:
                        rec = rec.relearn(self._usage(conn, rec.items))
                    blocked, requires = self._installable(conn)
                    built = _Built(rec, blocked, requires, sig)
                self._built = built
            self._checked = now
            return built

    def _rebuild_later(self) -> None:
        """Rebuild the whole model in a thread (held lock: one at a time)."""
        if self._rebuilding:
            return
        self._rebuilding = True

        def rebuild() -> None:
            try:
                with self._engine.connect() as conn:
                    fresh = self._build(conn, self._signature(conn))
                with self._lock:
                    self._built, self._checked = fresh, time.monotonic()
            except (sa.exc.SQLAlchemyError, OSError):
                pass  # the next check tries again
            finally:
                self._rebuilding = False

        threading.Thread(target=rebuild, name="corral-recommender-build", daemon=True).start()

    def warm(self) -> None:
        """Build the model and the indexes of every family co-usage knows (before requests)."""
        built = self.model()
        built.recommender.warm(sorted(built.recommender.usage.family_sets))

    def _usage(self, conn: Connection, items: Mapping[str, Item]) -> CoUsage:
        usage = CoUsage(UsageSet(frozenset(ids.split()), family, float(weight))
                        for ids, family, weight in conn.execute(
                            sa.select(_db.cousage_sets.c.plugins, _db.cousage_sets.c.family,
                                      _db.cousage_sets.c.weight)))
        for s in self._report_sets(conn, items):
            usage.add(s)
        return usage

    def _build(self, conn: Connection, sig: tuple[tuple[Any, ...], ...]) -> _Built:
        p = _db.plugins
        items: dict[str, Item] = {}
        for pid, name, norm, category, tags, summary, downloads in conn.execute(
            sa.select(p.c.id, p.c.name, p.c.norm_name, p.c.category, p.c.tags, p.c.summary,
                      p.c.downloads)
        ):
            eco = ecosystem_of(norm)
            family = eco[0] if eco else (tags.split()[0] if tags else None)
            items[pid] = Item(id=pid, name=name, family=family, category=category,
                              summary=summary, popularity=float(downloads))
        blocked, requires = self._installable(conn)
        return _Built(Recommender(items, self._usage(conn, items), self._params), blocked,
                      requires, sig)

    def _installable(self, conn: Connection) -> tuple[frozenset[str], dict[str, str]]:
        """Plugins never to recommend (every version yanked, or the latest quarantined),
        and the ``requires-corral`` of each latest version that sets one."""
        p, v = _db.plugins, _db.versions
        blocked = set(conn.execute(sa.select(p.c.id).where(p.c.latest_version.is_(None)))
                      .scalars())
        latest_join = (v.c.plugin_pk == p.c.pk) & (v.c.version == p.c.latest_version)
        if self.quarantine_supported():
            blocked.update(conn.execute(sa.select(p.c.id).join(v, latest_join).where(
                v.c.quarantined == sa.true())).scalars())
        requires: dict[str, str] = {}
        for pid, manifest in conn.execute(sa.select(p.c.id, v.c.manifest).join(v, latest_join)
                                          .where(v.c.manifest.like("%requires-corral%"))):
            spec = json.loads(manifest).get("plugin", {}).get("requires-corral", "")
            if spec:
                requires[pid] = str(spec)
        return frozenset(blocked), requires

    @staticmethod
    def _report_sets(conn: Connection, items: Mapping[str, Item]) -> list[UsageSet]:
        r = _db.usage_reports
        start = (_db.utcnow().date().toordinal() - REPORT_DAYS + 1)
        first = type(_db.utcnow().date()).fromordinal(start).isoformat()
        rows = conn.execute(sa.select(r.c.plugins).where(r.c.day >= first)).scalars().all()
        if len(rows) < MIN_REPORTS:
            return []
        out = []
        for doc in rows:
            ids = frozenset(pid for pid, _ in json.loads(doc) if pid in items)
            fams = [items[i].family for i in ids if items[i].family]
            family = max(set(fams), key=fams.count) if fams else None
            out.append(UsageSet(ids, family, REPORT_WEIGHT / REPORT_DAYS))
        return out

    def recommend(self, have: Iterable[str], *, limit: int = 10,
                  corral_version: str | None = None) -> list[Recommendation]:
        """Recommendations for someone who has ``have`` (ids), each with its reasons."""
        owned = [h.strip().lower() for h in have if h.strip()]
        for h in owned:
            try:
                check_id(h, key="with")
            except ManifestError:
                raise UsageError(f"with: {h!r} is not a plugin id", field="with") from None
        if corral_version is not None:
            try:
                Version(corral_version)
            except InvalidVersion:
                raise UsageError(f"corral: {corral_version!r} is not a version",
                                 field="corral") from None
        built = self.model()

        def allowed(pid: str) -> bool:
            if pid in built.blocked or pid not in built.recommender.items:
                return False
            spec = built.requires.get(pid, "")
            return corral_version is None or compatible(spec, corral_version)

        note = f"compatible with your corral {corral_version}" if corral_version else None
        return built.recommender.recommend(owned, limit=limit, allowed=allowed, note=note)
