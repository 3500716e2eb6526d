"""Generations and ``corral.lock``: the installer's record of what is installed, on disk.

Every install, update, uninstall or rollback writes a new numbered generation
(``<home>/generations/<N>.json``) and then replaces ``<home>/corral.lock``
with the same document: that one ``rename`` is the switch, so a crash before
it leaves the previous generation current and a crash after it leaves the new
one.  Both files are written to a temporary sibling, fsynced, then renamed.
``<home>/install.lock`` (``flock``) lets one operation run at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from corral._disk.files import fsync_dir, write_atomic
from corral._errors import CorralError, InvalidPluginError, NotFoundError

__all__ = [
    "LOCK_NAME",
    "LOCK_VERSION",
    "Generation",
    "Generations",
    "Plugins",
    "diff_plugins",
    "read_lock",
    "sync_filesystem",
]

#: The lock file in a home: the current generation, exactly.
LOCK_NAME: Final = "corral.lock"
#: Format version of ``corral.lock``.
LOCK_VERSION: Final = 1

#: The plugin entries of a generation, by id (see :class:`Generation`).
Plugins = Mapping[str, Mapping[str, Any]]


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


@final
class Generations:
    """The generation files of one home (``generations/<N>.json``) and its ``corral.lock``.

    Callers hold ``install.lock`` while they change anything here.
    """

    def __init__(self, home: Path) -> None:
        self.dir = home / "generations"
        self.lock_path = home / LOCK_NAME

    def current(self) -> Generation | None:
        """The current generation (what ``corral.lock`` says), or ``None``."""
        return read_lock(self.lock_path)

    def get(self, number: int) -> Generation:
        """Generation ``number`` from ``generations/<N>.json``."""
        path = self.dir / f"{number}.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no generation {number} ({path})", generation=number) from None
        except json.JSONDecodeError as exc:
            raise InvalidPluginError(f"{path}: not JSON ({exc})", file=str(path)) from None
        return Generation.from_dict(data, file=str(path))

    def drop_after(self, number: int) -> None:
        """Delete generation files numbered above ``number`` (left by a crash before the switch)."""
        for extra in self.dir.glob("*.json"):
            if extra.stem.isdigit() and int(extra.stem) > number:
                extra.unlink()

    def switch(self, gen: Generation) -> None:
        """Write ``gen``'s file, then make it current by replacing ``corral.lock``.

        On failure the new generation file is removed again and the lock is untouched.
        """
        path = self.dir / f"{gen.number}.json"
        try:
            write_atomic(path, gen.encode())
            write_atomic(self.lock_path, gen.encode(lock=True))  # the switch
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            raise

    def history(self) -> list[dict[str, Any]]:
        """Generations newest first, each with what changed from its parent."""
        cur = self.current()
        if cur is None:
            return []
        out = []
        for n in range(cur.number, 0, -1):
            try:
                gen = self.get(n)
            except NotFoundError:
                continue
            parent: Mapping[str, Mapping[str, Any]] = {}
            if gen.parent is not None:
                with contextlib.suppress(NotFoundError):
                    parent = self.get(gen.parent).plugins
            out.append({
                "generation": gen.number, "created": gen.created, "action": gen.action,
                "parent": gen.parent, "current": gen.number == cur.number,
                "plugins": {k: v["version"] for k, v in sorted(gen.plugins.items())},
                "failed": gen.failed,
                "failed_updates": [dict(x) for x in gen.failed_updates],
                **diff_plugins(parent, gen.plugins),
            })
        return out

    def failed_versions(self) -> dict[tuple[str, str], str]:
        """``(id, version) -> reason`` of every version a generation file says failed."""
        out: dict[tuple[str, str], str] = {}
        for path in self.dir.glob("*.json"):
            if not path.stem.isdigit():
                continue
            with contextlib.suppress(CorralError):
                for x in self.get(int(path.stem)).failed_updates:
                    out[(x.get("id", ""), x.get("version", ""))] = x.get("reason", "")
        return out

    def remember_failure(self, number: int, pairs: Sequence[tuple[str, str]], reason: str,
                         *, failed: bool = False) -> None:
        """Record in ``generations/<number>.json`` versions that failed (and the generation)."""
        with contextlib.suppress(CorralError, OSError):
            gen = self.get(number)
            seen = {(x.get("id"), x.get("version")) for x in gen.failed_updates}
            extra = tuple({"id": p, "version": v, "reason": reason} for p, v in pairs
                          if (p, v) not in seen)
            gen = dataclasses.replace(gen, failed_updates=(*gen.failed_updates, *extra),
                                      failed=reason if failed else gen.failed)
            write_atomic(self.dir / f"{number}.json", gen.encode())

    def prune(self, keep: int) -> list[int]:
        """Delete generation files but the current one and the ``keep`` most recent others.

        Returns the numbers deleted, oldest first.
        """
        cur = self.current()
        current = None if cur is None else cur.number
        others = sorted(int(p.stem) for p in self.dir.glob("*.json")
                        if p.stem.isdigit() and int(p.stem) != current)
        gone = []
        for n in others[:max(0, len(others) - keep)]:
            (self.dir / f"{n}.json").unlink()
            gone.append(n)
        if gone:
            fsync_dir(self.dir)
        return gone

    def used_digests(self) -> set[str]:
        """The store digests the current generation and every generation file refer to."""
        cur = self.current()
        used: set[str] = {str(e["sha256"]) for e in (cur.plugins if cur else {}).values()}
        for path in self.dir.glob("*.json"):
            with contextlib.suppress(CorralError, ValueError):
                used.update(e["sha256"] for e in self.get(int(path.stem)).plugins.values())
        return used


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
