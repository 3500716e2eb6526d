"""Driving plugins through their lifecycle in this process: load, enable, disable, unload.

The state machine itself is ``_model/lifecycle.py``; this module runs the hooks,
records durable states and keeps the table of active plugins.  What a plugin gets
from the host services and the sandbox (its ``ctx``, mailbox, worker) comes
through :class:`Attachments`, handed in by the host.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, final

from corral._errors import CorralError, LifecycleError, NotFoundError, ResourceLimitExceeded
from corral._model.deps import check_requires_corral, dependency_order, dependents_of
from corral._model.lifecycle import DURABLE_STATES, State, check_transition
from corral._runtime.activation import Active, Context, HookRunner, import_in_process
from corral._runtime.budgets import CHECK_EVERY_S, DirWatch, wipe
from corral._runtime.calls import ExportWrapper, FastTable, fast_entries
from corral._runtime.catalog import Catalog
from corral._runtime.database import HostDatabase, PluginRow
from corral._runtime.quotas import QuotaBook
from corral._version import __version__

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["Attachments", "Lifecycle"]


class Attachments(Protocol):
    """What connects an active plugin to the host services and the sandbox."""

    def context(self, plugin_id: str, manifest: Manifest, plugin_dir: Path) -> Context:
        """Its ``ctx``, configuration resolved; its budgets and log watch set up."""

    def check_isolation(self, manifest: Manifest) -> None:
        """Refuse an isolation level this machine cannot enforce."""

    def prestart(self) -> None:
        """Let the sandbox's fork server start early (a sandboxed plugin is coming)."""

    def sandbox_hook(self, active: Active, name: str, value: Any) -> None:
        """Run a hook of a sandboxed plugin's entry object in its worker."""

    def receiver(self, active: Active) -> Any:
        """A sandboxed plugin's message handler, or ``None``."""

    def serve(self, active: Active, receiver: Any) -> None:
        """Open an enabled plugin's mailbox (its ``on_message``, in process or in its worker)."""

    def offer_micro(self, active: Active) -> None:
        """Offer an enabled plugin's micro-plugins."""

    def withdraw_micro(self, plugin_id: str) -> None:
        """Withdraw a stopping plugin's micro-plugins."""

    def stopped(self, plugin_id: str) -> None:
        """A plugin stopped: end its subscriptions, mailbox and worker."""

    def redact(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with the home's secret values scrubbed out."""

    def memoise(self, active: Active, export: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """An in-process export's function, memoised if its manifest says so."""


@final
class Lifecycle:
    """The active plugins of one host and the transitions between their states.

    Callers hold the host's lock (threads and processes) around every method that
    changes a state.
    """

    def __init__(
        self,
        db: HostDatabase,
        catalog: Catalog,
        *,
        home: Path,
        workspace: Path,
        hooks: HookRunner,
        attachments: Attachments,
        actives: dict[str, Active],
        fast: FastTable,
        lock: threading.RLock,
        quotas: QuotaBook | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.home = home
        self.workspace = workspace
        self.hooks = hooks
        self.attachments = attachments
        #: plugin id -> its activation in this process
        self.actives = actives
        #: The call fast path's table, shared with ``Host.call``.
        self.fast = fast
        #: Wraps in-process exports while monitoring is on (``Host.set_monitoring``).
        self.wrap_export: ExportWrapper | None = None
        self._async: dict[str, set[str]] = {}
        self._lock = lock
        self._budget_thread: threading.Thread | None = None
        self._budget_stop = threading.Event()
        self._dir_watcher: DirWatch | None = None
        #: Quotas over time: each plugin's meter is set up when it loads.
        self.quotas = quotas

    def active(self, plugin_id: str) -> Active | None:
        """The plugin's activation in this process, if it has one."""
        return self.actives.get(plugin_id)

    # -- states -------------------------------------------------------------

    def state_of(self, row: PluginRow) -> State:
        """Its state in this process if it is active here, else the recorded one."""
        active = self.actives.get(row.id)
        return active.state if active is not None else State(row.state)

    def current(self, plugin_id: str) -> State:
        """Its state for this process: recorded enabled or disabled means registered here."""
        active = self.actives.get(plugin_id)
        if active is not None:
            return active.state
        row = self.db.get(plugin_id)
        if row is None:
            return State.DISCOVERED
        # In a process that has not loaded it, a plugin recorded as enabled or
        # disabled is, for this process, registered: its code has not run here.
        state = State(row.state)
        return State.FAILED if state is State.FAILED else State.REGISTERED

    def recorded(self, plugin_id: str) -> State:
        """The state in this process if the plugin is active here, else the recorded one."""
        active = self.actives.get(plugin_id)
        if active is not None:
            return active.state
        row = self.db.get(plugin_id)
        return State.DISCOVERED if row is None else State(row.state)

    def persist(self, plugin_id: str, state: State, error: dict[str, Any] | None = None) -> None:
        """Record a durable state (and its error, secrets scrubbed) in the host database."""
        if state in DURABLE_STATES:
            if error is not None:  # a plugin's message or traceback may quote a secret
                error = self.attachments.redact(error)
            self.db.set_state(plugin_id, state.value, error)

    # -- the verbs ----------------------------------------------------------

    def load(self, plugin_id: str) -> None:
        """Load a plugin and its dependencies (import code, run ``on_load``)."""
        known, order = self.catalog.plan(plugin_id)
        for pid in order:
            state = self.current(pid)
            if pid != plugin_id and state in (State.ENABLED, State.LOADED):
                continue
            if pid == plugin_id or state not in (State.LOADED, State.ENABLED):
                self.load_one(pid, known[pid])

    def enable(self, plugin_id: str) -> None:
        """Enable a plugin after its dependencies, loading whatever is not loaded."""
        known, order = self.catalog.plan(plugin_id)
        for pid in order:
            state = self.current(pid)
            if state is State.ENABLED:
                if pid == plugin_id:
                    check_transition(pid, state, "enable")
                continue
            if state is State.FAILED and pid in self.actives:
                self.unload_one(pid, quiet=True)
            if self.current(pid) not in (State.LOADED, State.DISABLED):
                self.load_one(pid, known[pid])
            self.enable_one(pid)

    def disable(self, plugin_id: str, *, cascade: bool = False) -> builtins.list[str]:
        """Disable a plugin (and, with ``cascade``, its enabled dependents first)."""
        known = self.catalog.known()
        self.catalog.row(plugin_id)
        check_transition(plugin_id, self.recorded(plugin_id), "disable")
        enabled_dependents = [
            p for p in dependents_of(plugin_id, known) if self.recorded(p) is State.ENABLED
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
            self.disable_one(pid)
            done.append(pid)
        self.disable_one(plugin_id)
        done.append(plugin_id)
        return done

    def unload(self, plugin_id: str) -> None:
        """Unload a loaded or disabled plugin."""
        self.catalog.row(plugin_id)
        check_transition(plugin_id, self.current(plugin_id), "unload")
        self.unload_one(plugin_id)

    def start(self) -> builtins.list[str]:
        """Bring back every plugin recorded as enabled; returns the ids now enabled."""
        known = self.catalog.known()
        wanted = [r.id for r in self.db.all() if r.state == State.ENABLED.value]
        started = []
        for pid in wanted:
            try:
                for dep in dependency_order([pid], known):
                    if self.current(dep) is State.ENABLED and dep in self.actives:
                        continue
                    if self.current(dep) not in (State.LOADED, State.DISABLED) or (
                        dep not in self.actives
                    ):
                        self.load_one(dep, known[dep])
                    self.enable_one(dep)
                started.append(pid)
            except CorralError:
                continue
        return started

    def stop(self, plugin_id: str) -> bool:
        """Disable (if enabled) and unload a plugin, errors ignored; True if it was enabled."""
        active = self.actives.get(plugin_id)
        if active is None:
            return False
        was_enabled = active.state is State.ENABLED
        if was_enabled:
            with contextlib.suppress(CorralError):
                self.disable_one(plugin_id)
        with contextlib.suppress(CorralError):
            self.unload_one(plugin_id, quiet=True)
        self.actives.pop(plugin_id, None)
        return was_enabled

    def restart(self, plugin_ids: builtins.list[str]) -> None:
        """Enable again plugins :meth:`stop` stopped; raises the first failure after the rest."""
        known = self.catalog.known()
        failed: builtins.list[CorralError] = []
        for pid in dependency_order(plugin_ids, known):
            if self.current(pid) is State.ENABLED and pid in self.actives:
                continue
            try:
                if self.current(pid) not in (State.LOADED, State.DISABLED):
                    self.load_one(pid, known[pid])
                self.enable_one(pid)
            except CorralError as exc:  # the others still come back
                failed.append(exc)
        if failed:
            raise failed[0]

    def ready_for_call(self, plugin_id: str, export: str) -> Active:
        """The enabled activation to call ``export`` on, activated on demand.

        A plugin enabled by another process is loaded and enabled here first.
        """
        row = self.catalog.row(plugin_id)
        active = self.actives.get(plugin_id)
        if active is None or active.state is not State.ENABLED:
            if active is None and row.state == State.ENABLED.value:
                if row.manifest.get("sandbox", {}).get("isolation", "strict") != "none":
                    # Let the fork server start while this process loads the plugin.
                    self.attachments.prestart()
                known, order = self.catalog.plan(plugin_id)
                for pid in order:
                    if pid in self.actives and self.actives[pid].state is State.ENABLED:
                        continue
                    if pid not in self.actives:
                        self.load_one(pid, known[pid])
                    self.enable_one(pid)
                active = self.actives[plugin_id]
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
        return active

    def refresh_fast(self, active: Active) -> None:
        """Put an enabled in-process plugin (back) on the call fast path."""
        plugin_id = active.manifest.id
        if plugin_id not in self.fast and active.state is State.ENABLED:
            self.fast[plugin_id] = fast_entries(
                active, self._async.get(plugin_id, set()), self.attachments.memoise,
                self.wrap_export,
            )

    def rebuild_fast(self) -> None:
        """Build every fast-path entry again (after :attr:`wrap_export` changed)."""
        for plugin_id in list(self.fast):
            active = self.actives.get(plugin_id)
            if active is not None:
                self.fast[plugin_id] = fast_entries(
                    active, self._async.get(plugin_id, set()), self.attachments.memoise,
                    self.wrap_export,
                )

    # -- one plugin ---------------------------------------------------------

    def load_one(self, plugin_id: str, manifest: Manifest) -> None:
        """Load one plugin whose dependencies are loaded."""
        check_transition(plugin_id, self.current(plugin_id), "load")
        row = self.catalog.row(plugin_id)
        check_requires_corral(manifest, __version__)
        plugin_dir = Path(row.path)
        ctx = self.attachments.context(plugin_id, manifest, plugin_dir)
        active = Active(manifest, ctx, self._dir_watch)
        self.actives[plugin_id] = active
        try:
            if self.quotas is not None:
                self.quotas.set(active)
            if manifest.sandbox.isolation == "none":
                self._async[plugin_id] = import_in_process(active, plugin_dir)
            else:
                self.attachments.check_isolation(manifest)
            self.run_hook(active, "on_load")
        except CorralError as exc:
            self.fail(active, exc)
            raise
        active.state = State.LOADED

    def enable_one(self, plugin_id: str) -> None:
        """Enable one loaded or disabled plugin."""
        active = self.actives[plugin_id]
        check_transition(plugin_id, active.state, "enable")
        receiver = None
        try:
            self.run_hook(active, "on_enable")
            if active.sandboxed_entry:  # its on_message runs in its worker
                receiver = self.attachments.receiver(active)
        except CorralError as exc:
            self.fail(active, exc)
            raise
        active.state = State.ENABLED
        self.attachments.serve(active, receiver)
        self.persist(plugin_id, State.ENABLED)
        self.attachments.offer_micro(active)
        if active.manifest.sandbox.isolation == "none":
            self.fast[plugin_id] = fast_entries(
                active, self._async.get(plugin_id, set()), self.attachments.memoise,
                self.wrap_export,
            )
            self._watch_budgets()

    def disable_one(self, plugin_id: str) -> None:
        """Disable one enabled plugin (here, or only its record if it runs elsewhere)."""
        self.attachments.withdraw_micro(plugin_id)
        active = self.actives.get(plugin_id)
        self.fast.pop(plugin_id, None)
        if active is None:
            # Enabled by another process; nothing ran here, so only the record changes.
            check_transition(plugin_id, State(self.catalog.row(plugin_id).state), "disable")
            self.persist(plugin_id, State.DISABLED)
            self._wipe_scratch(plugin_id)
            return
        check_transition(plugin_id, active.state, "disable")
        try:
            self.run_hook(active, "on_disable")
        except CorralError as exc:
            self.fail(active, exc)
            raise
        finally:
            self.attachments.stopped(plugin_id)
            self._wipe_scratch(plugin_id)
        active.state = State.DISABLED
        self.persist(plugin_id, State.DISABLED)

    def unload_one(self, plugin_id: str, *, quiet: bool = False) -> None:
        """Unload one plugin: run ``on_unload``, release its code; ``quiet`` ignores errors."""
        self.attachments.withdraw_micro(plugin_id)
        active = self.actives.get(plugin_id)
        if active is None:
            return
        self.fast.pop(plugin_id, None)
        try:
            if active.state is not State.FAILED or active.scope is not None:
                self.run_hook(active, "on_unload")
        except CorralError as exc:
            if not quiet:
                self.fail(active, exc)
                raise
        finally:
            self.attachments.stopped(plugin_id)
            self._wipe_scratch(plugin_id)
            if active.scope is not None:
                active.scope.release()
                active.scope = None
        active.state = State.UNLOADED
        row = self.db.get(plugin_id)
        if row is not None and row.state != State.REGISTERED.value:
            self.persist(plugin_id, State.REGISTERED)

    def fail(self, active: Active, exc: CorralError) -> None:
        """Move a plugin to ``failed``, record the error, give ``on_error`` a chance."""
        active.state = State.FAILED
        self.fast.pop(active.manifest.id, None)
        self.persist(active.manifest.id, State.FAILED, exc.to_dict())
        if active.sandboxed_entry:
            with contextlib.suppress(CorralError):
                self.attachments.sandbox_hook(active, "on_error", exc.to_dict())
            return
        hook = getattr(active.entry, "on_error", None) if active.entry is not None else None
        if hook is not None:
            with contextlib.suppress(CorralError):
                self.hooks.call(active, "on_error", hook, exc)

    def run_hook(self, active: Active, name: str) -> None:
        """Run a lifecycle hook of the plugin's entry object, in process or in its worker."""
        if active.sandboxed_entry:
            self.attachments.sandbox_hook(active, name, None)
            return
        self.hooks.run(active, name)

    def _wipe_scratch(self, plugin_id: str) -> None:
        """Empty a stopped plugin's ``{tmp}`` and ``{cache}``: none of it outlives the run."""
        for name in ("tmp", "cache"):
            wipe(self.home / name / plugin_id)

    # -- directory budgets of in-process plugins ------------------------------

    def _watch_budgets(self) -> None:
        """Start the thread that measures in-process plugins' directories (once per host).

        Their calls take the fast path, which measures nothing; a plugin found over
        a directory budget leaves the fast path, and the slow one refuses its calls.
        """
        with self._lock:
            if self._budget_thread is not None:
                return
            self._budget_thread = threading.Thread(
                target=self._budget_loop, name="corral-budgets", daemon=True
            )
            self._budget_thread.start()

    def _dir_watch(self) -> DirWatch:
        """The inotify instance that tells which plugins' directories changed (made once)."""
        with self._lock:
            if self._dir_watcher is None:
                self._dir_watcher = DirWatch()
            return self._dir_watcher

    def _budget_loop(self) -> None:
        while not self._budget_stop.wait(CHECK_EVERY_S):
            for pid, active in list(self.actives.items()):
                if active.state is not State.ENABLED or active.manifest.sandbox.isolation != "none":
                    continue
                try:
                    active.budget.after_call(0.0)
                except ResourceLimitExceeded:
                    self.fast.pop(pid, None)

    def stop_watching(self) -> None:
        """Stop the budget thread and the directory watch (the host is closing)."""
        self._budget_stop.set()
        if self._budget_thread is not None:
            self._budget_thread.join(timeout=5)
        if self._dir_watcher is not None:
            self._dir_watcher.close()

    def release(self) -> None:
        """Release every active plugin's imported code (the host is closing)."""
        for active in list(self.actives.values()):
            if active.scope is not None:
                active.scope.release()

