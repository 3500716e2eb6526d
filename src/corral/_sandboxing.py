"""Glue between the host and the sandbox: specs from manifests, the broker, the calls.

The host never imports the sandbox package until a sandboxed plugin is loaded.
The broker is the only way sandboxed code reaches the host; every request is
checked against the plugin's ``[permissions]`` here, before anything is done.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._errors import CorralError, PermissionDenied
from ._permissions import expand_placeholders

if TYPE_CHECKING:
    from ._context import PluginContext
    from ._host import Host, _Active
    from ._manifest import Manifest
    from ._sandbox._spec import SandboxSpec
    from ._sandbox._supervisor import Supervisor

__all__ = ["call_sandboxed", "make_supervisor", "sandbox_problem", "spec_for"]

MAX_RESULT_BYTES: Final = 16 * 1024 * 1024
MAX_OUTPUT_BYTES: Final = 1024 * 1024


def sandbox_problem(isolation: str) -> str | None:
    """Why this machine cannot run ``isolation`` (``None`` when it can)."""
    if not sys.platform.startswith("linux"):
        return f"{isolation} isolation needs Linux"
    try:
        from ._sandbox._kernel import probe
        from ._sandbox._supervisor import Supervisor  # noqa: F401
    except ImportError as exc:
        return f"the sandbox runtime is not available ({exc})"
    if isolation == "strict":
        missing = probe().missing_for_strict()
        if missing:
            return "missing kernel features: " + ", ".join(missing)
    return None


def spec_for(manifest: Manifest, ctx: PluginContext) -> SandboxSpec:
    """The sandbox description of a plugin, with placeholders resolved.

    The interpreter's own files are not listed: the fork server adds them to
    every strict ruleset (``interpreter_read_paths``).
    """
    from ._sandbox._spec import SandboxSpec

    values = dict(ctx.paths)
    perms = manifest.permissions
    env = {name: os.environ[name] for name in perms.env if name in os.environ}
    # PATH is no secret, and what it finds is still limited by Landlock and the spawn grants.
    env.setdefault("PATH", os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    isolation = manifest.sandbox.isolation
    if isolation == "none":  # pragma: no cover - the host runs these in process
        raise CorralError(f"{manifest.id} is not sandboxed", plugin_id=manifest.id)
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
    )


class Broker:
    """Answers sandboxed plugins' requests to the host, after checking their grants."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def __call__(self, plugin_id: str, op: str, args: dict[str, Any]) -> Any:
        # net.connect and spawn.resolve are answered by the supervisor from the spec;
        # logs arrive as Log messages and config travels with each call.
        manifest = self._manifest(plugin_id)
        perms = manifest.permissions
        if op.startswith("events."):
            from ._events import bus_broker_op

            return bus_broker_op(self.host.bus, plugin_id, perms, op, args)
        if op.startswith("state."):
            from ._state import state_broker_op

            return state_broker_op(self.host.shared_state, plugin_id, perms, op, args)
        if op == "messages.send":
            timeout = args.get("timeout", 5.0)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool):
                timeout = 5.0
            return self.host.messenger.send(
                str(args.get("to", "")), args.get("message"),
                timeout=min(max(float(timeout), 0.0), 60.0), perms=perms, sender=plugin_id)
        if op == "messages.broadcast":
            return self.host.messenger.broadcast(args.get("message"), perms=perms,
                                                 sender=plugin_id)
        if op == "secrets.get":
            from ._secrets import secrets_broker_op

            return secrets_broker_op(self.host.secrets, plugin_id, perms, op, args)
        raise PermissionDenied(
            f"{plugin_id} asked for an unknown host service {op!r}",
            permission=f"host-api:{op}",
            plugin_id=plugin_id,
        )

    def _manifest(self, plugin_id: str) -> Manifest:
        active = self.host._active.get(plugin_id)
        if active is None:
            raise PermissionDenied(
                f"{plugin_id} is not active in this host",
                permission="host-api",
                plugin_id=plugin_id,
            )
        return active.manifest


def make_supervisor(host: Host) -> Supervisor:
    """The host's supervisor of sandboxed workers, with its broker."""
    from ._sandbox._supervisor import Supervisor

    return Supervisor(broker=Broker(host))


def call_sandboxed(
    host: Host,
    supervisor: Supervisor,
    active: _Active,
    export: str,
    input: Any,
    *,
    target: str | None = None,
) -> Any:
    """Run an export, micro handler or hook in the plugin's worker; record the call's metrics.

    ``target`` overrides what ``export`` names (hooks use ``entry#hook``).
    """
    manifest, ctx = active.manifest, active.ctx
    if target is None:
        target = manifest.exports.get(export)
    if target is None:
        target = next(m.handler for m in manifest.micro if m.id == export)
    if active.spec is None:
        active.spec = spec_for(manifest, ctx)
    spec = active.spec
    start = time.perf_counter()
    outcome = "ok"
    try:
        return supervisor.call(spec, target, input, config=dict(ctx.config))
    except CorralError as exc:
        outcome = exc.code
        raise
    finally:
        metrics = supervisor.last_metrics(manifest.id)
        wall_ms = (time.perf_counter() - start) * 1000
        host.record_call(
            (
                manifest.id,
                export,
                manifest.sandbox.isolation,
                outcome,
                getattr(metrics, "wall_ms", wall_ms) if metrics else wall_ms,
                getattr(metrics, "cpu_user_ms", None) if metrics else None,
                getattr(metrics, "cpu_system_ms", None) if metrics else None,
                getattr(metrics, "peak_rss_kb", None) if metrics else None,
                getattr(metrics, "result_bytes", None) if metrics else None,
                time.time(),
            )
        )
