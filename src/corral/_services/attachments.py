"""What connects an active plugin to the host services and the sandbox.

Its ``ctx``, mailbox and micro-plugins, and its worker under the host's supervisor:
the runtime's lifecycle asks for these through its ``Attachments`` protocol.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

from corral._errors import NotFoundError, PolicyDenied
from corral._model.lifecycle import State
from corral._runtime.activation import Active, HookRunner
from corral._runtime.usage import UsageRow
from corral._services.context import PluginContext, plugin_paths
from corral._services.hub import Services

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._sandbox.supervisor import Supervisor
    from corral._services.cache.memo import Memo
    from corral._services.micro.manager import MicroManager

__all__ = ["HostAttachments"]


@final
class HostAttachments:
    """A host's services and sandbox as its active plugins see them (made on first use)."""

    def __init__(
        self,
        services: Services,
        actives: Mapping[str, Active],
        *,
        home: Path,
        workspace: Path,
        hooks: HookRunner,
        record: Callable[..., None],
        call: Callable[[str, str, Any], Any],
        lock: threading.RLock,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        shared_fork_server: bool = False,
    ) -> None:
        self.services = services
        self.actives = actives
        self.home = home
        self.workspace = workspace
        self.hooks = hooks
        #: Takes a finished sandboxed call's metrics row.
        self.record = record
        #: ``Host.call``: how a sandboxed plugin's micro-plugins are run.
        self.call = call
        #: ``Host(config=...)``: per-plugin overrides, read when a plugin loads.
        self.config_overrides: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (config or {}).items()
        }
        self.shared_fork_server = shared_fork_server
        self._lock = lock
        self._supervisor: Supervisor | None = None
        self._micro: MicroManager | None = None
        #: Memoised exports of active plugins, by id, with the activation they belong to.
        self._memos: dict[str, tuple[Active, Memo]] = {}

    # -- what the lifecycle asks for ---------------------------------------------

    def context(self, plugin_id: str, manifest: Manifest, plugin_dir: Path) -> PluginContext:
        """Its ``ctx``: folders made, configuration resolved, budgets and log watch set up."""
        paths = plugin_paths(self.home, self.workspace, plugin_id, plugin_dir)
        for key in ("data", "cache", "tmp"):
            Path(paths[key]).mkdir(parents=True, exist_ok=True)
        config = self.services.plugin_config(
            plugin_id, manifest.permissions, plugin_dir,
            overrides=self.config_overrides.get(plugin_id),
        )
        ctx = PluginContext(plugin_id, paths, config, services=self.services,
                            permissions=manifest.permissions)
        self.services.budgets.set(plugin_id, manifest.sandbox)
        from corral._services.secrets import (
            watch_plugin_log,  # brings logging: not for `corral list`
        )

        watch_plugin_log(plugin_id, self.services.redactor)
        return ctx

    def check_isolation(self, manifest: Manifest) -> None:
        """Refuse a sandboxed plugin unless this machine can enforce its isolation level."""
        from corral._services.sandboxed import sandbox_problem  # brings msgspec

        problem = sandbox_problem(manifest.sandbox.isolation)
        if problem:
            raise PolicyDenied(
                f"{manifest.id} asks for sandbox.isolation = {manifest.sandbox.isolation!r}, "
                f"which this machine cannot enforce: {problem}; it will not run with less",
                plugin_id=manifest.id, key="sandbox.isolation",
                isolation=manifest.sandbox.isolation,
            )

    def prestart(self) -> None:
        """Start the fork server early, if this machine can sandbox at all."""
        from corral._services.sandboxed import sandbox_problem

        if sandbox_problem("limited") is None:
            self.supervisor().prestart()

    def sandbox_hook(self, active: Active, name: str, value: Any) -> None:
        """Run a lifecycle hook of a sandboxed plugin's entry object inside its worker."""
        from corral._services.sandboxed import call_sandboxed

        call_sandboxed(
            self.record, self.supervisor(), active, name, value,
            target=f"{active.manifest.entry}#{name}",
        )

    def receiver(self, active: Active) -> Any:
        """A sandboxed plugin's message handler, or ``None`` if its entry has none."""
        from corral._services.sandboxed import sandboxed_receiver

        return sandboxed_receiver(self.record, self.supervisor(), self.services.messenger,
                                  active)

    def serve(self, active: Active, receiver: Any) -> None:
        """Open an enabled plugin's mailbox, if its entry object has ``on_message``."""
        plugin_id = active.manifest.id
        on_message = getattr(active.entry, "on_message", None) if active.entry else None
        if on_message is not None:
            ctx = active.ctx
            self.services.messenger.serve(
                plugin_id, lambda message, sender: on_message(message, sender, ctx)
            )
        elif receiver is not None:
            self.services.messenger.serve(plugin_id, receiver, remote=True)

    def offer_micro(self, active: Active) -> None:
        """Offer an enabled plugin's ``[[micro]]`` handlers at its isolation level."""
        mgr = self._micro
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
                partial=True,  # one refused handler must not take its siblings down
            )
        else:
            call = self.call

            def invoke(micro_id: str, value: Any) -> Any:
                return call(pid, micro_id, value)

            mgr.register_plugin(pid, manifest.micro, invoke=invoke, version=manifest.version,
                                partial=True)

    def withdraw_micro(self, plugin_id: str) -> None:
        """Withdraw a stopping plugin's micro-plugins."""
        if self._micro is not None:
            self._micro.unregister_plugin(plugin_id)

    def stopped(self, plugin_id: str) -> None:
        """A plugin stopped: end its subscriptions, watches, mailbox and worker."""
        self.services.stop(plugin_id)
        with self._lock:
            self._memos.pop(plugin_id, None)
        if self._supervisor is not None:
            with contextlib.suppress(Exception):
                self._supervisor.stop(plugin_id)

    def redact(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with the home's secret values scrubbed out."""
        out: dict[str, Any] = self.services.redactor.redact_doc(doc)
        return out

    # -- the sandbox ---------------------------------------------------------

    def supervisor(self) -> Supervisor:
        """The supervisor of this host's sandboxed workers (started on first use)."""
        with self._lock:
            if self._supervisor is None:
                from corral._services.sandboxed import Broker, make_supervisor

                self._supervisor = make_supervisor(
                    Broker(self.services, self.actives.get), self.home,
                    shared=self.shared_fork_server,
                )
                # each call tells the worker whether its L1 of ctx.cache is still good
                self._supervisor.cache_generation = self.services.cache.generation
            return self._supervisor

    def sample_usage(self) -> list[UsageRow]:
        """The sandboxed workers' usage since the last sample (none before any started)."""
        supervisor = self._supervisor
        return supervisor.sample_usage() if supervisor is not None else []

    def call_sandboxed(self, active: Active, export: str, input: Any) -> Any:
        """Run an export or micro handler of a sandboxed plugin in its worker; a memoised
        export's kept result is answered here, without reaching the worker."""
        from corral._services.sandboxed import call_sandboxed

        if export in active.manifest.export_cache:
            return self._memo(active).call(
                export, input, active.ctx.config,
                lambda: call_sandboxed(self.record, self.supervisor(), active, export, input))
        return call_sandboxed(self.record, self.supervisor(), active, export, input)

    def memoise(self, active: Active, export: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """An in-process export's function, memoised if its manifest says so."""
        if export not in active.manifest.export_cache:
            return fn
        return self._memo(active).wrap(export, fn)

    def _memo(self, active: Active) -> Memo:
        plugin_id = active.manifest.id
        with self._lock:
            found = self._memos.get(plugin_id)
            if found is None or found[0] is not active:
                from corral._services.cache.memo import Memo

                found = self._memos[plugin_id] = (active, Memo(self.services.cache,
                                                               active.manifest))
            return found[1]

    # -- micro-plugins and configuration ----------------------------------------

    @property
    def micro(self) -> MicroManager:
        """The micro-plugins of the enabled plugins, ready to run and compose."""
        with self._lock:
            if self._micro is None:
                from corral._services.micro.manager import MicroManager

                self._micro = MicroManager()
                for active in self.actives.values():
                    if active.state is State.ENABLED:
                        self.offer_micro(active)
            return self._micro

    def run_pipeline(self, pipeline_id: str, input: Any = None) -> Any:
        """Run a ``[[pipeline]]`` of an enabled plugin over :attr:`micro`."""
        from corral._services.micro.compose import Composition, pipeline_from_dict

        with self._lock:
            pipelines = {
                decl.id: pipeline_from_dict(decl.to_dict())
                for active in self.actives.values()
                if active.state is State.ENABLED
                for decl in active.manifest.pipelines
            }
        pipeline = pipelines.get(pipeline_id)
        if pipeline is None:
            raise NotFoundError(
                f"no enabled plugin declares a pipeline {pipeline_id!r}", pipeline=pipeline_id
            )
        return Composition(pipeline, self.micro, pipelines).run(input)

    def config_changed(self, plugin_id: str, new: dict[str, Any]) -> None:
        """A valid change of ``config.toml``: new ``ctx.config``, then ``on_config_change``."""
        active = self.actives.get(plugin_id)
        if active is None:
            return
        resolved = self.services.secrets.resolve_config(
            new, perms=active.manifest.permissions, plugin_id=plugin_id
        )
        active.ctx.config = MappingProxyType(resolved)
        hook = getattr(active.entry, "on_config_change", None) if active.entry else None
        if hook is not None and active.state is State.ENABLED:
            self.hooks.call(active, "on_config_change", hook, active.ctx)

    def close(self) -> None:
        """Stop the micro-plugins' machinery and the sandboxed workers."""
        if self._micro is not None:
            self._micro.close()
        if self._supervisor is not None:
            self._supervisor.close()
