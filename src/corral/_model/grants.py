"""Grants refused by default: writing ``/``, the home or plugins' folders, reading its secrets.

A manifest may ask for any absolute path; these are the ones no plugin should get
without the host's owner saying so (``[policy] allow-broad-grants = true`` in
``<home>/settings.toml``).  Pure path arithmetic: the caller hands in the paths.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from corral._disk.layout import DB_NAME
from corral._errors import PolicyDenied
from corral._model.permissions import Permissions

__all__ = ["ALLOW_SETTING", "SENSITIVE_NAMES", "broad_grants", "refuse_broad_grants"]

#: The ``settings.toml`` switch that lets a host accept them anyway.
ALLOW_SETTING: Final = ("policy", "allow-broad-grants")

#: What a home holds that no plugin may read: its database, keys and secrets, and every
#: plugin's ``ctx.cache`` entries (``cache.db``: a plugin reads its own through ``ctx.cache``).
SENSITIVE_NAMES: Final = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", "keys",
                          "secrets.json", "secret.key", "settings.toml", "corral.lock",
                          "cache.db", "cache.db-wal", "cache.db-shm")


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both normalised, absolute)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def broad_grants(
    perms: Permissions, *, homes: Sequence[Path], user_home: Path | None = None
) -> list[tuple[str, str, str]]:
    """Each refused grant as ``(manifest key, grant, why)``.

    ``homes`` are the corral home as given and as resolved (a link to it counts
    the same); ``user_home`` is the user's home directory, which no plugin may
    write whole.  Placeholder grants (``{data}/x``) stay in the plugin's own
    folders and are never refused.
    """
    roots = sorted({posixpath.normpath(str(h)) for h in homes})
    user = posixpath.normpath(str(user_home)) if user_home is not None else None
    out: list[tuple[str, str, str]] = []
    for kind, entries in (("fs-write", perms.fs_write), ("fs-read", perms.fs_read)):
        for i, entry in enumerate(entries):
            if entry.startswith("{"):
                continue
            path = posixpath.normpath(entry)
            why = _why(kind, path, roots, user)
            if why:
                out.append((f"permissions.{kind}[{i}]", f"{kind}:{entry}", why))
    return out


def _why(kind: str, path: str, roots: list[str], user: str | None) -> str | None:
    if kind == "fs-write":
        if path == "/":
            return "write access to the whole filesystem"
        for root in roots:
            if _within(root, path):
                return f"write access to the corral home {root}"
            if _within(path, root):
                return (f"write access inside the corral home {root} (its database, keys "
                        "and other plugins' folders)")
        if user is not None and _within(user, path):
            return f"write access to the user's home {user}"
        return None
    for root in roots:
        for name in SENSITIVE_NAMES:
            secret = f"{root}/{name}"
            if _within(secret, path) or _within(path, secret):
                return f"read access to the corral home's {name} ({secret})"
    return None


def refuse_broad_grants(perms: Permissions, *, plugin_id: str, homes: Sequence[Path],
                        user_home: Path | None = None, settings: str = "settings.toml") -> None:
    """Raise unless ``perms`` asks for none of :func:`broad_grants`.

    Raises:
        PolicyDenied: naming every refused grant and its manifest key, and the
            setting that would allow them.
    """
    found = broad_grants(perms, homes=homes, user_home=user_home)
    if not found:
        return
    listed = "; ".join(f"{grant} ({key}): {why}" for key, grant, why in found)
    table, key = ALLOW_SETTING
    raise PolicyDenied(
        f"plugin {plugin_id} asks for grants refused by default: {listed}; to allow them, "
        f"set [{table}] {key} = true in {settings}",
        plugin_id=plugin_id, grants=[grant for _, grant, _ in found],
        keys=[k for k, _, _ in found],
    )
