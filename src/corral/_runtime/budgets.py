"""Per-plugin budgets of everything the host holds for a plugin (see docs/budgets.md).

A plugin's ``[sandbox]`` table bounds its directories (``disk-mb``, ``tmp-mb``,
``cache-mb``), its shared state (``state-mb``, ``state-keys``), its durable
events (``events-mb``), what the host queues for its subscriptions in memory
(``queue-mb``) and what one call may log (``log-lines``, ``log-kb``).  Hitting
one fails that operation with :class:`ResourceLimitExceeded` naming the key and
the measure; the host and the other plugins carry on.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._errors import ResourceLimitExceeded

if TYPE_CHECKING:
    import logging

    from corral._model.manifest import Sandbox

__all__ = [
    "DIR_BUDGETS",
    "Budgets",
    "ByteBudget",
    "DirBudget",
    "DirWatch",
    "RateLimitedLog",
    "dir_usage",
    "mib",
    "over_budget",
    "tree_bytes",
    "usage_line",
    "wipe",
]

MIB: Final = 1024 * 1024
#: Directory budgets: key -> path placeholder.
DIR_BUDGETS: Final = (("disk-mb", "data"), ("tmp-mb", "tmp"), ("cache-mb", "cache"))
#: Every directory entry counts at least this much, so a flood of empty files is not free.
ENTRY_BYTES: Final = 512
#: Without inotify, a call that took this long is followed by a measure of its directories,
SLOW_CALL_S: Final = 0.005
#: and otherwise they are measured after a call at most this often.
CHECK_EVERY_S: Final = 0.25
# inotify(7): what makes a directory worth measuring again.
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_IN_MASK: Final = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
                   | _IN_CREATE | _IN_DELETE)
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT_SIZE: Final = 16  # struct inotify_event without its name: int wd; u32 mask, cookie, len


def mib(n: float) -> str:
    """``n`` bytes as ``12.3 MiB``."""
    return f"{n / MIB:.1f} MiB"


def over_budget(plugin_id: str | None, key: str, what: str, used: int, cap: int,
                unit: str = "bytes") -> ResourceLimitExceeded:
    """The error for ``what`` holding ``used`` of a ``cap`` under budget ``key``."""
    if unit == "bytes":
        measure = f"{what} holds {mib(used)} of {mib(cap)}"
    else:
        measure = f"{what} holds {used} {unit} of {cap}"
    return ResourceLimitExceeded(
        f"{plugin_id}: {key}: {measure}" if plugin_id else f"{key}: {measure}",
        plugin_id=plugin_id, limit=key, measured=used, budget=cap, unit=unit,
    )


def tree_bytes(path: str | os.PathLike[str], on_dir: Callable[[str], None] | None = None) -> int:
    """Bytes under ``path``: the larger of size and allocated blocks, per entry, links not followed.

    At least :data:`ENTRY_BYTES` per entry.  A missing ``path`` holds 0.
    ``on_dir`` is called with ``path`` and every directory below it.
    """
    total = 0
    stack = [os.fspath(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        if on_dir is not None:
            on_dir(top)
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += max(st.st_size, st.st_blocks * 512, ENTRY_BYTES)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


def wipe(path: str | os.PathLike[str]) -> None:
    """Delete everything inside directory ``path``, keeping the directory (never follows links)."""
    import shutil  # only disable and unload need it

    try:
        it = os.scandir(path)
    except FileNotFoundError:
        return
    with it:
        for entry in it:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)


@final
class DirWatch:
    """One inotify instance per host: whose directories changed since it was last asked.

    Asking costs one ``read`` that finds nothing when nothing was written, so a
    warm call pays no measure unless the plugin really wrote something.
    """

    def __init__(self) -> None:
        self._owners: dict[int, DirBudget] = {}
        self._lock = threading.Lock()
        self._libc: Any = None
        # only a host that loads a plugin needs these, not `corral list`
        import ctypes
        import fcntl
        import termios

        self._ioctl = fcntl.ioctl
        self._fionread = termios.FIONREAD
        self._pending = bytearray(4)
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self.fd: int = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            self.fd = -1

    def add(self, path: str, owner: DirBudget) -> bool:
        """Watch directory ``path`` for ``owner``; False if inotify cannot (no instance or room)."""
        with self._lock:
            if self.fd < 0:
                return False
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_MASK)
            if wd < 0:
                return False
            self._owners[wd] = owner
            return True

    def poll(self) -> None:
        """Mark the owners of every directory that changed as ``dirty``."""
        try:  # how many bytes of events wait: far cheaper than a read that finds none
            self._ioctl(self.fd, self._fionread, self._pending)
        except (OSError, ValueError):  # closed
            return
        if not any(self._pending):
            return
        with self._lock:
            while True:
                try:
                    buf = os.read(self.fd, 65536)
                except (BlockingIOError, OSError):
                    return
                offset = 0
                while offset + _EVENT_SIZE <= len(buf):
                    wd = int.from_bytes(buf[offset:offset + 4], sys.byteorder, signed=True)
                    mask = int.from_bytes(buf[offset + 4:offset + 8], sys.byteorder)
                    length = int.from_bytes(buf[offset + 12:offset + 16], sys.byteorder)
                    offset += _EVENT_SIZE + length
                    if mask & _IN_Q_OVERFLOW:
                        for each in self._owners.values():
                            each.dirty = True
                    owner = self._owners.get(wd)
                    if owner is not None:
                        owner.dirty = True
                    if mask & _IN_IGNORED:
                        self._owners.pop(wd, None)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


@final
class DirBudget:
    """Host-side check of one plugin's ``{data}``, ``{tmp}`` and ``{cache}`` totals.

    Measured after a call that changed one of them (inotify says which), or, where
    inotify cannot watch, after a slow call or at most every :data:`CHECK_EVERY_S`;
    once over, every call is refused (measuring again first) until it is back under.
    """

    __slots__ = ("_watch_from", "caps", "dirty", "next_check", "over", "paths", "plugin_id",
                 "watch")

    def __init__(self, plugin_id: str, paths: Mapping[str, str], sandbox: Sandbox,
                 watch_from: Callable[[], DirWatch] | None = None) -> None:
        self.plugin_id = plugin_id
        self.paths = {key: paths[name] for key, name in DIR_BUDGETS}
        self.caps = {key: sandbox.limit(key) * MIB for key, _ in DIR_BUDGETS}
        self.next_check = 0.0
        self.over = False
        #: Where the inotify instance comes from, asked at the first measure (not at load:
        #: a one-shot ``corral call`` of an in-process plugin never pays for it).
        self._watch_from = watch_from
        self.watch: DirWatch | None = None
        #: Something may have changed since the last measure (always, until watched).
        self.dirty = True

    def usage(self) -> dict[str, int]:
        """Bytes under each directory, by budget key."""
        return {key: tree_bytes(path) for key, path in self.paths.items()}

    def _watch_dir(self, path: str) -> None:
        if self.watch is not None and not self.watch.add(path, self):
            self.watch = None  # out of inotify watches: measure by the clock instead

    def check(self) -> None:
        """Measure; raise :class:`ResourceLimitExceeded` for the first directory over its cap."""
        self.next_check = time.monotonic() + CHECK_EVERY_S
        if self._watch_from is not None:
            self.watch, self._watch_from = self._watch_from(), None
        self.dirty = False  # before the walk: a change during it marks it again
        on_dir = self._watch_dir if self.watch is not None else None
        for key, name in DIR_BUDGETS:
            used = tree_bytes(self.paths[key], on_dir)
            if used > self.caps[key]:
                self.over = self.dirty = True
                raise over_budget(self.plugin_id, key, f"{{{name}}}", used, self.caps[key])
        self.over = False

    def before_call(self) -> None:
        """Refuse a call while a directory is over its budget."""
        if self.over:
            self.check()

    def after_call(self, elapsed: float) -> None:
        """Measure after a call of ``elapsed`` seconds if its directories may have changed."""
        watch = self.watch
        if watch is not None:
            watch.poll()
            if self.dirty:
                self.check()
        elif self.over or elapsed >= SLOW_CALL_S or time.monotonic() >= self.next_check:
            self.check()


@final
class ByteBudget:
    """A count of bytes held in memory for one plugin, shared by all its queues."""

    __slots__ = ("cap", "lock", "used")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) if that would pass the cap."""
        with self.lock:
            if self.used + n > self.cap:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        """Release ``n`` bytes."""
        with self.lock:
            self.used = max(0, self.used - n)


@final
class Budgets:
    """The limits of every plugin active in this host, consulted by the host's services."""

    def __init__(self) -> None:
        self._limits: dict[str, Sandbox] = {}
        self._queues: dict[str, ByteBudget] = {}
        self._lock = threading.Lock()

    def set(self, plugin_id: str, sandbox: Sandbox) -> None:
        """Apply ``sandbox``'s budgets to ``plugin_id`` from now on."""
        with self._lock:  # a (re)load starts with no queues, so with a fresh count
            self._limits[plugin_id] = sandbox
            self._queues[plugin_id] = ByteBudget(sandbox.queue_mb * MIB)

    def get(self, plugin_id: str | None) -> Sandbox | None:
        """``plugin_id``'s limits, or None for the host and unknown plugins."""
        return self._limits.get(plugin_id) if plugin_id is not None else None

    def queue(self, plugin_id: str | None) -> ByteBudget | None:
        """The in-memory queue budget shared by ``plugin_id``'s subscriptions."""
        return self._queues.get(plugin_id) if plugin_id is not None else None


@final
class RateLimitedLog:
    """Log at most ``burst`` lines per ``window`` seconds; then one summary of what was held back.

    Keeps a flood of dead letters from flooding the host's stderr.
    """

    def __init__(self, logger: logging.Logger, *, burst: int = 10, window: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._start = 0.0
        self._count = 0
        self._held = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: Any) -> None:
        """Log like ``logger.warning`` unless this window's burst is spent."""
        now = time.monotonic()
        with self._lock:
            if now - self._start >= self.window:
                held, self._held = self._held, 0
                self._start, self._count = now, 0
            else:
                held = 0
            self._count += 1
            if self._count > self.burst:
                self._held += 1
                return
        if held:
            self.logger.warning("%d more like this were not logged in the last %.0f s",
                                held, self.window)
        self.logger.warning(msg, *args)


def usage_line(entry: Mapping[str, Any]) -> str:
    """One budget of ``Host.budget_usage`` as text: ``1.2 MiB of 10.0 MiB (12 %)``."""
    cap, used, unit = entry["cap"], entry.get("used"), entry["unit"]
    if used is None:
        return f"{entry['limit']} {'KiB per call' if unit == 'bytes per call' else unit}"
    share = f" ({100 * used / cap:.0f} %)" if cap else ""
    if unit == "bytes":
        return f"{mib(used)} of {mib(cap)}{share}"
    return f"{used} of {cap} {unit}{share}"


def dir_usage(home: Path, plugin_id: str) -> dict[str, int]:
    """Bytes under a plugin's ``{data}``, ``{tmp}`` and ``{cache}``, by budget key."""
    return {key: tree_bytes(home / name / plugin_id) for key, name in DIR_BUDGETS}
