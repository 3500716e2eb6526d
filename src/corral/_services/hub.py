"""The services a host offers its plugins (layer 3), each made on first use.

Event bus with its durable log, shared state, messages, secrets and layered
configuration.  Nothing here is opened until a plugin (or the application) first
uses it, so hosts that never need a service never pay for it.  This module is on
the path of ``corral list``, so each service's module is imported on first use
too: they pull in msgspec, asyncio or logging, or (config) cost milliseconds.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, final

from corral._runtime.budgets import Budgets, RateLimitedLog
from corral._runtime.quotas import QuotaBook

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from corral._model.permissions import Permissions
    from corral._services.cache.service import CacheService
    from corral._services.config import ConfigError, ConfigManager, ConfigWatcher
    from corral._services.events.bus import EventBus
    from corral._services.events.durable import DurableLog
    from corral._services.messages import Messenger
    from corral._services.secrets import SecretRedactor, SecretStore
    from corral._services.state import StateStore

__all__ = ["Services"]


@final
class Services:
    """Lazily built host services under one home."""

    def __init__(self, home: Path, *, status_of: Callable[[str], str | None]) -> None:
        self.home = home
        self._status_of = status_of
        self._lock = threading.Lock()
        self._bus: EventBus | None = None
        self._event_log: DurableLog | None = None
        self._shared_state: StateStore | None = None
        self._messenger: Messenger | None = None
        self._secrets: SecretStore | None = None
        self._redactor: SecretRedactor | None = None
        self._config_manager: ConfigManager | None = None
        self._config_watcher: ConfigWatcher | None = None
        self._cache: CacheService | None = None
        #: Every active plugin's budgets, which the stores below consult.
        self.budgets = Budgets()
        #: Quotas over time (``events-per-second`` for the bus), set by the host.
        self.quotas: QuotaBook | None = None

    @property
    def bus(self) -> EventBus:
        """The event bus, with the durable log ``<home>/events.db`` attached."""
        with self._lock:
            if self._bus is None:
                # Deferred (start-up): the bus and its log pull msgspec and logging.
                import logging

                from corral._services.events.bus import EventBus
                from corral._services.events.durable import DurableLog

                log = logging.getLogger("corral.events")
                dead_log = RateLimitedLog(log)  # a flood of dead letters must not flood stderr
                bus = EventBus(
                    on_dead_letter=lambda d: dead_log.warning(
                        "event %s on %s not delivered to %s: %s",
                        d.event.id,
                        d.event.topic,
                        d.subscriber or "the host",
                        d.reason,
                    )
                )
                self._event_log = DurableLog(self.home / "events.db")
                self._event_log.budgets = self.budgets
                bus.budgets = self.budgets
                bus.quotas = self.quotas
                bus.attach_log(self._event_log)
                self._bus = bus
            return self._bus

    @property
    def shared_state(self) -> StateStore:
        """Versioned shared state in ``<home>/state.db``."""
        with self._lock:
            if self._shared_state is None:
                from corral._services.state import StateStore  # deferred: msgspec

                self._shared_state = StateStore(self.home / "state.db")
                self._shared_state.budgets = self.budgets
            return self._shared_state

    @property
    def cache(self) -> CacheService:
        """Every plugin's ``ctx.cache``: L2 in ``<home>/cache.db``, L1s, memoised exports."""
        with self._lock:
            if self._cache is None:
                from corral._services.cache.service import CacheService  # deferred: msgspec

                self._cache = CacheService(self.home, self.budgets)
            return self._cache

    @property
    def messenger(self) -> Messenger:
        """Request/response and broadcast between plugins."""
        with self._lock:
            if self._messenger is None:
                from corral._services.messages import Messenger  # deferred: asyncio, msgspec

                self._messenger = Messenger(status=self._status_of)
            return self._messenger

    @property
    def redactor(self) -> SecretRedactor:
        """Scrubs the home's secret values from plugin text the host prints or stores."""
        store = self.secrets
        with self._lock:
            if self._redactor is None:
                from corral._services.secrets import SecretRedactor  # deferred: logging

                self._redactor = SecretRedactor(store)
            return self._redactor

    @property
    def secrets(self) -> SecretStore:
        """The home's encrypted secrets."""
        with self._lock:
            if self._secrets is None:
                from corral._services.secrets import SecretStore  # deferred: logging

                self._secrets = SecretStore(self.home)
            return self._secrets

    @property
    def config_manager(self) -> ConfigManager:
        """Layered, validated plugin configuration from ``<home>/config.toml``."""
        with self._lock:
            if self._config_manager is None:
                from corral._services.config import ConfigManager  # deferred: ~9 ms to import

                self._config_manager = ConfigManager(self.home)
            return self._config_manager

    def plugin_config(
        self,
        plugin_id: str,
        perms: Permissions,
        plugin_dir: Path,
        *,
        overrides: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """A plugin's effective configuration, validated, secrets resolved per its grants."""
        from corral._services.config import plugin_config  # deferred: ~9 ms to import

        def resolve(config: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = self.secrets.resolve_config(
                config, perms=perms, plugin_id=plugin_id
            )
            return out

        return plugin_config(
            self.config_manager, plugin_id, plugin_dir, overrides=overrides, resolve=resolve
        )

    def watch_config(self, on_change: Callable[[str, dict[str, Any]], None]) -> None:
        """Watch ``config.toml``; valid changes go to ``on_change``, invalid ones are logged."""
        with self._lock:
            if self._config_watcher is not None:
                return
        watcher = self.config_manager.watch(
            lambda plugin_id, new, _old: on_change(plugin_id, new), _config_refused
        )
        with self._lock:
            self._config_watcher = watcher

    def usage(self, plugin_id: str) -> tuple[int, int, int]:
        """``plugin_id``'s shared-state bytes and keys, and its bytes in the durable log.

        Read straight from the databases, without starting the stores' threads, so that
        ``corral info`` stays cheap; a database not made yet holds nothing.
        """
        state = _read_only(self.home / "state.db",
                           "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0), "
                           "count(*) FROM state WHERE updated_by = ?", plugin_id)
        events = _read_only(self.home / "events.db",
                            "SELECT coalesce(sum(length(data)), 0), 0 FROM events "
                            "WHERE source = ?", plugin_id)
        return state[0], state[1], events[0]

    def stop(self, plugin_id: str) -> None:
        """A plugin stopped: end its subscriptions, watches and mailbox."""
        if self._messenger is not None:
            self._messenger.stop_serving(plugin_id)
        if self._bus is not None:
            self._bus.cancel_plugin(plugin_id)
        if self._shared_state is not None:
            self._shared_state.cancel_plugin(plugin_id)
        if self._cache is not None:
            self._cache.forget(plugin_id)

    def close(self) -> None:
        """Stop watching and close every service that was opened."""
        if self._config_watcher is not None:
            self._config_watcher.stop()
        if self._messenger is not None:
            self._messenger.close()
        if self._bus is not None:
            self._bus.close()
        if self._event_log is not None:
            self._event_log.close()
        if self._shared_state is not None:
            self._shared_state.close()
        if self._cache is not None:
            self._cache.close()


def _config_refused(plugin_id: str | None, error: ConfigError) -> None:
    import logging

    logging.getLogger("corral.config").warning("config change refused: %s", error.message)


def _read_only(path: Path, query: str, arg: str) -> tuple[int, int]:
    """The two numbers ``query`` selects from the SQLite file ``path`` (0, 0 if it is absent)."""
    import sqlite3

    if not path.exists():
        return 0, 0
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        row = conn.execute(query, (arg,)).fetchone()
    except sqlite3.OperationalError:  # a store from before its table existed
        return 0, 0
    finally:
        conn.close()
    return int(row[0]), int(row[1])
