"""Raw system calls through libc, for the kernel features Python has no wrapper for."""

from __future__ import annotations

import ctypes
import functools

__all__ = ["libc", "prctl", "syscall"]


@functools.cache
def libc() -> ctypes.CDLL:
    """libc, loaded on first use so that importing a sandbox module works anywhere."""
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def syscall(nr: int, *args: object) -> int:
    """``syscall(nr, ...)``; a negative result leaves the error in ``ctypes.get_errno()``."""
    return int(libc().syscall(ctypes.c_long(nr), *args))


def prctl(option: int, arg2: int) -> int:
    """``prctl(option, arg2, 0, 0, 0)``."""
    return int(libc().prctl(option, ctypes.c_ulong(arg2), 0, 0, 0))
