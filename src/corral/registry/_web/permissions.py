"""A version's permissions in plain language, each with a risk level, and what changed.

The grants are read with :class:`corral._model.permissions.Permissions` (the
manifest's own model), so the page says what the host would enforce.  Risk is
``low`` (the plugin's own folders, reading topics), ``medium`` (your workspace,
a named host, writing shared state) or ``high`` (paths outside corral, running
programs, secrets, no sandbox).  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, final

from corral._model.permissions import PLACEHOLDERS, Permissions

__all__ = ["RISKS", "Grant", "PermissionDiff", "describe", "diff", "permissions_of"]

RISKS: Final = ("low", "medium", "high")
_OWN: Final = tuple(p for p in PLACEHOLDERS if p != "workspace")
_SECRET_WORDS: Final = ("TOKEN", "SECRET", "KEY", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
_API: Final = {
    "events.publish": ("Publish events on topics {t}", "low"),
    "events.subscribe": ("Receive events on topics {t}", "low"),
    "state.read": ("Read shared state keys {t}", "low"),
    "state.write": ("Change shared state keys {t}", "medium"),
    "messages.send": ("Send messages to plugins {t}", "low"),
    "secrets": ("Read the secret {t}", "high"),
}
_ISOLATION: Final = {
    "none": ("Runs inside the host process, with no sandbox", "high"),
    "limited": ("Runs in a sandbox with limited isolation", "medium"),
}


@final
@dataclass(frozen=True, slots=True)
class Grant:
    """One grant: its manifest spelling, a sentence and a risk level."""

    key: str
    value: str
    text: str
    risk: str

    @property
    def spelling(self) -> str:
        """The grant as the manifest writes it (``fs-read {workspace}``)."""
        return f"{self.key} {self.value}" if self.value else self.key


@final
@dataclass(frozen=True, slots=True)
class PermissionDiff:
    """Grants added, removed and kept between two versions."""

    added: tuple[Grant, ...]
    removed: tuple[Grant, ...]
    kept: tuple[Grant, ...]


def permissions_of(manifest: Mapping[str, Any]) -> Permissions:
    """The :class:`Permissions` of a stored manifest (manifest spelling)."""
    table = manifest.get("permissions") or {}

    def grants(key: str) -> tuple[str, ...]:
        value = table.get(key) or ()
        return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()

    return Permissions(fs_read=grants("fs-read"), fs_write=grants("fs-write"),
                       net_connect=grants("net-connect"), spawn=grants("spawn"),
                       env=grants("env"), host_api=grants("host-api"))


def _path(verb: str, entry: str) -> tuple[str, str]:
    if entry.startswith("{"):
        place, _, rest = entry[1:].partition("}")
        where = rest.lstrip("/")
        suffix = f" ({where})" if where else ""
        if place in _OWN:
            return f"{verb} its own {place} folder{suffix}", "low"
        if place == "workspace":
            risk = "medium" if verb == "Read" else "high"
            return f"{verb} files in your workspace{suffix}", risk
    if entry in ("/", "~", "~/") or entry.startswith("/etc") or entry.startswith("~"):
        return f"{verb} {entry} on your computer (broad access)", "high"
    return f"{verb} {entry} outside corral's folders", "high" if verb == "Write" else "medium"


def describe(manifest: Mapping[str, Any]) -> list[Grant]:
    """Every grant of a stored manifest in plain language, riskiest first."""
    perms = permissions_of(manifest)
    out: list[Grant] = []
    for entry in perms.fs_read:
        out.append(Grant("fs-read", entry, *_path("Read", entry)))
    for entry in perms.fs_write:
        out.append(Grant("fs-write", entry, *_path("Write", entry)))
    for entry in perms.net_connect:
        host, _, port = entry.rpartition(":")
        wide = "*" in host or host in ("0.0.0.0", "[::]")  # noqa: S104 (a grant read, not a bind)
        out.append(Grant("net-connect", entry,
                         f"Connect to {host or entry} on port {port or '?'} over the network",
                         "high" if wide else "medium"))
    for entry in perms.spawn:
        out.append(Grant("spawn", entry, f"Run the program {entry}", "high"))
    for entry in perms.env:
        secret = any(w in entry.upper() for w in _SECRET_WORDS)
        out.append(Grant("env", entry, f"Read the environment variable {entry}",
                         "medium" if secret else "low"))
    for entry in perms.host_api:
        service, _, target = entry.partition(":")
        text, risk = _API.get(service, ("Use the host service {s} for {t}", "medium"))
        out.append(Grant("host-api", entry, text.format(t=target or "*", s=service), risk))
    sandbox = manifest.get("sandbox") or {}
    isolation = sandbox.get("isolation", "strict") if isinstance(sandbox, Mapping) else "strict"
    if isolation in _ISOLATION:
        out.append(Grant("sandbox.isolation", str(isolation), *_ISOLATION[isolation]))
    order = {r: i for i, r in enumerate(reversed(RISKS))}
    return sorted(out, key=lambda g: (order[g.risk], g.key, g.value))


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> PermissionDiff:
    """What ``new`` grants that ``old`` did not, what it dropped, and what both grant."""
    before = {g.spelling: g for g in describe(old)}
    after = {g.spelling: g for g in describe(new)}
    return PermissionDiff(
        added=tuple(g for k, g in after.items() if k not in before),
        removed=tuple(g for k, g in before.items() if k not in after),
        kept=tuple(g for k, g in after.items() if k in before),
    )
