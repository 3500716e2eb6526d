"""Thin wrappers over the Linux process-confinement syscalls the worker needs.

Python 3.11 has no ``os.unshare``; these call libc through ctypes.  Each raises
``OSError`` with the kernel's errno on failure.  They are called only in forked
children (and ``set_child_subreaper`` in the fork server), never in the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Final

__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "STRICT_NAMESPACES",
    "build_socket_filter",
    "capabilities_dropped",
    "close_fds_from",
    "drop_capabilities",
    "remount_noexec",
    "set_child_subreaper",
    "set_no_new_privs",
    "set_pdeathsig",
    "unshare",
    "write_id_maps",
]

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
#: The namespaces a strict worker gets: user, PID, network, mount and IPC.
STRICT_NAMESPACES: Final = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC

_PR_SET_PDEATHSIG: Final = 1
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_SYS_CAPSET: Final = 126  # x86_64
_SYS_CLOSE_RANGE: Final = 436

_libc: Final = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        f"prctl({option})",
    )


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


_MS_RDONLY: Final = 0x1
_MS_NOSUID: Final = 0x2
_MS_NODEV: Final = 0x4
_MS_NOEXEC: Final = 0x8
_MS_REMOUNT: Final = 0x20
_MS_NOATIME: Final = 0x400
_MS_NODIRATIME: Final = 0x800
_MS_BIND: Final = 0x1000
_MS_RELATIME: Final = 0x200000
#: statvfs ``f_flag`` bits and the mount flags they stand for (a remount in a user
#: namespace must keep the ones the parent namespace set, or it fails with EPERM).
_KEPT_FLAGS: Final = (
    (os.ST_RDONLY, _MS_RDONLY), (os.ST_NOSUID, _MS_NOSUID), (os.ST_NODEV, _MS_NODEV),
    (os.ST_NOATIME, _MS_NOATIME), (os.ST_NODIRATIME, _MS_NODIRATIME),
    (os.ST_RELATIME, _MS_RELATIME),
)  # fmt: skip


def remount_noexec(path: str) -> None:
    """Bind ``path`` onto itself with ``noexec`` (also ``nosuid``), in this mount namespace.

    Nothing under it can then be executed or mapped executable, not even by a
    loader run directly (``ld.so ./payload``), which Landlock cannot see: it
    governs ``execve`` only, not ``mmap(PROT_EXEC)``.
    """
    raw = os.fsencode(path)
    _check(_libc.mount(raw, raw, None, ctypes.c_ulong(_MS_BIND), None), f"bind {path}")
    flags = _MS_BIND | _MS_REMOUNT | _MS_NOEXEC | _MS_NOSUID
    have = os.statvfs(path).f_flag
    for st, ms in _KEPT_FLAGS:
        if have & st:
            flags |= ms
    _check(_libc.mount(None, raw, None, ctypes.c_ulong(flags), None), f"remount {path}")


def write_id_maps(uid: int, gid: int) -> None:
    """Map ``uid``/``gid`` to themselves in a fresh user namespace; deny ``setgroups``."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def set_no_new_privs() -> None:
    """Forbid gaining privileges through exec (setuid bits, file capabilities)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def set_child_subreaper() -> None:
    """Adopt orphaned descendants so that they can be reaped here."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_pdeathsig(sig: int) -> None:
    """Get ``sig`` when the parent dies."""
    _prctl(_PR_SET_PDEATHSIG, sig)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


class _Dropped:
    """Whether this process already dropped its capabilities (forks inherit the answer)."""

    done = False


def capabilities_dropped() -> bool:
    """Whether :func:`drop_capabilities` already ran in this process."""
    return _Dropped.done


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable capability sets."""
    for cap in range(64):
        try:
            _prctl(_PR_CAPBSET_DROP, cap)
        except OSError:
            break  # EINVAL past the last capability; EPERM if already unable
    with contextlib.suppress(OSError):
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")
    _Dropped.done = True


def close_fds_from(first: int) -> None:
    """Close every descriptor numbered ``first`` or above."""
    try:
        _check(
            _libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), 0),
            "close_range",
        )
    except OSError:
        os.closerange(first, os.sysconf("SC_OPEN_MAX"))


# -- a second seccomp layer: pathname unix sockets -------------------------------------
#
# Landlock only governs connecting to pathname unix sockets from ABI 9 on, and the
# network namespace does not cover them, so a strict worker could reach any socket
# file it can name (a container runtime's, a desktop bus, /dev/log).  A worker needs
# none: its RPC socket is connected before it starts, and TCP connections arrive as
# connected descriptors.  This filter, stacked on the main one, refuses ``connect``,
# ``sendmsg``/``sendmmsg`` and ``sendto`` with an address (``send`` passes NULL).

_BPF_LD_W_ABS: Final = 0x20
_BPF_JEQ_K: Final = 0x15
_BPF_RET_K: Final = 0x06
_SECCOMP_RET_ALLOW: Final = 0x7FFF0000
_SECCOMP_RET_EACCES: Final = 0x00050000 | 13
#: (connect, sendto, sendmsg, sendmmsg) per machine.
_SOCKET_SYSCALLS: Final = {"x86_64": (42, 44, 46, 307), "aarch64": (203, 206, 211, 269)}


def build_socket_filter(machine: str | None = None) -> bytes:
    """The classic-BPF program described above, for ``machine`` (default: this one).

    Empty for a machine whose syscall numbers are not known here.
    """
    import platform
    import struct

    numbers = _SOCKET_SYSCALLS.get(machine or platform.machine())
    if numbers is None:
        return b""  # an unknown machine: strict refuses to start without this layer
    connect, sendto, sendmsg, sendmmsg = numbers
    insns = [
        (_BPF_LD_W_ABS, 0, 0, 0),  # 0: the syscall number
        (_BPF_JEQ_K, 8, 0, connect),  # 1: -> deny
        (_BPF_JEQ_K, 7, 0, sendmsg),  # 2: -> deny
        (_BPF_JEQ_K, 6, 0, sendmmsg),  # 3: -> deny
        (_BPF_JEQ_K, 0, 4, sendto),  # 4: -> 5, else allow
        (_BPF_LD_W_ABS, 0, 0, 48),  # 5: args[4] (dest_addr), low word
        (_BPF_JEQ_K, 0, 3, 0),  # 6: -> 7, else deny
        (_BPF_LD_W_ABS, 0, 0, 52),  # 7: args[4], high word
        (_BPF_JEQ_K, 0, 1, 0),  # 8: -> allow, else deny
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),  # 9: allow
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_EACCES),  # 10: deny
    ]
    return b"".join(struct.pack("<HBBI", *insn) for insn in insns)
