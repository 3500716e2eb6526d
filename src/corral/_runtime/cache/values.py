"""Bounds and encoding of what a plugin puts in its cache: keys, values, tags, TTLs.

The same checks run in the worker (to fail early) and in the host (which trusts
nothing a worker sends); a value is stored as bytes with its kind.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

from corral._errors import ResourceLimitExceeded, UsageError
from corral._model.jsoncheck import json_problem

__all__ = [
    "KIND_BYTES",
    "KIND_JSON",
    "MAX_KEY_BYTES",
    "MAX_TAGS",
    "MAX_TAG_BYTES",
    "MAX_TTL",
    "MAX_VALUE_BYTES",
    "check_key",
    "check_namespace",
    "check_tags",
    "check_ttl",
    "decode_value",
    "encode_value",
    "entry_size",
]

MAX_KEY_BYTES: Final = 512
MAX_VALUE_BYTES: Final = 4 * 1024 * 1024
MAX_TAGS: Final = 16
MAX_TAG_BYTES: Final = 128
MAX_TTL: Final = 30 * 86400.0
#: How a stored value is read back: JSON data, or raw bytes.
KIND_JSON: Final = 0
KIND_BYTES: Final = 1
#: What an entry costs beyond its key and value (bookkeeping), in bytes.
ENTRY_OVERHEAD: Final = 64
_NS_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _too_big(plugin_id: str | None, limit: str, what: str, size: int, cap: int
             ) -> ResourceLimitExceeded:
    return ResourceLimitExceeded(
        f"{plugin_id or '?'}: {limit}: {what} is {size} bytes, more than {cap}",
        plugin_id=plugin_id, limit=limit, measured=size, budget=cap, unit="bytes")


def check_key(plugin_id: str | None, key: object) -> str:
    """``key`` if it is a non-empty string of at most :data:`MAX_KEY_BYTES` UTF-8 bytes."""
    if type(key) is not str or not key:
        raise UsageError(f"{plugin_id or '?'}: a cache key must be a non-empty str, "
                         f"got {type(key).__name__}", plugin_id=plugin_id)
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise _too_big(plugin_id, "cache-key-bytes", "a cache key",
                       len(key.encode("utf-8", "surrogatepass")), MAX_KEY_BYTES)
    return key


def check_namespace(plugin_id: str | None, ns: object) -> str:
    """``ns`` if it is a dotted lowercase name (a plugin id or a shared name)."""
    if (type(ns) is not str or not 0 < len(ns) <= 128 or not set(ns) <= _NS_CHARS
            or ns.startswith(".") or ns.endswith(".") or ".." in ns):
        raise UsageError(f"{plugin_id or '?'}: a cache namespace is a dotted lowercase name "
                         f"(a plugin id or a shared name), got {ns!r}", plugin_id=plugin_id)
    return ns


def check_tags(plugin_id: str | None, tags: object) -> tuple[str, ...]:
    """``tags`` as a tuple of at most :data:`MAX_TAGS` non-empty strings."""
    if tags is None:
        return ()
    if isinstance(tags, str) or not isinstance(tags, list | tuple | set | frozenset):
        raise UsageError(f"{plugin_id or '?'}: cache tags must be a list of str, "
                         f"got {type(tags).__name__}", plugin_id=plugin_id)
    out = tuple(dict.fromkeys(tags))
    if len(out) > MAX_TAGS:
        raise ResourceLimitExceeded(
            f"{plugin_id or '?'}: cache-tags: {len(out)} tags on one entry, more than {MAX_TAGS}",
            plugin_id=plugin_id, limit="cache-tags", measured=len(out), budget=MAX_TAGS,
            unit="tags")
    for tag in out:
        if type(tag) is not str or not tag:
            raise UsageError(f"{plugin_id or '?'}: a cache tag must be a non-empty str, "
                             f"got {tag!r}", plugin_id=plugin_id)
        if len(tag.encode("utf-8", "surrogatepass")) > MAX_TAG_BYTES:
            raise _too_big(plugin_id, "cache-tag-bytes", "a cache tag",
                           len(tag.encode("utf-8", "surrogatepass")), MAX_TAG_BYTES)
    return out


def check_ttl(plugin_id: str | None, ttl: object, what: str = "ttl") -> float | None:
    """Seconds (``None``: until evicted, capped at :data:`MAX_TTL`)."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) \
            or ttl < 0:
        raise UsageError(f"{plugin_id or '?'}: cache {what} must be a number of seconds >= 0, "
                         f"got {ttl!r}", plugin_id=plugin_id)
    return min(float(ttl), MAX_TTL)


def encode_value(plugin_id: str | None, value: Any, cap: int = MAX_VALUE_BYTES
                 ) -> tuple[bytes, int]:
    """``value`` as stored bytes and its kind: ``bytes`` as they are, else JSON data."""
    if type(value) is bytes:
        blob, kind = value, KIND_BYTES
    else:
        problem = json_problem(value)
        if problem:
            raise UsageError(f"{plugin_id or '?'}: a cache value must be JSON data or bytes: "
                             + problem.replace("$", "value", 1), plugin_id=plugin_id)
        blob, kind = _encode(value), KIND_JSON
    if len(blob) > cap:
        raise _too_big(plugin_id, "cache-value-bytes", "a cache value", len(blob), cap)
    return blob, kind


def decode_value(blob: bytes, kind: int) -> Any:
    """A stored value read back (a fresh copy of JSON data)."""
    return blob if kind == KIND_BYTES else _decode(blob)


def entry_size(key: str, blob: bytes) -> int:
    """What an entry counts against its budget."""
    return len(key) + len(blob) + ENTRY_OVERHEAD
