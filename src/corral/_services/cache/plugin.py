"""``ctx.cache`` of an in-process plugin: L1 in a per-plugin dict, then L2 through the service.

Only the plugin's own namespace has an L1; :meth:`PluginCache.namespace` gives a
view of another namespace (needs ``cache.read:NS`` / ``cache.write:NS``) that
always reads L2.  Values are JSON data or bytes; JSON containers come back as
fresh copies, so a caller changing what it got never changes the cache.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, final

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

if TYPE_CHECKING:
    from corral._model.permissions import Permissions
    from corral._services.cache.service import CacheService

__all__ = ["PluginCache"]

_now = time.time


@final
class PluginCache:
    """A plugin's cache: ``get``/``set``/``delete``, TTLs, tags, ``get_or_compute``."""

    __slots__ = ("_data", "_l1", "_svc", "namespace_id", "permissions", "plugin_id")

    def __init__(self, service: CacheService, plugin_id: str, perms: Permissions | None,
                 ns: str | None = None) -> None:
        self._svc = service
        self.plugin_id = plugin_id
        self.permissions = perms
        #: The namespace this view reads and writes (the plugin's id unless shared).
        self.namespace_id = plugin_id if ns is None else ns
        self._l1: MemoryCache | None = service.l1(plugin_id) if ns is None else None
        self._data: collections.OrderedDict[Any, list[Any]] = (
            self._l1.data if self._l1 is not None else collections.OrderedDict())

    def namespace(self, ns: str) -> PluginCache:
        """A view of namespace ``ns`` (another plugin's id or a shared name): reads need
        ``cache.read:NS``, writes ``cache.write:NS`` (checked on each use); no L1, every
        read goes to L2."""
        ns = check_namespace(self.plugin_id, ns)
        if ns == self.plugin_id:
            return self
        return PluginCache(self._svc, self.plugin_id, self.permissions, ns)

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default``."""
        e = self._data.get(key)
        now = _now()
        svc = self._svc
        if now >= svc.sync_at:
            svc.sync()
            e = self._data.get(key)
        if e is not None and e[2] > now:
            e[5] += 1
            l1 = self._l1
            l1.stats.hits += 1  # type: ignore[union-attr]
            return decode_value(e[0], 0) if e[1] else e[0]
        return self._get_slow(key, default, e)

    def _get_slow(self, key: str, default: Any, entry: list[Any] | None) -> Any:
        check_key(self.plugin_id, key)
        ns = self.namespace_id
        self._svc.check(self.plugin_id, self.permissions, ns, write=False)
        if self._l1 is not None:
            self._l1.miss(key, entry)
        row = self._svc.get(self.plugin_id, ns, key)
        if row is None or row[2] <= _now():
            return default
        self._fill(key, row)
        return decode_value(row[0], row[1])

    def _fill(self, key: str, row: tuple[bytes, int, float, float], value: Any = None) -> None:
        if self._l1 is not None:
            self._l1.put(key, row[0], row[1], row[2], row[3], entry_size(key, row[0]), value,
                         record=False)

    def set(self, key: str, value: Any, *, ttl: float | None = None,
            tags: Iterable[str] = (), stale: float = 0.0) -> bool:
        """Keep ``value`` (JSON data or bytes) for ``ttl`` seconds (``None``: until evicted);
        ``tags`` let :meth:`invalidate` drop it with others.  ``False`` when the cache,
        full, kept the entries it has because they are used more (TinyLFU admission)."""
        pid = self.plugin_id
        check_key(pid, key)
        seconds = check_ttl(pid, ttl)
        grace = check_ttl(pid, stale, "stale") or 0.0
        tag_list = check_tags(pid, list(tags))
        ns = self.namespace_id
        self._svc.check(pid, self.permissions, ns, write=True)
        blob, kind = encode_value(pid, value)
        stored, _prev, _gen = self._svc.set(pid, ns, key, blob, kind, seconds, grace, tag_list)
        if stored and self._l1 is not None:
            fresh = _now() + (seconds if seconds is not None else 30 * 86400.0)
            self._l1.put(key, blob, kind, fresh, fresh + grace, entry_size(key, blob), value)
        return stored

    def delete(self, key: str) -> bool:
        """Forget ``key``; whether it was there."""
        check_key(self.plugin_id, key)
        self._svc.check(self.plugin_id, self.permissions, self.namespace_id, write=True)
        existed, _prev, _gen = self._svc.delete(self.namespace_id, key)
        return existed

    def invalidate(self, *tags: str) -> int:
        """Forget every entry carrying any of ``tags``; how many were forgotten."""
        tag_list = check_tags(self.plugin_id, list(tags))
        self._svc.check(self.plugin_id, self.permissions, self.namespace_id, write=True)
        removed, _prev, _gen = self._svc.invalidate(self.namespace_id, tag_list)
        return removed

    def get_or_compute(self, key: str, fn: Callable[[], Any], *, ttl: float | None = None,
                       tags: Iterable[str] = (), stale: float = 0.0) -> Any:
        """The value of ``key``, computing it with ``fn()`` when missing.

        Concurrent callers for one key (threads, other plugins sharing the namespace)
        run ``fn`` once: the others wait for its value, or, while a stale value is
        within its ``stale`` grace, get that at once.  An exception from ``fn`` is
        raised to its caller and never kept; a waiting caller then computes itself.
        """
        e = self._data.get(key)
        if e is not None and e[2] > _now():
            return self.get(key)
        pid, ns = self.plugin_id, self.namespace_id
        check_key(pid, key)
        self._svc.check(pid, self.permissions, ns, write=False)
        if self._l1 is not None:
            self._l1.miss(key, e)
        state, row, lead = self._svc.lease(pid, ns, key)
        if state == "fresh" and row is not None:
            self._fill(key, row)
            return decode_value(row[0], row[1])
        if not lead and row is not None:
            return decode_value(row[0], row[1])
        try:
            value = fn()
        except BaseException:
            if lead:
                self._svc.release(ns, key)
            raise
        try:
            self.set(key, value, ttl=ttl, tags=tags, stale=stale)
        finally:
            if lead:
                self._svc.release(ns, key)
        return value

    def __repr__(self) -> str:
        return f"<PluginCache {self.plugin_id} ns={self.namespace_id}>"
