"""What a :class:`~.spec.SandboxSpec` becomes on the wire: the fork server's :class:`WorkerInit`.

Paths become strings, and each ``spawn`` grant is resolved on the host's ``PATH``
to every file running it executes (the program, its link target, its loader).
"""

from __future__ import annotations

import os
import shutil
import struct
from typing import Final

from corral._sandbox.rpc import WorkerInit
from corral._sandbox.spec import SandboxSpec

__all__ = ["CPU_BUDGET_FACTOR", "init_for", "resolve_program"]

#: A worker's lifetime CPU budget (RLIMIT_CPU) in multiples of its per-call ``cpu-seconds``.
CPU_BUDGET_FACTOR: Final = 4


def init_for(spec: SandboxSpec) -> WorkerInit:
    """The assignment of a worker for ``spec``."""
    reads = [str(p) for p in spec.read_paths]
    execs: list[str] = []
    for program in spec.spawn:  # the granted programs themselves, and what links point at
        path = resolve_program(program)
        if path is not None:
            execs.extend(_executables(path))
    execs = list(dict.fromkeys(execs))
    return WorkerInit(
        exec_paths=execs,
        plugin_id=spec.plugin_id,
        isolation=spec.isolation,
        plugin_dir=str(spec.plugin_dir),
        data_dir=str(spec.data_dir),
        tmp_dir=str(spec.tmp_dir),
        cache_dir=str(spec.cache_dir),
        workspace=str(spec.workspace or ""),
        read_paths=reads,
        write_paths=[str(p) for p in spec.write_paths],
        env=dict(spec.env),
        allow_exec=bool(spec.spawn),
        net_connect=list(spec.net_connect),
        spawn=list(spec.spawn),
        memory_mb=spec.memory_mb,
        cpu_seconds=spec.cpu_seconds,
        cpu_budget_seconds=spec.cpu_seconds * CPU_BUDGET_FACTOR,
        disk_mb=spec.disk_mb,
        max_processes=spec.max_processes,
        max_result_bytes=spec.max_result_bytes,
        max_output_bytes=spec.max_output_bytes,
    )


def _executables(path: str) -> list[str]:
    """What running ``path`` executes: the file (and its link target), and its loader.

    The loader is an ELF program's ``PT_INTERP`` (``ld-linux``), which the kernel
    opens for execution too, or a script's ``#!`` interpreter, followed in turn.
    """
    out: list[str] = []
    seen: set[str] = set()
    todo = [path]
    while todo and len(seen) < 8:
        current = todo.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        out.extend((current, real))
        interp = _loader_of(real)
        if interp is not None:
            todo.append(interp)
    return out


def _loader_of(path: str) -> str | None:
    """The ELF interpreter or ``#!`` interpreter of ``path``, if it has one."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head.startswith(b"#!"):
                line = (head + f.read(192)).split(b"\n", 1)[0][2:].strip()
                return line.split()[0].decode() if line else None
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, = struct.unpack_from("<I", table, i * phentsize)
                if p_type == 3:  # PT_INTERP
                    offset, = struct.unpack_from("<Q", table, i * phentsize + 8)
                    size, = struct.unpack_from("<Q", table, i * phentsize + 32)
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def resolve_program(program: str) -> str | None:
    """The absolute path a granted program runs from, looked up on the host's PATH."""
    if os.path.isabs(program):
        return program if os.access(program, os.X_OK) else None
    found = shutil.which(program)
    return os.path.abspath(found) if found else None


