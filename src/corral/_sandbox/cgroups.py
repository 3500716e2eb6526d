"""``max-processes`` with the pids cgroup controller, which binds every uid.

``RLIMIT_NPROC`` is ignored for the init namespace's root, and a worker's user
namespace maps to the host's uid: on a host running as root, only a cgroup can
stop a fork bomb before the wall clock does.  So each worker gets a cgroup of
its own with ``pids.max = max-processes``, counting the worker, its threads and
everything it forks.

Layout, under the cgroup this process is in (never changed)::

    <own cgroup>/corral-<host pid>-<fork server pid>/   one per fork server
        <plugin id>-<n>/                                one per worker, pids.max

The fork server (root of every worker) creates the tree.  A worker's cgroup is
made when its spare process is forked, and the spare joins it itself, before it
waits for an assignment (moving a process costs an RCU grace period, which is
too slow for the cold-start path, and the spare pays it in parallel); the
assignment sets ``pids.max`` (a plain write) and, on v1, renames the cgroup
after the plugin, all before any plugin code runs.  When the worker is reaped,
what is left in its cgroup is killed and the cgroup removed; the parent goes
when the fork server exits, and the host removes whatever a killed fork server
left behind.  A fork server forked by the per-home daemon (see
:mod:`.forkserver.daemon`) is named after the daemon (``corral-<daemon pid>-<fork
server pid>``), and the daemon, its parent, removes what a killed one left.  cgroup
v2 is used when its ``pids`` controller is available and delegable here, else the
v1 ``pids`` hierarchy; :func:`detect` finds out once, by reading ``/proc`` and checking access.

For accounting (CPU, memory, I/O of each worker, read by :mod:`.meter`), a worker
also gets a cgroup in each writable v1 hierarchy of ``cpuacct``, ``memory``
and ``blkio`` (same layout, joined by the spare before its pids
cgroup); on v2 its pids cgroup is the one that is measured
(:func:`detect_accounting`, :class:`AccountingCgroups`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "ACCOUNTING_V1",
    "ACCOUNTING_V2",
    "AccountingCgroups",
    "AccountingHierarchies",
    "PidsHierarchy",
    "WorkerCgroups",
    "detect",
    "detect_accounting",
    "join",
    "mount_points",
    "parent_name",
    "remove_accounting_parents",
    "remove_parent",
]

_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_NAME: Final = 64
#: How long removing a cgroup may wait for its processes to be gone.
_REMOVE_SECONDS: Final = 2.0
#: How long a spare forked on demand may take to join its cgroup.
_JOIN_SECONDS: Final = 2.0


@final
@dataclass(frozen=True, slots=True)
class PidsHierarchy:
    """Where this process's pids-controlled cgroup is, as :func:`detect` found it."""

    #: 1 (the v1 ``pids`` hierarchy) or 2 (the unified hierarchy).
    version: int
    #: This process's cgroup directory in that hierarchy: corral's parent goes under it.
    base: str

    def describe(self) -> str:
        return f"cgroup v{self.version} pids controller at {self.base}"


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(mount point, root, fstype, super options)`` of each cgroup mount."""
    out: list[tuple[str, str, str, set[str]]] = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        point = fields[4].replace("\\040", " ")
        out.append((point, fields[3], tail[0], set(tail[2].split(","))))
    return out


def mount_points() -> list[str]:
    """Every cgroup file system mounted here (v1 and v2), and ``/sys/fs/cgroup``.

    What a worker must not write to: its own ``pids.max`` and ``cgroup.procs``
    are there, and root owns them with mode 0644 (no capability needed).
    """
    points = {point for point, _root, _fstype, _opts in _mounts()}
    if os.path.isdir("/sys/fs/cgroup"):
        points.add("/sys/fs/cgroup")
    return sorted(points)


def _own_paths() -> tuple[str | None, str | None]:
    """This process's cgroup path in the unified and in the v1 pids hierarchy."""
    unified: str | None = None
    pids: str | None = None
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            unified = parts[2]
        elif "pids" in parts[1].split(","):
            pids = parts[2]
    return unified, pids


def _join(point: str, root: str, path: str) -> str | None:
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None
        path = path[len(root) :] or "/"
    return os.path.normpath(point + "/" + path.lstrip("/"))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _writable(*paths: str) -> bool:
    return all(os.access(p, os.W_OK) for p in paths)


def _find() -> tuple[PidsHierarchy | None, str]:
    if not os.path.isdir("/proc/self"):
        return None, "no /proc (not Linux?)"
    unified, pids = _own_paths()
    mounts = _mounts()
    why = "no cgroup pids controller is mounted"
    for point, root, fstype, _opts in mounts:
        if fstype != "cgroup2" or unified is None:
            continue
        base = _join(point, root, unified)
        if base is None or not os.path.isdir(base):
            continue
        if "pids" not in _read(os.path.join(base, "cgroup.controllers")).split():
            why = f"cgroup v2 at {point} offers no pids controller here"
            continue
        if not _writable(base, os.path.join(base, "cgroup.subtree_control")):
            why = f"cgroup v2 {base} is not delegated to this user"
            continue
        return PidsHierarchy(2, base), ""
    for point, root, fstype, opts in mounts:
        if fstype != "cgroup" or "pids" not in opts or pids is None:
            continue
        base = _join(point, root, pids)
        if base is None or not os.path.isdir(base):
            continue
        if not _writable(base):
            why = f"cgroup v1 pids {base} is not writable by this user"
            continue
        return PidsHierarchy(1, base), ""
    return None, why


_lock: Final = threading.Lock()
_cached: list[tuple[PidsHierarchy | None, str]] = []


def detect() -> tuple[PidsHierarchy | None, str]:
    """The usable pids hierarchy (or ``None`` and why not), found on first use and cached."""
    with _lock:
        if not _cached:
            _cached.append(_find())
        return _cached[0]


def parent_name(host_pid: int, server_pid: int) -> str:
    """The name of one fork server's parent cgroup."""
    return f"corral-{host_pid}-{server_pid}"


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _procs(path: str) -> list[int]:
    return [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]


def _kill_all(path: str) -> None:
    """SIGKILL every process in the cgroup at ``path`` (the v2 way when there is one)."""
    kill_file = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill_file):
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
            return
    for pid in _procs(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _remove(path: str, reap: Callable[[], None] | None = None) -> bool:
    """Kill what is left in the cgroup at ``path`` and its children, and remove them.

    A cgroup can be removed once its processes have exited (zombies do not count);
    ``reap`` waits for those that are the caller's children.
    """
    if not os.path.isdir(path):
        return True
    ok = True
    with os.scandir(path) as entries:
        children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    for child in children:
        ok = _remove(child, reap) and ok
    deadline = time.monotonic() + _REMOVE_SECONDS
    while True:
        try:
            os.rmdir(path)
            return ok
        except FileNotFoundError:
            return ok
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        _kill_all(path)
        if reap is not None:
            reap()
        time.sleep(0.001)


def _wait_joined(path: str, pid: int) -> None:
    """Wait until process ``pid`` has joined the cgroup at ``path`` (a spare forked just now
    may still be moving); raise if it died or did not come in time.
    """
    # Only that process was given the cgroup, so one task in it means it is there (and
    # pids.current is a counter, where v1's cgroup.procs builds and sorts a pid list).
    current = os.path.join(path, "pids.current")
    deadline = time.monotonic() + _JOIN_SECONDS
    while _read(current).strip() in ("", "0"):
        state = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()[:1]
        if state in ([], ["Z"], ["X"]) or time.monotonic() >= deadline:
            raise OSError(errno.ESRCH, f"process {pid} did not join {path}")
        time.sleep(0.0002)


def join(procs_fd: int) -> None:
    """Move the calling process into the cgroup whose ``cgroup.procs`` is ``procs_fd``."""
    try:
        os.write(procs_fd, b"0")
    finally:
        os.close(procs_fd)


def remove_parent(host_pid: int, server_pid: int) -> None:
    """Remove what a fork server left behind (it was killed before it could); best effort."""
    hierarchy, _why = detect()
    if hierarchy is not None:
        _remove(os.path.join(hierarchy.base, parent_name(host_pid, server_pid)))
    remove_accounting_parents(host_pid, server_pid)


@final
class WorkerCgroups:
    """One fork server's cgroups: a parent, and a child with ``pids.max`` per worker.

    :raises OSError: the parent cannot be created.
    """

    def __init__(self, hierarchy: PidsHierarchy, host_pid: int) -> None:
        self.hierarchy: Final = hierarchy
        self.path: Final = os.path.join(hierarchy.base, parent_name(host_pid, os.getpid()))
        self._count = 0
        if hierarchy.version == 2:
            # pids is a threaded controller: it may be enabled below a cgroup with processes.
            control = os.path.join(hierarchy.base, "cgroup.subtree_control")
            if "pids" not in _read(control).split():
                _write(control, "+pids")
        os.mkdir(self.path, 0o755)
        try:
            if hierarchy.version == 2:
                _write(os.path.join(self.path, "cgroup.subtree_control"), "+pids")
        except BaseException:
            os.rmdir(self.path)
            raise

    def create(self) -> tuple[str, int]:
        """A new worker cgroup, without a limit yet: its path, and its ``cgroup.procs``
        opened for writing (the credentials that count are the opener's), for
        :func:`join` in the process that is to enter it.
        """
        self._count += 1
        path = os.path.join(self.path, f"worker-{self._count}")
        os.mkdir(path, 0o755)
        try:
            fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        except BaseException:
            os.rmdir(path)
            raise
        return path, fd

    @staticmethod
    def assign(path: str, pid: int, plugin_id: str, max_pids: int) -> str:
        """Limit the cgroup at ``path`` for ``plugin_id``'s worker ``pid``; returns its path.

        :raises OSError: ``pid`` is not in it, or the limit cannot be set.
        """
        _wait_joined(path, pid)
        _write(os.path.join(path, "pids.max"), str(max(1, max_pids)))
        parent, name = os.path.split(path)
        named = os.path.join(parent, f"{_SAFE.sub('_', plugin_id)[:_MAX_NAME]}-{name[7:]}")
        try:  # v1 only: a v2 cgroup cannot be renamed, and keeps its number
            os.rename(path, named)
        except OSError:
            return path
        return named

    @staticmethod
    def remove(path: str, reap: Callable[[], None] | None = None) -> bool:
        """Kill what is left in a worker cgroup and remove it; False if it would not go."""
        return _remove(path, reap)

    def close(self, reap: Callable[[], None] | None = None) -> bool:
        """Remove every worker cgroup and the parent."""
        return _remove(self.path, reap)


# -- accounting: the controllers that measure a worker ------------------------------

#: The v1 controllers a worker gets a cgroup in for accounting.  Not ``cpu``: a cgroup of
#: its own there would put all workers under one scheduling group that, under load, gets
#: the CPU of a single task (weights are for quotas to set, deliberately).  Where ``cpu``
#: and ``cpuacct`` share a mount, joining one joins both.
ACCOUNTING_V1: Final = ("cpuacct", "memory", "blkio")
#: The v2 controllers enabled below a worker's parent where delegation allows it
#: (``cpu.stat`` needs no controller, and ``cpu`` would change scheduling, as above).
ACCOUNTING_V2: Final = ("memory", "io")


@final
@dataclass(frozen=True, slots=True)
class AccountingHierarchies:
    """Where per-worker accounting cgroups go, as :func:`detect_accounting` found it.

    On v1, one base directory per hierarchy and the controllers mounted there; on v2,
    the worker's pids cgroup itself measures it (``cpu.stat`` is always there), and
    ``controllers`` lists what could be enabled for it.
    """

    version: int
    #: v1: ``{base directory: controllers mounted there}`` (writable ones only).
    bases: dict[str, tuple[str, ...]]
    #: Every controller accounted for (v1) or available to enable (v2).
    controllers: tuple[str, ...]
    #: What is missing and why ("" when everything is there).
    why: str = ""

    def describe(self) -> str:
        names = ", ".join(self.controllers) or "none"
        text = f"cgroup v{self.version}: {names}"
        return f"{text} ({self.why})" if self.why else text


def _own_v1_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller."""
    out: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for controller in parts[1].split(","):
                out[controller] = parts[2]
    return out


def _find_accounting() -> tuple[AccountingHierarchies | None, str]:
    pids, why = detect()
    if pids is not None and pids.version == 2:
        offered = _read(os.path.join(pids.base, "cgroup.controllers")).split()
        have = tuple(c for c in ACCOUNTING_V2 if c in offered)
        lacking = [c for c in ACCOUNTING_V2 if c not in offered]
        note = f"not offered here: {', '.join(lacking)}" if lacking else ""
        return AccountingHierarchies(2, {}, (*have, "pids"), note), ""
    own = _own_v1_paths()
    bases: dict[str, list[str]] = {}
    missing: list[str] = []
    for controller in ACCOUNTING_V1:
        found = False
        for point, root, fstype, opts in _mounts():
            if fstype != "cgroup" or controller not in opts or controller not in own:
                continue
            base = _join(point, root, own[controller])
            if base is None or not os.path.isdir(base):
                continue
            if not _writable(base):
                missing.append(f"{controller} (not writable)")
            else:
                bases.setdefault(base, []).append(controller)
            found = True
            break
        if not found:
            missing.append(f"{controller} (not mounted)")
    if not bases:
        return None, "no cgroup accounting controller is usable: " + ", ".join(missing or [why])
    controllers = tuple(c for names in bases.values() for c in names)
    if pids is not None:
        controllers = (*controllers, "pids")
    note = f"missing: {', '.join(missing)}" if missing else ""
    return AccountingHierarchies(1, {b: tuple(c) for b, c in bases.items()}, controllers,
                                 note), ""


_accounting: list[tuple[AccountingHierarchies | None, str]] = []


def detect_accounting() -> tuple[AccountingHierarchies | None, str]:
    """The usable accounting hierarchies (or ``None`` and why not), found once and cached."""
    with _lock:
        cached = list(_accounting)
    if not cached:
        found = _find_accounting()
        with _lock:
            if not _accounting:
                _accounting.append(found)
            cached = list(_accounting)
    return cached[0]


@final
class AccountingCgroups:
    """One fork server's accounting cgroups (v1): a parent per hierarchy, a child per worker.

    On v2 there is nothing to make (the pids cgroup is the worker's cgroup); the
    constructor only enables what it can of ``cpu``, ``memory`` and ``io`` below it.

    :raises OSError: a parent cannot be created.
    """

    def __init__(self, hierarchies: AccountingHierarchies, host_pid: int,
                 pids_parent: str | None = None) -> None:
        self.hierarchies: Final = hierarchies
        name = parent_name(host_pid, os.getpid())
        self.parents: Final = [os.path.join(base, name) for base in hierarchies.bases]
        self._count = 0
        if hierarchies.version == 2:
            if pids_parent is not None:  # best effort: domain controllers need delegation
                base = os.path.dirname(pids_parent)
                for where in (base, pids_parent):
                    for controller in hierarchies.controllers:
                        with contextlib.suppress(OSError):
                            _write(os.path.join(where, "cgroup.subtree_control"),
                                   f"+{controller}")
            return
        made: list[str] = []
        try:
            for parent in self.parents:
                os.mkdir(parent, 0o755)
                made.append(parent)
        except BaseException:
            for parent in made:
                with contextlib.suppress(OSError):
                    os.rmdir(parent)
            raise

    def create(self) -> tuple[dict[str, str], list[int]]:
        """A new worker's accounting cgroups: ``{controller: path}`` and their
        ``cgroup.procs`` opened for writing, for :func:`join` in the spare.
        """
        self._count += 1
        paths: dict[str, str] = {}
        fds: list[int] = []
        try:
            for parent, controllers in zip(self.parents, self.hierarchies.bases.values(),
                                           strict=True):
                path = os.path.join(parent, f"worker-{self._count}")
                os.mkdir(path, 0o755)
                for controller in controllers:
                    paths[controller] = path
                fds.append(os.open(os.path.join(path, "cgroup.procs"),
                                   os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            self.remove(paths)
            raise
        return paths, fds

    @staticmethod
    def remove(paths: dict[str, str], reap: Callable[[], None] | None = None) -> None:
        """Kill what is left in a worker's accounting cgroups and remove them."""
        for path in sorted(set(paths.values())):
            _remove(path, reap)

    def close(self, reap: Callable[[], None] | None = None) -> None:
        """Remove every worker's accounting cgroup and the parents."""
        for parent in self.parents:
            _remove(parent, reap)


def remove_accounting_parents(host_pid: int, server_pid: int) -> None:
    """Remove the accounting cgroups a killed fork server left; best effort."""
    hierarchies, _why = detect_accounting()
    if hierarchies is not None:
        for base in hierarchies.bases:
            _remove(os.path.join(base, parent_name(host_pid, server_pid)))
