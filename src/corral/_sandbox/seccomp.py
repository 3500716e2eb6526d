"""A seccomp-bpf filter for strict workers, assembled by hand as classic BPF.

:func:`build_filter` runs once in the parent; :func:`install_filter` applies
the bytes in the forked child.  The filter is a deny list in front of normal
Python (``mmap``, ``futex``, threads, ``fork`` all keep working):

1. A foreign audit architecture, and on x86_64 an x32 syscall number
   (``>= 0x40000000``), kill the process: a Python worker never issues them,
   so they only appear in an attack.
2. Everything else denied fails with ``EPERM`` rather than a kill, so plugin
   code sees an ``OSError`` the worker can report, and tests can judge it:
   - kernel surface: ``bpf``, ``io_uring_*``, ``perf_event_open``,
     ``userfaultfd``, keyrings, modules, ``kexec``, ``reboot``, swap,
     ``acct``, clocks, quotas, ``syslog``, host and domain names;
   - other processes: ``ptrace``, ``process_vm_*``, ``pidfd_getfd``,
     ``process_madvise``, ``kcmp``;
   - mounts and namespaces: ``mount`` and the new mount API, ``umount2``,
     ``pivot_root``, ``chroot``, ``unshare``, ``setns``, file handles,
     ``fanotify_init``, and ``clone`` with any namespace flag;
   - ``setrlimit``, and ``prlimit64`` with a new limit (reading still works);
   - ``socket``/``socketpair`` of any family but ``AF_UNIX`` (raw and packet
     sockets included): network access comes as descriptors from the broker;
   - ``execve`` unless ``allow_exec``, and ``execveat`` always.  With
     ``allow_exec``, Landlock's execute right lets ``execve`` reach only the
     granted programs and their loaders; what it cannot govern is closed
     here: ``execveat`` (``fexecve``: execute a descriptor, whatever its path)
     and ``memfd_create``/``memfd_secret`` (the files live on an internal
     mount Landlock never checks, so ``execve("/proc/self/fd/N")`` of a memfd
     would run any program written into it; see 3.).  Unnamed files on real
     mounts (``O_TMPFILE``, a file in ``/dev/shm``, an unlinked file) keep
     their directory, and Landlock refuses to execute them like any path;
   - ``personality`` other than a query or ``PER_LINUX``;
   - metadata changes by path: ``chmod``, ``chown``, ``utime`` and xattr
     writes, in every variant.  Landlock does not check them, and the
     sandbox's uid owns whatever the host's uid owns, so a plugin could
     otherwise ``chmod u+s`` or ``chmod 000`` any such file it can name.
     The descriptor forms (``fchmod``, ``fchown``, ``futimens``,
     ``fsetxattr``) stay allowed: they need a file Landlock let it open.
     The cost: ``shutil.copy``/``copy2``/``copystat`` and ``os.chmod`` on a
     path fail with ``EPERM`` (``shutil.copyfile`` works);
   - ``ioctl(TIOCSTI)`` and ``ioctl(TIOCLINUX)`` (typing into a terminal).
3. ``clone3`` fails with ``ENOSYS``: its flags live in memory a filter cannot
   read, and glibc then falls back to ``clone``, whose flags it can.  So do
   ``memfd_create`` and ``memfd_secret``, which libraries take for an old
   kernel and answer with a file; Python and the worker never call them.

Syscalls that are allowed without looking at their arguments hit the kernel's
seccomp action cache, so on the hot path the filter costs only the seccomp
entry itself (about 0.1 µs a syscall here).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from dataclasses import dataclass
from typing import Final

from corral._errors import UnsupportedError
from corral._sandbox.libc import libc, prctl, syscall

__all__ = ["SUPPORTED_MACHINES", "build_filter", "build_limited_filter", "install_filter"]

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JSET_K: Final = 0x45
_RET_K: Final = 0x06
_JA: Final = 0x05
_BPF_MAXINSNS: Final = 4096

_RET_KILL_PROCESS: Final = 0x80000000
_RET_ERRNO: Final = 0x00050000
_RET_ALLOW: Final = 0x7FFF0000
_RET_EPERM: Final = _RET_ERRNO | errno.EPERM
_RET_ENOSYS: Final = _RET_ERRNO | errno.ENOSYS

# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little-endian halves).
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4


def _arg_lo(n: int) -> int:
    return 16 + 8 * n


def _arg_hi(n: int) -> int:
    return 16 + 8 * n + 4


_X32_SYSCALL_BIT: Final = 0x40000000
_CLONE_NAMESPACES: Final = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
_AF_UNIX: Final = 1
_PER_LINUX: Final = 0
_PER_QUERY: Final = 0xFFFFFFFF
_TIOCSTI: Final = 0x5412
_TIOCLINUX: Final = 0x541C

_PR_SET_NO_NEW_PRIVS: Final = 38
_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_FILTER_FLAG_TSYNC: Final = 1


@dataclass(frozen=True, slots=True)
class _Arch:
    audit: int
    x32: bool
    sys_seccomp: int
    nr: dict[str, int]


# Syscalls that exist on both architectures, from the generic table (aarch64).
_GENERIC: Final = {
    "lookup_dcookie": 18, "ioctl": 29, "umount2": 39, "mount": 40, "pivot_root": 41,
    "chroot": 51, "vhangup": 58, "quotactl": 60, "acct": 89, "personality": 92,
    "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
    "clock_settime": 112, "syslog": 116, "ptrace": 117, "reboot": 142,
    "sethostname": 161, "setdomainname": 162, "setrlimit": 164, "settimeofday": 170,
    "adjtimex": 171, "socket": 198, "socketpair": 199, "add_key": 217,
    "request_key": 218, "keyctl": 219, "clone": 220, "execve": 221, "swapon": 224,
    "swapoff": 225, "perf_event_open": 241, "prlimit64": 261, "fanotify_init": 262,
    "name_to_handle_at": 264, "open_by_handle_at": 265, "clock_adjtime": 266,
    "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
    "finit_module": 273, "bpf": 280, "execveat": 281, "userfaultfd": 282,
    "memfd_create": 279,
    "kexec_file_load": 294,
    # The unified range (424+) is the same on every architecture.
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
    "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443,
    "memfd_secret": 447, "open_tree_attr": 467,
    # Path-based metadata changes.
    "setxattr": 5, "lsetxattr": 6, "removexattr": 14, "lremovexattr": 15,
    "fchmodat": 53, "fchownat": 54, "utimensat": 88, "fchmodat2": 452,
    "setxattrat": 463, "removexattrat": 466,
}  # fmt: skip

_X86_64: Final = {
    "ioctl": 16, "socket": 41, "socketpair": 53, "clone": 56, "execve": 59,
    "ptrace": 101, "syslog": 103, "uselib": 134, "personality": 135, "vhangup": 153,
    "modify_ldt": 154, "pivot_root": 155, "adjtimex": 159, "setrlimit": 160,
    "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166,
    "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
    "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212,
    "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "fanotify_init": 300,
    "prlimit64": 302, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "memfd_create": 319,
    "chmod": 90, "chown": 92, "lchown": 94, "utime": 132, "setxattr": 188,
    "lsetxattr": 189, "removexattr": 197, "lremovexattr": 198, "utimes": 235,
    "fchownat": 260, "futimesat": 261, "fchmodat": 268, "utimensat": 280,
    **{k: v for k, v in _GENERIC.items() if v >= 424},
}  # fmt: skip

_ARCHES: Final = {
    "x86_64": _Arch(audit=0xC000003E, x32=True, sys_seccomp=317, nr=_X86_64),
    "aarch64": _Arch(audit=0xC00000B7, x32=False, sys_seccomp=277, nr=_GENERIC),
}
#: CPU architectures :func:`build_filter` has syscall tables for.
SUPPORTED_MACHINES: Final = frozenset(_ARCHES)

# Denied with EPERM whatever the arguments.
_DENY: Final = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise",
    "kcmp", "mount", "umount2", "pivot_root", "chroot", "open_tree", "open_tree_attr",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "unshare", "setns", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "perf_event_open", "fanotify_init",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    # Execution beyond Landlock's reach: a descriptor (fexecve), whatever its path.
    "execveat",
    "setrlimit", "quotactl", "quotactl_fd", "lookup_dcookie", "syslog", "vhangup",
    "sethostname", "setdomainname",
    # x86_64 only: port I/O, LDT and the long-gone uselib.
    "iopl", "ioperm", "modify_ldt", "uselib",
    # Metadata by path, which Landlock does not check (see the module docstring).
    "chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "setxattr", "lsetxattr", "removexattr", "lremovexattr", "setxattrat",
    "removexattrat",
)  # fmt: skip

#: Fail with ENOSYS, as if the kernel lacked them: callers fall back to something we allow
#: (glibc from ``clone3`` to ``clone``; libraries from a memfd to a file).
_NO_SUCH_CALL: Final = ("clone3", "memfd_create", "memfd_secret")


class _Program:
    """A tiny classic-BPF assembler with forward labels.

    Conditional jumps reach at most 255 instructions ahead; anything farther
    goes through ``ja`` (an unconditional jump with a 32-bit offset).
    """

    def __init__(self) -> None:
        self._insns: list[tuple[int, int | str, int | str, int | str]] = []
        self._labels: dict[str, int] = {}
        self._fresh = 0

    def new_label(self) -> str:
        self._fresh += 1
        return f"L{self._fresh}"

    def label(self, name: str) -> None:
        self._labels[name] = len(self._insns)

    def load(self, offset: int) -> None:
        self._insns.append((_LD_W_ABS, 0, 0, offset))

    def jump(self, code: int, k: int, jt: int | str, jf: int | str) -> None:
        self._insns.append((code, jt, jf, k))

    def ja(self, target: str) -> None:
        self._insns.append((_JA, 0, 0, target))

    def ret(self, action: int) -> None:
        self._insns.append((_RET_K, 0, 0, action))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self._insns):
            out += struct.pack(
                "=HBBI",
                code,
                self._offset(index, jt, 0xFF),
                self._offset(index, jf, 0xFF),
                self._offset(index, k, 0xFFFFFFFF),
            )
        return bytes(out)

    def _offset(self, index: int, target: int | str, limit: int) -> int:
        if isinstance(target, int):
            return target
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= limit:
            raise AssertionError(f"BPF jump out of range: {offset}")
        return offset


def _machine() -> str:
    machine = os.uname().machine
    if sys.platform != "linux" or machine not in _ARCHES:
        raise UnsupportedError(
            f"seccomp: no syscall table for CPU architecture {machine!r} "
            f"(supported: {', '.join(sorted(_ARCHES))})",
            feature="seccomp-bpf",
        )
    return machine


def build_filter(*, allow_exec: bool) -> bytes:
    """Assemble the strict filter for this CPU architecture.

    The syscall number is dispatched through a binary search tree, so that
    neither the kernel (which replays the filter for every syscall number to
    fill its action cache when the filter is installed) nor a syscall that
    has its arguments checked walks the whole deny list.

    :param allow_exec: let ``execve`` through (a ``spawn`` grant); the program
        then runs under the same filter.  ``execveat`` is refused either way.
    :returns: packed ``struct sock_filter`` instructions for :func:`install_filter`.
    :raises CorralError: the architecture has no syscall table here.
    """
    machine = _machine()
    libc()  # resolved here, in the parent, rather than in every child
    return _assemble(machine, allow_exec=allow_exec)


def _assemble(machine: str, *, allow_exec: bool) -> bytes:
    """The filter for ``machine``, whatever this one is (so tests can check every table)."""
    arch = _ARCHES[machine]
    nr = arch.nr
    p = _Program()
    p.load(_OFF_ARCH)
    p.jump(_JEQ_K, arch.audit, 1, 0)
    p.ret(_RET_KILL_PROCESS)
    p.load(_OFF_NR)
    if arch.x32:
        p.jump(_JGE_K, _X32_SYSCALL_BIT, 0, 1)
        p.ret(_RET_KILL_PROCESS)

    # What each listed syscall gets: a return action, or a label of a block
    # that checks its arguments.
    actions: dict[int, int | str] = {nr[name]: _RET_EPERM for name in _DENY if name in nr}
    if not allow_exec:
        actions[nr["execve"]] = _RET_EPERM
    for name in _NO_SUCH_CALL:
        actions[nr[name]] = _RET_ENOSYS
    blocks = ("ioctl", "clone", "socket", "socketpair", "prlimit64", "utimensat", "personality")
    for name in blocks:
        actions[nr[name]] = f"check_{name}"
    _emit_tree(p, sorted(actions.items()))

    p.label("check_ioctl")
    p.load(_arg_lo(1))
    p.jump(_JEQ_K, _TIOCSTI, 1, 0)
    p.jump(_JEQ_K, _TIOCLINUX, 0, 1)
    p.ret(_RET_EPERM)
    p.ret(_RET_ALLOW)

    p.label("check_clone")
    p.load(_arg_lo(0))
    p.jump(_JSET_K, _CLONE_NAMESPACES, 0, 1)
    p.ret(_RET_EPERM)
    p.ret(_RET_ALLOW)

    for name in ("socket", "socketpair"):
        p.label(f"check_{name}")
        p.load(_arg_lo(0))
        p.jump(_JEQ_K, _AF_UNIX, 1, 0)
        p.ret(_RET_EPERM)
        p.ret(_RET_ALLOW)

    # prlimit64's new limit and utimensat's path must be NULL pointers (with
    # a NULL path, utimensat is futimens() on a file already open).
    for name, arg in (("prlimit64", 2), ("utimensat", 1)):
        p.label(f"check_{name}")
        p.load(_arg_lo(arg))
        p.jump(_JEQ_K, 0, 0, 2)
        p.load(_arg_hi(arg))
        p.jump(_JEQ_K, 0, 1, 0)
        p.ret(_RET_EPERM)
        p.ret(_RET_ALLOW)

    p.label("check_personality")
    p.load(_arg_lo(0))
    p.jump(_JEQ_K, _PER_QUERY, 1, 0)
    p.jump(_JEQ_K, _PER_LINUX, 0, 1)
    p.ret(_RET_ALLOW)
    p.ret(_RET_EPERM)

    prog = p.assemble()
    assert len(prog) // 8 <= _BPF_MAXINSNS
    return prog


def build_limited_filter() -> bytes:
    """The one-rule filter of a ``limited`` worker: ``clone3`` fails with ``ENOSYS``.

    ``clone3(CLONE_INTO_CGROUP)`` checks only the file mode of the target's
    ``cgroup.procs``, which Landlock does not see: a worker of a root host (or
    of a user owning a delegated cgroup v2 tree) could start a child outside
    its pids cgroup.  glibc falls back to ``clone``, which has no such flag.
    ``clone3`` is number 435 in every table (the 32-bit compat ones too), and
    ``0x40000000 | 435`` in x32; nothing else is touched, so 32-bit programs a
    limited plugin spawns still run.

    :raises CorralError: the architecture has no syscall table here.
    """
    arch = _ARCHES[_machine()]
    clone3 = arch.nr["clone3"]
    p = _Program()
    p.load(_OFF_NR)
    p.jump(_JEQ_K, clone3, 0, 1)
    p.ret(_RET_ENOSYS)
    if arch.x32:
        p.jump(_JEQ_K, _X32_SYSCALL_BIT | clone3, 0, 1)
        p.ret(_RET_ENOSYS)
    p.ret(_RET_ALLOW)
    return p.assemble()


def _emit_tree(p: _Program, entries: list[tuple[int, int | str]]) -> None:
    """Dispatch on the syscall number in the accumulator; unlisted numbers are allowed."""
    if len(entries) <= 4:
        for number, action in entries:
            p.jump(_JEQ_K, number, 0, 1)
            if isinstance(action, str):
                p.ja(action)
            else:
                p.ret(action)
        p.ret(_RET_ALLOW)
        return
    middle = len(entries) // 2
    upper = p.new_label()
    p.jump(_JGE_K, entries[middle][0], 0, 1)
    p.ja(upper)
    _emit_tree(p, entries[:middle])
    p.label(upper)
    _emit_tree(p, entries[middle:])


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install_filter(prog: bytes) -> None:
    """Apply a filter from :func:`build_filter` to every thread of the calling process.

    Sets ``no_new_privs`` first (required without ``CAP_SYS_ADMIN``, and it
    keeps an exec'd program from shedding the filter).  Irreversible: call it
    only in the forked worker.

    :raises ValueError: ``prog`` is not a whole, non-empty BPF program.
    :raises CorralError: the kernel refused the filter or could not sync threads.
    """
    count, rest = divmod(len(prog), 8)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise ValueError(f"not a classic BPF program: {len(prog)} bytes")
    arch = _ARCHES[_machine()]
    if prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
        err = ctypes.get_errno()
        raise UnsupportedError(
            f"seccomp: prctl(PR_SET_NO_NEW_PRIVS) failed: {errno.errorcode.get(err, err)}",
            feature="seccomp-bpf",
        )
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    ret = int(
        syscall(
            arch.sys_seccomp,
            ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
            ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC),
            ctypes.byref(fprog),
        )
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise UnsupportedError(
            f"seccomp: installing the filter failed: {errno.errorcode.get(err, err)}",
            feature="seccomp-bpf",
            errno=err,
        )
    if ret > 0:
        raise UnsupportedError(
            f"seccomp: thread {ret} could not be synchronised to the filter",
            feature="seccomp-bpf",
        )
