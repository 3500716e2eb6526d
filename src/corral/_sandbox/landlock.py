"""Landlock: the file, TCP and scoping rules of a strict worker, via raw syscalls.

The parent builds one ruleset per plugin with :func:`build_ruleset` (it opens
the granted paths, so it runs where they are visible) and the forked child
enforces it with :func:`restrict_self`.  Everything the running kernel's ABI
can restrict is restricted; a right is allowed only beneath a granted path:

- ABI 1: file and directory access; ABI 2: ``REFER`` (cross-directory link
  and rename); ABI 3: ``TRUNCATE``; ABI 5: ``IOCTL_DEV``.
- ABI 4: TCP ``bind`` (always denied) and ``connect`` (only granted ports).
- ABI 6: signals and abstract unix sockets scoped to the sandbox itself.

Writable paths get every right except executing files and making device
nodes: what a plugin writes it cannot run (``{data}`` is not a second code
directory), and a device node made there would reach the host's hardware.

Landlock does not cover metadata (``chmod``, ``chown``, ``utime``, xattrs) nor
connecting to pathname unix sockets; the namespace layer has to.
"""

from __future__ import annotations

import ctypes
import functools
import os
import site
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

from corral._errors import UnsupportedError
from corral._sandbox.libc import prctl, syscall

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ACCESS_FS_READ",
    "build_ruleset",
    "handled_access_fs",
    "interpreter_read_paths",
    "landlock_abi",
    "paths_outside",
    "restrict_self",
]

# Syscall numbers come from the unified table: the same on x86_64 and aarch64.
_SYS_CREATE_RULESET: Final = 444
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446
_SUPPORTED_MACHINES: Final = frozenset({"x86_64", "aarch64"})

_CREATE_RULESET_VERSION: Final = 1 << 0
_RULE_PATH_BENEATH: Final = 1
_RULE_NET_PORT: Final = 2
_PR_SET_NO_NEW_PRIVS: Final = 38

_FS_EXECUTE: Final = 1 << 0
_FS_WRITE_FILE: Final = 1 << 1
_FS_READ_FILE: Final = 1 << 2
_FS_READ_DIR: Final = 1 << 3
_FS_MAKE_CHAR: Final = 1 << 6
_FS_MAKE_BLOCK: Final = 1 << 11
_FS_TRUNCATE: Final = 1 << 14
_FS_IOCTL_DEV: Final = 1 << 15

#: Rights granted beneath a read-only path: read files, list directories, execute.
ACCESS_FS_READ: Final = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
#: Rights withheld beneath a writable path (see the module docstring).
_FS_NOT_FOR_WRITE: Final = _FS_EXECUTE | _FS_MAKE_CHAR | _FS_MAKE_BLOCK
#: The only rights the kernel accepts in a rule on a non-directory.
_FS_FILE_RIGHTS: Final = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV

_NET_BIND_TCP: Final = 1 << 0
_NET_CONNECT_TCP: Final = 1 << 1

_SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0
_SCOPE_SIGNAL: Final = 1 << 1


class _RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr`` (ABI 6 layout; older kernels accept the zero tail)."""

    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr``, packed in the kernel header."""

    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    """``struct landlock_net_port_attr``."""

    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


def _fail(what: str, err: int) -> UnsupportedError:
    return UnsupportedError(
        f"landlock: {what} failed: {os.strerror(err)}", feature="landlock", errno=err
    )


@functools.cache
def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel, or 0 when it has none.

    0 also covers a kernel built with Landlock but booted without it in ``lsm=``,
    and a CPU architecture whose syscall numbers this module does not know.
    """
    if sys.platform != "linux" or os.uname().machine not in _SUPPORTED_MACHINES:
        return 0
    abi = syscall(
        _SYS_CREATE_RULESET,
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
    )
    return max(int(abi), 0)


def handled_access_fs(abi: int) -> int:
    """Every file-system right that a kernel of Landlock ABI ``abi`` can restrict."""
    if abi <= 0:
        return 0
    top = 13  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        top = 14  # REFER
    if abi >= 3:
        top = 15  # TRUNCATE
    if abi >= 5:
        top = 16  # IOCTL_DEV
    return (1 << top) - 1


def _require_abi() -> int:
    abi = landlock_abi()
    if abi < 1:
        raise UnsupportedError(
            "landlock is not available on this kernel (needs Linux 5.13+ with "
            "landlock in the lsm= boot list); strict isolation cannot run",
            feature="landlock",
        )
    return abi


def build_ruleset(
    read_paths: Iterable[str | os.PathLike[str]],
    write_paths: Iterable[str | os.PathLike[str]],
    connect_ports: Iterable[int] = (),
    exec_paths: Iterable[str | os.PathLike[str]] | None = None,
) -> int:
    """Build a ruleset in the calling (parent) process and return its descriptor.

    The descriptor is close-on-exec and inherited by forked children, which
    pass it to :func:`restrict_self`; the caller closes it when done.  A granted
    path that does not exist is skipped: it grants nothing, which is stricter.

    :param read_paths: files and directories readable (and executable) beneath.
    :param write_paths: files and directories with every right beneath but
        executing and making device nodes.
    :param connect_ports: TCP ports ``connect`` may reach (ABI 4+); ``bind`` is
        always denied.
    :param exec_paths: when given, the only files that may be executed (read
        paths then lose the execute right): a spawn grant runs exactly its programs.
    :raises CorralError: the kernel has no Landlock, or a rule was refused.
    :raises ValueError: a port outside 0..65535.
    """
    abi = _require_abi()
    ports = sorted(set(connect_ports))
    for port in ports:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"TCP port out of range: {port}")
    fs_all = handled_access_fs(abi)
    attr = _RulesetAttr(
        handled_access_fs=fs_all,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(_SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET) if abi >= 6 else 0,
    )
    fd = int(
        syscall(
            _SYS_CREATE_RULESET,
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            ctypes.c_uint32(0),
        )
    )
    if fd < 0:
        raise _fail("landlock_create_ruleset", ctypes.get_errno())
    try:
        read_rights = ACCESS_FS_READ if exec_paths is None else ACCESS_FS_READ & ~_FS_EXECUTE
        for path in read_paths:
            _add_path_rule(fd, path, read_rights & fs_all)
        for path in exec_paths or ():
            _add_path_rule(fd, path, (_FS_EXECUTE | _FS_READ_FILE) & fs_all)
        for path in write_paths:
            _add_path_rule(fd, path, fs_all & ~_FS_NOT_FOR_WRITE)
        if abi >= 4:
            for port in ports:
                _add_rule(fd, _RULE_NET_PORT, _NetPortAttr(_NET_CONNECT_TCP, port))
    except BaseException:
        os.close(fd)
        raise
    return fd


def paths_outside(excluded: Iterable[str], top: str = "/") -> list[str]:
    """Paths whose hierarchies together cover everything under ``top`` but ``excluded``.

    A Landlock rule grants a whole hierarchy and nothing can be carved out of
    it, so "write anywhere but the cgroup file systems" is granted as the
    siblings of each directory on the way to an excluded one.  Not covered:
    the directories on the way themselves (no new entries directly in ``/``,
    ``/sys`` or ``/sys/fs``).  Symbolic links are left out: a rule follows
    them, and one could lead back into an excluded tree.
    """
    cut = {os.path.normpath(e) for e in excluded}
    if os.path.normpath(top) in cut:
        return []
    out: list[str] = []

    def walk(directory: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            path = os.path.normpath(entry.path)
            if path in cut or entry.is_symlink():
                continue
            if any(c.startswith(path + "/") for c in cut):
                walk(path)
            else:
                out.append(path)

    walk(os.path.normpath(top))
    return out


def _add_path_rule(ruleset_fd: int, path: str | os.PathLike[str], access: int) -> None:
    try:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsupportedError(
            f"landlock: cannot open granted path {os.fspath(path)!r}: {exc.strerror}",
            feature="landlock",
        ) from exc
    try:
        if not stat.S_ISDIR(os.fstat(path_fd).st_mode):
            access &= _FS_FILE_RIGHTS
        if access:
            _add_rule(ruleset_fd, _RULE_PATH_BENEATH, _PathBeneathAttr(access, path_fd))
    finally:
        os.close(path_fd)


def _add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure) -> None:
    ret = syscall(
        _SYS_ADD_RULE,
        ctypes.c_int(ruleset_fd),
        ctypes.c_int(rule_type),
        ctypes.byref(attr),
        ctypes.c_uint32(0),
    )
    if ret != 0:
        raise _fail("landlock_add_rule", ctypes.get_errno())


def restrict_self(ruleset_fd: int) -> None:
    """Enforce the ruleset on the calling process and all its future children.

    Sets ``no_new_privs`` first, as the kernel requires without ``CAP_SYS_ADMIN``.
    Irreversible: call it only in the forked worker, before it starts a thread
    (Landlock binds only the calling thread).  The descriptor stays open.

    :raises CorralError: no Landlock, the process has other threads, or the
        kernel refused (bad descriptor).
    """
    _require_abi()
    if _thread_count() > 1:
        raise UnsupportedError(
            "landlock: restrict_self needs a single-threaded process; other threads "
            "would stay unconfined",
            feature="landlock",
        )
    if prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)", ctypes.get_errno())
    ret = syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    if ret != 0:
        raise _fail("landlock_restrict_self", ctypes.get_errno())


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: at least the threads Python knows of
        return threading.active_count()


#: Where system TLS trust stores live (Debian, RHEL, Alpine, SUSE); /etc/ssl/private is not here.
_CA_PATHS: Final = (
    "/etc/ssl/certs",
    "/etc/ssl/cert.pem",
    "/etc/ssl/openssl.cnf",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/tls/cert.pem",
    "/etc/pki/ca-trust/extracted",
    "/var/lib/ca-certificates",
)


def interpreter_read_paths() -> list[str]:
    """Paths the running interpreter needs to read: prefixes, site-packages, system libraries.

    Meant as the read-only base of every strict ruleset, so that a worker can
    still import the standard library, installed packages and corral itself,
    and load shared libraries.  Only existing paths are returned.
    """
    candidates = {
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        *site.getsitepackages(),
        str(Path(__file__).resolve().parents[2]),  # the directory holding `corral`
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/usr/share/zoneinfo",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        # Public CA certificates and OpenSSL's configuration, for TLS verification
        # (/etc/ssl/certs links into /usr/share/ca-certificates).
        *_CA_PATHS,
    }
    return sorted(p for p in candidates if p != "/" and os.path.exists(p))
