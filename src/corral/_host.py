"""``Host``: the object an application embeds to register, run and manage plugins."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from corral._disk.files import exclusive
from corral._disk.layout import DB_NAME, HOME_DIRS, MANIFEST_NAME, default_home
from corral._errors import (
    CorralError,
    InvalidPluginError,
    LifecycleError,
    ManifestError,
    NotFoundError,
    PluginError,
    PluginTimeout,
    PolicyDenied,
    ResourceLimitExceeded,
    UsageError,
)
from corral._model.deps import (
    check_dependencies,
    check_requires_corral,
    dependency_order,
    dependents_of,
    find_cycle,
)
from corral._model.info import PluginInfo
from corral._model.jsoncheck import SIMPLE_TYPES, json_problem
from corral._model.lifecycle import DURABLE_STATES, State, check_transition
from corral._runtime.budgets import CHECK_EVERY_S, DirBudget, DirWatch, dir_usage, wipe
from corral._runtime.database import HostDatabase, PluginRow
from corral._runtime.runner import Runner
from corral._services.context import PluginContext, plugin_paths
from corral._services.hub import Services
from corral._version import __version__

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._runtime.loader import ModuleScope
    from corral._services.config import ConfigManager
    from corral._services.events.bus import EventBus
    from corral._services.messages import Messenger
    from corral._services.micro.manager import MicroManager
    from corral._services.secrets import SecretStore
    from corral._services.state import StateStore

__all__ = ["Host"]

T = TypeVar("T")

HOOKS: Final = ("on_load", "on_enable", "on_disable", "on_unload", "on_error")
_METRICS_MAX: Final = 100_000


@final
class _Active:
    """A plugin's life in this process: state, imported code, context, entry object."""

    __slots__ = ("budget", "ctx", "entry", "exports", "manifest", "scope", "spec", "state")

    def __init__(self, manifest: Manifest, ctx: PluginContext,
                 watch_from: Callable[[], DirWatch] | None = None) -> None:
        self.manifest = manifest
        self.ctx = ctx
        #: The host-side check of its {data}, {tmp} and {cache} totals.
        self.budget = DirBudget(manifest.id, ctx.paths, manifest.sandbox, watch_from)
        self.state = State.REGISTERED
        self.scope: ModuleScope | None = None
        self.entry: Any = None
        self.exports: dict[str, Callable[..., Any]] = {}
        #: A sandboxed plugin's SandboxSpec, built on its first call in this activation.
        self.spec: Any = None


@final
class Host:
    """Registers, loads, enables, runs and removes plugins under one home directory.

    The home holds the plugins (``plugins/``), their data (``data/<id>``), caches,
    private temporary directories and the host database ``corral.db``.  Every
    method is safe to call from several threads; several processes may share a
    home.  Use it as a context manager, or call :meth:`close`.

    ``shared_fork_server=True`` (what the CLI uses) forks sandboxed workers from
    a per-home fork-server daemon (``run/``) rather than a fork server of this
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
        #: Fork sandboxed workers from the per-home fork-server daemon (one-shot processes).
        self.shared_fork_server = shared_fork_server
        self.home = Path(home).expanduser().absolute() if home else default_home().absolute()
        self.workspace = Path(workspace).absolute() if workspace else Path.cwd()
        self.hook_timeout = hook_timeout
        self._config = {k: dict(v) for k, v in (config or {}).items()}
        for sub in HOME_DIRS:
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self._store = HostDatabase(self.home / DB_NAME)
        self._active: dict[str, _Active] = {}
        # plugin id -> export name -> (function, ctx, is async, metrics key): the call fast path
        self._fast: dict[str, dict[str, _FastEntry]] = {}
        self._rlock = threading.RLock()
        self._metrics: deque[tuple[Any, ...]] = deque(maxlen=_METRICS_MAX)
        self._sandboxed_metrics: deque[tuple[Any, ...]] = deque(maxlen=_METRICS_MAX)
        self._runner = Runner()
        self._supervisor: Any = None
        self._async_exports: set[tuple[str, str]] = set()
        self._micro_mgr: MicroManager | None = None
        self._closed = False
        self._services = Services(self.home, status_of=self._status_of)
        self._budget_thread: threading.Thread | None = None
        self._budget_stop = threading.Event()
        self._dir_watcher: DirWatch | None = None

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
        self._budget_stop.set()
        if self._budget_thread is not None:
            self._budget_thread.join(timeout=5)
        if self._dir_watcher is not None:
            self._dir_watcher.close()
        if self._micro_mgr is not None:
            self._micro_mgr.close()
        with contextlib.suppress(Exception):
            self.flush_metrics()
        if self._supervisor is not None:
            self._supervisor.close()
        self._runner.close()
        for active in list(self._active.values()):
            if active.scope is not None:
                active.scope.release()
        self._services.close()
        self._store.close()

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

    def _row(self, plugin_id: str) -> PluginRow:
        row = self._store.get(plugin_id)
        if row is None:
            raise NotFoundError(f"no plugin {plugin_id!r} is registered", plugin_id=plugin_id)
        return row

    def _fresh_manifest(self, row: PluginRow) -> Manifest:
        """The row's manifest, re-read from disk if ``corral.toml`` changed since it was stored."""
        from corral._model.manifest import Manifest, load_manifest

        path = Path(row.path) / MANIFEST_NAME
        try:
            st = path.stat()
        except OSError:
            raise InvalidPluginError(
                f"{row.id}: {path} is gone; remove and register the plugin again",
                plugin_id=row.id,
                file=str(path),
            ) from None
        if (st.st_mtime_ns, st.st_size) == (row.manifest_mtime_ns, row.manifest_size):
            return Manifest.from_dict(row.manifest, file=str(path))
        manifest = load_manifest(Path(row.path))
        if manifest.id != row.id:
            raise ManifestError(
                f"id changed from {row.id!r} to {manifest.id!r}; remove and register again",
                file=str(path),
                key="plugin.id",
                plugin_id=row.id,
            )
        self._store.refresh_manifest(
            row.id, manifest.version, manifest.to_dict(), st.st_mtime_ns, st.st_size
        )
        return manifest

    def _known(self) -> dict[str, Manifest]:
        """Every registered plugin whose manifest is readable now."""
        return self._read_all()[0]

    def _read_all(self) -> tuple[dict[str, Manifest], dict[str, CorralError]]:
        known: dict[str, Manifest] = {}
        broken: dict[str, CorralError] = {}
        for row in self._store.all():
            try:
                known[row.id] = self._fresh_manifest(row)
            except CorralError as exc:
                broken[row.id] = exc
        return known, broken

    def _plan(self, plugin_id: str) -> tuple[dict[str, Manifest], builtins.list[str]]:
        """The known manifests and ``plugin_id`` with its dependencies, dependencies first.

        A plugin in that chain whose manifest no longer reads raises its own error
        (naming the file and key), not a confusing "not registered".
        """
        known, broken = self._read_all()
        if plugin_id in broken:
            raise broken[plugin_id]
        self._row(plugin_id)
        try:
            return known, dependency_order([plugin_id], known)
        except InvalidPluginError as exc:
            dep = exc.details.get("dependency")
            if isinstance(dep, str) and dep in broken:
                raise broken[dep] from exc
            raise

    def _state_of(self, row: PluginRow) -> State:
        active = self._active.get(row.id)
        return active.state if active is not None else State(row.state)

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
        infos: builtins.list[PluginInfo] = []
        registered: set[str] = set()
        for row in self._store.all():
            registered.add(row.path)
            manifest = row.manifest
            error = row.error
            path = Path(row.path) / MANIFEST_NAME
            try:
                st = path.stat()
                if (st.st_mtime_ns, st.st_size) != (row.manifest_mtime_ns, row.manifest_size):
                    manifest = self._fresh_manifest(row).to_dict()
            except OSError:
                error = {"code": "invalid", "message": f"{path} is gone"}
            except CorralError as exc:
                error = exc.to_dict()
            infos.append(
                PluginInfo.from_manifest_dict(
                    manifest,
                    state=self._state_of(row).value,
                    source=row.source,
                    path=row.path,
                    error=error,
                )
            )
        if discovered:
            infos.extend(self._discovered(registered))
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

    def _discovered(self, registered: set[str]) -> builtins.list[PluginInfo]:
        from corral._runtime.discovery import discover

        return discover(self._store, self.home / "plugins", registered)

    def _entry_point_dirs(self) -> builtins.list[Path]:
        from corral._runtime.discovery import entry_point_dirs

        return entry_point_dirs(self._store)

    def info(self, plugin_id: str) -> dict[str, Any]:
        """Everything known about one plugin, with its call metrics, as JSON data."""
        self.flush_metrics()
        row = self._store.get(plugin_id)
        if row is None:
            for info in self._discovered(set()):
                if info.id == plugin_id:
                    return info.to_dict(full=True)
            raise NotFoundError(f"no plugin {plugin_id!r} is registered", plugin_id=plugin_id)
        manifest = self._fresh_manifest(row).to_dict()
        info = PluginInfo.from_manifest_dict(
            manifest, state=self._state_of(row).value, source=row.source, path=row.path,
            error=row.error,
        )
        out = info.to_dict(full=True)
        out["metrics"] = self._store.call_summary(plugin_id)
        out["data_dir"] = str(self.home / "data" / plugin_id)
        out["budgets"] = self.budget_usage(plugin_id)
        return out

    def budget_usage(self, plugin_id: str) -> dict[str, dict[str, Any]]:
        """Each budget of a registered plugin: its limit and, where the host keeps it, its use.

        ``{"disk-mb": {"limit": 10, "used": 1234, "cap": 10485760, "unit": "bytes"}, ...}``;
        ``log-lines`` and ``log-kb`` are per call, so they have no ``used``.
        """
        row = self._row(plugin_id)
        sandbox = self._fresh_manifest(row).sandbox
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
                known = self._known()
                batch: dict[str, Manifest] = {}
                for manifest, _, _, _ in staged:
                    if manifest.id in known or manifest.id in batch:
                        where = self._store.get(manifest.id)
                        raise InvalidPluginError(
                            f"a plugin with id {manifest.id!r} is already registered"
                            + (f" (version {where.version} from {where.path})" if where else ""),
                            plugin_id=manifest.id,
                        )
                    batch[manifest.id] = manifest
                    check_requires_corral(manifest, __version__)
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
                with self._store.transaction() as conn:
                    for (manifest, _, source_kind, _), path in zip(staged, placed, strict=True):
                        st = (path / MANIFEST_NAME).stat()
                        self._store.insert(
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
            rows = {r.id: r for r in self._store.all()}
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
            again: builtins.list[str] = []
            for pid in [*gone, *moved]:
                active = self._active.get(pid)
                if active is None:
                    continue
                if active.state is State.ENABLED:
                    again.append(pid)
                    with contextlib.suppress(CorralError):
                        self._disable_one(pid)
                with contextlib.suppress(CorralError):
                    self._unload_one(pid, quiet=True)
                self._active.pop(pid, None)
            now = time.time()
            with self._store.transaction() as conn:
                for pid in gone:
                    self._store.delete(conn, pid)
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
                    self._store.insert(
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
            if not again:
                return
            known = self._known()
            failed: builtins.list[CorralError] = []
            for pid in dependency_order(again, known):
                if self._current(pid) is State.ENABLED and pid in self._active:
                    continue
                try:
                    if self._current(pid) not in (State.LOADED, State.DISABLED):
                        self._load_one(pid, known[pid])
                    self._enable_one(pid)
                except CorralError as exc:  # the others still come back
                    failed.append(exc)
            if failed:
                raise failed[0]

    def _is_entry_point_dir(self, path: Path) -> bool:
        return path in self._entry_point_dirs()

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
        row = self._row(plugin_id)
        return PluginInfo.from_manifest_dict(
            row.manifest, state=self._state_of(row).value, source=row.source, path=row.path,
            error=row.error,
        )

    def unregister(self, plugin_id: str, *, purge_data: bool = False) -> None:
        """Forget a plugin: disable and unload it if needed, then delete its copy.

        Refused while other registered plugins depend on it.  ``purge_data``
        also deletes its data directory.
        """
        with self._locked():
            row = self._row(plugin_id)
            known = self._known()
            needed_by = [p for p in dependents_of(plugin_id, known) if p != plugin_id]
            if needed_by:
                raise LifecycleError(
                    f"cannot remove {plugin_id}: needed by {', '.join(needed_by)}",
                    plugin_id=plugin_id,
                    dependents=needed_by,
                )
            state = self._state_of(row)
            if state is State.ENABLED:
                self._disable_one(plugin_id)
            active = self._active.get(plugin_id)
            if active is not None and active.state in (State.LOADED, State.DISABLED):
                self._unload_one(plugin_id)
            check_transition(plugin_id, self._state_of(self._row(plugin_id)), "unregister")
            with self._store.transaction() as conn:
                self._store.delete(conn, plugin_id)
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
            known, order = self._plan(plugin_id)
            for pid in order:
                state = self._current(pid)
                if pid != plugin_id and state in (State.ENABLED, State.LOADED):
                    continue
                if pid == plugin_id or state not in (State.LOADED, State.ENABLED):
                    self._load_one(pid, known[pid])
        return self._info_of(plugin_id)

    def enable(self, plugin_id: str) -> PluginInfo:
        """Enable a plugin after its dependencies, loading whatever is not loaded.

        A plugin in ``failed`` is unloaded and tried again: that is how it recovers.
        """
        with self._locked():
            known, order = self._plan(plugin_id)
            for pid in order:
                state = self._current(pid)
                if state is State.ENABLED:
                    if pid == plugin_id:
                        check_transition(pid, state, "enable")
                    continue
                if state is State.FAILED and pid in self._active:
                    self._unload_one(pid, quiet=True)
                if self._current(pid) not in (State.LOADED, State.DISABLED):
                    self._load_one(pid, known[pid])
                self._enable_one(pid)
        return self._info_of(plugin_id)

    def disable(self, plugin_id: str, *, cascade: bool = False) -> builtins.list[str]:
        """Disable a plugin; refused while enabled plugins need it unless ``cascade``.

        Returns the ids disabled, dependents first.
        """
        with self._locked():
            known = self._known()
            self._row(plugin_id)
            check_transition(plugin_id, self._recorded(plugin_id), "disable")
            enabled_dependents = [
                p for p in dependents_of(plugin_id, known) if self._recorded(p) is State.ENABLED
            ]
            if enabled_dependents and not cascade:
                raise LifecycleError(
                    f"cannot disable {plugin_id}: enabled plugins need it: "
                    f"{', '.join(enabled_dependents)} (disable them first, or cascade)",
                    plugin_id=plugin_id,
                    dependents=enabled_dependents,
                )
            done = []
            for pid in reversed(enabled_dependents):
                self._disable_one(pid)
                done.append(pid)
            self._disable_one(plugin_id)
            done.append(plugin_id)
            return done

    def unload(self, plugin_id: str) -> PluginInfo:
        """Unload a loaded or disabled plugin (run ``on_unload``, release its code)."""
        with self._locked():
            self._row(plugin_id)
            check_transition(plugin_id, self._current(plugin_id), "unload")
            self._unload_one(plugin_id)
        return self._info_of(plugin_id)

    def start(self) -> builtins.list[str]:
        """Bring back every plugin recorded as enabled, dependencies first.

        A plugin that fails to come back goes to ``failed``; the others still start.
        Returns the ids now enabled.
        """
        with self._locked():
            known = self._known()
            wanted = [r.id for r in self._store.all() if r.state == State.ENABLED.value]
            started = []
            for pid in wanted:
                try:
                    for dep in dependency_order([pid], known):
                        if self._current(dep) is State.ENABLED and dep in self._active:
                            continue
                        if self._current(dep) not in (State.LOADED, State.DISABLED) or (
                            dep not in self._active
                        ):
                            self._load_one(dep, known[dep])
                        self._enable_one(dep)
                    started.append(pid)
                except CorralError:
                    continue
            return started

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

    def _current(self, plugin_id: str) -> State:
        active = self._active.get(plugin_id)
        if active is not None:
            return active.state
        row = self._store.get(plugin_id)
        if row is None:
            return State.DISCOVERED
        # In a process that has not loaded it, a plugin recorded as enabled or
        # disabled is, for this process, registered: its code has not run here.
        state = State(row.state)
        return State.FAILED if state is State.FAILED else State.REGISTERED

    def _recorded(self, plugin_id: str) -> State:
        """The state in this process if the plugin is active here, else the recorded one."""
        active = self._active.get(plugin_id)
        if active is not None:
            return active.state
        row = self._store.get(plugin_id)
        return State.DISCOVERED if row is None else State(row.state)

    def _persist(self, plugin_id: str, state: State, error: dict[str, Any] | None = None) -> None:
        if state in DURABLE_STATES:
            if error is not None:  # a plugin's message or traceback may quote a secret
                error = self._services.redactor.redact_doc(error)
            self._store.set_state(plugin_id, state.value, error)

    def _load_one(self, plugin_id: str, manifest: Manifest) -> None:
        check_transition(plugin_id, self._current(plugin_id), "load")
        row = self._row(plugin_id)
        check_requires_corral(manifest, __version__)
        plugin_dir = Path(row.path)
        paths = plugin_paths(self.home, self.workspace, plugin_id, plugin_dir)
        for key in ("data", "cache", "tmp"):
            Path(paths[key]).mkdir(parents=True, exist_ok=True)
        config = self._services.plugin_config(
            plugin_id, manifest.permissions, plugin_dir, overrides=self._config.get(plugin_id)
        )
        ctx = PluginContext(plugin_id, paths, config, host=self,
                            permissions=manifest.permissions)
        active = _Active(manifest, ctx, self._dir_watch)
        self._active[plugin_id] = active
        self._services.budgets.set(plugin_id, manifest.sandbox)
        from corral._services.secrets import (
            watch_plugin_log,  # brings logging: not for `corral list`
        )

        watch_plugin_log(plugin_id, self._services.redactor)
        try:
            if manifest.sandbox.isolation == "none":
                self._import_in_process(active, plugin_dir)
            else:
                self._sandbox_ready(manifest)
            self._run_hook(active, "on_load")
        except CorralError as exc:
            self._fail(active, exc)
            raise
        active.state = State.LOADED

    def _import_in_process(self, active: _Active, plugin_dir: Path) -> None:
        import inspect

        from corral._disk.targets import check_targets, targets_of
        from corral._runtime.loader import ModuleScope

        manifest = active.manifest
        check_targets(plugin_dir, manifest)
        scope = ModuleScope(manifest.id, manifest.version, plugin_dir)
        scope.claim({t.partition(":")[0].split(".")[0] for _, t in targets_of(manifest)})
        active.scope = scope
        if manifest.entry:
            entry = scope.resolve(manifest.entry)
            if isinstance(entry, type):
                try:
                    entry = entry()
                except Exception as exc:
                    raise PluginError(
                        f"{manifest.id}: creating {manifest.entry} raised "
                        f"{type(exc).__name__}: {exc}",
                        plugin_id=manifest.id,
                        traceback=_format_tb(exc),
                    ) from exc
            active.entry = entry
        for name, target in manifest.exports.items():
            fn = scope.resolve(target)
            if not callable(fn):
                raise InvalidPluginError(
                    f"{manifest.id}: exports.{name}: {target} is not callable",
                    plugin_id=manifest.id,
                    key=f"exports.{name}",
                )
            active.exports[name] = fn
        for micro in manifest.micro:
            fn = scope.resolve(micro.handler)
            if not callable(fn):
                raise InvalidPluginError(
                    f"{manifest.id}: micro {micro.id}: {micro.handler} is not callable",
                    plugin_id=manifest.id,
                    key="micro",
                )
            active.exports[micro.id] = fn
        for name, fn in active.exports.items():
            if inspect.iscoroutinefunction(fn):
                self._async_exports.add((manifest.id, name))

    def _sandbox_ready(self, manifest: Manifest) -> None:
        """Refuse a sandboxed plugin unless this machine can enforce its isolation level."""
        from corral._services.sandboxed import sandbox_problem

        problem = sandbox_problem(manifest.sandbox.isolation)
        if problem:
            raise PolicyDenied(
                f"{manifest.id} asks for isolation {manifest.sandbox.isolation!r}, which this "
                f"machine cannot enforce: {problem}; it will not run with less",
                plugin_id=manifest.id,
                isolation=manifest.sandbox.isolation,
            )

    def _enable_one(self, plugin_id: str) -> None:
        active = self._active[plugin_id]
        check_transition(plugin_id, active.state, "enable")
        receiver = None
        try:
            self._run_hook(active, "on_enable")
            if self._sandboxed_entry(active):  # its on_message runs in its worker
                from corral._services.sandboxed import sandboxed_receiver

                receiver = sandboxed_receiver(self, active)
        except CorralError as exc:
            self._fail(active, exc)
            raise
        active.state = State.ENABLED
        on_message = getattr(active.entry, "on_message", None) if active.entry else None
        if on_message is not None:
            ctx = active.ctx
            self.messenger.serve(
                plugin_id, lambda message, sender: on_message(message, sender, ctx)
            )
        elif receiver is not None:
            self.messenger.serve(plugin_id, receiver, remote=True)
        self._persist(plugin_id, State.ENABLED)
        self._feed_micro(active)
        if active.manifest.sandbox.isolation == "none":
            self._fast[plugin_id] = self._fast_entries(active)
            self._watch_budgets()

    def _fast_entries(self, active: _Active) -> dict[str, _FastEntry]:
        plugin_id = active.manifest.id
        return {
            name: (fn, active.ctx, (plugin_id, name) in self._async_exports, (plugin_id, name))
            for name, fn in active.exports.items()
        }

    def _watch_budgets(self) -> None:
        """Start the thread that measures in-process plugins' directories (once per host).

        Their calls take the fast path, which measures nothing; a plugin found over
        a directory budget leaves the fast path, and the slow one refuses its calls.
        """
        with self._rlock:
            if self._budget_thread is not None:
                return
            self._budget_thread = threading.Thread(
                target=self._budget_loop, name="corral-budgets", daemon=True
            )
            self._budget_thread.start()

    def _dir_watch(self) -> DirWatch:
        """The inotify instance that tells which plugins' directories changed (made once)."""
        with self._rlock:
            if self._dir_watcher is None:
                self._dir_watcher = DirWatch()
            return self._dir_watcher

    def _budget_loop(self) -> None:
        while not self._budget_stop.wait(CHECK_EVERY_S):
            for pid, active in list(self._active.items()):
                if active.state is not State.ENABLED or active.manifest.sandbox.isolation != "none":
                    continue
                try:
                    active.budget.after_call(0.0)
                except ResourceLimitExceeded:
                    self._fast.pop(pid, None)

    def _disable_one(self, plugin_id: str) -> None:
        self._drop_micro(plugin_id)
        active = self._active.get(plugin_id)
        self._fast.pop(plugin_id, None)
        if active is None:
            # Enabled by another process; nothing ran here, so only the record changes.
            check_transition(plugin_id, State(self._row(plugin_id).state), "disable")
            self._persist(plugin_id, State.DISABLED)
            self._wipe_scratch(plugin_id)
            return
        check_transition(plugin_id, active.state, "disable")
        try:
            self._run_hook(active, "on_disable")
        except CorralError as exc:
            self._fail(active, exc)
            raise
        finally:
            self._stop_worker(plugin_id)
            self._wipe_scratch(plugin_id)
        active.state = State.DISABLED
        self._persist(plugin_id, State.DISABLED)

    def _unload_one(self, plugin_id: str, *, quiet: bool = False) -> None:
        self._drop_micro(plugin_id)
        active = self._active.get(plugin_id)
        if active is None:
            return
        self._fast.pop(plugin_id, None)
        try:
            if active.state is not State.FAILED or active.scope is not None:
                self._run_hook(active, "on_unload")
        except CorralError as exc:
            if not quiet:
                self._fail(active, exc)
                raise
        finally:
            self._stop_worker(plugin_id)
            self._wipe_scratch(plugin_id)
            if active.scope is not None:
                active.scope.release()
                active.scope = None
        active.state = State.UNLOADED
        row = self._store.get(plugin_id)
        if row is not None and row.state != State.REGISTERED.value:
            self._persist(plugin_id, State.REGISTERED)

    # -- micro-plugins --------------------------------------------------------

    @property
    def micro(self) -> MicroManager:
        """The micro-plugins of the enabled plugins, ready to run and compose."""
        with self._rlock:
            if self._micro_mgr is None:
                from corral._services.micro.manager import MicroManager

                self._micro_mgr = MicroManager()
                for active in self._active.values():
                    if active.state is State.ENABLED:
                        self._feed_micro(active)
            return self._micro_mgr

    def _feed_micro(self, active: _Active) -> None:
        """Offer an enabled plugin's ``[[micro]]`` handlers at its isolation level."""
        mgr = self._micro_mgr
        manifest = active.manifest
        if mgr is None or not manifest.micro:
            return
        pid = manifest.id
        if manifest.sandbox.isolation == "none":
            mgr.register_plugin(
                pid,
                manifest.micro,
                ctx=active.ctx,
                version=manifest.version,
                functions={m.id: active.exports[m.id] for m in manifest.micro},
            )
        else:

            def invoke(micro_id: str, value: Any) -> Any:
                return self.call(pid, micro_id, value)

            mgr.register_plugin(pid, manifest.micro, invoke=invoke, version=manifest.version)

    def run_pipeline(self, pipeline_id: str, input: Any = None) -> Any:
        """Run a ``[[pipeline]]`` of an enabled plugin over :attr:`micro`."""
        from corral._services.micro.compose import Composition, pipeline_from_dict

        with self._rlock:
            pipelines = {
                decl.id: pipeline_from_dict(decl.to_dict())
                for active in self._active.values()
                if active.state is State.ENABLED
                for decl in active.manifest.pipelines
            }
        pipeline = pipelines.get(pipeline_id)
        if pipeline is None:
            raise NotFoundError(
                f"no enabled plugin declares a pipeline {pipeline_id!r}", pipeline=pipeline_id
            )
        return Composition(pipeline, self.micro, pipelines).run(input)

    def _drop_micro(self, plugin_id: str) -> None:
        if self._micro_mgr is not None:
            self._micro_mgr.unregister_plugin(plugin_id)

    def _status_of(self, plugin_id: str) -> str | None:
        row = self._store.get(plugin_id)
        return None if row is None else self._state_of(row).value

    def _wipe_scratch(self, plugin_id: str) -> None:
        """Empty a stopped plugin's ``{tmp}`` and ``{cache}``: none of it outlives the run."""
        for name in ("tmp", "cache"):
            wipe(self.home / name / plugin_id)

    def _stop_worker(self, plugin_id: str) -> None:
        self._services.stop(plugin_id)
        if self._supervisor is not None:
            with contextlib.suppress(Exception):
                self._supervisor.stop(plugin_id)

    def _fail(self, active: _Active, exc: CorralError) -> None:
        """Move a plugin to ``failed``, record the error, give ``on_error`` a chance."""
        active.state = State.FAILED
        self._fast.pop(active.manifest.id, None)
        self._persist(active.manifest.id, State.FAILED, exc.to_dict())
        if self._sandboxed_entry(active):
            with contextlib.suppress(CorralError):
                self._sandbox_hook(active, "on_error", exc.to_dict())
            return
        hook = getattr(active.entry, "on_error", None) if active.entry is not None else None
        if hook is not None:
            with contextlib.suppress(CorralError):
                self._call_with_timeout(active, "on_error", hook, exc)

    @staticmethod
    def _sandboxed_entry(active: _Active) -> bool:
        manifest = active.manifest
        return manifest.entry is not None and manifest.sandbox.isolation != "none"

    def _sandbox_hook(self, active: _Active, name: str, value: Any) -> None:
        """Run a lifecycle hook of a sandboxed plugin's entry object inside its worker."""
        from corral._services.sandboxed import call_sandboxed

        call_sandboxed(
            self, self._supervisor_for(), active, name, value,
            target=f"{active.manifest.entry}#{name}",
        )

    def _run_hook(self, active: _Active, name: str) -> None:
        if self._sandboxed_entry(active):
            self._sandbox_hook(active, name, None)
            return
        if active.entry is None:
            return
        hook = getattr(active.entry, name, None)
        if hook is None:
            return
        self._call_with_timeout(active, name, hook, active.ctx)

    def _call_with_timeout(
        self, active: _Active, name: str, fn: Callable[..., Any], arg: Any
    ) -> Any:
        """Run a hook under ``hook_timeout``; a hang or an exception is the plugin's error."""
        import inspect

        plugin_id = active.manifest.id
        timeout = self.hook_timeout
        try:
            if inspect.iscoroutinefunction(fn):
                return self._runner.run_async(fn, arg, timeout)
            return self._runner.run_sync(fn, arg, timeout, f"corral-hook-{plugin_id}-{name}")
        except TimeoutError:
            raise PluginTimeout(
                f"{plugin_id}: {name} did not finish within {timeout:g} s",
                plugin_id=plugin_id,
                hook=name,
                limit="hook-timeout",
                limit_seconds=timeout,
            ) from None
        except CorralError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{plugin_id}: {name} raised {type(exc).__name__}: {exc}",
                plugin_id=plugin_id,
                hook=name,
                traceback=_format_tb(exc),
            ) from exc

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
        self._services.watch_config(self._config_changed)

    def _config_changed(self, plugin_id: str, new: dict[str, Any]) -> None:
        from types import MappingProxyType

        active = self._active.get(plugin_id)
        if active is None:
            return
        resolved = self.secrets.resolve_config(
            new, perms=active.manifest.permissions, plugin_id=plugin_id
        )
        active.ctx.config = MappingProxyType(resolved)
        hook = getattr(active.entry, "on_config_change", None) if active.entry else None
        if hook is not None and active.state is State.ENABLED:
            self._call_with_timeout(active, "on_config_change", hook, active.ctx)

    # -- calling --------------------------------------------------------------

    def call(self, plugin_id: str, export: str, input: Any = None) -> Any:
        """Run an export (or micro-plugin) of an enabled plugin with ``(input, ctx)``.

        Input and output must be JSON data.  An exception in the plugin becomes
        :class:`PluginError` carrying the traceback; the host carries on.
        """
        exports = self._fast.get(plugin_id)
        fast = exports.get(export) if exports is not None else None
        if fast is None or fast[2]:
            return self._call_slow(plugin_id, export, input)
        fn, ctx, _, key = fast
        t = type(input)
        if t is dict:
            for k, v in input.items():
                if type(k) is not str or type(v) not in _SIMPLE:
                    _check_input(plugin_id, export, input)
                    break
        elif t not in _SIMPLE:
            _check_input(plugin_id, export, input)
        start = _now()
        try:
            out = fn(input, ctx)
        except Exception as exc:
            self._metrics.append((key, start, _now(), "plugin_error"))
            raise _plugin_error(plugin_id, export, exc) from exc
        self._metrics.append((key, start, _now(), "ok"))
        t = type(out)
        if t is dict:
            for k, v in out.items():
                if type(k) is not str or type(v) not in _SIMPLE:
                    return self._checked_output(plugin_id, export, out)
        elif t not in _SIMPLE:
            return self._checked_output(plugin_id, export, out)
        return out

    async def acall(self, plugin_id: str, export: str, input: Any = None) -> Any:
        """Async twin of :meth:`call`: awaits async exports, runs sandboxed calls off-loop."""
        exports = self._fast.get(plugin_id)
        fast = exports.get(export) if exports is not None else None
        if fast is not None and fast[2]:
            _check_input(plugin_id, export, input)
            fn, ctx, _, key = fast
            start = _now()
            try:
                out = await fn(input, ctx)
            except Exception as exc:
                self._metrics.append((key, start, _now(), "plugin_error"))
                raise _plugin_error(plugin_id, export, exc) from exc
            self._metrics.append((key, start, _now(), "ok"))
            return self._checked_output(plugin_id, export, out)
        if fast is not None:
            return self.call(plugin_id, export, input)
        return await _to_thread(self._call_slow, plugin_id, export, input)

    def _checked_output(self, plugin_id: str, export: str, out: Any) -> Any:
        problem = json_problem(out)
        if problem:
            raise PluginError(
                f"{plugin_id} {export} returned something that is not JSON data: "
                + problem.replace("$", "result", 1),
                plugin_id=plugin_id,
                export=export,
            )
        return out

    def _call_slow(self, plugin_id: str, export: str, input: Any) -> Any:
        """Activate on demand (a plugin enabled by another process), then call."""
        _check_input(plugin_id, export, input)
        with self._locked():
            row = self._row(plugin_id)
            active = self._active.get(plugin_id)
            if active is None or active.state is not State.ENABLED:
                if active is None and row.state == State.ENABLED.value:
                    if row.manifest.get("sandbox", {}).get("isolation", "strict") != "none":
                        # Let the fork server start while this process loads the plugin.
                        self._prestart_sandbox()
                    known, order = self._plan(plugin_id)
                    for pid in order:
                        if pid in self._active and self._active[pid].state is State.ENABLED:
                            continue
                        if pid not in self._active:
                            self._load_one(pid, known[pid])
                        self._enable_one(pid)
                    active = self._active[plugin_id]
                else:
                    state = active.state if active is not None else State(row.state)
                    raise LifecycleError(
                        f"cannot call {plugin_id} {export}: the plugin is {state.value}"
                        + (" (enable it first)" if state is not State.FAILED else
                           " (enable it again to recover)"),
                        plugin_id=plugin_id,
                        state=state.value,
                    )
        manifest = active.manifest
        names = [*manifest.exports, *(m.id for m in manifest.micro)]
        if export not in names:
            raise NotFoundError(
                f"{plugin_id} has no export or micro-plugin {export!r}; it offers: "
                + (", ".join(names) or "nothing"),
                plugin_id=plugin_id,
                export=export,
            )
        if manifest.sandbox.isolation == "none":
            active.budget.before_call()  # refused while {data}, {tmp} or {cache} is over
            if plugin_id not in self._fast and active.state is State.ENABLED:
                self._fast[plugin_id] = self._fast_entries(active)
            if self._fast[plugin_id][export][2]:
                return self._runner.submit(self.acall(plugin_id, export, input)).result()
            return self.call(plugin_id, export, input)
        return self._call_sandboxed(active, export, input)

    def _call_sandboxed(self, active: _Active, export: str, input: Any) -> Any:
        from corral._services.sandboxed import call_sandboxed

        return call_sandboxed(self, self._supervisor_for(), active, export, input)

    def _prestart_sandbox(self) -> None:
        from corral._services.sandboxed import sandbox_problem

        if sandbox_problem("limited") is None:
            self._supervisor_for().prestart()

    def _supervisor_for(self) -> Any:
        """The supervisor of this host's sandboxed workers (started on first use)."""
        with self._rlock:
            if self._supervisor is None:
                from corral._services.sandboxed import make_supervisor

                self._supervisor = make_supervisor(self)
            return self._supervisor

    # -- metrics --------------------------------------------------------------

    def record_call(self, row: tuple[Any, ...]) -> None:
        """Record one finished sandboxed call's metrics; written with the next flush."""
        self._sandboxed_metrics.append(row)

    def flush_metrics(self) -> None:
        """Write the calls' metrics recorded so far to the host database, in one transaction."""
        if not self._metrics and not self._sandboxed_metrics:
            return
        rows = []
        while self._sandboxed_metrics:
            rows.append(self._sandboxed_metrics.popleft())
        now = time.time()
        while self._metrics:
            (plugin_id, export), start, end, outcome = self._metrics.popleft()
            rows.append(
                (plugin_id, export, "none", outcome, (end - start) / 1e6, None, None, None, None,
                 now)
            )
        self._store.record_calls(rows)

    # -- validation -----------------------------------------------------------

    def validate(self, path: str | os.PathLike[str], *, sandbox: bool = False) -> dict[str, Any]:
        """Check a plugin directory or archive without registering it.

        ``sandbox=True`` also imports it in a throwaway sandbox and times the import.
        """
        from corral._pdk.validate import validate_plugin

        return validate_plugin(
            Path(path), host_version=__version__, known=self._known(), sandbox=sandbox
        )


_SIMPLE: Final = SIMPLE_TYPES
_now: Final = time.perf_counter_ns
_FastEntry = tuple[Callable[..., Any], PluginContext, bool, tuple[str, str]]


async def _to_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking host work off the event loop (asyncio is imported only when used)."""
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _format_tb(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def _check_input(plugin_id: str, export: str, value: Any) -> None:
    problem = json_problem(value)
    if problem:
        raise UsageError(
            f"input to {plugin_id} {export}: " + problem.replace("$", "input", 1),
            plugin_id=plugin_id,
            export=export,
        )


def _plugin_error(plugin_id: str, export: str, exc: BaseException) -> PluginError:
    return PluginError(
        f"{plugin_id} {export} raised {type(exc).__name__}: {exc}",
        plugin_id=plugin_id,
        export=export,
        exception=type(exc).__name__,
        traceback=_format_tb(exc),
    )
