"""Hang blame for a worker: its Python stack, dumped on a signal before it is killed.

The worker registers :mod:`faulthandler` for :data:`BLAME_SIGNAL` to write every
thread's stack to its RPC socket; it does so from the signal handler in C, even
when the plugin spins in native code.  The host, about to kill a worker that ran
past its time, sends the signal, reads what arrives (bounded in size and time),
and keeps the call thread's frames in the plugin's folder.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import signal
import socket
import time
from typing import Final

from corral._runtime.blame import plugin_frames

__all__ = ["BLAME_SIGNAL", "capture", "install", "parse"]

BLAME_SIGNAL: Final = signal.SIGUSR2
_MAX_BYTES: Final = 64 * 1024
_WAIT_SECONDS: Final = 0.5
#: After the first bytes, this long without more ends the dump.
_QUIET_SECONDS: Final = 0.05
_FRAME: Final = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')
_THREAD: Final = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+")
#: The worker's call loop: the thread whose stack holds it is the call's.
_CALL_LOOP: Final = os.path.join("_sandbox", "worker", "serve.py")


def install(fd: int) -> None:
    """In the worker: dump every thread's stack to ``fd`` on :data:`BLAME_SIGNAL`."""
    faulthandler.register(BLAME_SIGNAL, file=fd, all_threads=True, chain=False)


def parse(text: str) -> list[tuple[str, int, str]]:
    """The call thread's frames in a faulthandler dump, innermost first."""
    threads: list[list[tuple[str, int, str]]] = []
    current: list[tuple[str, int, str]] | None = None
    for line in text.splitlines():
        if _THREAD.match(line):
            current = []
            threads.append(current)
            continue
        m = _FRAME.match(line)
        if m is not None and current is not None:
            current.append((m.group(1), int(m.group(2)), m.group(3)))
    for frames in threads:
        if any(path.endswith(_CALL_LOOP) for path, _, _ in frames):
            return frames
    return threads[0] if threads else []


def capture(pid: int, sock: socket.socket, plugin_dir: str) -> list[dict[str, object]]:
    """Signal a stuck worker and read its stack from ``sock``; its plugin's frames or []."""
    try:  # a worker that hung up may be reaped already, its pid free for another process
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            return []
    except BlockingIOError:
        pass  # alive, with nothing to say
    except OSError:
        return []
    try:
        os.kill(pid, BLAME_SIGNAL)
    except OSError:
        return []
    data = bytearray()
    deadline = time.monotonic() + _WAIT_SECONDS
    last = 0.0
    buf = bytearray(16384)
    while len(data) < _MAX_BYTES:
        now = time.monotonic()
        if now >= deadline or (data and now - last >= _QUIET_SECONDS):
            break
        try:
            n = sock.recv_into(buf)
        except BlockingIOError:  # a receive slice went by
            continue
        except OSError:
            break
        if not n:
            break
        data += buf[:n]
        last = time.monotonic()
    with contextlib.suppress(Exception):
        return plugin_frames(parse(bytes(data[:_MAX_BYTES]).decode("utf-8", "replace")),
                             plugin_dir)
    return []
