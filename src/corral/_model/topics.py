"""Topics, patterns, payloads and filters: the bus's rules, pure data, no I/O.

A topic is a dotted name (``git.push``); a pattern may use ``*`` for one
level and a final ``>`` for any depth.  A plugin may subscribe to a pattern
only if one of its granted ``events.subscribe`` patterns covers every topic
the requested pattern can match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import PermissionDenied, UsageError
from corral._model.jsoncheck import MAX_DEPTH, json_problem
from corral._model.permissions import valid_pattern

if TYPE_CHECKING:
    from corral._model.permissions import Permissions

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SYSTEM_PREFIX",
    "EventFilter",
    "check_pattern",
    "check_payload",
    "check_subscribe",
    "check_topic",
    "pattern_covers",
]

#: Topics under this prefix are host lifecycle events (``system`` propagation only).
SYSTEM_PREFIX: Final = "corral."
#: Largest payload a plugin may publish, as encoded JSON.
MAX_PAYLOAD_BYTES: Final = 1024 * 1024


def check_topic(topic: object) -> str:
    """Return ``topic`` if it is a concrete dotted name, else raise :class:`UsageError`."""
    if (
        type(topic) is not str
        or not valid_pattern(topic)
        or "*" in topic
        or ">" in topic
    ):
        raise UsageError(
            f"malformed topic {topic!r}: use dotted names of letters, digits, '_' and '-' "
            "(wildcards belong in subscription patterns)",
            topic=str(topic),
        )
    return topic


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if valid (``*`` one level, final ``>`` any depth), else raise."""
    if type(pattern) is not str or not valid_pattern(pattern):
        raise UsageError(
            f"malformed topic pattern {pattern!r}: dotted names, '*' for one level, "
            "a final '>' for any depth",
            pattern=str(pattern),
        )
    return pattern


def pattern_covers(granted: str, requested: str) -> bool:
    """Whether every topic ``requested`` can match is also matched by ``granted``."""
    g = granted.split(".")
    r = requested.split(".")
    for i, gs in enumerate(g):
        if gs == ">":
            return len(r) > i
        if i >= len(r):
            return False
        rs = r[i]
        if rs == ">":
            return False
        if gs not in ("*", rs):
            return False
    return len(r) == len(g)


def check_payload(data: Any, *, max_bytes: int = MAX_PAYLOAD_BYTES, topic: str = "") -> None:
    """Raise :class:`UsageError` unless ``data`` is JSON data of at most ``max_bytes``.

    One pass computes an upper bound of the encoded size; only a payload whose
    bound passes the limit is encoded to measure it exactly.
    """
    bound = _size_bound(data, 0)
    if bound < 0:
        problem = json_problem(data) or "it cannot be encoded as JSON"
        raise UsageError(f"payload for {topic!r} is not JSON data: {problem}", topic=topic)
    if bound > max_bytes:
        try:
            size = len(msgspec.json.encode(data))
        except (TypeError, OverflowError, ValueError) as exc:
            raise UsageError(f"payload for {topic!r} is not JSON data: {exc}",
                             topic=topic) from None
        if size > max_bytes:
            raise UsageError(
                f"payload for {topic!r} is {size} bytes, more than {max_bytes}",
                topic=topic,
                size=size,
            )


_I64: Final = 1 << 63


def _size_bound(v: Any, depth: int) -> int:
    """An upper bound of ``v``'s JSON size in bytes, or -1 if ``v`` is not JSON data."""
    t = type(v)
    if t is str:
        return 6 * len(v) + 2  # worst case: every character escaped as \uXXXX
    if t is int:
        return 20 if -_I64 <= v < _I64 else -1
    if t is bool or v is None:
        return 5
    if t is float:
        return 32 if v - v == 0.0 else -1  # NaN and infinities fail this test
    if depth >= MAX_DEPTH:
        return -1
    n = 2
    if t is dict:
        for key, item in v.items():
            if type(key) is not str:
                return -1
            ti = type(item)
            if ti is str:
                b = 6 * len(item) + 2
            elif ti is int and -_I64 <= item < _I64:
                b = 20
            else:
                b = _size_bound(item, depth + 1)
                if b < 0:
                    return -1
            n += 6 * len(key) + 4 + b
        return n
    if t is list:
        for item in v:
            ti = type(item)
            if ti is str:
                b = 6 * len(item) + 2
            elif ti is int and -_I64 <= item < _I64:
                b = 20
            else:
                b = _size_bound(item, depth + 1)
                if b < 0:
                    return -1
            n += b + 1
        return n
    return -1


_MISSING: Final = object()


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if type(data) is dict:
            data = data.get(part, _MISSING)
            if data is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return data


@final
class EventFilter:
    """A declarative payload filter: no code, only comparisons on dotted payload keys.

    ``{"user.name": "ada"}`` (equality), ``{"kind": {"in": ["a", "b"]}}``,
    ``{"ref": {"exists": True}}``, ``{"n": {"ne": 0}}``.  All conditions must hold.
    """

    __slots__ = ("_conds", "spec")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if not isinstance(spec, Mapping) or not spec:
            raise UsageError(f"an event filter is a non-empty mapping of key paths, got {spec!r}")
        conds: list[tuple[tuple[str, ...], str, Any]] = []
        for key, cond in spec.items():
            if type(key) is not str or not key or any(not p for p in key.split(".")):
                raise UsageError(f"event filter key {key!r} is not a dotted key path")
            path = tuple(key.split("."))
            if isinstance(cond, Mapping):
                if len(cond) != 1:
                    raise UsageError(
                        f"event filter {key!r}: use exactly one of eq, ne, in, exists"
                    )
                ((op, arg),) = cond.items()
                if op == "in":
                    if not isinstance(arg, list | tuple):
                        raise UsageError(f"event filter {key!r}: 'in' needs a list")
                    arg = tuple(arg)
                elif op == "exists":
                    if type(arg) is not bool:
                        raise UsageError(f"event filter {key!r}: 'exists' needs true or false")
                elif op not in ("eq", "ne"):
                    raise UsageError(
                        f"event filter {key!r}: unknown operator {op!r} (eq, ne, in, exists)"
                    )
                conds.append((path, op, arg))
            else:
                conds.append((path, "eq", cond))
        self.spec: Final = dict(spec)
        self._conds: Final = tuple(conds)

    def matches(self, data: Any) -> bool:
        """Whether ``data`` satisfies every condition."""
        for path, op, arg in self._conds:
            value = _lookup(data, path)
            if op == "eq":
                if value is _MISSING or value != arg:
                    return False
            elif op == "ne":
                if value is not _MISSING and value == arg:
                    return False
            elif op == "in":
                if value is _MISSING or value not in arg:
                    return False
            elif (value is not _MISSING) is not arg:
                return False
        return True


def check_subscribe(perms: Permissions, pattern: str, plugin_id: str | None) -> None:
    """Raise :class:`PermissionDenied` unless a granted pattern covers ``pattern``."""
    granted = [
        g.partition(":")[2] for g in perms.host_api if g.partition(":")[0] == "events.subscribe"
    ]
    if not any(pattern_covers(g, pattern) for g in granted):
        raise PermissionDenied(
            f"plugin {plugin_id or '?'} has no host-api grant covering "
            f"events.subscribe:{pattern}",
            permission=f"host-api:events.subscribe:{pattern}",
            plugin_id=plugin_id,
        )
