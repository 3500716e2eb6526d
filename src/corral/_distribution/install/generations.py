"""Generations and ``corral.lock``: the installer's record of what is installed, on disk.

Every install, update, uninstall or rollback writes a new numbered generation
(``<home>/generations/<N>.json``) and then replaces ``<home>/corral.lock``
with the same document: that one ``rename`` is the switch, so a crash before
it leaves the previous generation current and a crash after it leaves the new
one.  Both files are written to a temporary sibling, fsynced, then renamed.
``<home>/install.lock`` (``flock``) lets one operation run at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from corral._errors import InvalidPluginError

__all__ = [
    "LOCK_NAME",
    "LOCK_VERSION",
    "Generation",
    "diff_plugins",
    "read_lock",
    "sync_filesystem",
]

#: The lock file in a home: the current generation, exactly.
LOCK_NAME: Final = "corral.lock"
#: Format version of ``corral.lock``.
LOCK_VERSION: Final = 1


@dataclass(frozen=True)
class Generation:
    """One numbered set of installed plugins.

    ``plugins`` maps ids to ``{"version", "sha256", "source", "signature",
    "requested", "spec"}`` and ``"publisher"`` when the source names one:
    ``requested`` says the user asked for it (else it is there as a
    dependency), ``spec`` is the range they asked for.  ``source``,
    ``signature.keyid`` and ``publisher`` pin where the plugin may come from
    on ``update`` (see :meth:`corral._distribution.install.installer.Installer.update`).
    ``failed`` is set on a generation whose health check failed (it was rolled
    back automatically); ``failed_updates`` lists ``{"id", "version",
    "reason"}`` of versions that failed their self-test or start-up, so that
    ``update`` does not try them again.
    """

    number: int
    created: str
    action: str
    parent: int | None
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    failed: str | None = None
    failed_updates: tuple[Mapping[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``generations/<N>.json`` (``corral.lock`` adds its version)."""
        return {
            "generation": self.number,
            "created": self.created,
            "action": self.action,
            "parent": self.parent,
            "plugins": {k: dict(v) for k, v in sorted(self.plugins.items())},
            **({"failed": self.failed} if self.failed is not None else {}),
            **({"failed-updates": [dict(x) for x in self.failed_updates]}
               if self.failed_updates else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str) -> Generation:
        """Read a generation or lock document; raises naming ``file`` when it is malformed."""
        try:
            plugins = data["plugins"]
            for pid, entry in plugins.items():
                for key in ("version", "sha256"):
                    if not isinstance(entry.get(key), str):
                        raise InvalidPluginError(
                            f"{file}: plugins.{pid}.{key}: expected a string",
                            file=file,
                            key=f"plugins.{pid}.{key}",
                        )
            return cls(
                number=int(data["generation"]),
                created=str(data.get("created", "")),
                action=str(data.get("action", "")),
                parent=None if data.get("parent") is None else int(data["parent"]),
                plugins={str(k): dict(v) for k, v in plugins.items()},
                failed=None if data.get("failed") is None else str(data["failed"]),
                failed_updates=tuple(
                    {str(k): str(v) for k, v in x.items()}
                    for x in data.get("failed-updates", ())
                ),
            )
        except InvalidPluginError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidPluginError(
                f"{file}: not a corral generation ({type(exc).__name__}: {exc})", file=file
            ) from None

    def encode(self, *, lock: bool = False) -> bytes:
        """Canonical bytes: sorted keys, two-space indent, ``lock-version`` for the lock.

        The lock leaves out ``failed`` and ``failed-updates``: they are history.
        """
        doc = self.to_dict()
        if lock:
            doc.pop("failed", None)
            doc.pop("failed-updates", None)
            doc["lock-version"] = LOCK_VERSION
        return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def read_lock(path: Path) -> Generation | None:
    """The generation in ``corral.lock`` (``None`` when there is none yet).

    Raises:
        InvalidPluginError: the file is not a lock file this version understands.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidPluginError(f"{path}: not JSON ({exc})", file=str(path)) from None
    if not isinstance(data, dict):
        raise InvalidPluginError(f"{path}: expected a JSON object", file=str(path))
    version = data.get("lock-version", LOCK_VERSION)
    if version != LOCK_VERSION:
        raise InvalidPluginError(
            f"{path}: lock-version {version!r} is not supported (expected {LOCK_VERSION})",
            file=str(path),
            key="lock-version",
        )
    return Generation.from_dict(data, file=str(path))


def sync_filesystem(path: Path) -> None:
    """Flush everything written on ``path``'s file system (``syncfs``; ``sync`` elsewhere).

    One call before the switch makes every new store tree durable at once,
    far cheaper than an fsync per file.
    """
    import ctypes
    import ctypes.util

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def diff_plugins(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[dict[str, str]]]:
    """What changed between two plugin sets: added, removed, upgraded, downgraded."""
    from packaging.version import InvalidVersion, Version

    out: dict[str, list[dict[str, str]]] = {
        "added": [], "removed": [], "upgraded": [], "downgraded": []
    }
    for pid in sorted(set(old) | set(new)):
        if pid not in old:
            out["added"].append({"id": pid, "version": str(new[pid]["version"])})
        elif pid not in new:
            out["removed"].append({"id": pid, "version": str(old[pid]["version"])})
        elif old[pid]["sha256"] != new[pid]["sha256"]:
            a, b = str(old[pid]["version"]), str(new[pid]["version"])
            try:
                down = Version(b) < Version(a)
            except InvalidVersion:
                down = b < a
            out["downgraded" if down else "upgraded"].append({"id": pid, "from": a, "to": b})
    return out
