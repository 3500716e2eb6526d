"""The host's cache service: L2 for every plugin, the in-process L1s, grants, budgets, flights.

One per host (``Services.cache``).  In-process plugins reach it through their
``ctx.cache`` (``plugin.py``), sandboxed ones through the broker
(:func:`cache_broker_op`), memoised exports through ``memo.py``.  A plugin's own
namespace is its id; any other needs ``cache.read:NS`` / ``cache.write:NS``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import CorralError, PermissionDenied, ResourceLimitExceeded, UsageError
from corral._runtime.budgets import MIB
from corral._runtime.cache.flight import Flights
from corral._runtime.cache.memory import STAT_FIELDS, MemoryCache, Stats
from corral._runtime.cache.policy import Admission
from corral._runtime.cache.values import (
    KIND_BYTES,
    KIND_JSON,
    MAX_TTL,
    MAX_VALUE_BYTES,
    check_key,
    check_namespace,
    check_tags,
    check_ttl,
    entry_size,
)
from corral._services.cache.store import Level2, Row, open_store

if TYPE_CHECKING:
    from corral._model.permissions import Permissions
    from corral._runtime.budgets import Budgets

__all__ = ["L1_MAX_BYTES", "CacheService", "cache_broker_op"]

#: An in-process plugin's L1 holds at most this much (and at most its ``cache-mb``).
L1_MAX_BYTES: Final = 16 * MIB
#: How often the hot paths look for changes made by other processes, in seconds.
SYNC_EVERY: Final = 0.2
#: How often this process's counters are added to the database, in seconds.
FLUSH_EVERY: Final = 2.0
#: How long a caller waits for another's computation of the same key, in seconds.
WAIT_SECONDS: Final = 10.0
_DEFAULT_CACHE_MB: Final = 100


@final
class CacheService:
    """L2 in ``<home>/cache.db`` (opened on first use) and what coordinates the levels."""

    def __init__(self, home: Path, budgets: Budgets) -> None:
        self.home = home
        self.budgets = budgets
        self.flights = Flights()
        self._lock = threading.RLock()
        self._store: Level2 | None = None
        self._l1: dict[str, MemoryCache] = {}
        #: L1s of memoised exports by plugin, dropped with the plugin's namespace.
        self._memo_l1: dict[str, list[MemoryCache]] = {}
        self._admission: dict[str, Admission] = {}
        self._stats: dict[tuple[str, str], Stats] = {}
        self._gens: dict[str, int] = {}
        self._version = -1
        #: When the hot paths next look for other processes' changes (``time.time``).
        self.sync_at = 0.0
        self._flush_at = 0.0
        #: L2 could not be asked for changes: no L1 can be trusted until it answers again.
        self._unreachable = False

    # -- plumbing ---------------------------------------------------------------

    @property
    def store(self) -> Level2:
        """L2, opened on first use (expired entries are purged then): ``<home>/cache.db``,
        or the Redis server of ``[cache] url`` in the home's settings."""
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    opened = open_store(self.home)
                    try:
                        opened.purge_expired()
                        self._version = opened.data_version()
                        self._gens = opened.generations()
                    except BaseException:
                        opened.close()
                        raise
                    self._store = opened
                store = self._store
        return store

    def close(self) -> None:
        """Write the counters and close L2 (counters a gone Redis cannot take are lost)."""
        if self._store is not None:
            with contextlib.suppress(CorralError):
                self.flush()
            self._store.close()
            self._store = None

    def cap(self, owner: str) -> int:
        """``owner``'s L2 budget in bytes: its ``cache-mb``."""
        sandbox = self.budgets.get(owner)
        return (sandbox.cache_mb if sandbox is not None else _DEFAULT_CACHE_MB) * MIB

    def stats_of(self, owner: str, level: str) -> Stats:
        """This process's not yet written counters of ``owner`` at ``level``."""
        st = self._stats.get((owner, level))
        if st is None:
            st = self._stats.setdefault((owner, level), Stats())
        return st

    def l1(self, plugin_id: str) -> MemoryCache:
        """``plugin_id``'s in-process L1 (its own namespace)."""
        l1 = self._l1.get(plugin_id)
        if l1 is None:
            with self._lock:
                l1 = self._l1.get(plugin_id)
                if l1 is None:
                    l1 = self._l1[plugin_id] = MemoryCache(min(L1_MAX_BYTES, self.cap(plugin_id)))
        return l1

    def memo_l1(self, plugin_id: str, capacity: int) -> MemoryCache:
        """A new L1 for one memoised export of ``plugin_id``."""
        l1 = MemoryCache(min(capacity, self.cap(plugin_id)))
        with self._lock:
            self._memo_l1.setdefault(plugin_id, []).append(l1)
        return l1

    def forget(self, plugin_id: str) -> None:
        """A plugin stopped: write its counters, empty its L1s (L2 stays until it expires).

        Its L1 stays registered, emptied: its ``ctx`` may outlive a disable.  Its memoised
        exports get new L1s when it is enabled again.
        """
        if self._store is not None:
            self.flush()
        with self._lock:
            l1 = self._l1.get(plugin_id)
            if l1 is not None:
                l1.clear()
            self._memo_l1.pop(plugin_id, None)

    def _drop_l1(self, ns: str, key: str | None = None, *, memo: bool = True) -> None:
        """Drop ``key`` (``None``: everything) of ``ns`` from this process's L1s; the memo
        L1s (keyed by input) are dropped whole unless ``memo`` is false."""
        l1 = self._l1.get(ns)
        if l1 is not None:
            if key is None:
                l1.clear()
            else:
                l1.discard(key)
        if memo and (key is None or key.startswith("memo:")):
            for memo_l1 in self._memo_l1.get(ns, ()):
                memo_l1.clear()

    def _changed(self, ns: str, prev: int, gen: int, key: str | None, *,
                 stored: bool = False) -> None:
        """Note a change this process made; drop what the L1s may hold of it (everything,
        if another process changed the namespace since this one last looked)."""
        with self._lock:
            known = self._gens.get(ns, 0)
            self._gens[ns] = gen
        if known == prev:
            self._drop_l1(ns, key, memo=not stored)
        else:
            self._drop_l1(ns)

    def sync(self) -> None:
        """Take in changes other processes made: drop the L1s of namespaces they touched."""
        now = time.time()
        self.sync_at = now + SYNC_EVERY
        store = self._store
        if store is None:
            return
        try:
            version = store.data_version()
            if version != self._version or self._unreachable:
                self._version = version
                gens = store.generations()
                with self._lock:
                    stale = [ns for ns, g in gens.items() if self._gens.get(ns, 0) != g]
                    self._gens.update(gens)
                for ns in stale:
                    self._drop_l1(ns)
                self._unreachable = False
            if now >= self._flush_at:
                self.flush()
        except CorralError:  # a shared L2 gone away: what the L1s hold can not be checked
            self._unreachable = True
            with self._lock:
                namespaces = {*self._l1, *self._memo_l1}
            for ns in namespaces:
                self._drop_l1(ns)

    def generation(self, plugin_id: str) -> int:
        """The generation of ``plugin_id``'s namespace, with other processes' changes taken
        in (at most :data:`SYNC_EVERY` late): a sandboxed call carries it so the worker
        knows when to drop its L1.  Cheap: a call pays a database look only every 0.2 s."""
        if self._store is None:
            return 0
        if time.time() >= self.sync_at:
            self.sync()
        return -1 if self._unreachable else self._gens.get(plugin_id, 0)

    def flush(self) -> None:
        """Add this process's counters to the database."""
        self._flush_at = time.time() + FLUSH_EVERY
        if self._store is None:
            return
        rows: list[tuple[str, str, dict[str, int]]] = []
        with self._lock:
            for plugin_id, l1 in self._l1.items():
                rows.append((plugin_id, "l1", l1.stats.take()))
            for plugin_id, memos in self._memo_l1.items():
                for memo in memos:
                    rows.append((plugin_id, "memo-l1", memo.stats.take()))
            for (owner, level), st in self._stats.items():
                rows.append((owner, level, st.take()))
        self._store.add_counters(rows)

    # -- grants -----------------------------------------------------------------

    @staticmethod
    def check(plugin_id: str, perms: Permissions | None, ns: str, write: bool) -> None:
        """Refuse another namespace than the plugin's own without its grant."""
        if ns == plugin_id:
            return
        service = "cache.write" if write else "cache.read"
        if perms is None or not perms.allows_api(service, ns):
            raise PermissionDenied(
                f"plugin {plugin_id} has no host-api grant {service}:{ns}",
                permission=f"host-api:{service}:{ns}", plugin_id=plugin_id)

    # -- the operations ---------------------------------------------------------

    def get(self, reader: str, ns: str, key: str, level: str = "l2") -> Row | None:
        """``key``'s entry in L2 (fresh or stale), counted for ``reader`` at ``level``
        (``memo`` for memoised exports)."""
        row = self.store.get(ns, key, time.time())
        st = self.stats_of(reader, level)
        if row is not None and row[2] > time.time():
            st.hits += 1
        else:
            st.misses += 1
        self._admission_of(reader).record(f"{ns}\0{key}")
        return row

    def lease(self, reader: str, ns: str, key: str, wait: float = WAIT_SECONDS,
              level: str = "l2") -> tuple[str, Row | None, bool]:
        """For ``get_or_compute``: ``("fresh", row, False)``, or ``(state, row, True)`` when
        the caller is to compute (``"stale"``/``"miss"``), or ``("stale", row, False)``
        while another computes, or ``("miss", None, False)`` after waiting in vain."""
        row = self.get(reader, ns, key, level)
        if row is not None and row[2] > time.time():
            return "fresh", row, False
        flight = (ns, key)
        if self.flights.try_lead(flight):
            return ("stale" if row is not None else "miss"), row, True
        if row is not None:
            return "stale", row, False
        self.flights.wait(flight, min(max(wait, 0.0), WAIT_SECONDS))
        row = self.store.get(ns, key, time.time())
        if row is not None and row[2] > time.time():
            return "fresh", row, False
        if self.flights.try_lead(flight):
            return "miss", row, True
        return "miss", None, False

    def release(self, ns: str, key: str) -> None:
        """The leader of ``key`` gave up (its computation failed)."""
        self.flights.release((ns, key))

    def set(self, owner: str, ns: str, key: str, blob: bytes, kind: int,
            ttl: float | None, stale: float, tags: tuple[str, ...], level: str = "l2"
            ) -> tuple[bool, int, int]:
        """Store in L2 under ``owner``'s budget; ``(stored, previous gen, gen)``."""
        cap = self.cap(owner)
        size = entry_size(key, blob)
        try:
            if size > cap:
                raise ResourceLimitExceeded(
                    f"{owner}: cache-mb: one entry of {size} bytes is more than the whole "
                    f"budget of {cap} bytes", plugin_id=owner, limit="cache-mb",
                    measured=size, budget=cap, unit="bytes")
            now = time.time()
            fresh = now + (MAX_TTL if ttl is None else ttl)
            admission = self._admission_of(owner)
            candidate = f"{ns}\0{key}"
            admission.record(candidate)
            stored, evicted, prev, gen = self.store.set(
                ns, key, owner, blob, kind, fresh, fresh + stale, tags, size, cap,
                lambda victim: admission.admit(candidate, victim))
        finally:
            self.flights.release((ns, key))
        st = self.stats_of(owner, level)
        st.evictions += evicted
        if not stored:
            st.rejected += 1
            return False, 0, 0
        st.sets += 1
        self._changed(ns, prev, gen, key, stored=True)
        if time.time() >= self._flush_at:
            self.flush()
        return True, prev, gen

    def delete(self, ns: str, key: str) -> tuple[bool, int, int]:
        """Remove ``key`` from ``ns``; ``(existed, previous gen, gen)``."""
        existed, prev, gen = self.store.delete(ns, key)
        self._changed(ns, prev, gen, key)
        return existed, prev, gen

    def invalidate(self, ns: str, tags: tuple[str, ...]) -> tuple[int, int, int]:
        """Remove the entries of ``ns`` tagged with any of ``tags``."""
        removed, prev, gen = self.store.invalidate(ns, tags)
        self._changed(ns, prev, gen, None)
        return removed, prev, gen

    def clear(self, plugin_id: str, tag: str | None = None) -> dict[str, int]:
        """``corral cache clear``: ``plugin_id``'s namespace (or its ``tag`` entries) and
        what it wrote elsewhere; its L1s in this process too."""
        if tag is None:
            with self._lock:
                for key in [k for k in self._stats if k[0] == plugin_id]:
                    del self._stats[key]
        report = self.store.clear(plugin_id, tag)
        gens = self.store.generations()
        with self._lock:
            changed = [ns for ns, g in gens.items() if self._gens.get(ns, 0) != g]
            self._gens = gens
        for ns in {plugin_id, *changed}:  # entries it wrote in shared namespaces went too
            self._drop_l1(ns)
        return report

    def stats(self, plugin_id: str) -> dict[str, Any]:
        """``plugin_id``'s counters per level, its L2 use and budget (this process's
        counters are written first, so other processes' are included)."""
        from corral._services.cache.stats import describe

        self.flush()
        return describe(self.store, plugin_id, self.cap(plugin_id))

    def _admission_of(self, owner: str) -> Admission:
        adm = self._admission.get(owner)
        if adm is None:
            adm = self._admission.setdefault(owner, Admission(4096))
        return adm


def _number(value: Any, name: str, plugin_id: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{plugin_id}: cache {name} must be a number, got {value!r}",
                         plugin_id=plugin_id)
    return float(value)


def cache_broker_op(service: CacheService, plugin_id: str, perms: Permissions, op: str,
                    args: dict[str, Any]) -> Any:
    """Serve a sandboxed plugin's ``cache.*`` request; nothing it sends is trusted.

    ``get``/``lease`` answer rows as ``[value, kind, fresh_until, keep_until]``;
    changes answer ``{"prev": gen, "gen": gen}`` so the worker knows whether only it
    changed its namespace since its L1 was last valid.
    """
    reported = args.get("l1")
    if isinstance(reported, dict):
        st = service.stats_of(plugin_id, "l1")
        for name in STAT_FIELDS:
            n = reported.get(name)
            if type(n) is int and 0 <= n < 1 << 40:
                setattr(st, name, getattr(st, name) + n)
    ns = check_namespace(plugin_id, args.get("ns"))
    write = op in ("cache.set", "cache.delete", "cache.invalidate")
    service.check(plugin_id, perms, ns, write)
    if op == "cache.invalidate":
        removed, prev, gen = service.invalidate(ns, check_tags(plugin_id, args.get("tags")))
        return {"removed": removed, "prev": prev, "gen": gen}
    key = check_key(plugin_id, args.get("key"))
    if op == "cache.get":
        row = service.get(plugin_id, ns, key)
        return None if row is None else list(row)
    if op == "cache.lease":
        state, row, lead = service.lease(plugin_id, ns, key,
                                         _number(args.get("wait", WAIT_SECONDS), "wait",
                                                 plugin_id))
        return {"state": state, "row": None if row is None else list(row), "lead": lead}
    if op == "cache.release":
        service.release(ns, key)
        return None
    if op == "cache.delete":
        existed, prev, gen = service.delete(ns, key)
        return {"existed": existed, "prev": prev, "gen": gen}
    if op == "cache.set":
        blob, kind = args.get("value"), args.get("kind")
        if type(blob) is not bytes or kind not in (KIND_JSON, KIND_BYTES):
            raise UsageError(f"{plugin_id}: cache.set wants value bytes and kind 0 or 1",
                             plugin_id=plugin_id)
        if len(blob) > MAX_VALUE_BYTES:
            raise ResourceLimitExceeded(
                f"{plugin_id}: cache-value-bytes: a cache value is {len(blob)} bytes, more "
                f"than {MAX_VALUE_BYTES}", plugin_id=plugin_id, limit="cache-value-bytes",
                measured=len(blob), budget=MAX_VALUE_BYTES, unit="bytes")
        if kind == KIND_JSON:
            try:
                msgspec.json.decode(blob)
            except msgspec.DecodeError:
                raise UsageError(f"{plugin_id}: cache.set value is not JSON",
                                 plugin_id=plugin_id) from None
        ttl = check_ttl(plugin_id, args.get("ttl"))
        stale = check_ttl(plugin_id, args.get("stale", 0.0), "stale") or 0.0
        stored, prev, gen = service.set(plugin_id, ns, key, blob, kind, ttl, stale,
                                        check_tags(plugin_id, args.get("tags")))
        return {"stored": stored, "prev": prev, "gen": gen}
    raise PermissionDenied(f"{plugin_id} asked for an unknown host service {op!r}",
                           permission=f"host-api:{op}", plugin_id=plugin_id)
