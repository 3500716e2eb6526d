"""What one sandboxed plugin worker may do: the pure-data input of the supervisor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, final

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "DEFAULT_MAX_RESULT_BYTES", "Isolation", "SandboxSpec"]

Isolation = Literal["limited", "strict"]

#: Largest JSON result a call may return (16 MiB).
DEFAULT_MAX_RESULT_BYTES: Final = 16 * 1024 * 1024
#: Largest amount of stdout, stderr and log text a call may produce (1 MiB).
DEFAULT_MAX_OUTPUT_BYTES: Final = 1024 * 1024


@final
@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything a worker is started with; every path is absolute and resolved.

    Two calls with equal specs share a worker; a changed spec restarts it.
    """

    plugin_id: str
    isolation: Isolation
    #: The plugin's code: read-only, and ``sys.path[0]`` in the worker.
    plugin_dir: Path
    #: ``{data}``: writable, persistent.
    data_dir: Path
    #: ``{tmp}``: writable, private, the worker's cwd.
    tmp_dir: Path
    #: ``{cache}``: writable.
    cache_dir: Path
    #: ``{workspace}``: what ``ctx.workspace`` names (readable only if granted).
    workspace: Path | None = None
    #: Extra ``fs-read`` grants.
    read_paths: tuple[Path, ...] = ()
    #: Extra ``fs-write`` grants.
    write_paths: tuple[Path, ...] = ()
    #: ``net-connect`` grants, ``host:port`` (``[v6]:port``), served by the host.
    net_connect: tuple[str, ...] = ()
    #: Programs the plugin may run (names looked up on the host's PATH, or absolute).
    spawn: tuple[str, ...] = ()
    #: The whole environment the worker gets.
    env: Mapping[str, str] = field(default_factory=dict)
    memory_mb: int = 256
    cpu_seconds: int = 10
    timeout_ms: int = 5000
    disk_mb: int = 100
    max_processes: int = 8
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    #: ``log-lines``: log records and output lines one call may write.
    max_log_lines: int = 1000
    #: ``log-kb`` in bytes: log and output one call may write.
    max_log_bytes: int = 256 * 1024
    #: ``cpu-weight`` (``[quotas]``): its share of a contended CPU, 100 being equal.
    cpu_weight: int = 100
    #: The plugin's version, which its usage is recorded under.
    version: str = ""

    def __post_init__(self) -> None:
        if self.isolation not in ("limited", "strict"):
            raise ValueError(f"isolation must be 'limited' or 'strict', got {self.isolation!r}")
        for name in ("memory_mb", "cpu_seconds", "timeout_ms", "max_result_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
