"""The worker's serve loop: one call at a time, with its CPU, output and result limits.

:class:`Worker` resolves a call's target (or a lifecycle hook of the entry
object), runs it with a fresh ``ctx``, counts what it prints and logs, and
answers the host with a result or a failure and what the call cost.
"""

from __future__ import annotations

import importlib
import inspect
import io
import logging
import os
import resource
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, final

import msgspec

from corral._errors import CorralError, PermissionDenied, PluginError, UsageError
from corral._sandbox import reaper as _reaper
from corral._sandbox.denials import Grants, denial_message
from corral._sandbox.rpc import (
    Call,
    ErrorInfo,
    Failure,
    Hello,
    Log,
    Output,
    Profile,
    ProtocolError,
    Result,
    Stop,
    Usage,
    WorkerInit,
    info_from_error,
)
from corral._sandbox.worker.attempts import Attempts
from corral._sandbox.worker.cache import WorkerCache
from corral._sandbox.worker.channel import Channel
from corral._sandbox.worker.context import (
    EventsProxy,
    MessagesProxy,
    NetProxy,
    SecretsProxy,
    SpawnProxy,
    StateProxy,
    WorkerContext,
)
from corral._sandbox.worker.importtimes import timed_imports
from corral._sandbox.worker.sampler import Sampler

if TYPE_CHECKING:
    import asyncio

__all__ = ["Worker", "on_sigxcpu"]

_OUTPUT_CHUNK: Final = 8192
#: Result types that are never awaitable (no ``inspect.isawaitable`` for them).
_PLAIN: Final = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})
#: Entry-object hooks the host may call in a worker (``entry#hook``).
_HOOKS: Final = ("on_load", "on_enable", "on_disable", "on_unload", "on_error",
                 "on_config_change", "on_message")


class _CpuExceeded(BaseException):
    """Raised by the SIGXCPU handler; a BaseException so ``except Exception`` keeps out."""


class _OutputExceeded(BaseException):
    """The call wrote more than ``max_output_bytes``."""


@final
class _CallFlag:
    """Whether a call is running: a CPU signal between calls (idle) is ignored."""

    running = False


def on_sigxcpu(signum: int, frame: object) -> None:
    """SIGXCPU and SIGPROF handler (installed by :mod:`.confine`): ends the running call."""
    if _CallFlag.running:
        raise _CpuExceeded


class _LogHandler(logging.Handler):
    def __init__(self, ch: Channel) -> None:
        super().__init__(logging.DEBUG)
        self._ch = ch

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
        except Exception:  # a bad format string must not kill the call
            msg = str(record.msg)
        self._ch.send(Log(level=record.levelno, name=record.name, message=msg))


@final
class _OutStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` in the worker: counted, buffered, sent to the host."""

    def __init__(self, worker: Worker, name: Literal["stdout", "stderr"]) -> None:
        self._worker = worker
        self._name = name
        self._buf: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        n = len(s.encode("utf-8", "replace"))
        self._worker.count_output(n)
        self._buf.append(s)
        self._size += n
        if self._size >= _OUTPUT_CHUNK:
            self.flush()
        return len(s)

    def discard(self) -> None:
        """Forget what is buffered (the call went over its output cap)."""
        self._buf.clear()
        self._size = 0

    def flush(self) -> None:
        if self._buf:
            text = "".join(self._buf)
            self._buf.clear()
            self._size = 0
            self._worker.ch.send(Output(stream=self._name, text=text))

def _usage_ms(ru: resource.struct_rusage) -> tuple[float, float]:
    return ru.ru_utime * 1000.0, ru.ru_stime * 1000.0


@final
class Worker:
    """The RPC loop: one call at a time, in the main thread."""

    def __init__(self, init: WorkerInit, ch: Channel) -> None:
        self.init = init
        self.ch = ch
        self.output = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._targets: dict[str, Any] = {}
        self._entries: dict[str, Any] = {}
        self.log = logging.getLogger(f"corral.plugin.{init.plugin_id}")
        self.log.handlers[:] = [_LogHandler(ch)]
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        self.stdout = _OutStream(self, "stdout")
        self.stderr = _OutStream(self, "stderr")
        self.data_dir = Path(init.data_dir)
        self.plugin_dir = Path(init.plugin_dir)
        self.cache_dir = Path(init.cache_dir)
        self.tmp_dir = Path(init.tmp_dir)
        self.workspace = Path(init.workspace) if init.workspace else None
        self.paths: dict[str, str] = {
            "plugin": init.plugin_dir,
            "data": init.data_dir,
            "cache": init.cache_dir,
            "tmp": init.tmp_dir,
            "workspace": init.workspace,
        }
        self._rusage = resource.getrusage(resource.RUSAGE_SELF)
        self.events = EventsProxy(ch, init.plugin_id, self.log)
        self.state = StateProxy(ch, init.plugin_id)
        self.messages = MessagesProxy(ch)
        self.secrets = SecretsProxy(ch)
        self.net = NetProxy(ch)
        self.spawn = SpawnProxy(ch)
        self.cache = WorkerCache(ch, init.plugin_id, init.memory_mb)
        self.grants = Grants.of_init(init)
        self.attempts = Attempts()
        self.attempts.install()
        #: Modules imported by the last calls (``(module, self ms, total ms)``), not yet sent.
        self.imports: list[tuple[str, float, float]] = []
        #: Started by the first profiled call, parked between calls.
        self.sampler: Sampler | None = None

    def count_output(self, n: int) -> None:
        self.output += n
        if self.output > self.init.max_output_bytes:
            raise _OutputExceeded

    def serve(self) -> None:
        self.ch.send(Hello(pid=os.getpid()))
        while True:
            try:
                msg = self.ch.recv(with_fds=False)
            except EOFError:
                return
            if isinstance(msg, Stop):
                return
            if not isinstance(msg, Call):
                raise ProtocolError(f"unexpected {type(msg).__name__} between calls")
            self._run(msg)

    def _resolve(self, target: str) -> Any:
        fn = self._targets.get(target)
        if fn is None and "#" in target:
            fn = self._targets[target] = self._hook(*target.split("#", 1))
        if fn is None:
            module, sep, qual = target.partition(":")
            if not sep or not module or not qual:
                raise ValueError(f"target must read 'package.module:function', got {target!r}")
            obj: Any = self._import(module)
            for part in qual.split("."):
                obj = getattr(obj, part)
            if not callable(obj):
                raise TypeError(f"{target} is not callable")
            fn = self._targets[target] = obj
        return fn

    def _hook(self, entry_target: str, hook: str) -> Any:
        """``entry#hook``: the lifecycle hook of the plugin's entry object, made once per worker.

        Hooks take ``ctx`` (``on_error`` takes the error as a dict); a missing hook is a no-op.
        ``on_message`` gets ``{message, sender, deadline}`` and calls
        ``on_message(message, sender, ctx)``, unless the sender's deadline (``time.time()``)
        has passed: then nobody waits for the reply and the message is dropped.
        ``__hooks__`` answers which hooks the entry object has.
        """
        entry = self._resolve_object(entry_target)
        if hook == "__hooks__":
            names = sorted(h for h in _HOOKS if callable(getattr(entry, h, None)))
            return lambda value, ctx: names
        method = getattr(entry, hook, None)
        if hook == "on_message":
            if not callable(method):
                raise UsageError(f"{self.init.plugin_id}: {entry_target} has no on_message",
                                 plugin_id=self.init.plugin_id)

            def deliver(value: Any, ctx: Any) -> Any:
                deadline = value.get("deadline")
                if isinstance(deadline, int | float) and time.time() > deadline:
                    return None
                return method(value.get("message"), value.get("sender"), ctx)

            return deliver

        def run(value: Any, ctx: Any) -> Any:
            if method is None:
                return None
            return method(ctx) if value is None else method(value)

        return run

    def _resolve_object(self, target: str) -> Any:
        obj = self._entries.get(target)
        if obj is None:
            module, _, qual = target.partition(":")
            obj = self._import(module)
            for part in qual.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type):
                obj = obj()
            self._entries[target] = obj
        return obj

    def _sampler_for(self, interval: float) -> Sampler | None:
        """The worker's sampler, sampling again; one thread parked between profiled calls."""
        interval = min(max(interval, 0.0005), 1.0)
        sampler = self.sampler
        if sampler is None:
            sampler = Sampler(self.init.plugin_dir, thread_id=threading.get_ident(),
                              interval=interval, broker_op=lambda: self.ch.op)
            if not sampler.start():
                return None
            self.sampler = sampler
            return sampler
        sampler.interval = interval
        sampler.resume()
        return sampler

    def _import(self, module: str) -> Any:
        """Import a plugin module, timing each module it loads the first time."""
        if module in sys.modules:
            return sys.modules[module]
        try:
            with timed_imports() as times:
                return importlib.import_module(module)
        finally:
            self.imports.extend(times)

    def _run(self, call: Call) -> None:
        children = self.init.allow_exec  # only a worker that may spawn has children to count
        ru0 = self._rusage  # the end of the last call: time between calls counts to the next
        rc0 = resource.getrusage(resource.RUSAGE_CHILDREN) if children else None
        self.output = 0
        error: ErrorInfo | None = None
        value = b""
        # Per-call CPU: a profiling timer (process CPU time), re-armed by every call and
        # left running after it (idle workers use no CPU); RLIMIT_CPU bounds the lifetime.
        signal.setitimer(signal.ITIMER_PROF, float(self.init.cpu_seconds))
        _CallFlag.running = True
        self.attempts.clear()
        self.cache.sync(call.cache_gen)
        sampler = self._sampler_for(call.profile) if call.profile > 0 else None
        try:
            fn = self._resolve(call.target)
            ctx = WorkerContext(self, call.config)
            result = fn(call.input, ctx)
            if type(result) not in _PLAIN and inspect.isawaitable(result):
                if self._loop is None:
                    import asyncio  # only async exports pay for it

                    self._loop = asyncio.new_event_loop()
                result = self._loop.run_until_complete(_awaited(result))
            self.stdout.flush()
            self.stderr.flush()
            value = msgspec.json.encode(result)
            if len(value) > self.init.max_result_bytes:
                error = ErrorInfo(
                    code="resource_limit",
                    message=f"the result is {len(value)} bytes, over the "
                    f"{self.init.max_result_bytes}-byte cap",
                    limit="result-size",
                    measured=float(len(value)),
                )
        except _CpuExceeded:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            used = (ru.ru_utime + ru.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            error = ErrorInfo(
                code="resource_limit",
                message=f"the call used its {self.init.cpu_seconds} s of CPU time",
                limit="cpu-seconds",
                measured=round(used, 3),
            )
        except MemoryError:
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            error = ErrorInfo(
                code="resource_limit",
                message=f"the call ran out of its {self.init.memory_mb} MB of memory",
                limit="memory-mb",
                measured=round(rss_mb, 1),
            )
        except _OutputExceeded:
            error = ErrorInfo(
                code="resource_limit",
                message=f"the call wrote over its {self.init.max_output_bytes} bytes of output",
                limit="output-size",
                measured=float(self.output),
            )
        except CorralError as exc:
            if (isinstance(exc, PluginError | PermissionDenied) or exc.code == "error") \
                    and not exc.details.get("traceback"):  # a broker's refusal carries None
                exc.details["traceback"] = traceback.format_exc()
            error = info_from_error(exc)
        except PermissionError as exc:
            error = self._refused(exc, traceback.format_exc())
        except BaseException as exc:
            refusal = _refusal_in(exc)
            error = info_from_error(refusal) if refusal is not None else ErrorInfo(
                code="plugin_error",
                message=f"{type(exc).__name__}: {exc}",
                type=type(exc).__qualname__,
                traceback=traceback.format_exc(),
            )
        _CallFlag.running = False
        profile = sampler.pause() if sampler is not None else None
        if error is not None and error.limit != "output-size":
            self.stdout.flush()  # what a failed call printed still reaches the host
            self.stderr.flush()
        else:
            self.stdout.discard()
            self.stderr.discard()
        ru1 = self._rusage = resource.getrusage(resource.RUSAGE_SELF)
        u0, s0 = _usage_ms(ru0)
        u1, s1 = _usage_ms(ru1)
        if rc0 is not None:
            cu0, cs0 = _usage_ms(rc0)
            cu1, cs1 = _usage_ms(resource.getrusage(resource.RUSAGE_CHILDREN))
            u1 += cu1 - cu0
            s1 += cs1 - cs0
        usage = Usage(cpu_user_ms=u1 - u0, cpu_system_ms=s1 - s0, peak_rss_kb=ru1.ru_maxrss)
        _reap_children()
        if profile is not None or self.imports:
            frames, samples, count = profile if profile is not None else ([], [], 0)
            self.ch.send(Profile(id=call.id, frames=frames, samples=samples,
                                 imports=self.imports, count=count))
            self.imports = []
        if error is None:
            self.ch.send(Result(id=call.id, value=value, usage=usage))
        else:
            self.ch.send(Failure(id=call.id, error=error, usage=usage))


    def _refused(self, exc: PermissionError, tb: str) -> ErrorInfo:
        """A refusal by the sandbox names the grant it lacked; any other is the plugin's error."""
        strict = self.init.isolation == "strict"  # limited confines no reads, nets or programs
        permission = self.attempts.denied(exc, self.grants) if strict else None
        if permission is None:
            return ErrorInfo(code="plugin_error", message=f"{type(exc).__name__}: {exc}",
                             type=type(exc).__qualname__, traceback=tb)
        return ErrorInfo(code="permission_denied",
                         message=denial_message(self.init.plugin_id, permission),
                         type=type(exc).__qualname__, traceback=tb, permission=permission)


def _refusal_in(exc: BaseException) -> PermissionDenied | None:
    """The grant refusal inside an exception group (a task group of anyio or asyncio
    wraps what a connect raised), so the call still fails as ``permission_denied``."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    for inner in exc.exceptions:
        found = inner if isinstance(inner, PermissionDenied) else _refusal_in(inner)
        if found is not None:
            return found
    return None


def _reap_children() -> None:
    """Reap exited children the plugin left behind (a strict worker is its PID namespace's init).

    Runs between calls only; during calls a strict worker reaps orphans on SIGCHLD
    (:mod:`corral._sandbox.reaper`), leaving the plugin's own children to the plugin.
    """
    _reaper.reap_after_call()


async def _awaited(aw: Any) -> Any:
    return await aw

