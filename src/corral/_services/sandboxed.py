"""Glue between the host and the sandbox: specs from manifests, the broker, the calls.

The host never imports the sandbox package until a sandboxed plugin is loaded.
The broker is the only way sandboxed code reaches the host; every request is
checked against the plugin's ``[permissions]`` here, before anything is done.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from corral._errors import (
    CorralError,
    NotFoundError,
    PermissionDenied,
    PluginError,
    ResourceLimitExceeded,
    UsageError,
)
from corral._model.permissions import expand_placeholders
from corral._runtime.activation import Active, Context

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._model.permissions import Permissions
    from corral._runtime.budgets import ByteBudget
    from corral._sandbox.spec import SandboxSpec
    from corral._sandbox.supervisor import Supervisor
    from corral._services.hub import Services
    from corral._services.messages import Messenger
    from corral._services.state import StateWatch

__all__ = ["call_sandboxed", "input_hash", "make_supervisor", "profile_row", "sandbox_problem",
           "sandboxed_receiver", "spec_for"]

MAX_RESULT_BYTES: Final = 16 * 1024 * 1024
MAX_OUTPUT_BYTES: Final = 1024 * 1024


def sandbox_problem(isolation: str) -> str | None:
    """Why this machine cannot run ``isolation`` (``None`` when it can)."""
    if not sys.platform.startswith("linux"):
        return f"{isolation} isolation needs Linux"
    try:
        from corral._sandbox.kernel import probe
        from corral._sandbox.supervisor import Supervisor  # noqa: F401
    except ImportError as exc:
        return f"the sandbox runtime is not available ({exc})"
    if isolation == "strict":
        missing = probe().missing_for_strict()
        if missing:
            return "missing kernel features: " + ", ".join(missing)
    return None


def spec_for(manifest: Manifest, ctx: Context) -> SandboxSpec:
    """The sandbox description of a plugin, with placeholders resolved.

    The interpreter's own files are not listed: the fork server adds them to
    every strict ruleset (``interpreter_read_paths``).
    """
    from corral._sandbox.spec import SandboxSpec

    values = dict(ctx.paths)
    perms = manifest.permissions
    env = {name: os.environ[name] for name in perms.env if name in os.environ}
    # PATH is no secret, and what it finds is still limited by Landlock and the spawn grants.
    env.setdefault("PATH", os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    isolation = manifest.sandbox.isolation
    if isolation == "none":  # pragma: no cover - the host runs these in process
        raise UsageError(f"{manifest.id} is not sandboxed", plugin_id=manifest.id)
    return SandboxSpec(
        plugin_id=manifest.id,
        isolation=isolation,
        plugin_dir=Path(values["plugin"]),
        data_dir=Path(values["data"]),
        tmp_dir=Path(values["tmp"]),
        cache_dir=Path(values["cache"]),
        workspace=Path(values["workspace"]),
        read_paths=tuple(
            Path(expand_placeholders(p, values)).resolve() for p in perms.fs_read
        ),
        # subprocess.DEVNULL opens /dev/null for writing.
        write_paths=(
            *(Path(expand_placeholders(p, values)).resolve() for p in perms.fs_write),
            Path("/dev/null"),
        ),
        net_connect=perms.net_connect,
        spawn=perms.spawn,
        env=env,
        memory_mb=manifest.sandbox.memory_mb,
        cpu_seconds=manifest.sandbox.cpu_seconds,
        timeout_ms=manifest.sandbox.timeout_ms,
        disk_mb=manifest.sandbox.disk_mb,
        max_processes=manifest.sandbox.max_processes,
        max_result_bytes=MAX_RESULT_BYTES,
        max_output_bytes=MAX_OUTPUT_BYTES,
        max_log_lines=manifest.sandbox.log_lines,
        max_log_bytes=manifest.sandbox.log_kb * 1024,
        version=manifest.version,
    )


class _PolledWatch:
    """A sandboxed plugin's ``ctx.state.subscribe``: changes wait here until it polls.

    The host holds the watch (a worker runs only during calls, so nothing can be
    pushed into it); changes beyond ``max_queue`` are counted in ``dropped``.
    """

    def __init__(self, plugin_id: str, max_queue: int, budget: ByteBudget | None) -> None:
        self.plugin_id = plugin_id
        self.max_queue = max_queue
        #: ``queue-mb``: bytes held for the plugin, shared with its event subscriptions.
        self.budget = budget
        self.changes: collections.deque[Any] = collections.deque()
        self.sizes: collections.deque[int] = collections.deque()
        self.dropped = 0
        self.cond = threading.Condition()
        self.watch: StateWatch | None = None

    def push(self, change: Any) -> None:
        size = 0
        if self.budget is not None:
            size = len(change.key) + 200
            if change.value is not None:
                size += len(msgspec.json.encode(change.value))
        with self.cond:
            if len(self.changes) >= self.max_queue or (
                    self.budget is not None and not self.budget.take(size)):
                self.dropped += 1
                return
            self.changes.append(change)
            self.sizes.append(size)
            self.cond.notify()

    def take(self, max_changes: int, timeout: float) -> tuple[list[Any], int]:
        with self.cond:
            if not self.changes and timeout > 0:
                self.cond.wait_for(lambda: bool(self.changes), timeout)
            n = min(max_changes, len(self.changes))
            out = [self.changes.popleft() for _ in range(n)]
            freed = sum(self.sizes.popleft() for _ in range(n))
            dropped, self.dropped = self.dropped, 0
        if self.budget is not None:
            self.budget.give(freed)
        return out, dropped

    def release(self) -> None:
        """Drop what is still queued and give its bytes back to the plugin's budget."""
        with self.cond:
            freed = sum(self.sizes)
            self.changes.clear()
            self.sizes.clear()
        if self.budget is not None:
            self.budget.give(freed)


class Broker:
    """Answers sandboxed plugins' requests to the host, after checking their grants."""

    def __init__(self, services: Services, active_of: Callable[[str], Active | None]) -> None:
        self.services = services
        self.active_of = active_of
        self._watches: dict[int, _PolledWatch] = {}
        self._watch_ids = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, plugin_id: str, op: str, args: dict[str, Any]) -> Any:
        # net.connect and spawn.resolve are answered by the supervisor from the spec;
        # logs arrive as Log messages and config travels with each call.
        manifest = self._manifest(plugin_id)
        perms = manifest.permissions
        if op.startswith("events."):
            from corral._services.events.plugin import bus_broker_op

            return bus_broker_op(self.services.bus, plugin_id, perms, op, args)
        if op in ("state.subscribe", "state.poll", "state.unsubscribe"):
            return self._state_watch(plugin_id, perms, op, args)
        if op.startswith("state."):
            from corral._services.state import state_broker_op

            return state_broker_op(self.services.shared_state, plugin_id, perms, op, args)
        if op == "messages.send":
            timeout = args.get("timeout", 5.0)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool):
                timeout = 5.0
            return self.services.messenger.send(
                str(args.get("to", "")), args.get("message"),
                timeout=min(max(float(timeout), 0.0), 60.0), perms=perms, sender=plugin_id)
        if op == "messages.broadcast":
            return self.services.messenger.broadcast(args.get("message"), perms=perms,
                                                 sender=plugin_id)
        if op.startswith("cache."):
            from corral._services.cache.service import cache_broker_op

            return cache_broker_op(self.services.cache, plugin_id, perms, op, args)
        if op == "secrets.get":
            from corral._services.secrets import secrets_broker_op

            return secrets_broker_op(self.services.secrets, plugin_id, perms, op, args)
        raise PermissionDenied(
            f"{plugin_id} asked for an unknown host service {op!r}",
            permission=f"host-api:{op}",
            plugin_id=plugin_id,
        )

    def _state_watch(
        self, plugin_id: str, perms: Permissions, op: str, args: dict[str, Any]
    ) -> Any:
        """``state.subscribe {pattern, max_queue?}`` -> watch id; ``state.poll {watch, max?,
        timeout?}`` -> ``{"changes": [...], "dropped": n}``; ``state.unsubscribe {watch}``."""
        store = self.services.shared_state
        if op == "state.subscribe":
            max_queue = args.get("max_queue", 10_000)
            if type(max_queue) is not int or max_queue < 1:
                raise UsageError(f"max_queue must be a positive int, got {max_queue!r}",
                                 plugin_id=plugin_id)
            polled = _PolledWatch(plugin_id, min(max_queue, 1_000_000),
                                  self.services.budgets.queue(plugin_id))
            polled.watch = store.subscribe(str(args.get("pattern", "")), polled.push,
                                           perms=perms, plugin_id=plugin_id)
            with self._lock:
                live = set(map(id, store._watches))
                for old in [w for w, p in self._watches.items() if id(p.watch) not in live]:
                    self._watches.pop(old).release()  # cancelled when their plugin stopped
                wid = next(self._watch_ids)
                self._watches[wid] = polled
            return wid
        wanted: Any = args.get("watch")
        with self._lock:
            found = self._watches.get(wanted) if type(wanted) is int else None
        if found is None or found.plugin_id != plugin_id:
            raise NotFoundError(f"{plugin_id} has no state watch {wanted!r}",
                                plugin_id=plugin_id)
        watch = found.watch
        if op == "state.unsubscribe" or watch not in store._watches:
            with self._lock:
                self._watches.pop(wanted, None)
            found.release()
            if watch is not None:
                watch.cancel()
            if op == "state.unsubscribe":
                return None
            raise NotFoundError(f"state watch {wanted} of {plugin_id} was cancelled "
                                "(the plugin was stopped)", plugin_id=plugin_id)
        max_changes = args.get("max", 1000)
        timeout = args.get("timeout", 0.0)
        if type(max_changes) is not int or not isinstance(timeout, int | float) or isinstance(
                timeout, bool):
            raise UsageError(f"state.poll wants an int max and a number timeout, got "
                             f"{max_changes!r} and {timeout!r}", plugin_id=plugin_id)
        changes, dropped = found.take(min(max(max_changes, 1), 10_000),
                                      min(max(float(timeout), 0.0), 30.0))
        return {"changes": msgspec.to_builtins(changes), "dropped": dropped}

    def _manifest(self, plugin_id: str) -> Manifest:
        active = self.active_of(plugin_id)
        if active is None:
            raise PermissionDenied(
                f"{plugin_id} is not active in this host",
                permission="host-api",
                plugin_id=plugin_id,
            )
        return active.manifest


def make_supervisor(broker: Broker, home: Path, *, shared: bool) -> Supervisor:
    """A host's supervisor of sandboxed workers, with its broker.

    A host made with ``shared_fork_server=True`` (the CLI) uses the per-home
    fork server daemon, unless ``CORRAL_FORKSERVER_SHARED=0``.
    """
    from corral._sandbox.forkserver.settings import forkserver_env
    from corral._sandbox.supervisor import Supervisor

    if forkserver_env("SHARED") == "0":
        shared = False
    from corral._runtime.cleanup import cleanup_settings
    from corral._sandbox.cpuweight import CpuWeights

    return Supervisor(broker=broker, forkserver_dir=home / "run" if shared else None,
                      idle_seconds=cleanup_settings(home).idle_worker_seconds,
                      cpu_weights=CpuWeights())


def call_sandboxed(
    record: Callable[..., None],
    supervisor: Supervisor,
    active: Active,
    export: str,
    input: Any,
    *,
    target: str | None = None,
) -> Any:
    """Run an export, micro handler or hook in the plugin's worker; record the call's metrics.

    ``target`` overrides what ``export`` names (hooks use ``entry#hook``); ``record``
    takes the call's metrics row, its ``call_profile`` row and the import times measured.
    """
    manifest, ctx = active.manifest, active.ctx
    is_call = target is None
    if target is None:
        target = manifest.exports.get(export)
    if target is None:
        target = next(m.handler for m in manifest.micro if m.id == export)
    if active.spec is None:
        active.spec = spec_for(manifest, ctx)
        if active.quota is not None and active.quota.cpu_weight != active.spec.cpu_weight:
            from dataclasses import replace

            active.spec = replace(active.spec, cpu_weight=active.quota.cpu_weight)
    spec = active.spec
    budget = active.budget
    budget.before_call()  # refused while {data}, {tmp} or {cache} is over its budget
    meter = active.quota  # quotas over time (_runtime/quotas.py): a hook is no call
    if meter is not None and is_call:
        meter.before_call()
    start = time.perf_counter()
    outcome = "ok"
    try:
        out = supervisor.call(spec, target, input, config=dict(ctx.config))
        budget.after_call(time.perf_counter() - start)
        return out
    except CorralError as exc:
        outcome = exc.code
        if not isinstance(exc, ResourceLimitExceeded) or exc.details.get("limit") not in (
                "disk-mb", "tmp-mb", "cache-mb"):
            with contextlib.suppress(ResourceLimitExceeded):  # what it wrote still counts
                budget.after_call(time.perf_counter() - start)
        raise
    finally:
        metrics = supervisor.last_metrics(manifest.id)
        wall_ms = (time.perf_counter() - start) * 1000
        if meter is not None and metrics is not None:  # its CPU counts against its quotas
            meter.charge_cpu((metrics.cpu_user_ms + metrics.cpu_system_ms) / 1000.0)
        at = time.time()
        row = (
            manifest.id,
            export,
            manifest.sandbox.isolation,
            outcome,
            getattr(metrics, "wall_ms", wall_ms) if metrics else wall_ms,
            getattr(metrics, "cpu_user_ms", None) if metrics else None,
            getattr(metrics, "cpu_system_ms", None) if metrics else None,
            getattr(metrics, "peak_rss_kb", None) if metrics else None,
            getattr(metrics, "result_bytes", None) if metrics else None,
            at,
        )
        if target != manifest.exports.get(export):  # hooks and micro handlers: metrics only
            record(row)
        else:
            imports = supervisor.take_imports(manifest.id)
            record(row, profile_row(row, manifest.version, input, metrics),
                   [(manifest.id, manifest.version, m, s, t, at) for m, s, t in imports])


def input_hash(value: Any) -> str | None:
    """A 64-bit checksum of a call's input (CRC-32 and Adler-32 of its msgpack form): enough
    to count repeated inputs (which suggest caching the export), and ~0.1 us to compute."""
    try:
        data = msgspec.msgpack.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return None
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def profile_row(row: tuple[Any, ...], version: str, input: Any, metrics: Any) -> tuple[Any, ...]:
    """The ``call_profile`` row of a call, from its ``calls`` row and the supervisor's metrics."""
    cpu = None if row[5] is None else float(row[5]) + float(row[6] or 0.0)
    return (row[0], row[1], version, row[2], row[3], input_hash(input),
            getattr(metrics, "broker_calls", 0), round(getattr(metrics, "broker_ms", 0.0), 3),
            row[4], cpu, row[7], row[9])


def sandboxed_receiver(
    record: Callable[[tuple[Any, ...]], None], supervisor: Supervisor, messenger: Messenger,
    active: Active,
) -> Callable[[Any, str | None, float | None], Any] | None:
    """The message handler of a sandboxed plugin, or ``None`` if its entry has no ``on_message``.

    Asks the worker which hooks the entry object has (one round trip, at enable).
    Each message is then one call of ``entry#on_message`` in the worker, under
    the plugin's ``timeout-ms`` and limits; a crash, a timeout or a limit fails
    that delivery only (the next one starts a new worker, as a call would).
    """
    manifest = active.manifest
    entry = manifest.entry
    if entry is None:
        return None
    hooks = call_sandboxed(record, supervisor, active, "__hooks__", None,
                           target=f"{entry}#__hooks__")
    if not isinstance(hooks, list) or "on_message" not in hooks:
        return None
    plugin_id = manifest.id
    target = f"{entry}#on_message"

    def deliver(message: Any, sender: str | None, deadline: float | None) -> Any:
        from corral._model.lifecycle import State

        if active.state is not State.ENABLED or not messenger.serving(plugin_id):
            # disabled while the message waited: no worker is started for it
            raise UsageError(f"plugin {plugin_id} stopped receiving messages",
                             plugin_id=plugin_id, receiver=plugin_id)
        value = {"message": message, "sender": sender, "deadline": deadline}
        try:
            return call_sandboxed(record, supervisor, active, "on_message", value, target=target)
        except PluginError as exc:
            raise PluginError(
                f"{plugin_id} failed handling a message from {sender or 'the host'}: "
                f"{exc.message}",
                plugin_id=plugin_id, receiver=plugin_id,
                **{k: v for k, v in exc.details.items() if k in ("traceback", "exception")},
            ) from None
        except CorralError as exc:
            exc.details.setdefault("receiver", plugin_id)
            raise
        finally:
            if active.state is not State.ENABLED or not messenger.serving(plugin_id):
                # Disabled during the delivery: do not leave a worker behind for it.
                supervisor.stop(plugin_id)

    return deliver
