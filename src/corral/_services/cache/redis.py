"""L2 in Redis or Valkey (``[cache] url = "redis://..."`` in the home's ``settings.toml``).

For hosts on several machines that share one cache.  The same operations as the
SQLite store (``store.py``), kept under keys prefixed ``corral:cache:``: an entry
is a hash that Redis expires at its keeping time; what each plugin wrote is a
sorted set by write order (eviction) with its sizes and a byte count (budget);
tags are sets; generations a hash; counters a hash per plugin.  Changes run in
optimistic transactions (``WATCH``/``MULTI``), retried when another writer got
there first.  Needs the ``redis`` package (``pip install 'corral[redis]'``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, final

from corral._errors import MissingExtra, UnavailableError

__all__ = ["RedisStore"]

_P: Final = "corral:cache:"
_COUNTERS: Final = ("hits", "misses", "sets", "evictions", "rejected", "expired")
Row = tuple[bytes, int, float, float]
_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(fn: _F) -> _F:
    """A Redis failure during ``fn`` becomes ``unavailable``, naming the server."""
    @functools.wraps(fn)
    def run(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except self._redis_mod.RedisError as exc:
            raise UnavailableError(f"the cache at {self.path} failed: {exc}",
                                   url=self.path) from None

    return run  # type: ignore[return-value]


def _entry(ns: str, key: str) -> str:
    return f"{_P}e:{ns}\0{key}"


@final
class RedisStore:
    """L2 in a Redis server; the methods of :class:`~.store.CacheStore`."""

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            raise MissingExtra("a Redis cache ([cache] url) needs the redis package: "
                               "pip install 'corral[redis]'", module="redis",
                               extra="redis") from None
        self._redis_mod = redis
        try:
            self._r: Any = redis.Redis.from_url(url, socket_timeout=10)
            self._r.ping()
        except (redis.RedisError, ValueError) as exc:
            raise UnavailableError(f"cannot reach the cache at {_safe(url)}: {exc}",
                                   url=_safe(url)) from None
        self.path = _safe(url)

    def close(self) -> None:
        """Close the connections."""
        self._r.close()

    def _retry(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(pipe)`` in an optimistic transaction until nobody raced it."""
        while True:
            with self._r.pipeline() as pipe:
                try:
                    return fn(pipe)
                except self._redis_mod.WatchError:
                    continue

    # -- reading ----------------------------------------------------------------

    @_guarded
    def get(self, ns: str, key: str, now: float) -> Row | None:
        """``key``'s entry in ``ns`` unless past keeping."""
        v = self._r.hmget(_entry(ns, key), "value", "kind", "fresh", "keep")
        if v[0] is None or float(v[3]) <= now:
            return None
        return bytes(v[0]), int(v[1]), float(v[2]), float(v[3])

    @_guarded
    def data_version(self) -> int:
        """Raised by every change, by any host."""
        return int(self._r.get(_P + "v") or 0)

    @_guarded
    def generations(self) -> dict[str, int]:
        """Every namespace's generation."""
        return {k.decode(): int(v) for k, v in self._r.hgetall(_P + "g").items()}

    @_guarded
    def usage(self, owner: str) -> tuple[int, int]:
        """``(entries, bytes)`` that ``owner`` wrote (entries Redis expired included until
        the owner next needs room)."""
        return int(self._r.zcard(f"{_P}o:{owner}")), int(self._r.get(f"{_P}u:{owner}") or 0)

    @_guarded
    def owners(self) -> list[str]:
        """Every plugin with entries or counters."""
        return sorted(m.decode() for m in self._r.smembers(_P + "owners"))

    @_guarded
    def counters(self, owner: str) -> dict[str, dict[str, int]]:
        """``owner``'s recorded counters by level."""
        out: dict[str, dict[str, int]] = {}
        for field, n in self._r.hgetall(f"{_P}c:{owner}").items():
            level, _, name = field.decode().partition(":")
            out.setdefault(level, dict.fromkeys(_COUNTERS, 0))[name] = int(n)
        return out

    # -- writing ----------------------------------------------------------------

    @_guarded
    def set(self, ns: str, key: str, owner: str, blob: bytes, kind: int, fresh: float,
            keep: float, tags: tuple[str, ...], size: int, cap: int,
            admit: Callable[[str], bool]) -> tuple[bool, int, int, int]:
        """Store an entry under ``owner``'s budget, evicting its oldest entries (unless
        admission prefers them); ``(stored, evicted, previous generation, generation)``."""
        entry, member = _entry(ns, key), f"{ns}\0{key}"
        order, sizes, used_key = f"{_P}o:{owner}", f"{_P}z:{owner}", f"{_P}u:{owner}"

        def run(pipe: Any) -> tuple[bool, int, int, int]:
            pipe.watch(order, used_key, entry)
            old_owner = pipe.hget(entry, "owner")
            held = pipe.zscore(order, member) is not None
            old_size = int(pipe.hget(sizes, member) or 0) if held else 0
            used = int(pipe.get(used_key) or 0) - old_size
            victims: list[tuple[str, int]] = []
            if used + size > cap:
                for raw in pipe.zrange(order, 0, -1):
                    vmember = raw.decode()
                    if vmember == member:
                        continue
                    if not victims and pipe.exists(f"{_P}e:{vmember}") and not admit(vmember):
                        return False, 0, 0, 0
                    vsize = int(pipe.hget(sizes, vmember) or 0)
                    victims.append((vmember, vsize))
                    used -= vsize
                    if used + size <= cap:
                        break
                if used + size > cap:
                    return False, 0, 0, 0
            old_tags = pipe.hget(entry, "tags")
            pipe.multi()
            if old_owner is not None and old_owner.decode() != owner:
                _forget(pipe, old_owner.decode(), member)
            for vmember, _vsize in victims:
                _drop(pipe, owner, vmember)
            if old_tags:
                for tag in old_tags.decode().split("\0"):
                    pipe.srem(f"{_P}t:{ns}\0{tag}", key)
            pipe.delete(entry)
            pipe.hset(entry, mapping={"value": blob, "kind": kind, "size": size,
                                      "fresh": fresh, "keep": keep, "owner": owner,
                                      "tags": "\0".join(tags)})
            pipe.expireat(entry, int(keep) + 1)
            for tag in tags:
                pipe.sadd(f"{_P}t:{ns}\0{tag}", key)
            pipe.zadd(order, {member: time.time_ns()})
            pipe.hset(sizes, member, size)
            pipe.incrby(used_key, size - old_size - sum(v for _, v in victims))
            pipe.sadd(_P + "owners", owner)
            pipe.hincrby(_P + "g", ns, 1)
            pipe.incr(_P + "v")
            gen = int(pipe.execute()[-2])
            return True, len(victims), gen - 1, gen

        result: tuple[bool, int, int, int] = self._retry(run)
        return result

    def _remove(self, ns: str, keys: Iterable[str]) -> tuple[int, int]:
        """Remove ``keys`` of ``ns`` and raise its generation; ``(removed, gen)``."""
        removed = 0
        pipe = self._r.pipeline()
        for key in keys:
            owner = self._r.hget(_entry(ns, key), "owner")
            tags = self._r.hget(_entry(ns, key), "tags")
            if owner is None:
                continue
            removed += 1
            _forget(pipe, owner.decode(), f"{ns}\0{key}")
            for tag in tags.decode().split("\0") if tags else ():
                pipe.srem(f"{_P}t:{ns}\0{tag}", key)
            pipe.delete(_entry(ns, key))
        pipe.hincrby(_P + "g", ns, 1)
        pipe.incr(_P + "v")
        gen = int(pipe.execute()[-2])
        return removed, gen

    @_guarded
    def delete(self, ns: str, key: str) -> tuple[bool, int, int]:
        """Remove one entry; ``(existed, previous generation, generation)``."""
        removed, gen = self._remove(ns, [key])
        return bool(removed), gen - 1, gen

    @_guarded
    def invalidate(self, ns: str, tags: Iterable[str]) -> tuple[int, int, int]:
        """Remove the entries of ``ns`` carrying one of ``tags``."""
        keys: set[str] = set()
        for tag in tags:
            keys.update(m.decode() for m in self._r.smembers(f"{_P}t:{ns}\0{tag}"))
        removed, gen = self._remove(ns, keys)
        return removed, gen - 1, gen

    @_guarded
    def clear(self, plugin_id: str, tag: str | None = None) -> dict[str, int]:
        """Remove ``plugin_id``'s namespace (or its ``tag`` entries) and what it wrote."""
        if tag is not None:
            members = [f"{plugin_id}\0{m.decode()}"
                       for m in self._r.smembers(f"{_P}t:{plugin_id}\0{tag}")]
        else:
            members = [m.decode() for m in self._r.zrange(f"{_P}o:{plugin_id}", 0, -1)]
            members += [k.decode()[len(_P) + 2:] for k in
                        self._r.scan_iter(match=f"{_P}e:{plugin_id}\0*", count=1000)]
        by_ns: dict[str, set[str]] = {plugin_id: set()}
        size = 0
        for m in set(members):
            ns, _, key = m.partition("\0")
            got = self._r.hget(_entry(ns, key), "size")
            if got is not None:
                size += int(got)
                by_ns.setdefault(ns, set()).add(key)
        n = 0
        for ns, keys in by_ns.items():
            n += self._remove(ns, keys)[0]
        if tag is None:
            self._r.delete(f"{_P}c:{plugin_id}", f"{_P}o:{plugin_id}", f"{_P}z:{plugin_id}",
                           f"{_P}u:{plugin_id}")
            self._r.srem(_P + "owners", plugin_id)
        return {"entries": n, "bytes": size}

    @_guarded
    def purge_expired(self, now: float | None = None) -> int:
        """Redis expires entries itself: drop what they leave in the owners' bookkeeping."""
        n = 0
        for owner in self.owners():
            order = f"{_P}o:{owner}"
            gone = [m for m in self._r.zrange(order, 0, -1)
                    if not self._r.exists(f"{_P}e:{m.decode()}")]
            for m in gone:
                pipe = self._r.pipeline()
                _forget(pipe, owner, m.decode())
                pipe.execute()
            n += len(gone)
        return n

    @_guarded
    def add_counters(self, rows: Iterable[tuple[str, str, dict[str, int]]]) -> None:
        """Add ``(owner, level, counters)`` to the recorded counters."""
        pipe = self._r.pipeline()
        for owner, level, counts in rows:
            for name, v in counts.items():
                if v:
                    pipe.hincrby(f"{_P}c:{owner}", f"{level}:{name}", v)
                    pipe.sadd(_P + "owners", owner)
        pipe.execute()


def _forget(pipe: Any, owner: str, member: str) -> None:
    """Queue the removal of ``member`` from ``owner``'s bookkeeping (its bytes given back)."""
    pipe.zrem(f"{_P}o:{owner}", member)
    pipe.eval("local s = redis.call('HGET', KEYS[1], ARGV[1]) "
              "if s then redis.call('HDEL', KEYS[1], ARGV[1]) "
              "redis.call('DECRBY', KEYS[2], s) end return 0",
              2, f"{_P}z:{owner}", f"{_P}u:{owner}", member)


def _drop(pipe: Any, owner: str, member: str) -> None:
    """Queue the eviction of ``member`` (its bookkeeping is settled by the caller)."""
    ns, _, key = member.partition("\0")
    pipe.zrem(f"{_P}o:{owner}", member)
    pipe.hdel(f"{_P}z:{owner}", member)
    pipe.delete(_entry(ns, key))


def _safe(url: str) -> str:
    """``url`` without its password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _creds = head.partition("://")
    return f"{scheme}://***@{tail}"
