"""What this machine's kernel can enforce for strict isolation, probed once.

:func:`probe` never changes the calling process: Landlock and seccomp are
asked read-only questions, and namespaces are tried in a throwaway forked
child.  Strict isolation refuses to run when :meth:`KernelFeatures.missing_for_strict`
names anything; ``corral doctor`` prints :meth:`KernelFeatures.describe`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from typing import Final, NamedTuple, final

from corral._errors import UnsupportedError
from corral._sandbox.cgroups import detect as detect_pids_cgroup
from corral._sandbox.landlock import landlock_abi
from corral._sandbox.libc import libc, syscall
from corral._sandbox.seccomp import SUPPORTED_MACHINES

__all__ = ["FeatureRow", "KernelFeatures", "probe", "protections", "require_strict"]

_PR_GET_SECCOMP: Final = 21
_SECCOMP_GET_ACTION_AVAIL: Final = 2
_SECCOMP_RET_KILL_PROCESS: Final = 0x80000000
_SECCOMP_RET_ERRNO: Final = 0x00050000
_SYS_SECCOMP: Final = {"x86_64": 317, "aarch64": 277}

_CLONE_NEWNS: Final = 0x00020000
_CLONE_NEWIPC: Final = 0x08000000
_CLONE_NEWUSER: Final = 0x10000000
_CLONE_NEWPID: Final = 0x20000000
_CLONE_NEWNET: Final = 0x40000000

# Bits the probe child reports back, one per namespace it could create.
_USER: Final = 1
_PID: Final = 2
_NET: Final = 4
_MOUNT: Final = 8
_IPC: Final = 16
_CHILD_TRIES: Final = (
    (_CLONE_NEWPID, _PID),
    (_CLONE_NEWNET, _NET),
    (_CLONE_NEWNS, _MOUNT),
    (_CLONE_NEWIPC, _IPC),
)


class FeatureRow(NamedTuple):
    """One line of ``corral doctor``: a feature, whether it works, and what was seen."""

    name: str
    available: bool
    detail: str


@final
@dataclass(frozen=True, slots=True)
class KernelFeatures:
    """The confinement features of the running kernel, as :func:`probe` found them."""

    #: CPU architecture (``os.uname().machine``).
    machine: str
    #: Landlock ABI version; 0 when Landlock is missing or disabled.
    landlock_abi: int
    #: seccomp-bpf filters work and corral has a syscall table for ``machine``.
    seccomp_filter: bool
    #: An unprivileged user namespace can be created and its id maps written.
    user_ns: bool
    #: PID, network, mount and IPC namespaces can be created (inside the user one).
    pid_ns: bool
    net_ns: bool
    mount_ns: bool
    ipc_ns: bool
    #: Why the namespace probe could not run, if it could not.
    probe_error: str = ""
    #: A pids cgroup controller this process can use for ``max-processes``.
    pids_cgroup: bool = False
    #: Where that controller is, or why there is none.
    pids_cgroup_detail: str = ""
    #: The host runs as real uid 0, for which the kernel ignores RLIMIT_NPROC.
    real_root: bool = False

    def describe(self) -> list[FeatureRow]:
        """Rows for ``corral doctor``, one per feature strict isolation uses.

        A ``pids cgroup`` row follows when there is no usable pids controller.
        """
        abi = self.landlock_abi
        if abi:
            parts = ["files"]
            if abi >= 4:
                parts.append("TCP bind/connect")
            if abi >= 6:
                parts.append("signal and abstract-socket scoping")
            landlock = f"ABI {abi}: " + ", ".join(parts)
        else:
            landlock = "missing (needs Linux 5.13+ with landlock in lsm=)"
        if self.seccomp_filter:
            seccomp = f"filters available, syscall table for {self.machine}"
        elif self.machine not in SUPPORTED_MACHINES:
            seccomp = f"no syscall table for {self.machine}"
        else:
            seccomp = "missing (kernel built without CONFIG_SECCOMP_FILTER)"

        def ns(ok: bool) -> str:
            if ok:
                return "can be created"
            return self.probe_error or "cannot be created (disabled or restricted by sysctl/LSM)"

        rows = [
            FeatureRow("landlock", abi > 0, landlock),
            FeatureRow("seccomp-bpf", self.seccomp_filter, seccomp),
            FeatureRow("user namespaces", self.user_ns, ns(self.user_ns)),
            FeatureRow("pid namespaces", self.pid_ns, ns(self.pid_ns)),
            FeatureRow("network namespaces", self.net_ns, ns(self.net_ns)),
            FeatureRow("mount namespaces", self.mount_ns, ns(self.mount_ns)),
            FeatureRow("ipc namespaces", self.ipc_ns, ns(self.ipc_ns)),
        ]
        # Shown when it is missing: what max-processes then falls back to, or why strict
        # refuses (the listing of a machine that has it stays as it was).
        if not self.pids_cgroup:
            rows.append(FeatureRow("pids cgroup", False, self._pids_detail()))
        return rows

    def _pids_detail(self) -> str:
        why = self.pids_cgroup_detail or "no usable pids controller"
        if self.real_root:
            return f"missing ({why}); as root RLIMIT_NPROC does not bind, so max-processes cannot"
        return f"missing ({why}); max-processes uses RLIMIT_NPROC"

    def missing_for_strict(self) -> list[str]:
        """Names of the features strict isolation needs and this kernel lacks.

        The pids cgroup is needed only by a host running as root: elsewhere
        RLIMIT_NPROC enforces ``max-processes``.
        """
        return [
            row.name
            for row in self.describe()
            if not row.available and (row.name != "pids cgroup" or self.real_root)
        ]


def _seccomp_available(machine: str) -> bool:
    if sys.platform != "linux" or machine not in SUPPORTED_MACHINES:
        return False
    if libc().prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return False
    # SECCOMP_GET_ACTION_AVAIL (4.14+) answers without installing anything.
    for action in (_SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO):
        value = ctypes.c_uint32(action)
        ret = syscall(
            _SYS_SECCOMP[machine],
            ctypes.c_uint(_SECCOMP_GET_ACTION_AVAIL),
            ctypes.c_uint(0),
            ctypes.byref(value),
        )
        if ret != 0:
            return False
    return True


def _probe_namespaces() -> tuple[int, str]:
    """Try each namespace in a forked child; return the bits it could create."""
    if sys.platform != "linux":
        return 0, "not Linux"
    uid, gid = os.getuid(), os.getgid()
    maps = (
        ("/proc/self/setgroups", b"deny"),
        ("/proc/self/uid_map", f"0 {uid} 1".encode()),
        ("/proc/self/gid_map", f"0 {gid} 1".encode()),
    )
    unshare = libc().unshare
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return 0, f"probe could not fork: {exc.strerror}"
    if pid == 0:  # pragma: no cover - runs in the child
        bits = 0
        try:
            os.close(read_fd)
            if unshare(_CLONE_NEWUSER) == 0:
                for path, data in maps:
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.write(fd, data)
                    finally:
                        os.close(fd)
                bits |= _USER
            for flag, bit in _CHILD_TRIES:
                if unshare(flag) == 0:
                    bits |= bit
        except BaseException:  # noqa: S110 - the bits so far are the answer
            pass
        finally:
            try:
                os.write(write_fd, bytes([bits]))
            finally:
                os._exit(0)
    os.close(write_fd)
    try:
        answer = os.read(read_fd, 1)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not answer:
        return 0, "the probe child died before answering"
    return answer[0], ""


_lock: Final = threading.Lock()
_cached: list[KernelFeatures] = []


def probe() -> KernelFeatures:
    """The kernel's confinement features, probed on first use and cached."""
    with _lock:
        if not _cached:
            machine = os.uname().machine
            bits, error = _probe_namespaces()
            pids, why = detect_pids_cgroup()
            _cached.append(
                KernelFeatures(
                    machine=machine,
                    landlock_abi=landlock_abi(),
                    seccomp_filter=_seccomp_available(machine),
                    user_ns=bool(bits & _USER),
                    pid_ns=bool(bits & _PID),
                    net_ns=bool(bits & _NET),
                    mount_ns=bool(bits & _MOUNT),
                    ipc_ns=bool(bits & _IPC),
                    probe_error=error,
                    pids_cgroup=pids is not None,
                    pids_cgroup_detail=pids.describe() if pids is not None else why,
                    real_root=sys.platform == "linux" and os.getuid() == 0,
                )
            )
        return _cached[0]


def protections(features: KernelFeatures | None = None) -> list[FeatureRow]:
    """Rows for ``corral doctor``: the worker protections beyond the kernel features.

    - ``orphan reaping``: a strict worker reaps what its plugin's programs leave
      behind as soon as it exits (it is PID 1 of its namespace);
    - ``limited cgroup guard``: a limited worker cannot write the cgroup file
      systems (Landlock) nor ``clone3`` into another cgroup (seccomp), so it
      cannot lift ``max-processes`` or leave its pids cgroup.
    """
    f = features or probe()
    strict_ok = not f.missing_for_strict()
    guards = []
    if f.landlock_abi > 0:
        guards.append("Landlock keeps cgroupfs read-only")
    if f.seccomp_filter:
        guards.append("seccomp refuses clone3")
    if not f.pids_cgroup:
        guard = "no pids cgroup in use (max-processes is RLIMIT_NPROC)"
    elif len(guards) == 2:
        guard = "; ".join(guards)
    else:
        guard = "partial: " + ("; ".join(guards) or "nothing stops a root worker writing cgroupfs")
    return [
        FeatureRow(
            "orphan reaping",
            strict_ok,
            "strict workers reap orphaned processes on SIGCHLD"
            if strict_ok
            else "strict isolation unavailable",
        ),
        FeatureRow("limited cgroup guard", f.pids_cgroup and len(guards) == 2, guard),
    ]


def require_strict() -> KernelFeatures:
    """Return the features, or refuse strict isolation naming what is missing.

    :raises CorralError: with ``missing`` listing each absent feature.
    """
    features = probe()
    missing = features.missing_for_strict()
    if missing:
        raise UnsupportedError(
            "strict isolation cannot run on this kernel: missing "
            + ", ".join(missing)
            + " (see `corral doctor`)",
            missing=missing,
        )
    return features
