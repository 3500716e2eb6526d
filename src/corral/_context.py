"""``PluginContext``: what a plugin's code receives as ``ctx``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import logging

__all__ = ["PluginContext", "plugin_paths"]


def plugin_paths(home: Path, workspace: Path, plugin_id: str, plugin_dir: Path) -> dict[str, str]:
    """The values of the path placeholders ``{plugin} {data} {cache} {tmp} {workspace}``."""
    return {
        "plugin": str(plugin_dir),
        "data": str(home / "data" / plugin_id),
        "cache": str(home / "cache" / plugin_id),
        "tmp": str(home / "tmp" / plugin_id),
        "workspace": str(workspace),
    }


@final
class PluginContext:
    """The plugin's view of the host, passed to every hook, export and micro handler.

    ``config`` is read-only; ``data_dir`` is the plugin's own writable directory,
    created on first load; ``log`` is a standard logger named ``corral.plugin.<id>``.
    """

    __slots__ = ("_log", "cache_dir", "config", "data_dir", "paths", "plugin_dir", "plugin_id",
                 "tmp_dir", "workspace")

    def __init__(
        self,
        plugin_id: str,
        paths: Mapping[str, str],
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.paths: Mapping[str, str] = MappingProxyType(dict(paths))
        self.plugin_dir = Path(paths["plugin"])
        self.data_dir = Path(paths["data"])
        self.cache_dir = Path(paths["cache"])
        self.tmp_dir = Path(paths["tmp"])
        self.workspace = Path(paths["workspace"])
        self.config: Mapping[str, Any] = MappingProxyType(dict(config or {}))
        self._log: logging.Logger | None = None

    @property
    def log(self) -> logging.Logger:
        """The plugin's logger, ``corral.plugin.<id>`` (logging is imported on first use)."""
        if self._log is None:
            import logging

            self._log = logging.getLogger(f"corral.plugin.{self.plugin_id}")
        return self._log

    def __repr__(self) -> str:
        return f"<PluginContext {self.plugin_id}>"
