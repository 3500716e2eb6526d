"""Permission grants from ``[permissions]``: pure data and the rules that check them.

Everything not granted is denied.  The objects here take data and answer or
raise; the runtime only feeds them (the broker asks, these decide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, final

from corral._errors import PermissionDenied

__all__ = [
    "HOST_API_SERVICES",
    "NAME_PATTERN",
    "PLACEHOLDERS",
    "SECRET_NAME_PATTERN",
    "Permissions",
    "expand_placeholders",
    "pattern_matches",
    "valid_pattern",
]

#: Placeholders allowed at the start of ``fs-read``/``fs-write`` entries.
PLACEHOLDERS: Final = ("plugin", "data", "cache", "tmp", "workspace")

#: ``host-api`` services and what their target names.
HOST_API_SERVICES: Final = {
    "events.publish": "topic pattern",
    "events.subscribe": "topic pattern",
    "state.read": "key pattern",
    "state.write": "key pattern",
    "messages.send": "plugin id pattern",
    "secrets": "secret name",
    "cache.read": "cache namespace pattern",
    "cache.write": "cache namespace pattern",
}

_SEGMENT = r"(?:[A-Za-z0-9_-]+|\*)"
#: A topic, key or id pattern: dotted segments, ``*`` for one, a final ``>`` for any depth.
NAME_PATTERN: Final = rf"(?:{_SEGMENT}(?:\.{_SEGMENT})*(?:\.>)?|>)"
#: A secret's name.
SECRET_NAME_PATTERN: Final = r"[A-Za-z0-9_.-]+"  # noqa: S105 (a pattern, not a secret)
_PATTERN_RE: Final = re.compile(NAME_PATTERN)


def valid_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is a dotted name with ``*`` (one level) or a final ``>`` (any depth)."""
    return bool(_PATTERN_RE.fullmatch(pattern))


def pattern_matches(pattern: str, name: str) -> bool:
    """Match a dotted ``name`` against ``pattern``: ``git.*`` one level, ``git.>`` any depth."""
    if pattern == name:
        return True
    pat = pattern.split(".")
    parts = name.split(".")
    for i, p in enumerate(pat):
        if p == ">":
            return len(parts) > i
        if i >= len(parts):
            return False
        if p != "*" and p != parts[i]:
            return False
    return len(parts) == len(pat)


def expand_placeholders(entry: str, values: dict[str, str]) -> str:
    """Replace a leading ``{name}`` in a path grant with its value for this plugin."""
    if entry.startswith("{"):
        end = entry.index("}")
        key = entry[1:end]
        return values[key] + entry[end + 1 :]
    return entry


@final
@dataclass(frozen=True, slots=True)
class Permissions:
    """What a plugin may do; every field empty means it may do nothing outside itself."""

    fs_read: tuple[str, ...] = ()
    fs_write: tuple[str, ...] = ()
    net_connect: tuple[str, ...] = ()
    spawn: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    host_api: tuple[str, ...] = ()
    _api: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        api: dict[str, list[str]] = {}
        for grant in self.host_api:
            service, _, target = grant.partition(":")
            api.setdefault(service, []).append(target)
        object.__setattr__(self, "_api", {k: tuple(v) for k, v in api.items()})

    def allows_api(self, service: str, target: str) -> bool:
        """Whether ``host-api`` grants ``service`` for ``target`` (a topic, key, id or name)."""
        patterns = self._api.get(service, ())
        if service == "secrets":
            return target in patterns
        return any(pattern_matches(p, target) for p in patterns)

    def check_api(self, service: str, target: str, *, plugin_id: str | None = None) -> None:
        """Raise :class:`PermissionDenied` naming the missing grant unless it is granted."""
        if not self.allows_api(service, target):
            raise PermissionDenied(
                f"plugin {plugin_id or '?'} has no host-api grant {service}:{target}",
                permission=f"host-api:{service}:{target}",
                plugin_id=plugin_id,
            )

    def allows_connect(self, host: str, port: int) -> bool:
        """Whether ``net-connect`` grants exactly ``host:port``."""
        want = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return want.lower() in (g.lower() for g in self.net_connect)

    def to_dict(self) -> dict[str, list[str]]:
        """The ``[permissions]`` table, manifest spelling, empty grants left out."""
        out: dict[str, list[str]] = {}
        for key, value in (
            ("fs-read", self.fs_read),
            ("fs-write", self.fs_write),
            ("net-connect", self.net_connect),
            ("spawn", self.spawn),
            ("env", self.env),
            ("host-api", self.host_api),
        ):
            if value:
                out[key] = list(value)
        return out
