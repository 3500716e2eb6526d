"""``Host``: the object an application embeds to register, run and manage plugins.

It registers and unregisters plugins itself and composes the rest: the catalog
(reading), the lifecycle (``_runtime/lifecycle.py``), the services and the
sandbox (``_services/attachments.py``), the call metrics; ``call`` runs inline.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, final

from corral._disk.files import exclusive
from corral._disk.layout import DB_NAME, HOME_DIRS, MANIFEST_NAME, default_home
from corral._disk.settings import SETTINGS_FILE, setting_flag
from corral._errors import InvalidPluginError, LifecycleError, NotFoundError, UsageError
from corral._model.deps import check_dependencies, check_requires_corral, dependents_of, find_cycle
from corral._model.grants import ALLOW_SETTING, refuse_broad_grants
from corral._model.info import PluginInfo
from corral._model.lifecycle import State, check_transition
from corral._runtime.activation import Active, HookRunner
from corral._runtime.budgets import dir_usage
from corral._runtime.calls import (
    SIMPLE,
    FastTable,
    check_input,
    checked_output,
    now,
    plugin_error,
)
from corral._runtime.catalog import Catalog
from corral._runtime.database import HostDatabase, PluginRow
from corral._runtime.lifecycle import Lifecycle
from corral._runtime.metrics import CallMetrics
from corral._runtime.runner import Runner
from corral._services.attachments import HostAttachments
from corral._services.hub import Services
from corral._version import __version__

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._services.config import ConfigManager
    from corral._services.events.bus import EventBus
    from corral._services.messages import Messenger
    from corral._services.micro.manager import MicroManager
    from corral._services.secrets import SecretStore
    from corral._services.state import StateStore

__all__ = ["Host"]

T = TypeVar("T")


@final
class Host:
    """Registers, loads, enables, runs and removes plugins under one home directory.

    The home holds the plugins (``plugins/``), their data (``data/<id>``), caches,
    private temporary directories and the host database ``corral.db``.  Every
    method is safe to call from several threads; several processes may share a
    home.  Use it as a context manager, or call :meth:`close`.

    ``shared_fork_server=True`` (what the CLI uses) forks sandboxed workers from
    a per-home fork server daemon (``run/``) rather than a fork server of this
    process: it saves a short-lived process the fork server's start.

    Example::

        with Host(home="~/.myapp/plugins") as host:
            host.register("path/to/plugin")
            host.enable("acme.hello")
            print(host.call("acme.hello", "greet", {"name": "Ada"}))
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        workspace: str | os.PathLike[str] | None = None,
        *,
        hook_timeout: float = 5.0,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        shared_fork_server: bool = False,
    ) -> None:
        #: Fork sandboxed workers from the per-home fork server daemon (one-shot processes).
        self.shared_fork_server = shared_fork_server
        self.home = Path(home).expanduser().absolute() if home else default_home().absolute()
        self.workspace = Path(workspace).absolute() if workspace else Path.cwd()
        self.hook_timeout = hook_timeout
        for sub in HOME_DIRS:
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self._db = HostDatabase(self.home / DB_NAME)
        self._rlock = threading.RLock()
        self._closed = False
        self._runner = Runner()
        hooks = HookRunner(self._runner, hook_timeout)
        #: Reading what is registered (for corral's own tooling; not exported).
        self.catalog = Catalog(self._db, self.home)
        metrics = CallMetrics(self._db)
        self._services = Services(self.home, status_of=self._status_of)
        self._active: dict[str, Active] = {}
        #: plugin id -> export name -> (function, ctx, is async, metrics key): the call fast path
        self._fast: FastTable = {}
        self._call_metrics = metrics
        self._metrics = metrics.in_process
        #: The services and sandbox as plugins see them: ``supervisor()``, ``config_overrides``.
        self.attachments = HostAttachments(
            self._services, self._active, home=self.home, workspace=self.workspace,
            hooks=hooks, record=metrics.record, call=self.call, lock=self._rlock,
            config=config, shared_fork_server=shared_fork_server,
        )
        #: The active plugins and their transitions (``active(id)`` for corral's own tooling).
        self.lifecycle = Lifecycle(
            self._db, self.catalog, home=self.home, workspace=self.workspace, hooks=hooks,
            attachments=self.attachments, actives=self._active, fast=self._fast,
            lock=self._rlock,
        )

    # -- context management -------------------------------------------------

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Host:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Disable nothing, but stop workers, flush metrics and close the database."""
        if self._closed:
            return
        self._closed = True
        self.lifecycle.stop_watching()
        self.attachments.close()
        with contextlib.suppress(Exception):
            self.flush_metrics()
        self._runner.close()
        self.lifecycle.release()
        self._services.close()
        self._db.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        await _to_thread(self.close)

    # -- locking ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise changes across threads (RLock) and processes (``flock`` on the home)."""
        with self._rlock, exclusive(self.home / ".lock"):
            yield

    # -- reading what is registered ------------------------------------------

    def list(
        self,
        *,
        state: str | None = None,
        category: str | None = None,
        tag: str | None = None,
        capability: str | None = None,
        discovered: bool = True,
    ) -> builtins.list[PluginInfo]:
        """Plugins this host knows, by id; never imports plugin code.

        ``capability`` matches ``export:NAME``, ``micro:TYPE``, ``hooks``, or a bare
        export name.  ``discovered`` adds unregistered plugin directories under the
        home and pip-installed plugins (entry point group ``corral.plugins``).
        """
        infos, registered = self.catalog.infos(self.lifecycle.state_of)
        if discovered:
            infos.extend(self.catalog.discovered(registered))
        infos.sort(key=lambda i: i.id)
        out = []
        for info in infos:
            if state is not None and info.state != state:
                continue
            if category is not None and info.category != category:
                continue
            if tag is not None and tag not in info.tags:
                continue
            if capability is not None and not (
                capability in info.capabilities or f"export:{capability}" in info.capabilities
            ):
                continue
            out.append(info)
        return out

    def info(self, plugin_id: str) -> dict[str, Any]:
        """Everything known about one plugin, with its call metrics, as JSON data."""
        self.flush_metrics()
        row = self._db.get(plugin_id)
        if row is None:
            for info in self.catalog.discovered(set()):
                if info.id == plugin_id:
                    return info.to_dict(full=True)
            raise NotFoundError(f"no plugin {plugin_id!r} is registered", plugin_id=plugin_id)
        manifest = self.catalog.fresh_manifest(row).to_dict()
        info = PluginInfo.from_manifest_dict(
            manifest, state=self.lifecycle.state_of(row).value, source=row.source,
            path=row.path, error=row.error,
        )
        out = info.to_dict(full=True)
        out["metrics"] = self._db.call_summary(plugin_id)
        out["data_dir"] = str(self.home / "data" / plugin_id)
        out["budgets"] = self.budget_usage(plugin_id)
        return out

    def budget_usage(self, plugin_id: str) -> dict[str, dict[str, Any]]:
        """Each budget of a registered plugin: its limit and, where the host keeps it, its use.

        ``{"disk-mb": {"limit": 10, "used": 1234, "cap": 10485760, "unit": "bytes"}, ...}``;
        ``log-lines`` and ``log-kb`` are per call, so they have no ``used``.
        """
        row = self.catalog.row(plugin_id)
        sandbox = self.catalog.fresh_manifest(row).sandbox
        out: dict[str, dict[str, Any]] = {}

        def put(key: str, used: int | None, unit: str) -> None:
            limit = sandbox.limit(key)
            cap = limit * (1024 * 1024 if key.endswith("-mb") else 1024 if key.endswith("-kb")
                           else 1)
            entry: dict[str, Any] = {"limit": limit, "cap": cap, "unit": unit}
            if used is not None:
                entry["used"] = used
            out[key] = entry

        for key, used in dir_usage(self.home, plugin_id).items():
            put(key, used, "bytes")
        state_bytes, state_keys, event_bytes = self._services.usage(plugin_id)
        put("state-mb", state_bytes, "bytes")
        put("state-keys", state_keys, "keys")
        put("events-mb", event_bytes, "bytes")
        queue = self._services.budgets.queue(plugin_id)
        put("queue-mb", queue.used if queue is not None else 0, "bytes")
        put("log-lines", None, "lines per call")
        put("log-kb", None, "bytes per call")
        return out

    def _status_of(self, plugin_id: str) -> str | None:
        row = self._db.get(plugin_id)
        return None if row is None else self.lifecycle.state_of(row).value

    # -- registration ---------------------------------------------------------

    def register(self, *sources: str | os.PathLike[str]) -> builtins.list[PluginInfo]:
        """Register plugin directories or ``.corral`` archives (copied into the home).

        All sources are checked together (dependencies may be among them) before
        anything is written; on any error nothing is registered.  A source that
        is already a directory under ``<home>/plugins`` or a pip-installed
        plugin is registered where it is.
        """
        if not sources:
            raise UsageError("register needs at least one plugin directory or archive")
        with self._locked():
            staged: builtins.list[tuple[Manifest, Path, str, bool]] = []
            placed: builtins.list[Path] = []
            try:
                for source in sources:
                    staged.append(self._stage(Path(source)))
                known = self.catalog.known()
                batch: dict[str, Manifest] = {}
                for manifest, _, _, _ in staged:
                    if manifest.id in known or manifest.id in batch:
                        where = self._db.get(manifest.id)
                        raise InvalidPluginError(
                            f"a plugin with id {manifest.id!r} is already registered"
                            + (f" (version {where.version} from {where.path})" if where else ""),
                            plugin_id=manifest.id,
                        )
                    batch[manifest.id] = manifest
                    check_requires_corral(manifest, __version__)
                    self.check_grants(manifest)
                everything = {**known, **batch}
                cycle = find_cycle({pid: tuple(m.dependencies) for pid, m in everything.items()})
                if cycle:
                    raise InvalidPluginError(
                        "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
                        plugin_id=cycle[0],
                        cycle=cycle,
                    )
                for manifest in batch.values():
                    check_dependencies(manifest, everything)
                for m, path, _, temp in staged:
                    placed.append(self._place(m, path, temp))
            except BaseException:
                for _, path, _, temp in staged:
                    if temp:
                        _rmtree(path)
                self._unplace(staged, placed)
                raise
            now = time.time()
            try:
                with self._db.transaction() as conn:
                    for (manifest, _, source_kind, _), path in zip(staged, placed, strict=True):
                        st = (path / MANIFEST_NAME).stat()
                        self._db.insert(
                            conn,
                            PluginRow(
                                id=manifest.id,
                                version=manifest.version,
                                path=str(path),
                                source=source_kind,
                                state=State.REGISTERED.value,
                                error=None,
                                manifest=manifest.to_dict(),
                                manifest_mtime_ns=st.st_mtime_ns,
                                manifest_size=st.st_size,
                                registered_at=now,
                                updated_at=now,
                            ),
                        )
            except BaseException:
                self._unplace(staged, placed)
                raise
        return [self._info_of(m.id) for m, _, _, _ in staged]

    async def aregister(self, *sources: str | os.PathLike[str]) -> builtins.list[PluginInfo]:
        """Async twin of :meth:`register`."""
        return await _to_thread(self.register, *sources)

    def check_grants(self, manifest: Manifest) -> None:
        """Refuse grants no plugin gets by default, unless this home's settings allow them.

        See :mod:`corral._model.grants`: writing ``/``, the home or plugins' folders,
        reading the home's database, keys and secrets.

        Raises:
            PolicyDenied: naming each such grant and its manifest key.
        """
        if setting_flag(self.home, *ALLOW_SETTING):
            return
        try:
            user_home: Path | None = Path.home()
        except RuntimeError:  # no home directory known for this user
            user_home = None
        refuse_broad_grants(manifest.permissions, plugin_id=manifest.id,
                            homes=[self.home, self.home.resolve()], user_home=user_home,
                            settings=str(self.home / SETTINGS_FILE))

    def _stage(self, source: Path) -> tuple[Manifest, Path, str, bool]:
        """Bring a source into a staging directory and validate it statically.

        Returns the manifest, the directory, the source kind and whether the
        directory is a temporary copy owned by this registration.
        """
        from corral._disk.targets import check_targets
        from corral._model.manifest import load_manifest

        source = source.expanduser().absolute()
        plugins = self.home / "plugins"
        if not source.exists():
            raise NotFoundError(f"{source}: no such file or directory", path=str(source))
        if source.is_dir():
            in_place = (
                source.parent in (plugins, self.home / "store")
                or self._is_entry_point_dir(source)
            )
            if in_place:
                manifest = load_manifest(source)
                check_targets(source, manifest)
                _check_micro_shapes(source, manifest)
                kind = {plugins: "directory", self.home / "store": "installed"}.get(
                    source.parent, "entry-point"
                )
                return manifest, source, kind, False
            load_manifest(source)  # fail fast, before copying anything
            staging = plugins / f".staging-{os.urandom(16).hex()}"
            from corral._disk.tree import copy_plugin_dir

            copy_plugin_dir(source, staging)
            kind = "directory"
        else:
            from corral._disk.archive import extract_archive

            staging = plugins / f".staging-{os.urandom(16).hex()}"
            extract_archive(source, staging)
            kind = "archive"
        try:
            manifest = load_manifest(staging)
            check_targets(staging, manifest)
            _check_micro_shapes(staging, manifest)
        except BaseException:
            _rmtree(staging)
            raise
        return manifest, staging, kind, True

    def adopt_installed(self, plugins: Mapping[str, str | os.PathLike[str]]) -> None:
        """Make the plugins of source ``installed`` exactly ``plugins`` (id -> store tree).

        The installer calls this after each switch of ``corral.lock``: new ids
        are registered in place, missing ones forgotten (their trees are kept),
        moved ones re-pointed; an enabled plugin stays enabled on its new
        version.  One transaction; nothing is written when all already match.
        Plugins registered by hand are left alone; an id among them is refused.
        A plugin enabled here that fails to start on its new version raises its
        error, after the others were re-enabled (the installer then rolls back).
        """
        with self._locked():
            rows = {r.id: r for r in self._db.all()}
            wanted = {pid: Path(p).absolute() for pid, p in plugins.items()}
            for pid in wanted:
                row = rows.get(pid)
                if row is not None and row.source != "installed":
                    raise InvalidPluginError(
                        f"{pid} is registered by hand from {row.path}; remove it first",
                        plugin_id=pid,
                        path=row.path,
                    )
            gone = [p for p, r in rows.items() if r.source == "installed" and p not in wanted]
            moved = [p for p, d in wanted.items() if p in rows and rows[p].path != str(d)]
            new = [p for p in wanted if p not in rows]
            if not (gone or moved or new):
                return
            staged = {p: self._stage(wanted[p])[0] for p in [*moved, *new]}
            again = [pid for pid in [*gone, *moved] if self.lifecycle.stop(pid)]
            now = time.time()
            with self._db.transaction() as conn:
                for pid in gone:
                    self._db.delete(conn, pid)
                for pid in [*moved, *new]:
                    manifest, path = staged[pid], wanted[pid]
                    st = (path / MANIFEST_NAME).stat()
                    old = rows.get(pid)
                    state = old.state if old is not None else State.REGISTERED.value
                    if state not in (State.ENABLED.value, State.DISABLED.value):
                        state = State.REGISTERED.value
                    if old is not None:  # re-point in place: the call metrics stay
                        conn.execute(
                            "UPDATE plugins SET version = ?, path = ?, state = ?, error = NULL, "
                            "manifest = ?, manifest_mtime_ns = ?, manifest_size = ?, "
                            "updated_at = ? WHERE id = ?",
                            (manifest.version, str(path), state,
                             json.dumps(manifest.to_dict(), sort_keys=True), st.st_mtime_ns,
                             st.st_size, now, pid),
                        )
                        continue
                    self._db.insert(
                        conn,
                        PluginRow(
                            id=pid, version=manifest.version, path=str(path),
                            source="installed", state=state, error=None,
                            manifest=manifest.to_dict(), manifest_mtime_ns=st.st_mtime_ns,
                            manifest_size=st.st_size,
                            registered_at=now, updated_at=now,
                        ),
                    )
            again = [p for p in again if p in wanted]
            if again:
                self.lifecycle.restart(again)

    def _is_entry_point_dir(self, path: Path) -> bool:
        return path in self.catalog.entry_point_dirs()

    def _place(self, manifest: Manifest, path: Path, temp: bool) -> Path:
        if not temp:
            return path
        final_path = self.home / "plugins" / manifest.id
        if final_path.exists():
            raise InvalidPluginError(
                f"{final_path} already exists; remove it or register it in place",
                plugin_id=manifest.id,
            )
        os.rename(path, final_path)
        return final_path

    @staticmethod
    def _unplace(
        staged: builtins.list[tuple[Manifest, Path, str, bool]], placed: builtins.list[Path]
    ) -> None:
        """Delete the copies a failed registration already moved into place."""
        for (_, _, _, temp), path in zip(staged, placed, strict=False):
            if temp:
                _rmtree(path)

    def _info_of(self, plugin_id: str) -> PluginInfo:
        row = self.catalog.row(plugin_id)
        return PluginInfo.from_manifest_dict(
            row.manifest, state=self.lifecycle.state_of(row).value, source=row.source,
            path=row.path, error=row.error,
        )

    def unregister(self, plugin_id: str, *, purge_data: bool = False) -> None:
        """Forget a plugin: disable and unload it if needed, then delete its copy.

        Refused while other registered plugins depend on it.  ``purge_data``
        also deletes its data directory.
        """
        with self._locked():
            row = self.catalog.row(plugin_id)
            known = self.catalog.known()
            needed_by = [p for p in dependents_of(plugin_id, known) if p != plugin_id]
            if needed_by:
                raise LifecycleError(
                    f"cannot remove {plugin_id}: needed by {', '.join(needed_by)}",
                    plugin_id=plugin_id,
                    dependents=needed_by,
                )
            state = self.lifecycle.state_of(row)
            if state is State.ENABLED:
                self.lifecycle.disable_one(plugin_id)
            active = self._active.get(plugin_id)
            if active is not None and active.state in (State.LOADED, State.DISABLED):
                self.lifecycle.unload_one(plugin_id)
            now_state = self.lifecycle.state_of(self.catalog.row(plugin_id))
            check_transition(plugin_id, now_state, "unregister")
            with self._db.transaction() as conn:
                self._db.delete(conn, plugin_id)
            self._active.pop(plugin_id, None)
            path = Path(row.path)
            if row.source != "entry-point" and path.parent == self.home / "plugins":
                trash = path.with_name(f".trash-{os.urandom(16).hex()}")
                with contextlib.suppress(FileNotFoundError):  # already deleted by hand
                    os.rename(path, trash)
                    _rmtree(trash)
            if purge_data:
                for sub in ("data", "cache", "tmp"):
                    _rmtree(self.home / sub / plugin_id)

    async def aunregister(self, plugin_id: str, *, purge_data: bool = False) -> None:
        """Async twin of :meth:`unregister`."""
        await _to_thread(self.unregister, plugin_id, purge_data=purge_data)

    # -- lifecycle ------------------------------------------------------------

    def load(self, plugin_id: str) -> PluginInfo:
        """Load a plugin and its dependencies (import code, run ``on_load``)."""
        with self._locked():
            self.lifecycle.load(plugin_id)
        return self._info_of(plugin_id)

    def enable(self, plugin_id: str) -> PluginInfo:
        """Enable a plugin after its dependencies, loading whatever is not loaded.

        A plugin in ``failed`` is unloaded and tried again: that is how it recovers.
        """
        with self._locked():
            self.lifecycle.enable(plugin_id)
        return self._info_of(plugin_id)

    def disable(self, plugin_id: str, *, cascade: bool = False) -> builtins.list[str]:
        """Disable a plugin; refused while enabled plugins need it unless ``cascade``.

        Returns the ids disabled, dependents first.
        """
        with self._locked():
            return self.lifecycle.disable(plugin_id, cascade=cascade)

    def unload(self, plugin_id: str) -> PluginInfo:
        """Unload a loaded or disabled plugin (run ``on_unload``, release its code)."""
        with self._locked():
            self.lifecycle.unload(plugin_id)
        return self._info_of(plugin_id)

    def start(self) -> builtins.list[str]:
        """Bring back every plugin recorded as enabled, dependencies first.

        A plugin that fails to come back goes to ``failed``; the others still start.
        Returns the ids now enabled.
        """
        with self._locked():
            return self.lifecycle.start()

    async def aload(self, plugin_id: str) -> PluginInfo:
        """Async twin of :meth:`load`."""
        return await _to_thread(self.load, plugin_id)

    async def aenable(self, plugin_id: str) -> PluginInfo:
        """Async twin of :meth:`enable`."""
        return await _to_thread(self.enable, plugin_id)

    async def adisable(self, plugin_id: str, *, cascade: bool = False) -> builtins.list[str]:
        """Async twin of :meth:`disable`."""
        return await _to_thread(self.disable, plugin_id, cascade=cascade)

    async def aunload(self, plugin_id: str) -> PluginInfo:
        """Async twin of :meth:`unload`."""
        return await _to_thread(self.unload, plugin_id)

    async def astart(self) -> builtins.list[str]:
        """Async twin of :meth:`start`."""
        return await _to_thread(self.start)

    # -- micro-plugins --------------------------------------------------------

    @property
    def micro(self) -> MicroManager:
        """The micro-plugins of the enabled plugins, ready to run and compose."""
        return self.attachments.micro

    def run_pipeline(self, pipeline_id: str, input: Any = None) -> Any:
        """Run a ``[[pipeline]]`` of an enabled plugin over :attr:`micro`."""
        return self.attachments.run_pipeline(pipeline_id, input)

    # -- services offered to plugins (layer 3) ---------------------------------

    @property
    def bus(self) -> EventBus:
        """The event bus, with the durable log ``<home>/events.db`` attached."""
        return self._services.bus

    @property
    def shared_state(self) -> StateStore:
        """Versioned shared state in ``<home>/state.db``."""
        return self._services.shared_state

    @property
    def messenger(self) -> Messenger:
        """Request/response and broadcast between plugins."""
        return self._services.messenger

    @property
    def secrets(self) -> SecretStore:
        """The home's encrypted secrets."""
        return self._services.secrets

    @property
    def config_manager(self) -> ConfigManager:
        """Layered, validated plugin configuration from ``<home>/config.toml``."""
        return self._services.config_manager

    def watch_config(self) -> None:
        """Follow ``config.toml``: valid changes reach plugins' ``on_config_change``."""
        self._services.watch_config(self.attachments.config_changed)

    # -- calling --------------------------------------------------------------

    def call(self, plugin_id: str, export: str, input: Any = None) -> Any:
        """Run an export (or micro-plugin) of an enabled plugin with ``(input, ctx)``.

        Input and output must be JSON data.  An exception in the plugin becomes
        :class:`PluginError` carrying the traceback; the host carries on.
        """
        # The benchmarked fast path, inline: a delegation would cost a frame per call.
        exports = self._fast.get(plugin_id)
        fast = exports.get(export) if exports is not None else None
        if fast is None or fast[2]:
            return self._call_slow(plugin_id, export, input)
        fn, ctx, _, key = fast
        t = type(input)
        if t is dict:
            for k, v in input.items():
                if type(k) is not str or type(v) not in SIMPLE:
                    check_input(plugin_id, export, input)
                    break
        elif t not in SIMPLE:
            check_input(plugin_id, export, input)
        start = now()
        try:
            out = fn(input, ctx)
        except Exception as exc:
            self._metrics.append((key, start, now(), "plugin_error"))
            raise plugin_error(plugin_id, export, exc) from exc
        self._metrics.append((key, start, now(), "ok"))
        t = type(out)
        if t is dict:
            for k, v in out.items():
                if type(k) is not str or type(v) not in SIMPLE:
                    return checked_output(plugin_id, export, out)
        elif t not in SIMPLE:
            return checked_output(plugin_id, export, out)
        return out

    async def acall(self, plugin_id: str, export: str, input: Any = None) -> Any:
        """Async twin of :meth:`call`: awaits async exports, runs sandboxed calls off-loop."""
        exports = self._fast.get(plugin_id)
        fast = exports.get(export) if exports is not None else None
        if fast is not None and fast[2]:
            check_input(plugin_id, export, input)
            fn, ctx, _, key = fast
            start = now()
            try:
                out = await fn(input, ctx)
            except Exception as exc:
                self._metrics.append((key, start, now(), "plugin_error"))
                raise plugin_error(plugin_id, export, exc) from exc
            self._metrics.append((key, start, now(), "ok"))
            return checked_output(plugin_id, export, out)
        if fast is not None:
            return self.call(plugin_id, export, input)
        return await _to_thread(self._call_slow, plugin_id, export, input)

    def _call_slow(self, plugin_id: str, export: str, input: Any) -> Any:
        """Activate on demand (a plugin enabled by another process), then call."""
        check_input(plugin_id, export, input)
        with self._locked():
            active = self.lifecycle.ready_for_call(plugin_id, export)
        if active.manifest.sandbox.isolation == "none":
            active.budget.before_call()  # refused while {data}, {tmp} or {cache} is over
            self.lifecycle.refresh_fast(active)
            if self._fast[plugin_id][export][2]:
                return self._runner.submit(self.acall(plugin_id, export, input)).result()
            return self.call(plugin_id, export, input)
        return self.attachments.call_sandboxed(active, export, input)

    # -- metrics --------------------------------------------------------------

    def record_call(self, row: tuple[Any, ...]) -> None:
        """Record one finished sandboxed call's metrics; written with the next flush."""
        self._call_metrics.record(row)

    def flush_metrics(self) -> None:
        """Write the calls' metrics recorded so far to the host database, in one transaction."""
        self._call_metrics.flush()

    # -- validation -----------------------------------------------------------

    def validate(self, path: str | os.PathLike[str], *, sandbox: bool = False) -> dict[str, Any]:
        """Check a plugin directory or archive without registering it.

        ``sandbox=True`` also imports it in a throwaway sandbox and times the import.
        """
        from corral._pdk.validate import validate_plugin

        return validate_plugin(
            Path(path), host_version=__version__, known=self.catalog.known(), sandbox=sandbox
        )


async def _to_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking host work off the event loop (asyncio is imported only when used)."""
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)


def _check_micro_shapes(plugin_dir: Path, manifest: Manifest) -> None:
    """Each ``[[micro]]`` handler's annotations, read from source, against its kind."""
    # deferred like check_targets in _stage: ast and the micro model stay off `corral list`
    from corral._disk.targets import handler_annotations
    from corral._model.micro import check_annotated_shape

    for i, m in enumerate(manifest.micro):
        found = handler_annotations(plugin_dir, m.handler)
        if found is None:
            continue
        try:
            check_annotated_shape(m.type, m.id, *found)
        except InvalidPluginError as exc:
            raise InvalidPluginError(f"micro[{i}] ({m.handler}): {exc.message}",
                                     plugin_id=manifest.id, key=f"micro[{i}].handler",
                                     micro=m.id) from None


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
