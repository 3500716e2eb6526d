"""``validate``: check a plugin directory or archive without registering it.

The static checks (:mod:`corral._pdk.checks`) never import plugin code; with
``sandbox=True`` the probe (:mod:`corral._pdk.probe`) also imports it where it
would run and times it.  The report is described in :mod:`corral._pdk.checks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._pdk.checks import IMPORT_MS_LIMIT, SIZE_LIMIT
from corral._pdk.checks import validate_plugin as _static_checks
from corral._pdk.probe import probe_imports, sandbox_checks

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["IMPORT_MS_LIMIT", "SIZE_LIMIT", "probe_imports", "validate_plugin"]


def validate_plugin(
    path: Path,
    *,
    host_version: str,
    known: Mapping[str, Manifest],
    static: bool = True,
    sandbox: bool = False,
) -> dict[str, Any]:
    """The full report; ``sandbox=True`` also imports the plugin in its sandbox (runs its code)."""
    return _static_checks(path, host_version=host_version, known=known, static=static,
                          probe=sandbox_checks if sandbox else None)
