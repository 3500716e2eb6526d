"""What a home's fork-server daemons are doing, and stopping them (``corral daemon``).

Light on purpose (no import of the daemon itself): the CLI imports it at start-up.

Reads the status file each daemon (:mod:`.daemon`) keeps beside its socket in
``<home>/run`` (:func:`status_path`) and asks a daemon to retire with SIGTERM: it
stops listening, lets the clients it serves finish, and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["daemons", "status_path", "stop_daemons"]


def status_path(path: str) -> str:
    """The status file of the daemon listening at ``path`` (JSON, rewritten on each change)."""
    return f"{path}.status"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tagged(pid: int, socket_path: str) -> bool:
    """Whether ``pid`` is the daemon of ``socket_path`` (its command line names the socket)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return socket_path.encode() in cmdline.split(b"\0")


def daemons(run_dir: Path) -> list[dict[str, Any]]:
    """Each live daemon of ``run_dir``: pid, socket, clients, idle time left (seconds).

    ``idle_left`` is ``None`` while a client is served (it does not count down).
    """
    out: list[dict[str, Any]] = []
    now = time.time()
    for sock in sorted(run_dir.glob("forkserver-*.sock")):
        try:
            status = json.loads(Path(status_path(str(sock))).read_text())
            pid = int(status["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid) or not _tagged(pid, str(sock)):
            continue
        since = status.get("idle_since")
        idle = float(status.get("idle_timeout") or 0)
        left = None if since is None else round(max(idle - (now - float(since)), 0.0), 1)
        out.append({"pid": pid, "socket": str(sock), "clients": int(status.get("clients", 0)),
                    "idle_timeout": idle, "idle_left": left})
    return out


def stop_daemons(run_dir: Path, *, idle_only: bool = False,
                 timeout: float = 10.0) -> list[dict[str, Any]]:
    """Ask ``run_dir``'s daemons (only those serving no client, with ``idle_only``) to retire.

    Waits up to ``timeout`` seconds for them to exit; returns those asked.
    """
    found = daemons(run_dir)
    settle = time.monotonic() + 1.0  # a client that just left (this very command's host)
    while idle_only and any(d["clients"] for d in found) and time.monotonic() < settle:
        time.sleep(0.02)
        found = daemons(run_dir)
    asked = [d for d in found if not (idle_only and d["clients"])]
    for d in asked:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(d["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for d in asked:
        while _alive(d["pid"]) and _tagged(d["pid"], d["socket"]):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        d["stopped"] = not (_alive(d["pid"]) and _tagged(d["pid"], d["socket"]))
    return asked
