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
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from ._errors import ResourceLimitExceeded

if TYPE_CHECKING:
    import logging

    from ._manifest import Sandbox

__all__ = [
    "DIR_BUDGETS",
    "Budgets",
    "ByteBudget",
    "DirBudget",
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
#: A call that took this long is followed by a measure of the plugin's directories.
SLOW_CALL_S: Final = 0.005
#: Otherwise the directories are measured after a call at most this often.
CHECK_EVERY_S: Final = 0.25


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


def tree_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes under ``path``: the larger of size and allocated blocks, per entry, links not followed.

    At least :data:`ENTRY_BYTES` per entry.  A missing ``path`` holds 0.
    """
    total = 0
    stack = [os.fspath(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
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
class DirBudget:
    """Host-side check of one plugin's ``{data}``, ``{tmp}`` and ``{cache}`` totals.

    Measured after a slow call, or at most every :data:`CHECK_EVERY_S` otherwise;
    once over, every call is refused (measuring again first) until it is back under.
    """

    __slots__ = ("caps", "next_check", "over", "paths", "plugin_id")

    def __init__(self, plugin_id: str, paths: Mapping[str, str], sandbox: Sandbox) -> None:
        self.plugin_id = plugin_id
        self.paths = {key: paths[name] for key, name in DIR_BUDGETS}
        self.caps = {key: sandbox.limit(key) * MIB for key, _ in DIR_BUDGETS}
        self.next_check = 0.0
        self.over = False

    def usage(self) -> dict[str, int]:
        """Bytes under each directory, by budget key."""
        return {key: tree_bytes(path) for key, path in self.paths.items()}

    def check(self) -> None:
        """Measure; raise :class:`ResourceLimitExceeded` for the first directory over its cap."""
        self.next_check = time.monotonic() + CHECK_EVERY_S
        for key, name in DIR_BUDGETS:
            used = tree_bytes(self.paths[key])
            if used > self.caps[key]:
                self.over = True
                raise over_budget(self.plugin_id, key, f"{{{name}}}", used, self.caps[key])
        self.over = False

    def before_call(self) -> None:
        """Refuse a call while a directory is over its budget."""
        if self.over:
            self.check()

    def after_call(self, elapsed: float) -> None:
        """Measure after a call of ``elapsed`` seconds if it was slow or the last measure is old."""
        if self.over or elapsed >= SLOW_CALL_S or time.monotonic() >= self.next_check:
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
