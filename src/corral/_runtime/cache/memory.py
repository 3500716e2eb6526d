"""L1: a plugin's cache entries in its own memory, bounded in bytes, with TinyLFU admission.

In process, the host keeps one per plugin; in a sandboxed worker, the worker keeps
it.  An entry is ``[payload, decode, fresh_until, keep_until, size, hits]``: JSON data
that could be changed by the caller is kept encoded and decoded on each hit
(``decode`` true), immutable values (str, bytes, numbers) as they are.  ``hits``
(one addition per hit, cheap enough for the hit path) joins the sketch's estimate
when the entry, the oldest held, is weighed against a newcomer; each time it wins,
it is halved and goes to the back of the line (a second chance, as in CLOCK).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Final, final

from corral._runtime.cache.policy import Admission
from corral._runtime.cache.values import KIND_BYTES, decode_value

__all__ = ["IMMUTABLE", "MemoryCache", "Stats"]

#: Values handed out as they are: nobody can change them in place.
IMMUTABLE: Final = frozenset({str, bytes, int, float, bool, type(None)})
#: The fields of :class:`Stats`, in order.
STAT_FIELDS: Final = ("hits", "misses", "sets", "evictions", "rejected", "expired")


@final
class Stats:
    """Counters of one cache level of one plugin."""

    __slots__ = STAT_FIELDS

    def __init__(self) -> None:
        self.hits = self.misses = self.sets = 0
        self.evictions = self.rejected = self.expired = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in STAT_FIELDS}

    def take(self) -> dict[str, int]:
        """The counters, then reset them (what a flush writes)."""
        out = self.as_dict()
        for name in STAT_FIELDS:
            setattr(self, name, 0)
        return out


@final
class MemoryCache:
    """Entries by key, oldest (or longest undefended) first, at most ``capacity`` bytes."""

    __slots__ = ("_lock", "admission", "capacity", "data", "size", "stats")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.data: collections.OrderedDict[Any, list[Any]] = collections.OrderedDict()
        self.size = 0
        self.stats = Stats()
        self.admission = Admission(max(64, self.capacity // 1024))
        #: Changes are serialised (plugin threads share a cache); a hit takes no lock.
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default`` (counted as a hit or a miss)."""
        e = self.data.get(key)
        if e is not None and e[2] > time.time():
            e[5] += 1
            self.stats.hits += 1
            return decode_value(e[0], 0) if e[1] else e[0]
        self.miss(key, e)
        return default

    def miss(self, key: Any, entry: list[Any] | None) -> None:
        """Count a miss of ``key``; drop its entry if it is past keeping."""
        self.stats.misses += 1
        self.admission.record(key)
        if entry is not None and entry[3] <= time.time():
            self.stats.expired += 1
            self.discard(key)

    def entry(self, key: Any) -> list[Any] | None:
        """``key``'s entry, fresh or stale, unless past keeping (not counted)."""
        e = self.data.get(key)
        if e is not None and e[3] <= time.time():
            self.discard(key)
            return None
        return e

    def put(self, key: Any, blob: bytes, kind: int, fresh: float, keep: float, size: int,
            value: Any = None, *, record: bool = True) -> bool:
        """Keep ``key`` until ``keep`` (fresh until ``fresh``); ``False`` if not admitted.

        ``value`` is the decoded value when the caller has it: kept as is if immutable.
        """
        if size > self.capacity:
            self.discard(key)
            return False
        with self._lock:
            return self._put(key, blob, kind, fresh, keep, size, value, record)

    def _put(self, key: Any, blob: bytes, kind: int, fresh: float, keep: float, size: int,
             value: Any, record: bool) -> bool:
        if record:
            self.admission.record(key)
        old = self.data.pop(key, None)
        if old is not None:
            self.size -= old[4]
        data = self.data
        while self.size + size > self.capacity and data:
            victim = next(iter(data))
            held = data[victim]
            if not self.admission.admit(key, victim, held[5]):
                held[5] >>= 1  # it defended its place once: it must earn the next
                data.move_to_end(victim)
                self.stats.rejected += 1
                return False
            self.size -= data.pop(victim)[4]
            self.stats.evictions += 1
        if kind == KIND_BYTES:
            payload, decode = blob, False
        elif value is not None and type(value) in IMMUTABLE:
            payload, decode = value, False
        else:
            payload, decode = blob, True
        data[key] = [payload, decode, fresh, keep, size, 0]
        self.size += size
        self.stats.sets += 1
        return True

    def discard(self, key: Any) -> None:
        """Forget ``key``."""
        with self._lock:
            e = self.data.pop(key, None)
            if e is not None:
                self.size -= e[4]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self.data.clear()
            self.size = 0

    def __len__(self) -> int:
        return len(self.data)
