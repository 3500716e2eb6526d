"""Which grant a refused file, socket or program needed, judged the same way in worker and host.

The worker names the grant when the sandbox refuses the plugin something; the
host believes the name only if its own spec does not grant it either, and words
the message itself (see :func:`corral._sandbox.failures.vetted`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from corral._sandbox.rpc import WorkerInit
    from corral._sandbox.spec import SandboxSpec

__all__ = ["KINDS", "Grants", "denial_message", "split_permission"]

#: The grants a worker can tell were missing, with what the plugin was refused.
KINDS: Final = {
    "fs-read": "read",
    "fs-write": "write",
    "net-connect": "connect to",
    "spawn": "run",
}


def split_permission(permission: str) -> tuple[str, str] | None:
    """``fs-read:/etc/hostname`` as ``("fs-read", "/etc/hostname")``; None for another kind."""
    kind, sep, target = permission.partition(":")
    if not sep or kind not in KINDS or not target:
        return None
    return kind, target


def denial_message(plugin_id: str, permission: str) -> str:
    """The headline of a sandbox refusal: what was refused and the grant that allows it."""
    split = split_permission(permission)
    if split is None:
        return f"{plugin_id}: the sandbox refused it; it needs the grant {permission}"
    kind, target = split
    grant = f'{kind} = ["{target}"]'
    return (f"{plugin_id}: the sandbox refused to {KINDS[kind]} {target}: "
            f"it needs the grant {permission} ({grant} under [permissions])")


def _under(path: str, roots: Iterable[str]) -> bool:
    for given in roots:
        root = given.rstrip("/") or "/"
        if path == root or path.startswith(root if root == "/" else root + "/"):
            return True
    return False


@final
@dataclass(frozen=True, slots=True)
class Grants:
    """What a plugin may touch directly: readable and writable roots, addresses, programs."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    net: tuple[str, ...]
    spawn: tuple[str, ...]

    @classmethod
    def of_init(cls, init: WorkerInit) -> Grants:
        writes = (init.data_dir, init.tmp_dir, init.cache_dir, *init.write_paths)
        return cls(reads=(init.plugin_dir, *init.read_paths, *writes), writes=writes,
                   net=tuple(init.net_connect), spawn=tuple(init.spawn))

    @classmethod
    def of_spec(cls, spec: SandboxSpec) -> Grants:
        writes = tuple(str(p) for p in (spec.data_dir, spec.tmp_dir, spec.cache_dir,
                                        *spec.write_paths))
        return cls(reads=(str(spec.plugin_dir), *(str(p) for p in spec.read_paths), *writes),
                   writes=writes, net=spec.net_connect, spawn=spec.spawn)

    def allows(self, permission: str) -> bool:
        """Whether ``permission`` (``kind:target``) is granted; True if not ours to judge."""
        split = split_permission(permission)
        if split is None:
            return True
        kind, target = split
        if kind in ("fs-read", "fs-write"):
            if not os.path.isabs(target):
                return True
            roots = self.reads if kind == "fs-read" else self.writes
            return _under(os.path.normpath(target), roots) or _under(
                os.path.realpath(target), roots)
        if kind == "net-connect":
            return target in self.net
        names = {os.path.basename(p) for p in self.spawn}
        return target in self.spawn or os.path.basename(target) in names
