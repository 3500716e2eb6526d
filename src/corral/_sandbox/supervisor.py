"""The host side of sandboxed execution: workers, calls, the broker channel, limits.

A :class:`Supervisor` owns one fork server (started lazily) and at most one
worker per plugin.  :meth:`Supervisor.call` sends a call, serves the worker's
broker requests while it runs (``net.connect`` and ``spawn.resolve`` here,
everything else through the host's :data:`BrokerHandler`), enforces the
wall-clock timeout and the output and result caps, and turns every way a call
can end into a result or one corral error:

==========================  ==========================================================
what happened               raised
==========================  ==========================================================
plugin raised               :class:`PluginError` (``traceback``), or the corral error
                            it let through (a broker :class:`PermissionDenied`)
wall clock                  :class:`PluginTimeout` ``limit="timeout-ms"``; worker killed
CPU, memory, output, result :class:`ResourceLimitExceeded` ``limit=...``; worker killed
died, or broke the protocol :class:`WorkerCrashed` (``signal``/``exit_status``/``protocol``)
3 crashes within a minute   :class:`WorkerCrashed` ``circuit="open"`` until :meth:`reset`
==========================  ==========================================================

Every message from a worker is untrusted; any violation kills that worker only.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import msgspec

from corral._errors import (
    CorralError,
    NotFoundError,
    PermissionDenied,
    PluginTimeout,
    ResourceLimitExceeded,
    UnavailableError,
    UnsupportedError,
    WorkerCrashed,
)
from corral._model.permissions import Permissions
from corral._runtime.usage import UsageRow
from corral._sandbox.accounting import WorkerAccount
from corral._sandbox.blame import capture as capture_blame
from corral._sandbox.cpuweight import CpuWeights
from corral._sandbox.denials import denial_message
from corral._sandbox.failures import death_details, death_error, log_over, vetted
from corral._sandbox.forkserver.client import ForkServerClient
from corral._sandbox.forkserver.settings import forkserver_env
from corral._sandbox.rpc import (
    Call,
    ErrorInfo,
    Failure,
    Hello,
    Log,
    Output,
    Profile,
    ProtocolError,
    Reap,
    Reaped,
    Refused,
    Reply,
    Request,
    Result,
    Spawn,
    Spawned,
    decode_result,
    error_from_info,
    info_from_error,
)
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.workerinit import CPU_BUDGET_FACTOR, init_for, resolve_program
from corral._sandbox.workerproc import WorkerGone, WorkerProcess

__all__ = ["BrokerHandler", "CallMetrics", "Supervisor"]

#: ``(plugin_id, op, args) -> JSON result``; raises a CorralError (``PermissionDenied``).
BrokerHandler = Callable[[str, str, dict[str, Any]], Any]
#: Takes the stack samples of one profiled call (``Supervisor.set_profiler``).
ProfileSink = Callable[[Profile], None]

_log: Final = logging.getLogger("corral.sandbox")
_NET_CONNECT_TIMEOUT: Final = 10.0


@final
@dataclass(frozen=True, slots=True)
class CallMetrics:
    """What one call cost, as measured from outside the plugin (CPU from the worker)."""

    wall_ms: float
    cpu_user_ms: float
    cpu_system_ms: float
    peak_rss_kb: int
    result_bytes: int
    #: ``ok`` or the error code the call ended with (``timeout``, ``crashed``, ...).
    outcome: str
    #: How many broker requests the call made, and the host's time serving them.
    broker_calls: int = 0
    broker_ms: float = 0.0


@dataclass(slots=True)
class _Usage:
    """What the call in progress has cost so far (filled in as the worker reports)."""

    cpu_user_ms: float = 0.0
    cpu_system_ms: float = 0.0
    peak_rss_kb: int = 0
    result_bytes: int = 0
    broker_calls: int = 0
    broker_ms: float = 0.0

    def set(self, user_ms: float, system_ms: float, rss_kb: int) -> None:
        self.cpu_user_ms, self.cpu_system_ms, self.peak_rss_kb = user_ms, system_ms, rss_kb


@final
class _Plugin:
    """Per-plugin supervisor state: the worker, the crash history, the last metrics."""

    def __init__(self) -> None:
        self.lock: Final = threading.Lock()
        self.worker: WorkerProcess | None = None
        self.crashes: list[float] = []
        self.circuit_open = False
        self.metrics: CallMetrics | None = None
        #: What the running worker has cost (its cgroups, or its rusage).
        self.account: WorkerAccount | None = None
        #: Where a profiled call's samples go (``set_profiler``); ``None``: not profiled.
        self.profiler: ProfileSink | None = None
        self.profile_interval = 0.0
        #: ``(module, self ms, total ms)`` its worker reported for its last first import.
        self.imports: list[tuple[str, float, float]] = []


@final
class Supervisor:
    """Runs plugin exports in sandboxed workers: one fork server, one worker per plugin.

    :param broker: serves ``ctx.events``/``state``/``secrets`` requests; ``None``
        denies them all.
    :param idle_seconds: a worker unused this long is stopped (checked on each call).
    :param max_crashes: consecutive crashes within ``crash_window`` that open the circuit.
    :param forkserver_dir: share the per-home fork server daemon listening there
        (``<home>/run``; pays off for one-shot processes) instead of a private fork server.
    :param accounting: measure workers by their cgroups (default: unless
        ``CORRAL_FORKSERVER_ACCOUNTING=0``); without, by their rusage (approximate).
    """

    def __init__(
        self,
        broker: BrokerHandler | None = None,
        *,
        idle_seconds: float = 300.0,
        max_crashes: int = 3,
        crash_window: float = 60.0,
        start_timeout: float = 10.0,
        forkserver_dir: Path | None = None,
        cpu_weights: CpuWeights | None = None,
        accounting: bool | None = None,
    ) -> None:
        self._broker = broker
        #: Puts each worker into its plugin's weighted cpu cgroup (``cpu-weight``).
        self.cpu_weights = cpu_weights
        if accounting is None:
            accounting = forkserver_env("ACCOUNTING") != "0"
        #: Read workers' cgroup counters (else their rusage only, approximate); looked at
        #: when a worker starts.
        self.accounting = accounting
        self._idle_seconds = idle_seconds
        self._max_crashes = max_crashes
        self._crash_window = crash_window
        self._start_timeout = start_timeout
        self._forkserver = ForkServerClient(shared_dir=forkserver_dir)
        self._plugins: dict[str, _Plugin] = {}
        self._lock = threading.Lock()
        self._missing_for_strict: list[str] | None = None
        self._closed = False
        #: plugin id -> the generation of its cache namespace, sent with each call.
        self.cache_generation: Callable[[str], int] | None = None
        self._idle_checked = 0.0
        #: Stops idle workers even when no call comes (started with the first worker).
        self._idle_sweeper: threading.Thread | None = None
        self._idle_stop = threading.Event()
        #: Usage rows of workers stopped since the last :meth:`sample_usage`.
        self._usage_done: list[UsageRow] = []

    # -- public ----------------------------------------------------------------------

    def call(
        self,
        spec: SandboxSpec,
        target: str,
        input: Any,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run ``target`` (``pkg.module:function``) as ``function(input, ctx)`` in a worker.

        :returns: the JSON-compatible result.
        :raises CorralError: see the module docstring for which.
        """
        if self._closed:
            raise UnavailableError("the supervisor is closed", plugin_id=spec.plugin_id)
        self._stop_idle(spec.plugin_id)
        state = self._state(spec.plugin_id)
        with state.lock:
            return self._call_locked(state, spec, target, input, dict(config or {}))

    async def acall(
        self,
        spec: SandboxSpec,
        target: str,
        input: Any,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> Any:
        """:meth:`call` for async hosts (the wait happens in a thread)."""
        import asyncio  # a host that never awaits never imports it

        return await asyncio.to_thread(self.call, spec, target, input, config=config)

    def prestart(self) -> None:
        """Start the fork server in the background; the first worker then starts sooner."""
        self._forkserver.start()

    def last_metrics(self, plugin_id: str) -> CallMetrics | None:
        """The metrics of the plugin's most recent call, if any."""
        state = self._plugins.get(plugin_id)
        return state.metrics if state is not None else None

    def set_profiler(self, plugin_id: str, sink: ProfileSink | None,
                     interval: float = 0.005) -> None:
        """Sample the stacks of the plugin's calls every ``interval`` seconds into ``sink``
        from now on (``None``: stop)."""
        state = self._state(plugin_id)
        state.profile_interval = interval
        state.profiler = sink

    def take_imports(self, plugin_id: str) -> list[tuple[str, float, float]]:
        """The import times its worker reported since the last take (then forgotten)."""
        state = self._plugins.get(plugin_id)
        if state is None or not state.imports:
            return []
        out, state.imports = state.imports, []
        return out

    def worker_pid(self, plugin_id: str) -> int | None:
        """The host-side pid of the plugin's running worker, if it has one."""
        state = self._plugins.get(plugin_id)
        worker = state.worker if state is not None else None
        return worker.pid if worker is not None else None

    def account(self, plugin_id: str) -> WorkerAccount | None:
        """The running worker's account (its cgroups and counters), if it has a worker."""
        state = self._plugins.get(plugin_id)
        return state.account if state is not None else None

    def sample_usage(self) -> list[UsageRow]:
        """Usage rows since the last sample: one per worker that did anything, and the
        final ones of workers stopped meanwhile.  Reads the kernel's counters; cheap
        enough to call every second, never needed on the call path.
        """
        with self._lock:
            rows, self._usage_done = self._usage_done, []
            states = list(self._plugins.values())
        for state in states:
            account = state.account
            if account is not None:
                row = account.sample()
                if row is not None:
                    rows.append(row)
        return rows

    def stop(self, plugin_id: str) -> None:
        """Stop the plugin's worker (the plugin was disabled); the next call starts one."""
        state = self._plugins.get(plugin_id)
        if state is not None:
            with state.lock:
                self._kill(state)

    def reset(self, plugin_id: str) -> None:
        """Close the plugin's circuit breaker (it was re-enabled)."""
        state = self._plugins.get(plugin_id)
        if state is not None:
            with state.lock:
                state.crashes.clear()
                state.circuit_open = False

    def close(self) -> None:
        """Stop every worker and the fork server, reaping all of them (a daemon's fork
        server does it on its own once we hang up, without keeping a one-shot process).
        """
        self._closed = True
        self._idle_stop.set()
        shared = self._forkserver.shared
        for state in list(self._plugins.values()):
            with state.lock:
                if shared:  # its fork server kills and reaps them all when we hang up
                    worker, state.worker = state.worker, None
                    if worker is not None:
                        worker.sock.close()
                else:
                    self._kill(state)
        self._forkserver.close()
        if self.cpu_weights is not None:
            self.cpu_weights.close()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers ---------------------------------------------------------------------

    def _state(self, plugin_id: str) -> _Plugin:
        with self._lock:
            state = self._plugins.get(plugin_id)
            if state is None:
                state = self._plugins[plugin_id] = _Plugin()
            return state

    def _stop_idle(self, current: str) -> None:
        now = time.monotonic()
        if now - self._idle_checked < 1.0:
            return
        self._idle_checked = now
        for plugin_id, state in list(self._plugins.items()):
            worker = state.worker
            if (
                plugin_id != current
                and worker is not None
                and now - worker.last_used > self._idle_seconds
                and state.lock.acquire(blocking=False)
            ):
                try:
                    if state.worker is worker:
                        self._kill(state)
                finally:
                    state.lock.release()

    def _sweep_idle_soon(self) -> None:
        """Start the thread that stops workers idle for ``idle_seconds`` (once)."""
        if self._idle_sweeper is not None:
            return
        with self._lock:
            if self._idle_sweeper is None:
                every = min(max(self._idle_seconds / 2, 0.05), 30.0)

                def sweep() -> None:
                    while not self._idle_stop.wait(every):
                        self._idle_checked = 0.0
                        self._stop_idle("")

                self._idle_sweeper = threading.Thread(target=sweep, name="corral-idle-workers",
                                                      daemon=True)
                self._idle_sweeper.start()

    def _check_strict(self, spec: SandboxSpec) -> None:
        if self._missing_for_strict is None:
            from corral._sandbox.kernel import probe

            self._missing_for_strict = list(probe().missing_for_strict())
        if self._missing_for_strict:
            missing = ", ".join(self._missing_for_strict)
            raise UnsupportedError(
                f"strict isolation needs {missing}, which this kernel does not offer; "
                f"refusing to run {spec.plugin_id} with less",
                plugin_id=spec.plugin_id,
                missing=self._missing_for_strict,
            )

    def _kill(self, state: _Plugin) -> Reaped | None:
        """Kill and reap the plugin's worker, if it has one."""
        worker, state.worker = state.worker, None
        account, state.account = state.account, None
        if account is not None:  # before the reap: its cgroups go with it
            row = account.sample(final=True)
            if row is not None:
                with self._lock:
                    self._usage_done.append(row)
        if worker is None:
            return None
        worker.sock.close()
        try:
            reply = self._forkserver.request(Reap(pid=worker.pid))
        except CorralError as exc:  # the fork server is gone, and its workers with it
            _log.warning(
                "could not reap worker %d of %s: %s", worker.pid, worker.spec.plugin_id, exc
            )
            return None
        if not isinstance(reply, Reaped) or reply.error is not None:
            _log.warning(
                "could not reap worker %d of %s: %s", worker.pid, worker.spec.plugin_id, reply
            )
            return None
        return reply

    def _start(self, state: _Plugin, spec: SandboxSpec) -> WorkerProcess:
        """Have the fork server start a worker; :meth:`_greet` waits for it to be ready."""
        if spec.isolation == "strict":
            self._check_strict(spec)
        if state.crashes:  # back off after a crash: 10 ms, 40 ms, 160 ms ...
            delay = 0.01 * 4 ** (len(state.crashes) - 1)
            wait = state.crashes[-1] + delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            reply = self._forkserver.request(Spawn(init=init_for(spec)), [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if not isinstance(reply, Spawned) or reply.error is not None:
            ours.close()
            error = reply.error if isinstance(reply, Spawned) else repr(reply)
            raise UnavailableError(
                f"could not start a {spec.isolation} worker for {spec.plugin_id}: {error}",
                plugin_id=spec.plugin_id,
            )
        worker = WorkerProcess(spec, reply.pid, ours)
        state.worker = worker
        self._sweep_idle_soon()
        if self.cpu_weights is not None:
            self.cpu_weights.place(spec.plugin_id, reply.pid, spec.cpu_weight)
        state.account = WorkerAccount(
            spec.plugin_id, spec.version, spec.isolation, spec.memory_mb,
            reply.cgroups if self.accounting else {},
        )
        return worker

    def _greet(self, state: _Plugin, worker: WorkerProcess, deadline: float) -> None:
        """Wait for the worker's Hello (it answers the first call right after it)."""
        spec = worker.spec
        try:
            msg = worker.recv(deadline)
        except (TimeoutError, WorkerGone, ProtocolError) as exc:
            reaped = self._kill(state)
            raise WorkerCrashed(
                f"the worker of {spec.plugin_id} died while starting ({exc or 'timeout'})",
                plugin_id=spec.plugin_id,
                **death_details(reaped),
            ) from None
        if isinstance(msg, Refused):
            self._kill(state)
            raise UnsupportedError(
                f"{spec.isolation} isolation refused for {spec.plugin_id}: {msg.message}",
                plugin_id=spec.plugin_id,
                feature=msg.feature,
            )
        if not isinstance(msg, Hello):
            self._kill(state)
            raise WorkerCrashed(
                f"the worker of {spec.plugin_id} broke the protocol while starting",
                plugin_id=spec.plugin_id,
                protocol=f"expected hello, got {type(msg).__name__}",
            )
        worker.greeted = True

    # -- one call --------------------------------------------------------------------

    def _call_locked(
        self, state: _Plugin, spec: SandboxSpec, target: str, input: Any, config: dict[str, Any]
    ) -> Any:
        if state.circuit_open:
            raise WorkerCrashed(
                f"{spec.plugin_id} crashed {self._max_crashes} times in a row; "
                "its circuit breaker is open until the plugin is reset",
                plugin_id=spec.plugin_id,
                circuit="open",
            )
        worker = state.worker
        if worker is not None and (
            (worker.spec is not spec and worker.spec != spec)
            or worker.cpu_ms + spec.cpu_seconds * 1000.0
            > spec.cpu_seconds * CPU_BUDGET_FACTOR * 1000.0
        ):
            self._kill(state)  # a new spec, or a worker near its lifetime CPU budget
            worker = None
        t0 = time.monotonic()
        usage = _Usage()
        outcome = "ok"
        try:
            if worker is None:
                worker = self._start(state, spec)
            value = self._round_trip(state, worker, spec, target, input, config, t0, usage)
            state.crashes.clear()
            return value
        except CorralError as exc:
            outcome = exc.code
            if isinstance(exc, WorkerCrashed) and exc.details.get("circuit") is None:
                self._record_crash(state, exc)
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            if worker is not None:
                worker.last_used = time.monotonic()
                worker.cpu_ms += usage.cpu_user_ms + usage.cpu_system_ms
            account = state.account
            if account is not None:
                account.call_done(usage.cpu_user_ms + usage.cpu_system_ms, usage.peak_rss_kb)
            state.metrics = CallMetrics(
                wall_ms=(time.monotonic() - t0) * 1000.0,
                cpu_user_ms=usage.cpu_user_ms,
                cpu_system_ms=usage.cpu_system_ms,
                peak_rss_kb=usage.peak_rss_kb,
                result_bytes=usage.result_bytes,
                outcome=outcome,
                broker_calls=usage.broker_calls,
                broker_ms=usage.broker_ms,
            )

    def _record_crash(self, state: _Plugin, exc: WorkerCrashed) -> None:
        now = time.monotonic()
        state.crashes = [t for t in state.crashes if now - t <= self._crash_window]
        state.crashes.append(now)
        if len(state.crashes) >= self._max_crashes:
            state.circuit_open = True
            exc.details["circuit"] = "open"

    def _round_trip(
        self,
        state: _Plugin,
        worker: WorkerProcess,
        spec: SandboxSpec,
        target: str,
        input: Any,
        config: dict[str, Any],
        t0: float,
        usage: _Usage,
    ) -> Any:
        pid = spec.plugin_id
        deadline = t0 + spec.timeout_ms / 1000.0
        call_id = worker.next_call_id
        worker.next_call_id += 1
        output = lines = 0
        host_errors: set[tuple[str, str]] = set()  # errors the host raised into this call
        try:
            gen = self.cache_generation
            sink = state.profiler
            call = Call(id=call_id, target=target, input=input, config=config,
                        cache_gen=gen(pid) if gen is not None else 0,
                        profile=state.profile_interval if sink is not None else 0.0)
            try:
                worker.send(call, deadline)
            except WorkerGone:
                if not worker.greeted:  # it may have refused and left: read why first
                    self._greet(state, worker, t0 + self._start_timeout)
                raise
            if not worker.greeted:  # a new worker: the call was queued while it confined itself
                self._greet(state, worker, t0 + self._start_timeout)
            while True:
                msg = worker.recv(deadline)
                kind = type(msg)  # the tagged union decodes to exactly these classes
                if kind is Result or kind is Failure:
                    assert isinstance(msg, Result | Failure)
                    if msg.id != call_id:
                        raise ProtocolError(f"answer to unknown call id {msg.id}")
                    u = msg.usage
                    usage.set(u.cpu_user_ms, u.cpu_system_ms, u.peak_rss_kb)
                if isinstance(msg, Result):
                    size = usage.result_bytes = len(msg.value)
                    if size > spec.max_result_bytes:
                        self._kill(state)
                        raise ResourceLimitExceeded(
                            f"{pid}: the result is {size} bytes, over its "
                            f"{spec.max_result_bytes}-byte cap",
                            plugin_id=pid,
                            limit="result-size",
                            measured=size,
                        )
                    return decode_result(msg.value)
                if isinstance(msg, Failure):
                    err = error_from_info(vetted(msg.error, host_errors, spec), pid)
                    if isinstance(err, ResourceLimitExceeded | PluginTimeout | WorkerCrashed):
                        self._kill(state)  # the worker is not to be trusted after a limit
                    raise err
                if isinstance(msg, Request):
                    served = time.monotonic()
                    self._serve_request(worker, spec, msg, deadline, host_errors)
                    usage.broker_calls += 1
                    usage.broker_ms += (time.monotonic() - served) * 1000.0
                elif isinstance(msg, Profile):
                    if msg.id != call_id:
                        raise ProtocolError(f"profile of unknown call id {msg.id}")
                    if msg.imports:
                        state.imports = msg.imports[:200]
                    if sink is not None:  # even with no samples: the call was profiled
                        sink(msg)
                elif isinstance(msg, Log | Output):
                    text = msg.message if isinstance(msg, Log) else msg.text
                    output += len(text.encode("utf-8", "replace"))
                    lines += 1 if isinstance(msg, Log) else max(1, text.count("\n"))
                    if lines > spec.max_log_lines or output > spec.max_log_bytes:
                        self._kill(state)
                        raise log_over(spec, lines, output)
                    if output > spec.max_output_bytes:
                        self._kill(state)
                        raise ResourceLimitExceeded(
                            f"{pid}: the call wrote over its {spec.max_output_bytes} bytes "
                            "of output and log",
                            plugin_id=pid,
                            limit="output-size",
                            measured=output,
                        )
                    _emit(pid, msg)
                else:
                    raise ProtocolError(f"unexpected {type(msg).__name__} during a call")
        except TimeoutError:
            elapsed = (time.monotonic() - t0) * 1000.0
            blame = capture_blame(worker.pid, worker.sock, str(spec.plugin_dir))
            _set_reaped(usage, self._kill(state))
            raise PluginTimeout(
                f"{pid}: {target} ran past its {spec.timeout_ms} ms wall-clock limit"
                + (f" (in {blame[0]['function']}, {blame[0]['file']}:{blame[0]['line']})"
                   if blame else ""),
                plugin_id=pid,
                limit="timeout-ms",
                measured=round(elapsed, 1),
                blame=blame,
            ) from None
        except ProtocolError as exc:
            reaped = self._kill(state)
            _set_reaped(usage, reaped)
            raise WorkerCrashed(
                f"the worker of {pid} broke the RPC protocol and was killed: {exc}",
                plugin_id=pid,
                protocol=str(exc),
                **death_details(reaped),
            ) from None
        except WorkerGone:
            reaped = self._kill(state)
            _set_reaped(usage, reaped)
            raise death_error(spec, reaped) from None

    def _serve_request(
        self,
        worker: WorkerProcess,
        spec: SandboxSpec,
        req: Request,
        deadline: float,
        host_errors: set[tuple[str, str]],
    ) -> None:
        fds: list[int] = []
        conn: socket.socket | None = None
        try:
            if req.op == "net.connect":
                conn = self._net_connect(spec, req.args, deadline)
                fds.append(conn.fileno())
                reply = Reply(id=req.id, fd=True)
            elif req.op == "spawn.resolve":
                reply = Reply(id=req.id, value=self._spawn_resolve(spec, req.args))
            elif self._broker is None:
                raise PermissionDenied(
                    f"{spec.plugin_id}: no host services are available ({req.op})",
                    permission=f"host-api:{req.op}",
                    plugin_id=spec.plugin_id,
                )
            else:
                value = self._broker(spec.plugin_id, req.op, dict(req.args))
                reply = Reply(id=req.id, value=value)
        except CorralError as exc:
            reply = Reply(id=req.id, error=info_from_error(exc))
        except Exception:
            _log.exception("broker request %s from %s failed", req.op, spec.plugin_id)
            reply = Reply(
                id=req.id,
                error=ErrorInfo(code="error", message=f"the host failed to serve {req.op}"),
            )
        if reply.error is not None:
            host_errors.add((reply.error.code, reply.error.message))
        try:
            try:
                worker.send(reply, deadline, fds)
            except (TypeError, ValueError, msgspec.EncodeError):
                _log.error("broker answer to %s for %s is not serialisable", req.op, spec.plugin_id)
                error = ErrorInfo(code="error", message=f"the host failed to serve {req.op}")
                worker.send(Reply(id=req.id, error=error), deadline)
        finally:
            if conn is not None:
                conn.close()

    def _net_connect(
        self, spec: SandboxSpec, args: dict[str, Any], deadline: float
    ) -> socket.socket:
        host, port = args.get("host"), args.get("port")
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise PermissionDenied(
                f"{spec.plugin_id}: malformed net.connect request",
                permission="net-connect:?",
                plugin_id=spec.plugin_id,
            )
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not Permissions(net_connect=spec.net_connect).allows_connect(host, port):
            raise PermissionDenied(
                denial_message(spec.plugin_id, f"net-connect:{shown}"),
                permission=f"net-connect:{shown}",
                plugin_id=spec.plugin_id,
            )
        wanted = args.get("timeout")  # the worker's socket timeout, if it has one
        cap = _NET_CONNECT_TIMEOUT
        if isinstance(wanted, int | float) and not isinstance(wanted, bool) and wanted > 0:
            cap = min(cap, float(wanted))
        timeout = max(0.001, min(cap, deadline - time.monotonic()))
        try:
            conn = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            # errno lets a transparent connect in the worker raise the OSError it stands for
            code = exc.errno if isinstance(exc.errno, int) else (
                errno.ETIMEDOUT if isinstance(exc, TimeoutError) else None)
            raise UnavailableError(
                f"{spec.plugin_id}: cannot connect to {shown}: {exc}", plugin_id=spec.plugin_id,
                errno=code,
            ) from exc
        conn.setblocking(True)
        return conn

    def _spawn_resolve(self, spec: SandboxSpec, args: dict[str, Any]) -> str:
        program = args.get("program")
        if not isinstance(program, str):
            program = "?"
        for granted in spec.spawn:
            if program == granted or (
                os.path.isabs(program) and program == resolve_program(granted)
            ):
                path = resolve_program(granted)
                if path is None:
                    raise NotFoundError(
                        f"{spec.plugin_id}: granted program {granted!r} is not installed",
                        plugin_id=spec.plugin_id,
                    )
                return path
        raise PermissionDenied(
            f"{spec.plugin_id} has no spawn grant for {program!r}",
            permission=f"spawn:{program}",
            plugin_id=spec.plugin_id,
        )


# -- errors ------------------------------------------------------------------------------


def _set_reaped(usage: _Usage, reaped: Reaped | None) -> None:
    """A killed worker's lifetime usage stands in for the unfinished call's (an upper bound)."""
    if reaped is not None:
        usage.set(reaped.cpu_user_ms, reaped.cpu_system_ms, reaped.peak_rss_kb)



def _emit(plugin_id: str, msg: Log | Output) -> None:
    logger = logging.getLogger(f"corral.plugin.{plugin_id}")
    if isinstance(msg, Log):
        level = msg.level if 0 <= msg.level <= 100 else logging.WARNING
        logger.log(level, "%s", msg.message)
    else:
        logger.info("[%s] %s", msg.stream, msg.text.rstrip("\n"))
