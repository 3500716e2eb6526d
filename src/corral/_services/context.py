"""``PluginContext``: what a plugin's code receives as ``ctx``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import logging

    from corral._model.permissions import Permissions
    from corral._services.cache.plugin import PluginCache
    from corral._services.events.plugin import PluginEvents
    from corral._services.hub import Services
    from corral._services.messages import PluginMessages
    from corral._services.secrets import PluginSecrets
    from corral._services.state import PluginState

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

    __slots__ = ("_cache", "_events", "_hub", "_log", "_messages", "_secrets", "_state",
                 "cache_dir", "config", "data_dir", "paths", "permissions", "plugin_dir",
                 "plugin_id", "tmp_dir", "workspace")

    def __init__(
        self,
        plugin_id: str,
        paths: Mapping[str, str],
        config: Mapping[str, Any] | None = None,
        *,
        services: Services | None = None,
        permissions: Permissions | None = None,
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
        self._hub = services
        self.permissions = permissions
        self._events: PluginEvents | None = None
        self._state: PluginState | None = None
        self._secrets: PluginSecrets | None = None
        self._messages: PluginMessages | None = None
        self._cache: PluginCache | None = None

    def _services(self) -> tuple[Services, Permissions]:
        if self._hub is None or self.permissions is None:
            from corral._errors import UsageError

            raise UsageError(f"{self.plugin_id}: this context has no host services")
        return self._hub, self.permissions

    @property
    def events(self) -> PluginEvents:
        """The event bus under this plugin's grants (made on first use)."""
        if self._events is None:
            hub, perms = self._services()
            self._events = hub.bus.for_plugin(self.plugin_id, perms)
        return self._events

    @property
    def state(self) -> PluginState:
        """Shared state under this plugin's ``state.read``/``state.write`` grants."""
        if self._state is None:
            hub, perms = self._services()
            self._state = hub.shared_state.for_plugin(self.plugin_id, perms)
        return self._state

    @property
    def secrets(self) -> PluginSecrets:
        """The secrets this plugin was granted (``secrets:NAME``)."""
        if self._secrets is None:
            hub, perms = self._services()
            self._secrets = hub.secrets.for_plugin(self.plugin_id, perms)
        return self._secrets

    @property
    def cache(self) -> PluginCache:
        """The plugin's cache (L1 in this process, L2 in the home; see docs/caching.md)."""
        cache = self._cache
        if cache is None:
            from corral._services.cache.plugin import PluginCache

            hub, perms = self._services()
            cache = self._cache = PluginCache(hub.cache, self.plugin_id, perms)
        return cache

    @property
    def messages(self) -> PluginMessages:
        """Send and broadcast to other plugins (``messages.send:ID``)."""
        if self._messages is None:
            hub, perms = self._services()
            self._messages = hub.messenger.for_plugin(self.plugin_id, perms)
        return self._messages

    @property
    def log(self) -> logging.Logger:
        """The plugin's logger, ``corral.plugin.<id>`` (logging is imported on first use)."""
        if self._log is None:
            import logging

            self._log = logging.getLogger(f"corral.plugin.{self.plugin_id}")
        return self._log

    def __repr__(self) -> str:
        return f"<PluginContext {self.plugin_id}>"
