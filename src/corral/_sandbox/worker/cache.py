"""``ctx.cache`` in a sandboxed worker: L1 in the worker's memory, L2 through the host's broker.

Only the plugin's own namespace has an L1 here.  Each call carries the
namespace's generation; a worker whose L1 was filled under another one (the
cache was cleared, or another plugin with ``cache.write`` changed it) drops it
first.  The host checks every request: keys, values, grants and the budget.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, final

from corral._runtime.cache.memory import MemoryCache
from corral._runtime.cache.values import (
    check_key,
    check_namespace,
    check_tags,
    check_ttl,
    decode_value,
    encode_value,
    entry_size,
)
from corral._sandbox.worker.channel import Channel

__all__ = ["WorkerCache"]

#: A worker's L1 holds at most this much, and at most an eighth of its ``memory-mb``.
WORKER_L1_BYTES: Final = 16 * 1024 * 1024
_now = time.time


@final
class WorkerCache:
    """A sandboxed plugin's cache: the same methods as in process."""

    __slots__ = ("_ch", "_data", "_l1", "_shared", "gen", "namespace_id", "plugin_id")

    def __init__(self, ch: Channel, plugin_id: str, memory_mb: int,
                 ns: str | None = None, shared: WorkerCache | None = None) -> None:
        self._ch = ch
        self.plugin_id = plugin_id
        self.namespace_id = plugin_id if ns is None else ns
        self._l1: MemoryCache | None = None
        if ns is None:
            self._l1 = MemoryCache(min(WORKER_L1_BYTES, memory_mb * 1024 * 1024 // 8))
        self._data: collections.OrderedDict[Any, list[Any]] = (
            self._l1.data if self._l1 is not None else collections.OrderedDict())
        #: The plugin's own cache, whose L1 counters ride along with every request.
        self._shared = shared
        #: The generation of the namespace the L1 was filled under.
        self.gen = 0

    def sync(self, gen: int) -> None:
        """A call begins under generation ``gen``: drop the L1 if it was filled under another."""
        if gen != self.gen:
            if self._l1 is not None:
                self._l1.clear()
            self.gen = gen

    def _ask(self, op: str, **args: Any) -> Any:
        own = self if self._shared is None else self._shared
        if own._l1 is not None and (own._l1.stats.hits or own._l1.stats.misses):
            args["l1"] = own._l1.stats.take()
        args["ns"] = self.namespace_id
        return self._ch.request(op, args)[0]

    def _changed(self, answer: Any, key: str | None) -> None:
        """After a change of the own namespace: keep the L1 only if nobody else changed it."""
        if self._l1 is None or not isinstance(answer, dict):
            return
        if answer.get("prev") != self.gen or key is None:
            self._l1.clear()
        else:
            self._l1.discard(key)
        self.gen = int(answer.get("gen", self.gen))

    def namespace(self, ns: str) -> WorkerCache:
        """A view of namespace ``ns`` (needs ``cache.read:NS`` / ``cache.write:NS``, checked
        by the host on each request); every read goes to the host."""
        ns = check_namespace(self.plugin_id, ns)
        if ns == self.plugin_id:
            return self
        return WorkerCache(self._ch, self.plugin_id, 0, ns, self)

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default``."""
        e = self._data.get(key)
        if e is not None and e[2] > _now():
            e[5] += 1
            self._l1.stats.hits += 1  # type: ignore[union-attr]
            return decode_value(e[0], 0) if e[1] else e[0]
        check_key(self.plugin_id, key)
        if self._l1 is not None:
            self._l1.miss(key, e)
        row = self._ask("cache.get", key=key)
        if row is None or row[2] <= _now():
            return default
        self._fill(key, row)
        return decode_value(bytes(row[0]), int(row[1]))

    def _fill(self, key: str, row: list[Any], value: Any = None) -> None:
        if self._l1 is not None:
            blob = bytes(row[0])
            self._l1.put(key, blob, int(row[1]), float(row[2]), float(row[3]),
                         entry_size(key, blob), value, record=False)

    def set(self, key: str, value: Any, *, ttl: float | None = None,
            tags: Iterable[str] = (), stale: float = 0.0) -> bool:
        """Keep ``value`` (JSON data or bytes) for ``ttl`` seconds; see the in-process twin."""
        pid = self.plugin_id
        check_key(pid, key)
        seconds = check_ttl(pid, ttl)
        grace = check_ttl(pid, stale, "stale") or 0.0
        tag_list = list(check_tags(pid, list(tags)))
        blob, kind = encode_value(pid, value)
        answer = self._ask("cache.set", key=key, value=blob, kind=kind, ttl=seconds,
                           stale=grace, tags=tag_list)
        stored = bool(answer.get("stored"))
        if stored:
            self._changed(answer, key)
            if self._l1 is not None:
                fresh = _now() + (seconds if seconds is not None else 30 * 86400.0)
                self._l1.put(key, blob, kind, fresh, fresh + grace, entry_size(key, blob), value)
        return stored

    def delete(self, key: str) -> bool:
        """Forget ``key``; whether it was there."""
        check_key(self.plugin_id, key)
        answer = self._ask("cache.delete", key=key)
        self._changed(answer, key)
        return bool(answer.get("existed"))

    def invalidate(self, *tags: str) -> int:
        """Forget every entry carrying any of ``tags``; how many were forgotten."""
        answer = self._ask("cache.invalidate", tags=list(check_tags(self.plugin_id, list(tags))))
        self._changed(answer, None)
        return int(answer.get("removed", 0))

    def get_or_compute(self, key: str, fn: Callable[[], Any], *, ttl: float | None = None,
                       tags: Iterable[str] = (), stale: float = 0.0) -> Any:
        """The value of ``key``, computing it with ``fn()`` when missing; the host makes
        concurrent callers (here and in other processes) compute it once."""
        e = self._data.get(key)
        if e is not None and e[2] > _now():
            return self.get(key)
        check_key(self.plugin_id, key)
        if self._l1 is not None:
            self._l1.miss(key, e)
        answer = self._ask("cache.lease", key=key)
        row, lead = answer.get("row"), bool(answer.get("lead"))
        if answer.get("state") == "fresh" and row is not None:
            self._fill(key, row)
            return decode_value(bytes(row[0]), int(row[1]))
        if not lead and row is not None:
            return decode_value(bytes(row[0]), int(row[1]))
        try:
            value = fn()
        except BaseException:
            if lead:
                self._ask("cache.release", key=key)
            raise
        try:
            self.set(key, value, ttl=ttl, tags=tags, stale=stale)  # the host ends the lease
        except BaseException:
            if lead:  # refused (no write grant, a bound): let the next caller lead
                self._ask("cache.release", key=key)
            raise
        return value

    def __repr__(self) -> str:
        return f"<WorkerCache {self.plugin_id} ns={self.namespace_id}>"
