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
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, final

from corral._disk.files import exclusive
from corral._disk.layout import DB_NAME, HOME_DIRS, MANIFEST_NAME, default_home
from corral._disk.settings import SETTINGS_FILE, setting_flag
from corral._errors import (
    CorralError,
    InvalidPluginError,
    LifecycleError,
    NotFoundError,
    QuotaExceeded,
    UsageError,
)
from corral._model.deps import check_dependencies, check_requires_corral, dependents_of, find_cycle
from corral._model.grants import ALLOW_SETTING, refuse_broad_grants
from corral._model.info import PluginInfo
from corral._model.lifecycle import State, check_transition
from corral._model.reregister import Again, Registration, judge_again
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
from corral._runtime.cleanup import maybe_prune_metrics, prune_metrics
from corral._runtime.database import HostDatabase, PluginRow
from corral._runtime.lifecycle import Lifecycle
from corral._runtime.metrics import CallMetrics
from corral._runtime.quotas import QuotaBook, calls_in_window, quota_report, usage_from_db
from corral._runtime.runner import Runner
from corral._runtime.usage import SAMPLE_EVERY, InProcessSampler
from corral._services.attachments import HostAttachments
from corral._services.housekeeping import (
    collect_orphans,
    find_orphans,
    purge_plugin,
    scratch_counts,
)
from corral._services.hub import Services
from corral._services.importprobe import check_imports
from corral._version import __version__

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._services.config import ConfigManager
    from corral._services.events.bus import EventBus
    from corral._services.messages import Messenger
    from corral._services.micro.manager import MicroManager
    from corral._services.monitor.profile import ProfileReport
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
        #: Quotas over time of the plugins active here (``_runtime/quotas.py``).
        self.quotas = QuotaBook(self._db, self.home, self._services.budgets)
        self._services.quotas = self.quotas
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
            lock=self._rlock, quotas=self.quotas,
        )
        maybe_prune_metrics(self._db, self.home)  # [retention] metrics-days, once a day
        metrics.usage_sources.append(self.attachments.sample_usage)
        metrics.start()

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
        self._call_metrics.stop()
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
            path=row.path, error=row.error, linked=row.linked,
        )
        out = info.to_dict(full=True)
        out["metrics"] = self._db.call_summary(plugin_id)
        out["usage"] = self._db.usage_summary(plugin_id)
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

    def cache_stats(self, plugin_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """``ctx.cache`` statistics of ``plugin_id`` (registered), or of every plugin with a
        cache: hits, misses, sets, evictions, rejections and expiries per level (``l1``,
        ``l2``, ``memo``), entries and bytes in L2, and the budget (``cache-mb``, bytes)."""
        from corral._services.cache.stats import describe
        from corral._services.cache.store import cache_url

        if plugin_id is not None:
            self.catalog.row(plugin_id)  # NotFoundError for an unknown plugin
        if plugin_id is None and not (self.home / "cache.db").exists() and \
                cache_url(self.home) is None:
            return []
        cache = self._services.cache
        cache.flush()
        out = []
        for pid in [plugin_id] if plugin_id is not None else cache.store.owners():
            row = self._db.get(pid)
            cap = (self.catalog.fresh_manifest(row).sandbox.cache_mb * 1024 * 1024
                   if row is not None else None)
            out.append(describe(cache.store, pid, cap))
        return out

    def cache_clear(self, plugin_id: str, tag: str | None = None) -> dict[str, int]:
        """Empty ``plugin_id``'s cache (only the entries tagged ``tag``, if given), here and
        in L2; other hosts on this home drop their copies before their next use of it.
        ``{"entries": n, "bytes": n}`` removed."""
        return self._services.cache.clear(plugin_id, tag)

    def _status_of(self, plugin_id: str) -> str | None:
        row = self._db.get(plugin_id)
        return None if row is None else self.lifecycle.state_of(row).value

    # -- registration ---------------------------------------------------------

    def register(
        self, *sources: str | os.PathLike[str], link: bool = False, probe: bool | None = None
    ) -> builtins.list[PluginInfo]:
        """Register plugin directories or ``.corral`` archives (copied into the home).

        Safe to call on every start of an application: a plugin already
        registered from the same source with the same version and files is left
        as it is (its record is returned); a newer version from the same source
        upgrades it in place (its data and state are kept, an enabled plugin is
        reloaded on the new code); anything else is refused with an error that
        says what to run.  ``link=True`` registers directories without copying
        them: the plugin runs from the author's folder (``corral add --link``).

        All sources are checked together (dependencies may be among them) before
        anything is written; on any error nothing is registered.  A source that
        is already a directory under ``<home>/plugins`` or a pip-installed
        plugin is registered where it is.

        Each sandboxed plugin's modules are imported first in its own sandbox,
        and one that cannot be imported is refused (``invalid``).  An
        ``isolation = "none"`` plugin runs no code here unless ``probe=True``
        (then in a ``python -I`` subprocess, unconfined); ``probe=False``
        imports nothing.  Plugin code is never imported in this process here.
        """
        if not sources:
            raise UsageError("register needs at least one plugin directory or archive")
        with self._locked():
            staged: builtins.list[_Staged] = []
            fresh: builtins.list[_Staged] = []  # new ids, in the order of ``placed``
            placed: builtins.list[Path] = []
            try:
                for source in sources:
                    staged.append(self._stage(Path(source), link=link))
                known = self.catalog.known()
                batch: dict[str, Manifest] = {}
                verdicts: dict[str, Again] = {}
                for st in staged:
                    manifest = st.manifest
                    if manifest.id in batch:
                        first = next(s for s in staged if s.manifest.id == manifest.id)
                        raise InvalidPluginError(
                            f"{manifest.id!r} is already registered by this call from "
                            f"{first.origin}; {st.origin} has the same id: name one of them",
                            plugin_id=manifest.id, path=st.origin,
                        )
                    row = self._db.get(manifest.id)
                    if row is not None:
                        verdicts[manifest.id] = judge_again(
                            manifest.id,
                            Registration(row.version, row.origin, row.digest, row.linked),
                            Registration(manifest.version, st.origin, st.digest, st.linked),
                            live=row.path == row.origin,
                        )
                    batch[manifest.id] = manifest
                    check_requires_corral(manifest, __version__)
                    self.check_grants(manifest)
                for st in staged:  # nothing to do for these: drop their copies now
                    if verdicts.get(st.manifest.id) is Again.SAME and st.temp:
                        _rmtree(st.path)
                todo = [s for s in staged if verdicts.get(s.manifest.id) is not Again.SAME]
                changed = {s.manifest.id: s.manifest for s in todo}
                everything = {**known, **changed}
                cycle = find_cycle({pid: tuple(m.dependencies) for pid, m in everything.items()})
                if cycle:
                    raise InvalidPluginError(
                        "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
                        plugin_id=cycle[0],
                        cycle=cycle,
                    )
                for manifest in changed.values():
                    check_dependencies(manifest, everything)
                upgrades = [s for s in todo if verdicts.get(s.manifest.id) is Again.UPGRADE]
                for st in upgrades:  # its dependents must accept the new version too
                    for pid in dependents_of(st.manifest.id, everything):
                        check_dependencies(everything[pid], everything)
                fresh = [s for s in todo if s.manifest.id not in verdicts]
                for st in fresh:
                    placed.append(self._place(st.manifest, st.path, st.temp))
                if probe is not False:  # new code is imported in its sandbox before it counts
                    for st, path in [*zip(fresh, placed, strict=True),
                                     *((s, s.path) for s in upgrades)]:
                        check_imports(st.manifest, path, workspace=self.workspace,
                                      supervisor=self.attachments.supervisor,
                                      include_none=probe is True)
            except BaseException:
                for st in staged:
                    if st.temp:
                        _rmtree(st.path)
                self._unplace(fresh, placed)
                raise
            now = time.time()
            try:
                with self._db.transaction() as conn:
                    for st, path in zip(fresh, placed, strict=True):
                        self._db.insert(conn, self._row_for(st, path, State.REGISTERED.value, now))
            except BaseException:
                self._unplace(fresh, placed)
                raise
            for i, st in enumerate(upgrades):
                try:
                    self._upgrade(st, everything)
                except BaseException:
                    for later in upgrades[i + 1 :]:
                        if later.temp:
                            _rmtree(later.path)
                    raise
        return [self._info_of(s.manifest.id) for s in staged]

    def _row_for(self, st: _Staged, path: Path, state: str, now: float) -> PluginRow:
        manifest = st.manifest
        info = (path / MANIFEST_NAME).stat()
        return PluginRow(
            id=manifest.id, version=manifest.version, path=str(path), source=st.kind,
            state=state, error=None, manifest=manifest.to_dict(),
            manifest_mtime_ns=info.st_mtime_ns, manifest_size=info.st_size,
            registered_at=now, updated_at=now, origin=st.origin, digest=st.digest,
            linked=st.linked,
        )

    def _upgrade(self, st: _Staged, known: Mapping[str, Manifest]) -> None:
        """Replace a registered plugin's code with a newer version, as an update does.

        It and its dependents active here are stopped (``on_disable``, ``on_unload``),
        the code is swapped, and those that were enabled are enabled again on the
        new code (``on_load``, ``on_enable``).  Its data and recorded state stay.
        """
        pid = st.manifest.id
        row = self.catalog.row(pid)
        chain = [*reversed(dependents_of(pid, known)), pid]
        again = [p for p in chain if self.lifecycle.stop(p)]
        old = Path(row.path)
        trash: Path | None = None
        path = st.path
        if st.temp:
            path = self.home / "plugins" / pid
            if old == path:
                trash = old.with_name(f".trash-{os.urandom(16).hex()}")
                os.rename(old, trash)
            try:
                path = self._place(st.manifest, st.path, st.temp)
            except BaseException:
                _rmtree(st.path)
                if trash is not None:
                    os.rename(trash, old)
                raise
        state = row.state if row.state in (State.ENABLED.value, State.DISABLED.value) else (
            State.REGISTERED.value
        )
        try:
            with self._db.transaction() as conn:
                self._db.replace_code(conn, self._row_for(st, path, state, time.time()))
        except BaseException:
            if st.temp:
                _rmtree(path)
            if trash is not None:
                os.rename(trash, old)
            raise
        if trash is not None:
            _rmtree(trash)
        if again:
            self.lifecycle.restart(again)

    def reload(self, plugin_id: str) -> PluginInfo:
        """Run a plugin on its current files: stop it and its dependents, start them again.

        For a linked plugin being edited (``corral dev``): each one enabled before
        is enabled again, running the hooks as a disable and an enable do.  A
        plugin that had failed is enabled again too.
        """
        with self._locked():
            row = self.catalog.row(plugin_id)
            known = self.catalog.known()
            chain = [*reversed(dependents_of(plugin_id, known)), plugin_id]
            failed = self.lifecycle.recorded(plugin_id) is State.FAILED
            again = [p for p in chain if self.lifecycle.stop(p)]
            if row.linked:
                from corral._disk.tree import tree_digest  # deferred: see _stage

                self._db.set_digest(plugin_id, tree_digest(Path(row.path)))
            if failed and plugin_id not in again:
                again.append(plugin_id)
            if again:
                self.lifecycle.restart(again)
        return self._info_of(plugin_id)

    async def aregister(
        self, *sources: str | os.PathLike[str], link: bool = False
    ) -> builtins.list[PluginInfo]:
        """Async twin of :meth:`register`."""
        return await _to_thread(self.register, *sources, link=link)

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

    def _stage(self, source: Path, *, link: bool = False) -> _Staged:
        """Bring a source into a staging directory and validate it statically.

        Returns the manifest, the directory, the source kind, whether the
        directory is a temporary copy owned by this registration, where it came
        from, its content hash and whether it is linked.  Errors name the
        user's file, never the staging copy.
        """
        from corral._disk.targets import check_targets

        # deferred: shutil and hashlib cost ~10 ms that `corral list` need not pay
        from corral._disk.tree import check_plugin_tree, copy_plugin_dir, tree_digest
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
            if in_place or link:
                if link and not in_place:
                    check_plugin_tree(source)
                manifest = load_manifest(source)
                check_targets(source, manifest)
                _check_micro_shapes(source, manifest)
                kind = {plugins: "directory", self.home / "store": "installed"}.get(
                    source.parent, "entry-point" if in_place else "directory"
                )
                return _Staged(manifest, source, kind, False, str(source),
                               tree_digest(source), link and not in_place)
            load_manifest(source)  # fail fast, before copying anything
            staging = plugins / f".staging-{os.urandom(16).hex()}"
            with _named(staging, source):
                copy_plugin_dir(source, staging)
            kind = "directory"
        else:
            if link:
                raise UsageError(
                    f"{source}: only a directory can be linked; run `corral add {source}`",
                    path=str(source),
                )
            from corral._disk.archive import extract_archive

            staging = plugins / f".staging-{os.urandom(16).hex()}"
            with _named(staging, source):
                extract_archive(source, staging)
            kind = "archive"
        try:
            with _named(staging, source):
                manifest = load_manifest(staging)
                check_targets(staging, manifest)
                _check_micro_shapes(staging, manifest)
                digest = tree_digest(staging)
        except BaseException:
            _rmtree(staging)
            raise
        return _Staged(manifest, staging, kind, True, str(source), digest, False)

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
    def _unplace(staged: builtins.list[_Staged], placed: builtins.list[Path]) -> None:
        """Delete the copies a failed registration already moved into place."""
        for st, path in zip(staged, placed, strict=False):
            if st.temp:
                _rmtree(path)

    def _info_of(self, plugin_id: str) -> PluginInfo:
        row = self.catalog.row(plugin_id)
        return PluginInfo.from_manifest_dict(
            row.manifest, state=self.lifecycle.state_of(row).value, source=row.source,
            path=row.path, error=row.error, linked=row.linked,
        )

    def unregister(self, plugin_id: str, *, purge_data: bool = False) -> dict[str, Any] | None:
        """Forget a plugin: disable and unload it if needed, then delete its copy.

        Refused while other registered plugins depend on it.  ``purge_data``
        also deletes its data, cache and tmp folders, shared state, durable
        subscriptions, metrics and quota usage, and returns the report of what
        was removed (see docs/quotas.md).
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
            scratch = scratch_counts(self._services, plugin_id) if purge_data else None
            if state is State.ENABLED:
                self.lifecycle.disable_one(plugin_id)
            active = self._active.get(plugin_id)
            if active is not None and active.state in (State.LOADED, State.DISABLED):
                self.lifecycle.unload_one(plugin_id)
            now_state = self.lifecycle.state_of(self.catalog.row(plugin_id))
            check_transition(plugin_id, now_state, "unregister")
            self.quotas.drop(plugin_id)
            if purge_data:  # its metrics still in memory go now, or they would outlive it
                self.flush_metrics()
            report = (purge_plugin(self._services, self._db, plugin_id, scratch) if purge_data
                      else None)
            with self._db.transaction() as conn:
                self._db.delete(conn, plugin_id)
            self._active.pop(plugin_id, None)
            path = Path(row.path)
            if row.source != "entry-point" and path.parent == self.home / "plugins":
                trash = path.with_name(f".trash-{os.urandom(16).hex()}")
                with contextlib.suppress(FileNotFoundError):  # already deleted by hand
                    os.rename(path, trash)
                    _rmtree(trash)
            return report

    async def aunregister(self, plugin_id: str, *, purge_data: bool = False
                          ) -> dict[str, Any] | None:
        """Async twin of :meth:`unregister`."""
        return await _to_thread(self.unregister, plugin_id, purge_data=purge_data)

    # -- quotas and cleanup -----------------------------------------------------

    def quota_usage(self, plugin_id: str) -> dict[str, dict[str, Any]]:
        """Each quota of a registered plugin: limit, window, unit, used and source
        (``corral quota show``; docs/quotas.md).
        """
        row = self.catalog.row(plugin_id)
        manifest = self.catalog.fresh_manifest(row)
        self.flush_metrics()
        budgets = self.budget_usage(plugin_id)
        return quota_report(
            manifest, self.quotas.overrides().get(plugin_id),
            meter=self.quotas.meter(plugin_id) if plugin_id in self._active else None,
            cpu_used=usage_from_db(self._db, plugin_id),
            calls_used=calls_in_window(self._db, plugin_id, 60),
            bytes_used={key: budgets[key].get("used", 0) for key in ("cache-mb", "state-mb")},
        )

    def set_quota(self, plugin_id: str, key: str, value: int | None) -> dict[str, Any]:
        """Write ``[quotas."ID"] key = value`` to the home's settings (``None`` removes it);
        a plugin active here takes it at once, others when they next load.  Returns the
        quota as :meth:`quota_usage` reports it.
        """
        from corral._services.quotaset import write_quota

        with self._locked():
            write_quota(self.home, plugin_id, key, value)
            active = self._active.get(plugin_id)
            if active is not None and active.quota is not None:
                self.quotas.set(active)
                if self._fast.pop(plugin_id, None) is not None:
                    self.lifecycle.refresh_fast(active)
                active.spec = None  # a new cpu-weight starts a new worker
        return self.quota_usage(plugin_id)[key]

    def orphans(self) -> dict[str, Any]:
        """What plugins no longer registered left in the home (``corral gc --dry-run``)."""
        with self._locked():
            return find_orphans(self._services, self._db, {r.id for r in self._db.all()})

    def collect_orphans(self) -> dict[str, Any]:
        """Remove what :meth:`orphans` lists; returns it (``corral gc``)."""
        with self._locked():
            return collect_orphans(self._services, self._db, {r.id for r in self._db.all()})

    def prune_metrics(self) -> dict[str, int]:
        """Delete call metrics past ``[retention] metrics-days`` now; rows deleted by kind."""
        from corral._runtime.cleanup import cleanup_settings

        self.flush_metrics()
        return prune_metrics(self._db, cleanup_settings(self.home).metrics_days)

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
            if type(exc) is QuotaExceeded:  # refused by its quotas before its code ran
                raise
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
                if type(exc) is QuotaExceeded:  # refused by its quotas before its code ran
                    raise
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
        self.quotas.flush()

    def export_opentelemetry(self, meter_provider: Any = None, *,
                             max_plugins: int = 50) -> builtins.list[Any]:
        """Send the home's plugin metrics (calls, errors, CPU, memory, I/O) through
        OpenTelemetry: observable instruments on ``meter_provider`` (the global one by
        default), read from the host database at each collection.  Needs
        ``opentelemetry-sdk`` (``pip install 'corral[monitor]'``).
        """
        from corral._runtime.otel import export_opentelemetry

        return export_opentelemetry(self._db, meter_provider, max_plugins=max_plugins)

    @property
    def monitoring(self) -> bool:
        """Whether in-process calls are measured (thread CPU time, ``tracemalloc`` peak)."""
        return self._call_metrics.sampler is not None

    def set_monitoring(self, on: bool = True, *, every: int = SAMPLE_EVERY) -> None:
        """Measure in-process plugins' calls (approximate: one in ``every`` is timed with
        the calling thread's CPU clock, and ``tracemalloc``'s peak is taken when it traces).

        Sandboxed plugins are always measured by their cgroups; this adds nothing to them.
        """
        with self._locked():
            sampler = InProcessSampler(every) if on else None
            self._call_metrics.sampler = sampler
            self.lifecycle.wrap_export = sampler.wrap if sampler is not None else None
            self.lifecycle.rebuild_fast()

    # -- monitoring -----------------------------------------------------------

    def suggest(self, plugin_id: str) -> builtins.list[dict[str, Any]]:
        """Bottlenecks and limit suggestions from the plugin's recorded calls, each with the
        figures that triggered it and what to do (``corral suggest``)."""
        from corral._services.monitor.suggest import suggest

        self.flush_metrics()
        row = self.catalog.row(plugin_id)
        return suggest(row.version, row.manifest.get("sandbox", {}),
                       self._db.call_profiles(plugin_id), self._db.import_profiles(plugin_id),
                       now=time.time())

    @contextlib.contextmanager
    def monitor(self, plugin_id: str, *, interval: float = 0.005) -> Iterator[ProfileReport]:
        """Sample the plugin's calls while the block runs; the report is filled when it ends.

        A sandboxed plugin is sampled inside its worker, an in-process one by a
        sampler thread of this host; the report has the top functions (self and
        total time), the share spent waiting on host services and I/O, and writes
        flame graphs and speedscope JSON (``report.write(path)``)::

            with host.monitor("acme.hello") as report:
                host.call("acme.hello", "greet", {"name": "Ada"})
            report.write("greet.svg")
        """
        from corral._services.monitor.session import monitoring

        row = self.catalog.row(plugin_id)
        isolation = str(row.manifest.get("sandbox", {}).get("isolation", "strict"))
        with monitoring(plugin_id, isolation, row.path, self.attachments.supervisor,
                        interval=interval) as report:
            yield report

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


class _Staged(NamedTuple):
    """A source brought in for registration (see :meth:`Host._stage`)."""

    manifest: Manifest
    path: Path  # where it is now: a staging copy (``temp``) or the source itself
    kind: str  # the database's ``source``: directory, archive, installed, entry-point
    temp: bool
    origin: str  # the folder or archive the user named
    digest: str
    linked: bool


@contextlib.contextmanager
def _named(staging: Path, source: Path) -> Iterator[None]:
    """Errors raised inside name the user's ``source``, never the internal ``staging`` copy."""
    try:
        yield
    except CorralError as exc:
        inner, outer = str(staging), str(source)
        exc.message = exc.message.replace(inner, outer)
        exc.args = (exc.message, *exc.args[1:])
        for key, value in exc.details.items():
            if isinstance(value, str):
                exc.details[key] = value.replace(inner, outer)
        raise


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
