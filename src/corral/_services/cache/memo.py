"""Declarative memoisation: ``[exports.NAME] cache = {ttl = "10m"}`` applied around calls.

A result is kept under hash(plugin id, version, configuration, export) and the
input's canonical JSON, so an update or a configuration change misses without
any code in the plugin.  In process, the export's function is wrapped (a hit is
a dictionary lookup on the call's fast path); for a sandboxed plugin the host
answers a hit before dispatching, so it never reaches the worker.  Errors and
results that are not JSON data are never kept.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._model.jsoncheck import json_problem
from corral._runtime.cache.memory import MemoryCache
from corral._runtime.cache.values import KIND_JSON, MAX_VALUE_BYTES, decode_value, entry_size

if TYPE_CHECKING:
    from collections.abc import Mapping

    from corral._model.manifest import Manifest
    from corral._model.memo import ExportCache
    from corral._services.cache.service import CacheService

__all__ = ["MEMO_TAG", "Memo", "memo_scope"]

#: Every memoised result carries this tag, and ``memo:EXPORT``.
MEMO_TAG: Final = "memo"
#: The in-memory level of one memoised export holds at most this much.
MEMO_L1_BYTES: Final = 8 * 1024 * 1024
_canonical = msgspec.json.Encoder(order="sorted").encode
_now = time.time


def memo_scope(manifest: Manifest, config: Mapping[str, Any], export: str) -> str:
    """What a memoised result's key starts with: the plugin, its version and configuration,
    and the export, hashed."""
    config_hash = hashlib.sha256(_canonical(dict(config))).hexdigest()
    text = "\0".join((manifest.id, manifest.version, config_hash, export))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@final
class _Export:
    """One memoised export: its spec, scope (per configuration) and in-memory level."""

    __slots__ = ("config", "export", "l1", "scope", "spec")

    def __init__(self, export: str, spec: ExportCache, l1: MemoryCache) -> None:
        self.export = export
        self.spec = spec
        self.l1 = l1
        self.config: Any = None
        self.scope = ""


@final
class Memo:
    """The memoised exports of one active plugin."""

    def __init__(self, service: CacheService, manifest: Manifest) -> None:
        self.service = service
        self.manifest = manifest
        self.plugin_id = manifest.id
        self._exports = {
            name: _Export(name, spec, service.memo_l1(manifest.id, MEMO_L1_BYTES))
            for name, spec in manifest.export_cache.items()
        }

    def covers(self, export: str) -> bool:
        """Whether ``export`` is memoised."""
        return export in self._exports

    def _scoped(self, ex: _Export, config: Mapping[str, Any]) -> str:
        if config is not ex.config:
            scope = memo_scope(self.manifest, config, ex.export)
            if scope != ex.scope:
                ex.l1.clear()
            ex.scope, ex.config = scope, config
        return ex.scope

    def wrap(self, export: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (an in-process export taking ``(input, ctx)``) with its results memoised."""
        ex = self._exports.get(export)
        if ex is None:
            return fn
        if inspect.iscoroutinefunction(fn):
            return self._wrap_async(ex, fn)
        data = ex.l1.data
        stats = ex.l1.stats
        slow = self._slow

        def memoised(input: Any, ctx: Any) -> Any:
            cfg = ctx.config
            if cfg is not ex.config:
                self._scoped(ex, cfg)
            blob = _canonical(input)
            e = data.get(blob)
            if e is not None and e[2] > _now():
                e[5] += 1
                stats.hits += 1
                return decode_value(e[0], 0) if e[1] else e[0]
            return slow(ex, blob, e, lambda: fn(input, ctx))

        memoised.__wrapped__ = fn  # type: ignore[attr-defined]
        return memoised

    def _wrap_async(self, ex: _Export, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def memoised(input: Any, ctx: Any) -> Any:
            self._scoped(ex, ctx.config)
            blob = _canonical(input)
            found = self._lookup(ex, blob)
            if found is not _MISS:
                return found
            out = await fn(input, ctx)
            self._keep(ex, blob, out)
            return out

        return memoised

    def call(self, export: str, input: Any, config: Mapping[str, Any],
             run: Callable[[], Any]) -> Any:
        """``run()``'s result for ``input``, kept or computed (a sandboxed call)."""
        ex = self._exports[export]
        self._scoped(ex, config)
        blob = _canonical(input)
        e = ex.l1.data.get(blob)
        if e is not None and e[2] > _now():
            e[5] += 1
            ex.l1.stats.hits += 1
            return decode_value(e[0], 0) if e[1] else e[0]
        return self._slow(ex, blob, e, run)

    def _key(self, ex: _Export, blob: bytes) -> str:
        return f"memo:{ex.export}:{ex.scope}:{hashlib.sha256(blob).hexdigest()[:40]}"

    def _lookup(self, ex: _Export, blob: bytes) -> Any:
        e = ex.l1.data.get(blob)
        if e is not None and e[2] > _now():
            e[5] += 1
            ex.l1.stats.hits += 1
            return decode_value(e[0], 0) if e[1] else e[0]
        ex.l1.miss(blob, e)
        row = self.service.get(self.plugin_id, self.plugin_id, self._key(ex, blob), "memo")
        if row is not None and row[2] > _now():
            ex.l1.put(blob, row[0], row[1], row[2], row[3], entry_size("", row[0]) + len(blob),
                      record=False)
            return decode_value(row[0], row[1])
        return _MISS

    def _slow(self, ex: _Export, blob: bytes, entry: list[Any] | None,
              run: Callable[[], Any]) -> Any:
        svc, pid = self.service, self.plugin_id
        ex.l1.miss(blob, entry)
        key = self._key(ex, blob)
        state, row, lead = svc.lease(pid, pid, key, level="memo")
        if row is not None and (state == "fresh" or not lead):
            if state == "fresh":
                ex.l1.put(blob, row[0], row[1], row[2], row[3],
                          entry_size("", row[0]) + len(blob), record=False)
            return decode_value(row[0], row[1])
        try:
            out = run()
        except BaseException:
            if lead:
                svc.release(pid, key)
            raise
        try:
            self._keep(ex, blob, out, key)
        finally:
            if lead:
                svc.release(pid, key)
        return out

    def _keep(self, ex: _Export, blob: bytes, out: Any, key: str | None = None) -> None:
        """Keep ``out`` if it is JSON data small enough (the call's own check reports it)."""
        if json_problem(out) is not None:
            return
        value = msgspec.json.encode(out)
        if len(value) > MAX_VALUE_BYTES:
            return
        spec = ex.spec
        stored, _prev, _gen = self.service.set(
            self.plugin_id, self.plugin_id, key or self._key(ex, blob), value, KIND_JSON,
            spec.ttl, spec.stale, (MEMO_TAG, f"{MEMO_TAG}:{ex.export}"), "memo")
        if stored:
            fresh = _now() + spec.ttl
            ex.l1.put(blob, value, KIND_JSON, fresh, fresh + spec.stale,
                      entry_size("", value) + len(blob), out)


_MISS: Final = object()
