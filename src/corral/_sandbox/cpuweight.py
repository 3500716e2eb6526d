"""CPU weights of sandboxed workers: a noisy plugin gets its share, not its neighbours'.

Each plugin's workers go into one cgroup of the ``cpu`` controller, weighted by
its ``cpu-weight`` quota (``cpu.weight`` on cgroup v2; ``cpu.shares = weight *
1024 / 100`` on v1).  The scheduler then divides a contended CPU between the
plugins by weight, however many processes or threads each one runs.

Layout, under this process's own cgroup of the cpu controller::

    <own cpu cgroup>/corral-cpu-<host pid>/<plugin id>/   cpu.shares or cpu.weight

Moving a process into a cgroup may wait for an RCU grace period (milliseconds),
so workers are moved by a background thread, off the call path; their first
instructions may run unweighted.  Where no cpu controller is writable here (or
cgroup v2 does not delegate it), nothing is weighted and :attr:`CpuWeights.why`
says why.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from typing import Final, final

__all__ = ["CpuWeights", "cpu_cgroup_base", "shares_for"]

_SAFE: Final = re.compile(r"[^a-z0-9_.-]")
_PREFIX: Final = "corral-cpu-"


def shares_for(weight: int) -> int:
    """cgroup v1 ``cpu.shares`` for a v2-scale weight (100 is the default 1024)."""
    return max(2, min(262144, weight * 1024 // 100))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def cpu_cgroup_base() -> tuple[int, str] | tuple[None, str]:
    """``(version, this process's cgroup directory with the cpu controller)``, or
    ``(None, why not)``.
    """
    own_v1: str | None = None
    own_v2: str | None = None
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            own_v1 = parts[2]
    why = "no cgroup cpu controller is mounted"
    for line in _read("/proc/self/mountinfo").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        point, root, fstype = fields[4].replace("\\040", " "), fields[3], tail[0]
        own = own_v1 if fstype == "cgroup" and "cpu" in tail[2].split(",") else \
            own_v2 if fstype == "cgroup2" else None
        if own is None:
            continue
        if root != "/" and not (own == root or own.startswith(root.rstrip("/") + "/")):
            continue
        rel = own[len(root):] if root != "/" else own
        base = os.path.normpath(point + "/" + rel.lstrip("/"))
        if fstype == "cgroup2":
            if "cpu" not in _read(os.path.join(base, "cgroup.controllers")).split():
                why = f"cgroup v2 at {point} offers no cpu controller here"
                continue
            if not os.access(os.path.join(base, "cgroup.subtree_control"), os.W_OK):
                why = f"cgroup v2 {base} is not delegated to this user"
                continue
            return 2, base
        if os.access(base, os.W_OK):
            return 1, base
        why = f"cgroup v1 cpu {base} is not writable by this user"
    return None, why


@final
class CpuWeights:
    """Puts workers into per-plugin weighted cpu cgroups, from a background thread."""

    def __init__(self) -> None:
        version, where = cpu_cgroup_base()
        self.version = version
        #: Why workers are not weighted here (``None`` when they are).
        self.why: str | None = where if version is None else None
        self.path: str | None = None
        self._made: dict[str, tuple[str, int]] = {}
        self._queue: queue.Queue[tuple[str, int, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if version is not None:
            self._sweep(where)
            path = os.path.join(where, f"{_PREFIX}{os.getpid()}")
            try:
                if version == 2:
                    control = os.path.join(where, "cgroup.subtree_control")
                    if "cpu" not in _read(control).split():
                        _write(control, "+cpu")
                os.makedirs(path, 0o755, exist_ok=True)
                if version == 2:
                    _write(os.path.join(path, "cgroup.subtree_control"), "+cpu")
                self.path = path
            except OSError as exc:
                self.why = f"cannot make the cpu cgroup {path}: {exc.strerror or exc}"

    @property
    def active(self) -> bool:
        """Whether workers are weighted here."""
        return self.path is not None

    def place(self, plugin_id: str, pid: int, weight: int) -> None:
        """Move worker ``pid`` of ``plugin_id`` into its cgroup with ``weight`` (soon)."""
        if self.path is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="corral-cpu-weights",
                                                daemon=True)
                self._thread.start()
        self._queue.put((plugin_id, pid, weight))

    def settle(self) -> None:
        """Wait until every worker handed to :meth:`place` so far is in its cgroup."""
        if self._thread is not None:
            self._queue.join()

    def cgroup_of(self, plugin_id: str) -> str | None:
        """The cgroup directory of ``plugin_id``'s workers, once one was placed."""
        made = self._made.get(plugin_id)
        return made[0] if made is not None else None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                with contextlib.suppress(OSError):  # the worker may be gone already
                    self._move(*item)
            finally:
                self._queue.task_done()

    def _move(self, plugin_id: str, pid: int, weight: int) -> None:
        assert self.path is not None
        made = self._made.get(plugin_id)
        if made is None:
            path = os.path.join(self.path, _SAFE.sub("_", plugin_id)[:100] or "_")
            os.makedirs(path, 0o755, exist_ok=True)
            made = (path, -1)
        path, current = made
        if current != weight:
            if self.version == 2:
                _write(os.path.join(path, "cpu.weight"), str(weight))
            else:
                _write(os.path.join(path, "cpu.shares"), str(shares_for(weight)))
        self._made[plugin_id] = (path, weight)
        _write(os.path.join(path, "cgroup.procs"), str(pid))

    def close(self) -> None:
        """Stop the thread and remove the cgroups whose workers are gone (best effort)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None
        if self.path is not None:
            _remove_tree(self.path)

    @staticmethod
    def _sweep(base: str) -> None:
        """Remove what hosts that are gone left behind."""
        with contextlib.suppress(OSError), os.scandir(base) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(_PREFIX) or not name[len(_PREFIX):].isdigit():
                    continue
                if not os.path.exists(f"/proc/{name[len(_PREFIX):]}"):
                    _remove_tree(entry.path)


def _remove_tree(path: str) -> None:
    """rmdir the cgroup at ``path`` and its children; ones still holding processes stay."""
    with contextlib.suppress(OSError):
        with os.scandir(path) as entries:
            children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for child in children:
            with contextlib.suppress(OSError):
                os.rmdir(child)
        os.rmdir(path)
