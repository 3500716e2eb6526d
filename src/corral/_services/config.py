"""Plugin configuration: a JSON Schema per plugin, layered sources, validation, hot reload.

Layers, lowest first (a later layer overrides an earlier one key by key;
tables merge, everything else is replaced)::

    1. the schema's ``default`` values          source "default"
    2. <home>/config.toml  [plugins."<id>"]      source "config.toml"
    3. <home>/config.toml  [env.<name>.plugins."<id>"]   source "config.toml [env.<name>]"
    4. environment variables CORRAL_<ID>_<KEY>  source "env CORRAL_..."

``<ID>`` is the plugin id upper-cased with ``.`` and ``-`` as ``_``; ``<KEY>``
is the key path upper-cased, ``-`` as ``_``, nested keys joined by ``__``
(``CORRAL_ACME_GIT_STATS_LIMITS__MAX_COMMITS`` is ``limits.max-commits`` of
``acme.git-stats``).  A value is JSON (``5``, ``true``, ``["a"]``) unless the
schema says the key is a string, where it is taken as written.

A plugin's schema is ``config.schema.json`` in its directory.  The config is
validated at load and on every change; an invalid change is refused with the
key path named, and the config in force stays as it was.

Secrets are referenced by a whole string value ``"${secret:NAME}"``; they are
resolved only when the config is handed to the plugin (see ``_secrets``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, final

from corral._disk.files import exclusive, write_atomic
from corral._errors import NotFoundError
from corral._model.config import (
    SCHEMA_NAME,
    ConfigError,
    check_schema,
    dumps_toml,
    env_layer,
    env_var_name,
    find_secret_refs,
    load_schema,
    merge,
    merge_path,
    resolve_secret_refs,
    schema_defaults,
    validate_config,
)

__all__ = [
    "CONFIG_NAME",
    "SCHEMA_NAME",
    "ConfigError",
    "ConfigManager",
    "ConfigWatcher",
    "check_schema",
    "dumps_toml",
    "env_var_name",
    "find_secret_refs",
    "load_schema",
    "plugin_config",
    "resolve_secret_refs",
    "schema_defaults",
    "validate_config",
]

#: The configuration file of a home.
CONFIG_NAME: Final = "config.toml"

OnChange = Callable[[str, dict[str, Any], dict[str, Any]], None]
OnError = Callable[["str | None", ConfigError], None]


# -- the manager ---------------------------------------------------------------------------


@final
class ConfigManager:
    """Loads, layers, validates, changes and watches the configuration of a home's plugins.

    :param home: the home; the file is ``<home>/config.toml``.
    :param env: the overlay to apply (``dev``, ``prod``...; default ``$CORRAL_ENV``).
    :param environ: the environment to read ``CORRAL_<ID>_<KEY>`` from
        (default ``os.environ``).
    :param schemas: plugin id -> JSON Schema (each is checked).
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        env: str | None = None,
        environ: Mapping[str, str] | None = None,
        schemas: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.home: Final = Path(home)
        self.path: Final = self.home / CONFIG_NAME
        self._environ = os.environ if environ is None else environ
        self.env = env if env is not None else (self._environ.get("CORRAL_ENV") or None)
        self._schemas: dict[str, dict[str, Any] | None] = {}
        for pid, schema in (schemas or {}).items():
            self.add_schema(pid, schema)
        self._lock = threading.RLock()
        self._current: dict[str, dict[str, Any]] = {}
        self._overrides: dict[str, dict[str, Any]] = {}

    # -- schemas -------------------------------------------------------------------------

    def add_schema(self, plugin_id: str, schema: Mapping[str, Any] | None) -> None:
        """Register a plugin (and its schema, checked; ``None``: no schema)."""
        if schema is not None:
            check_schema(plugin_id, schema)
        self._schemas[plugin_id] = dict(schema) if schema is not None else None

    def schema(self, plugin_id: str) -> dict[str, Any] | None:
        """The schema of ``plugin_id`` (``None`` when it has none)."""
        return self._schemas.get(plugin_id)

    # -- reading -------------------------------------------------------------------------

    def read_file(self) -> dict[str, Any]:
        """The parsed config file (``{}`` if none); bad TOML is a :class:`ConfigError`."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return self._parse(text)

    def _parse(self, text: str) -> dict[str, Any]:
        """``text`` as a config document; bad TOML or a misshapen table is a ConfigError."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(self.path)) from None
        for section in ("plugins",):
            if section in doc and not isinstance(doc[section], dict):
                raise ConfigError("must be a table", key=section, source=str(self.path))
        envs = doc.get("env", {})
        if not isinstance(envs, dict) or any(not isinstance(v, dict) for v in envs.values()):
            raise ConfigError("must be a table of tables", key="env", source=str(self.path))
        return doc

    def plugin_ids(self, doc: Mapping[str, Any] | None = None) -> list[str]:
        """Plugins with a schema or a section in the file (any overlay)."""
        doc = self.read_file() if doc is None else doc
        ids = set(self._schemas) | set(doc.get("plugins", {}))
        for overlay in doc.get("env", {}).values():
            ids |= set(overlay.get("plugins", {}) if isinstance(overlay, dict) else {})
        return sorted(ids)

    def layered(
        self, plugin_id: str, *, env: str | None = None, doc: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The merged config of ``plugin_id`` (unvalidated) and the source of each key path."""
        doc = self.read_file() if doc is None else doc
        env = env if env is not None else self.env
        schema = self._schemas.get(plugin_id)
        config: dict[str, Any] = {}
        sources: dict[str, str] = {}
        if schema is not None:
            merge(config, schema_defaults(schema), "default", sources)
        base = doc.get("plugins", {}).get(plugin_id)
        file = str(self.path)
        if base is not None:
            if not isinstance(base, dict):
                raise ConfigError("must be a table", key=f'plugins."{plugin_id}"', source=file)
            merge(config, base, file, sources)
        if env:
            overlay = doc.get("env", {}).get(env, {}).get("plugins", {}).get(plugin_id)
            if overlay is not None:
                if not isinstance(overlay, dict):
                    raise ConfigError("must be a table",
                                      key=f'env.{env}.plugins."{plugin_id}"', source=file)
                merge(config, overlay, f"{file} [env.{env}]", sources)
        layer, env_sources = env_layer(plugin_id, schema, self._environ, self.plugin_ids(doc))
        for key, src in env_sources.items():
            node = layer
            parts = key.split(".")
            for p in parts[:-1]:
                node = node[p]
            merge_path(config, parts, node[parts[-1]], src, sources)
        overrides = self._overrides.get(plugin_id)
        if overrides:
            merge(config, overrides, "Host(config=...)", sources)
        return config, sources

    def effective(self, plugin_id: str, *, env: str | None = None) -> dict[str, Any]:
        """The validated config of ``plugin_id`` from every layer (secret refs unresolved)."""
        config, sources = self.layered(plugin_id, env=env)
        validate_config(plugin_id, config, self._schemas.get(plugin_id), sources)
        return config

    def load(self) -> dict[str, dict[str, Any]]:
        """Load and validate every plugin's config; it becomes the config in force.

        Raises the first :class:`ConfigError`; nothing changes in force then.
        """
        with self._lock:
            doc = self.read_file()
            fresh = {}
            for pid in self.plugin_ids(doc):
                config, sources = self.layered(pid, doc=doc)
                validate_config(pid, config, self._schemas.get(pid), sources)
                fresh[pid] = config
            self._current = fresh
            return copy.deepcopy(fresh)

    def set_overrides(self, plugin_id: str, overrides: Mapping[str, Any] | None) -> None:
        """A top layer set by the application (``Host(config=...)``), above env vars."""
        with self._lock:
            if overrides:
                self._overrides[plugin_id] = copy.deepcopy(dict(overrides))
            else:
                self._overrides.pop(plugin_id, None)

    def put_in_force(self, plugin_id: str, config: Mapping[str, Any]) -> None:
        """Record ``config`` (already validated) as the config in force for ``plugin_id``."""
        with self._lock:
            self._current[plugin_id] = copy.deepcopy(dict(config))

    def current(self, plugin_id: str) -> dict[str, Any]:
        """The config in force for ``plugin_id`` (after :meth:`load` or a reload)."""
        with self._lock:
            return copy.deepcopy(self._current.get(plugin_id, {}))

    def reload(self) -> tuple[dict[str, tuple[dict[str, Any], dict[str, Any]]],
                              dict[str | None, ConfigError]]:
        """Re-read the layers; put every valid change in force, refuse every invalid one.

        Returns ``(changes, errors)``: plugin id -> (old, new) for what changed,
        and plugin id (``None`` for the whole file) -> the error for what was refused.
        """
        changes: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        errors: dict[str | None, ConfigError] = {}
        with self._lock:
            try:
                doc = self.read_file()
            except ConfigError as exc:
                return changes, {None: exc}
            for pid in self.plugin_ids(doc):
                try:
                    config, sources = self.layered(pid, doc=doc)
                    validate_config(pid, config, self._schemas.get(pid), sources)
                except ConfigError as exc:
                    errors[pid] = exc
                    continue
                old = self._current.get(pid, {})
                if config != old:
                    self._current[pid] = config
                    changes[pid] = (copy.deepcopy(old), copy.deepcopy(config))
        return changes, errors

    # -- changing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with exclusive(self.home / ".config.lock"):
            yield

    def set(self, plugin_id: str, key: str, value: Any, *, env: str | None = None) -> None:
        """Set ``key`` (dotted path) in the file, in ``[env.<env>...]`` when ``env`` is given.

        The result is validated first (with ``env``'s overlay); an invalid
        value raises :class:`ConfigError` and the file is left untouched.
        """
        self._edit(plugin_id, key, env, value=value)

    def unset(self, plugin_id: str, key: str, *, env: str | None = None) -> bool:
        """Remove ``key`` from the file's layer; return whether it was there."""
        return self._edit(plugin_id, key, env, remove=True)

    def _edit(self, plugin_id: str, key: str, env: str | None, *, value: Any = None,
              remove: bool = False) -> bool:
        """Change one key in place with tomlkit: comments, order and layout are kept.

        Validated before anything is written; the file is replaced atomically.
        """
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"{key!r} is not a dotted key path", plugin_id=plugin_id)
        where = f'plugins."{plugin_id}".{key}'
        if not remove:
            _check_toml_value(value, where)
        with self._file_lock():
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            self._parse(text)  # the same checks (and errors) as reading
            section = ["env", env, "plugins", plugin_id] if env else ["plugins", plugin_id]
            new_text, changed = edit_toml(text, section, parts, value, remove=remove,
                                          where=where, source=str(self.path))
            if not changed:
                return False
            doc = self._parse(new_text)
            config, sources = self.layered(plugin_id, env=env, doc=doc)
            validate_config(plugin_id, config, self._schemas.get(plugin_id), sources)
            _write_atomic(self.path, new_text)
        return True

    def get(self, plugin_id: str, key: str | None = None, *, env: str | None = None) -> Any:
        """The effective value at ``key`` (or the whole config) of ``plugin_id``."""
        config = self.effective(plugin_id, env=env)
        if key is None:
            return config
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise NotFoundError(f'plugins."{plugin_id}".{key} is not set',
                                    plugin_id=plugin_id, key=key)
            node = node[part]
        return node

    def show(self, *, env: str | None = None) -> dict[str, Any]:
        """Every plugin's config with the source of each key; errors reported, not raised."""
        doc = self.read_file()
        out: dict[str, Any] = {}
        for pid in self.plugin_ids(doc):
            entry: dict[str, Any] = {}
            try:
                config, sources = self.layered(pid, env=env, doc=doc)
                entry = {"config": config, "sources": sources}
                validate_config(pid, config, self._schemas.get(pid), sources)
            except ConfigError as exc:
                entry["error"] = exc.to_dict()
            refs = find_secret_refs(entry.get("config", {}))
            if refs:
                entry["secrets"] = refs
            out[pid] = entry
        return {"env": env if env is not None else self.env, "file": str(self.path),
                "plugins": out}

    def validate(self, *, env: str | None = None) -> dict[str, ConfigError]:
        """Every plugin whose config is invalid, with its error (empty: all valid)."""
        doc = self.read_file()
        bad: dict[str, ConfigError] = {}
        for pid in self.plugin_ids(doc):
            try:
                config, sources = self.layered(pid, env=env, doc=doc)
                validate_config(pid, config, self._schemas.get(pid), sources)
            except ConfigError as exc:
                bad[pid] = exc
        return bad

    # -- watching --------------------------------------------------------------------------

    def watch(self, on_change: OnChange, on_error: OnError | None = None) -> ConfigWatcher:
        """Watch the config file; deliver valid changes, refuse invalid ones.

        ``on_change(plugin_id, new, old)`` runs for each plugin whose config
        changed (the host calls the plugin's ``on_config_change`` hook);
        ``on_error(plugin_id or None, error)`` for each refused change, the old
        config staying in force.  Call :meth:`load` first.
        """
        return ConfigWatcher(self, on_change, on_error)


@final
class ConfigWatcher:
    """The thread that follows ``config.toml`` with ``watchfiles``; :meth:`stop` ends it."""

    def __init__(self, manager: ConfigManager, on_change: OnChange,
                 on_error: OnError | None) -> None:
        import watchfiles  # noqa: F401 - fail here, in the caller, when it is missing

        self._manager = manager
        self._on_change = on_change
        self._on_error = on_error
        self._stop = threading.Event()
        self._ready = threading.Event()
        #: Errors of the callbacks themselves (a failing hook must not stop the watcher).
        self.callback_errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="corral-config-watch",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        import watchfiles

        name = self._manager.path.name
        home = self._manager.home
        home.mkdir(parents=True, exist_ok=True)

        def only_config(change: watchfiles.Change, path: str) -> bool:
            return Path(path).name == name

        self._ready.set()
        for _changes in watchfiles.watch(home, watch_filter=only_config, debounce=100,
                                         step=20, stop_event=self._stop, recursive=False,
                                         rust_timeout=500, yield_on_timeout=False):
            if self._stop.is_set():
                return
            self.apply()

    def apply(self) -> None:
        """Reload now and run the callbacks (the watcher calls this on each change)."""
        changes, errors = self._manager.reload()
        for pid, (old, new) in changes.items():
            try:
                self._on_change(pid, new, old)
            except Exception as exc:
                self.callback_errors.append(f"{pid}: {type(exc).__name__}: {exc}")
        if self._on_error is not None:
            for epid, err in errors.items():
                try:
                    self._on_error(epid, err)
                except Exception as exc:
                    self.callback_errors.append(f"{epid}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(timeout=5)


def plugin_config(
    manager: ConfigManager,
    plugin_id: str,
    plugin_dir: str | os.PathLike[str],
    *,
    overrides: Mapping[str, Any] | None = None,
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    r"""What a plugin gets as ``ctx.config`` at load: the host's one-stop call.

    Reads and checks the plugin's ``config.schema.json``, layers the sources,
    applies ``overrides`` (the application's ``Host(config=...)``) on top,
    validates the result, puts it in force for hot reload, and finally
    ``resolve``\ s secret references (``SecretStore.resolve_config`` under the
    plugin's grants).  Raises :class:`ConfigError`, ``InvalidPluginError``
    (bad schema) or the resolver's errors; the plugin should then fail to load.
    """
    manager.add_schema(plugin_id, load_schema(plugin_id, plugin_dir))
    manager.set_overrides(plugin_id, overrides)
    config, sources = manager.layered(plugin_id)
    validate_config(plugin_id, config, manager.schema(plugin_id), sources)
    manager.put_in_force(plugin_id, config)
    return resolve(copy.deepcopy(config)) if resolve is not None else copy.deepcopy(config)


# -- editing the file in place -------------------------------------------------------------


def _check_toml_value(value: Any, where: str) -> None:
    """Refuse what TOML cannot hold (``None``, other objects) before the file is touched."""
    if isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_toml_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"table keys must be strings, got {k!r}", key=where)
            _check_toml_value(v, f"{where}.{k}")
        return
    raise ConfigError(f"{type(value).__name__} values have no TOML form (use unset to remove)",
                      key=where)


def _has_comment(table: Any) -> bool:
    """Whether a tomlkit table holds a comment of the user's (such a table is never pruned)."""
    from tomlkit.items import Comment

    body = getattr(getattr(table, "value", None), "body", ())
    return any(isinstance(item, Comment) for _, item in body)


def _missing(doc: Any, path: list[str]) -> bool:
    """Whether the table at ``path`` is absent (and every table above it is a real table)."""
    node = doc
    for part in path:
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            return isinstance(node, dict)
        node = nxt
    return False


def edit_toml(
    text: str,
    section: list[str],
    parts: list[str],
    value: Any = None,
    *,
    remove: bool = False,
    where: str = "",
    source: str = CONFIG_NAME,
) -> tuple[str, bool]:
    """Set (or remove) ``section + parts`` in TOML ``text``, keeping comments and layout.

    Missing tables are created (``[plugins."<id>"]`` headers, not ``[plugins]``);
    a removal prunes the tables it empties unless they hold a comment.  Returns
    the new text and whether anything changed (``False``: nothing to remove).
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError
    from tomlkit.items import InlineTable

    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    if not remove and _missing(doc, section):
        # A new section goes at the end of the file, under its own header, so it never
        # lands between a comment and the table that comment was written above.
        header = tomlkit.key(section).as_string()
        sep = "" if not text else "\n" if text.endswith("\n") else "\n\n"
        with contextlib.suppress(TOMLKitError):
            doc = tomlkit.parse(f"{text}{sep}[{header}]\n")
    path = [*section, *parts[:-1]]
    chain: list[tuple[Any, str]] = []
    node: Any = doc
    for i, part in enumerate(path):
        nxt = node.get(part)
        if nxt is None:
            if remove:
                return text, False
            if isinstance(node, InlineTable):
                nxt = tomlkit.inline_table()
            else:
                nxt = tomlkit.table(is_super_table=i < len(section) - 1)
            node[part] = nxt
            nxt = node[part]
        elif not isinstance(nxt, dict):
            shown = ".".join(f'"{p}"' if "." in p else p for p in path[: i + 1])
            raise ConfigError("is not a table, cannot set a key inside it",
                              key=shown if i < len(section) else where, source=source)
        chain.append((node, part))
        node = nxt
    last = parts[-1]
    if remove:
        if last not in node:
            return text, False
        del node[last]
        for parent, part in reversed(chain):
            child = parent[part]
            if len(child) or _has_comment(child):
                break
            del parent[part]
    else:
        node[last] = value
    out = tomlkit.dumps(doc)
    if text and not out.endswith("\n"):
        out += "\n"
    return out, True


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once, keeping its mode."""
    write_atomic(path, text.encode("utf-8"))
