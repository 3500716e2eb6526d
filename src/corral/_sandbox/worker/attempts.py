"""What the plugin last tried to open, list, connect to or run, seen by an audit hook.

When a ``PermissionError`` escapes an export, :meth:`Attempts.denied` matches it
to that attempt and names the grant the plugin lacked (``fs-read:/etc/hostname``),
so a sandbox refusal reads as ``permission_denied`` instead of a raw traceback.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import sys
from typing import Any, Final, final

from corral._sandbox.denials import Grants

__all__ = ["Attempts"]

#: Recent attempts kept: a refused one is the last or close to it.
_KEEP: Final = 32
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_INET: Final = frozenset({socket.AF_INET, socket.AF_INET6})
#: Audit events that change a path: the grant they need is ``fs-write``.
_WRITES: Final = frozenset({"os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate",
                            "os.chmod", "os.chown", "os.symlink", "os.link", "os.utime"})
_READS: Final = frozenset({"os.listdir", "os.scandir"})
_SPAWNS: Final = frozenset({"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"})


def _name(raw: object) -> str | None:
    """A path or program as text; None for a descriptor or anything else."""
    if isinstance(raw, str | bytes | os.PathLike):
        try:
            text = os.fsdecode(raw)
        except (TypeError, ValueError):
            return None
        return text or None
    return None


def _writes(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _address(address: object) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and isinstance(port, int):
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


@final
class Attempts:
    """The worker's audit hook and the attempts it saw during the current call.

    Each attempt is ``(raw, permission)``: what the plugin named (to match an
    error's ``filename``; None for a socket) and the grant it needs.
    """

    def __init__(self) -> None:
        self._seen: collections.deque[tuple[str | None, str]] = collections.deque(maxlen=_KEEP)
        self._resolved: tuple[str, int] | None = None  # the last getaddrinfo, for a socket()

    def install(self) -> None:
        """Start watching (an audit hook stays for the life of the process)."""
        sys.addaudithook(self.seen)

    def clear(self) -> None:
        self._seen.clear()
        self._resolved = None

    def seen(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: note an attempt the sandbox might refuse."""
        with contextlib.suppress(Exception):  # watching must never break the plugin
            self._record(event, args)

    def _record(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            raw = _name(args[0])
            if raw is not None:
                kind = "fs-write" if _writes(args[1], args[2]) else "fs-read"
                self._add(raw, kind, raw)
        elif event in _READS:
            raw = _name(args[0]) if args else None
            self._add(raw, "fs-read", raw or ".")
        elif event in _WRITES:
            for arg in args[:2] if event in ("os.rename", "os.symlink", "os.link") else args[:1]:
                raw = _name(arg)
                if raw is not None:
                    self._add(raw, "fs-write", raw)
        elif event in _SPAWNS:
            program = _name(args[0])
            if program is None and len(args) > 1 and isinstance(args[1], list | tuple) and args[1]:
                program = _name(args[1][0])
            if program is not None:
                self._seen.append((program, f"spawn:{program}"))
        elif event == "socket.getaddrinfo":
            host, port = args[0], args[1]
            if isinstance(host, bytes):
                host = host.decode("ascii", "replace")
            if isinstance(host, str) and isinstance(port, int | str):
                try:
                    self._resolved = (host, int(port))
                except ValueError:
                    self._resolved = None
        elif event == "socket.__new__":
            if args[1] in _INET:
                target = _address(self._resolved) if self._resolved else None
                self._seen.append((None, f"net-connect:{target or '?'}"))
        elif event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[-1]
            if getattr(sock, "family", None) in _INET:
                target = _address(address)
                if target is not None:
                    self._seen.append((None, f"net-connect:{target}"))

    def _add(self, raw: str | None, kind: str, path: str) -> None:
        self._seen.append((raw, f"{kind}:{os.path.abspath(path)}"))

    def denied(self, exc: PermissionError, grants: Grants) -> str | None:
        """The grant a refused attempt needed, if ``exc`` is the refusal of one and the
        grants do not allow it (otherwise it is the plugin's own error, a file mode...)."""
        names = {_name(exc.filename), _name(exc.filename2)} - {None}
        for raw, permission in reversed(self._seen):
            if names and raw not in names:
                continue
            if not names and raw is not None:
                continue
            if permission.endswith(":?") or grants.allows(permission):
                return None
            return permission
        return None
