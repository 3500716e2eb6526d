"""The worker runtime: code that runs inside a sandboxed worker process.

The zygote forks a spare that runs :func:`spare` (session, no_new_privs, no
capabilities but, in strict, those of its own namespaces, warm caches) and waits
for its assignment; then :func:`enter` confines it to one plugin (rlimits,
environment, descriptors, cwd, then for ``strict`` its writable directories
mounted ``noexec``, Landlock, no capabilities and two seccomp layers), says
:class:`~._rpc.Hello` and
serves calls until the host stops it.  Nothing here trusts the plugin: the host
checks everything the worker says again.
"""

from __future__ import annotations

import array
import collections
import contextlib
import importlib
import inspect
import io
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, final

import msgspec

from corral._errors import CorralError, PluginError, UsageError
from corral._model.events import DEFAULT_MAX_QUEUE, Event, HandlerResult
from corral._model.state import StateChange, StateValue
from corral._runtime.loader import source_only
from corral._sandbox import namespaces as _namespaces
from corral._sandbox import reaper as _reaper
from corral._sandbox.rpc import (
    Assign,
    Call,
    ErrorInfo,
    Failure,
    FrameReader,
    Hello,
    Log,
    Output,
    ProtocolError,
    Refused,
    Reply,
    Request,
    Result,
    Stop,
    Usage,
    WorkerInit,
    decode_host,
    encode,
    error_from_info,
    info_from_error,
)

if TYPE_CHECKING:
    import asyncio

    from corral._model.events import Delivery, Propagation
    from corral._model.topics import EventFilter

__all__ = [
    "RPC_FD",
    "WorkerContext",
    "WorkerDurableConsumer",
    "WorkerPublisher",
    "WorkerStateWatch",
    "WorkerSubscription",
    "enter",
    "spare",
]

#: The descriptor number of the RPC socket in every worker.
RPC_FD: Final = 3
#: Exit status when confinement failed before the RPC loop.
_EXIT_SETUP: Final = 71
_HOST_FRAME_CAP: Final = 1 << 30
_assign_decoder: Final = msgspec.msgpack.Decoder(Assign)
#: Built once in the zygote (which imports this module); applied in each strict worker.
_SOCKET_FILTER: Final = _namespaces.build_socket_filter()
_OUTPUT_CHUNK: Final = 8192
_RECV_CHUNK: Final = 1 << 16
_ANC_SIZE: Final = socket.CMSG_SPACE(4 * array.array("i").itemsize)
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


def _on_sigxcpu(signum: int, frame: object) -> None:
    if _CallFlag.running:
        raise _CpuExceeded


@final
class _Channel:
    """The worker's end of the RPC socket: frames in (with passed fds), frames out."""

    __slots__ = ("_buf", "_fds", "_frames", "_lock", "_next_id", "_reader", "_view", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = FrameReader(_HOST_FRAME_CAP)
        self._frames: collections.deque[bytes] = collections.deque()
        self._fds: collections.deque[int] = collections.deque()
        self._next_id = 0
        self._buf = bytearray(_RECV_CHUNK)
        self._view = memoryview(self._buf)
        #: One request/reply pair at a time, if plugin threads share ``ctx``.
        self._lock = threading.Lock()

    def send(self, msg: msgspec.Struct) -> None:
        self.sock.sendall(encode(msg))

    def recv(self, with_fds: bool = True) -> Any:
        """The next host message; ``with_fds=False`` (between calls: a Call carries none)
        saves the ancillary-data parsing of ``recvmsg``."""
        while not self._frames:
            if not with_fds:
                n = self.sock.recv_into(self._buf)
                if not n:
                    raise EOFError
                self._frames.extend(self._reader.feed(self._view[:n]))
                continue
            n, ancdata, _flags, _addr = self.sock.recvmsg_into([self._buf], _ANC_SIZE)
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                    self._fds.extend(fds)
            if not n:
                raise EOFError
            self._frames.extend(self._reader.feed(self._view[:n]))
        return decode_host(self._frames.popleft())

    def request(self, op: str, args: dict[str, Any]) -> tuple[Any, int | None]:
        """Ask the host broker; return its value and the passed descriptor, or raise."""
        with self._lock:
            self._next_id += 1
            rid = self._next_id
            self.send(Request(id=rid, op=op, args=args))
            msg = self.recv()
            if not isinstance(msg, Reply) or msg.id != rid:
                raise ProtocolError(f"expected the reply to request {rid}, got {msg!r}")
            if msg.error is not None:
                raise error_from_info(msg.error, None)
            fd = self._fds.popleft() if msg.fd and self._fds else None
            return msg.value, fd


# -- the plugin's view: ctx ----------------------------------------------------


class _Proxy:
    __slots__ = ("_ch",)

    def __init__(self, ch: _Channel) -> None:
        self._ch = ch

    def _ask(self, op: str, **args: Any) -> Any:
        return self._ch.request(op, args)[0]


@final
class WorkerSubscription:
    """A sandboxed plugin's subscription: its events wait on the host until :meth:`poll`.

    A sandboxed worker runs only while the host has a call in it, so nothing can
    be pushed into it between calls: events queue on the host (bounded by
    ``max_queue``; what overflows becomes a dead letter there) and the plugin
    drains them in batches with :meth:`poll`, during any later call.
    """

    __slots__ = ("_ch", "_log", "active", "handler", "id", "pattern", "plugin_id", "priority")

    def __init__(
        self,
        ch: _Channel,
        log: logging.Logger,
        sub_id: int,
        pattern: str,
        handler: Callable[[Event], Any] | None,
        plugin_id: str,
        priority: int,
    ) -> None:
        self._ch = ch
        self._log = log
        self.id: Final = sub_id
        self.pattern: Final = pattern
        #: Called by :meth:`poll` for each event it returns (``None``: just return them).
        self.handler: Final = handler
        self.plugin_id: Final = plugin_id
        self.priority: Final = priority
        self.active = True

    def poll(self, max_events: int = 1000, timeout: float = 0.0) -> list[Event]:
        """Take up to ``max_events`` queued events, waiting up to ``timeout`` s for the first.

        The host caps a batch at 10,000 events and a wait at 30 s (and the call's
        own ``timeout-ms`` still applies).  With a handler, each event is handed
        to it in order before the batch is returned; a handler that raises is
        logged and the rest of the batch is still handled.
        """
        if not self.active:
            raise UsageError(f"subscription {self.id} ({self.pattern}) was cancelled",
                             plugin_id=self.plugin_id)
        raw = self._ch.request(
            "events.poll",
            {"subscription": self.id, "max": int(max_events), "timeout": float(timeout)},
        )[0]
        events = msgspec.convert(raw, list[Event])
        handler = self.handler
        if handler is not None:
            for ev in events:
                try:
                    handler(ev)
                except Exception:
                    self._log.exception("handler of subscription %s (%s) raised on %s",
                                        self.id, self.pattern, ev.topic)
        return events

    def cancel(self) -> None:
        """Stop delivery; events still queued on the host become dead letters (idempotent)."""
        if self.active:
            self.active = False
            self._ch.request("events.unsubscribe", {"subscription": self.id})

    def __repr__(self) -> str:
        return f"<WorkerSubscription {self.id} {self.pattern} by {self.plugin_id}>"


@final
class EventsProxy(_Proxy):
    """``ctx.events``: the bus through the host broker; subscriptions are polled."""

    __slots__ = ("_log", "plugin_id")

    def __init__(self, ch: _Channel, plugin_id: str, log: logging.Logger) -> None:
        super().__init__(ch)
        self.plugin_id: Final = plugin_id
        self._log = log

    def publish(
        self,
        topic: str,
        data: Any = None,
        *,
        priority: int = 0,
        propagation: Propagation = "local",
    ) -> Event | None:
        """Publish as this plugin (needs ``events.publish:<topic>``).

        Returns the event (its ``id`` is the host's; ``timestamp`` is the worker's
        clock and ``origin`` is ``""``), or ``None`` when nobody received it.
        """
        eid = self._ask("events.publish", topic=topic, payload=data, priority=priority,
                        propagation=propagation)
        if eid is None:
            return None
        return Event(int(eid), topic, data, self.plugin_id, time.time(), priority,
                     propagation, "")

    async def apublish(
        self,
        topic: str,
        data: Any = None,
        *,
        priority: int = 0,
        propagation: Propagation = "local",
    ) -> Event | None:
        """Async twin of :meth:`publish` (the worker has one call at a time: it just asks)."""
        return self.publish(topic, data, priority=priority, propagation=propagation)

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Any] | None = None,
        *,
        priority: int = 0,
        filter: EventFilter | Mapping[str, Any] | None = None,
        delivery: Delivery | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> WorkerSubscription:
        """Subscribe as this plugin (a granted ``events.subscribe`` pattern must cover it).

        Delivery is always polled, whatever ``delivery`` says: events wait on the
        host until :meth:`WorkerSubscription.poll`, which also runs ``handler``.
        """
        # an EventFilter travels as its spec (the host builds it again and checks it)
        spec = filter if filter is None or isinstance(filter, Mapping) else filter.spec
        sub_id = self._ask("events.subscribe", pattern=pattern, priority=priority,
                           filter=None if spec is None else dict(spec), max_queue=max_queue)
        return WorkerSubscription(self._ch, self._log, int(sub_id), pattern, handler,
                                  self.plugin_id, priority)

    def publisher(self, topic: str) -> WorkerPublisher:
        """A handle publishing on ``topic`` as this plugin; the host checks the grant here.

        Each ``publish`` is still one broker request (checked again by the host).
        """
        self._ask("events.publisher", topic=topic)
        return WorkerPublisher(self, topic)

    def gather(self, topic: str, data: Any = None, *, timeout: float = 5.0) -> list[HandlerResult]:
        """Publish and collect the subscribers' answers (needs ``events.publish:<topic>``).

        The host gathers (waiting at most ``timeout`` s, capped at 30); answers
        that are not JSON data come back as ``error`` results.
        """
        raw = self._ask("events.gather", topic=topic, payload=data, timeout=float(timeout))
        return msgspec.convert(raw, list[HandlerResult])

    def subscribe_durable(
        self, consumer: str, pattern: str, handler: Callable[[Event], Any]
    ) -> WorkerDurableConsumer:
        """A durable consumer named ``<plugin id>:<consumer>``, drained by polling.

        The host checks the ``events.subscribe`` grant and answers the consumer's
        committed offset; :meth:`WorkerDurableConsumer.poll` goes on from there.
        """
        if not callable(handler):
            raise UsageError(f"the handler of durable consumer {consumer!r} is not callable",
                             plugin_id=self.plugin_id)
        offset = self._ask("events.durable_subscribe", consumer=consumer, pattern=pattern)
        return WorkerDurableConsumer(self._ch, self._log, consumer, pattern, handler,
                                     self.plugin_id, int(offset))


@final
class WorkerPublisher:
    """``ctx.events.publisher(topic)`` in a worker: publishes on one topic as the plugin."""

    __slots__ = ("_events", "source", "topic")

    def __init__(self, events: EventsProxy, topic: str) -> None:
        self._events = events
        self.topic: Final = topic
        self.source: Final = events.plugin_id

    def publish(self, data: Any = None) -> Event | None:
        """Publish ``data`` on the topic (local propagation, priority 0)."""
        return self._events.publish(self.topic, data)

    def __repr__(self) -> str:
        return f"<WorkerPublisher {self.topic} by {self.source}>"


@final
class WorkerDurableConsumer:
    """A sandboxed plugin's durable consumer: :meth:`poll` reads on from the committed offset.

    In process a durable consumer has its own thread; a worker runs only during
    calls, so here the plugin drains the log in batches during any call.  Each
    batch's offset is committed after its handlers ran: a worker that dies in
    the middle of a batch gets that batch again (at least once, per batch).
    """

    __slots__ = ("_ch", "_handler", "_log", "_name", "_offset", "active", "consumer",
                 "delivered", "pattern", "plugin_id")

    def __init__(
        self,
        ch: _Channel,
        log: logging.Logger,
        name: str,
        pattern: str,
        handler: Callable[[Event], Any],
        plugin_id: str,
        offset: int,
    ) -> None:
        self._ch = ch
        self._log = log
        self._name = name
        self._handler = handler
        self._offset = offset
        #: ``<plugin id>:<consumer>``, the name its offset is committed under.
        self.consumer: Final = f"{plugin_id}:{name}"
        self.pattern: Final = pattern
        self.plugin_id: Final = plugin_id
        self.delivered = 0
        self.active = True

    @property
    def offset(self) -> int:
        """The offset this consumer has read up to (committed once a batch is handled)."""
        return self._offset

    def poll(self, max_events: int = 1000, timeout: float = 0.0) -> list[Event]:
        """Hand the next durable events (up to ``max_events``) to the handler and commit.

        Waits up to ``timeout`` s (capped at 30) for the first; a handler that
        raises is logged and the batch goes on.
        """
        if not self.active:
            raise UsageError(f"durable consumer {self.consumer} was cancelled",
                             plugin_id=self.plugin_id)
        raw = self._ch.request("events.durable_poll", {
            "consumer": self._name, "pattern": self.pattern, "after": self._offset,
            "max": int(max_events), "timeout": float(timeout),
        })[0]
        events = msgspec.convert(raw["events"], list[Event])
        for ev in events:
            try:
                self._handler(ev)
            except Exception:
                self._log.exception("durable consumer %s raised on %s (offset %s)",
                                    self.consumer, ev.topic, ev.offset)
        offset = int(raw["offset"])
        if events:
            self._ch.request("events.durable_commit", {"consumer": self._name, "offset": offset})
            self.delivered += len(events)
        self._offset = max(self._offset, offset)
        return events

    def cancel(self) -> None:
        """Stop polling (the committed offset stays for the next consumer of this name)."""
        self.active = False

    def __repr__(self) -> str:
        return f"<WorkerDurableConsumer {self.consumer} {self.pattern} at {self._offset}>"


@final
class WorkerStateWatch:
    """``ctx.state.subscribe`` in a worker: changes wait on the host until :meth:`poll`.

    The host holds the watch (bounded by ``max_queue``; what overflows is counted
    in :attr:`dropped`), and the plugin drains it during any later call.
    """

    __slots__ = ("_ch", "active", "dropped", "errors", "handler", "id", "pattern", "plugin_id")

    def __init__(self, ch: _Channel, watch_id: int, pattern: str,
                 handler: Callable[[StateChange], Any] | None, plugin_id: str) -> None:
        self._ch = ch
        self.id: Final = watch_id
        self.pattern: Final = pattern
        #: Called by :meth:`poll` for each change it returns (``None``: just return them).
        self.handler: Final = handler
        self.plugin_id: Final = plugin_id
        #: What the handler raised (the latest 100), as in process.
        self.errors: collections.deque[str] = collections.deque(maxlen=100)
        #: Changes lost because the host-side queue was full.
        self.dropped = 0
        self.active = True

    def poll(self, max_changes: int = 1000, timeout: float = 0.0) -> list[StateChange]:
        """Take up to ``max_changes`` changes, in commit order, waiting up to ``timeout`` s."""

        if not self.active:
            raise UsageError(f"state watch {self.id} ({self.pattern}) was cancelled",
                             plugin_id=self.plugin_id)
        raw = self._ch.request("state.poll", {"watch": self.id, "max": int(max_changes),
                                              "timeout": float(timeout)})[0]
        self.dropped += int(raw["dropped"])
        changes = msgspec.convert(raw["changes"], list[StateChange])
        handler = self.handler
        if handler is not None:
            for change in changes:
                try:
                    handler(change)
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        return changes

    def cancel(self) -> None:
        """Stop receiving changes (idempotent)."""
        if self.active:
            self.active = False
            self._ch.request("state.unsubscribe", {"watch": self.id})

    def __repr__(self) -> str:
        return f"<WorkerStateWatch {self.id} {self.pattern} by {self.plugin_id}>"


@final
class StateProxy(_Proxy):
    """``ctx.state``: shared state through the host broker, under the plugin's grants."""

    __slots__ = ("plugin_id",)

    def __init__(self, ch: _Channel, plugin_id: str) -> None:
        super().__init__(ch)
        self.plugin_id: Final = plugin_id

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` (needs ``state.read:<key>``).

        Over the broker a stored ``null`` reads as absent, so it also gives ``default``.
        """
        value = self._ask("state.get", key=key)
        return default if value is None else value

    def get_versioned(self, key: str) -> StateValue | None:
        """The value with its version, for :meth:`compare_and_set`.

        ``updated_at`` and ``updated_by`` do not cross the broker: they read
        ``0.0`` and ``None``.
        """

        got = self._ask("state.get_versioned", key=key)
        if got is None:
            return None
        return StateValue(key, got["value"], int(got["version"]), 0.0, None)

    def set(self, key: str, value: Any) -> int:
        """Store ``value``; return the new version (needs ``state.write:<key>``)."""
        version = self._ask("state.set", key=key, value=value)
        # The host answers the new version; a broker from before versions answered nothing.
        return version if type(version) is int else 0

    def compare_and_set(self, key: str, expected_version: int, value: Any) -> bool:
        """Store ``value`` only if ``key`` is still at ``expected_version`` (0: absent)."""
        return bool(self._ask("state.cas", key=key, version=expected_version, value=value))

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> StateValue:
        """Replace the value with ``fn(current)`` (``default`` if unset), atomically.

        In the worker this is a compare-and-set loop: read the version, apply
        ``fn``, write only if nobody wrote in between, else read again and retry.
        ``fn`` may run more than once: keep it free of side effects.
        """

        while True:
            got = self.get_versioned(key)
            current, version = (default, 0) if got is None else (got.value, got.version)
            try:
                new = fn(current)
            except Exception as exc:
                raise PluginError(
                    f"the update function for state key {key!r} raised "
                    f"{type(exc).__name__}: {exc}", key=key, plugin_id=self.plugin_id,
                ) from exc
            if self.compare_and_set(key, version, new):
                return StateValue(key, new, version + 1, time.time(), self.plugin_id)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        return bool(self._ask("state.delete", key=key))

    def keys(self, pattern: str = ">") -> list[str]:
        """Readable keys matching ``pattern``."""
        return list(self._ask("state.keys", pattern=pattern))

    async def aget(self, key: str, default: Any = None) -> Any:
        """Async twin of :meth:`get`."""
        return self.get(key, default)

    async def aset(self, key: str, value: Any) -> int:
        """Async twin of :meth:`set`."""
        return self.set(key, value)

    async def acompare_and_set(self, key: str, expected_version: int, value: Any) -> bool:
        """Async twin of :meth:`compare_and_set`."""
        return self.compare_and_set(key, expected_version, value)

    async def aupdate(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> StateValue:
        """Async twin of :meth:`update`."""
        return self.update(key, fn, default)

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[StateChange], Any] | None = None,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> WorkerStateWatch:
        """Watch writes to keys matching ``pattern`` (``state.read`` must cover it).

        Changes are polled: :meth:`WorkerStateWatch.poll` returns them (and runs
        ``handler`` on each) during any later call.
        """
        wid = self._ask("state.subscribe", pattern=pattern, max_queue=int(max_queue))
        return WorkerStateWatch(self._ch, int(wid), pattern, handler, self.plugin_id)


@final
class MessagesProxy(_Proxy):
    """``ctx.messages``: send and broadcast to other plugins through the host broker."""

    __slots__ = ()

    def send(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Send and wait for the reply (needs ``messages.send:<to>``; the host caps
        ``timeout`` at 60 s, and the call's own ``timeout-ms`` still applies)."""
        return self._ask("messages.send", to=to, message=message, timeout=float(timeout))

    async def asend(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Async twin of :meth:`send`."""
        return self.send(to, message, timeout=timeout)

    def broadcast(self, message: Any) -> list[str]:
        """Queue ``message`` for every receiver this plugin may message; return their ids."""
        return list(self._ask("messages.broadcast", message=message))


@final
class SecretsProxy(_Proxy):
    """``ctx.secrets``: secrets the plugin was granted."""

    __slots__ = ()

    def get(self, name: str) -> str:
        """The value of ``name`` (needs ``secrets:NAME``; a missing one is a NotFoundError)."""
        return str(self._ask("secrets.get", name=name))


@final
class NetProxy(_Proxy):
    """``ctx.net``: TCP connections the host opens for the plugin."""

    __slots__ = ()

    def connect(self, host: str, port: int) -> socket.socket:
        """A connected TCP socket to ``host:port`` (needs ``net-connect HOST:PORT``)."""
        _value, fd = self._ch.request("net.connect", {"host": host, "port": int(port)})
        if fd is None:
            raise OSError("the host passed no connection")
        return socket.socket(fileno=fd)


@final
class SpawnProxy(_Proxy):
    """``ctx.spawn``: run granted programs, confined like the plugin."""

    __slots__ = ()

    def run(
        self,
        argv: list[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` (``argv[0]`` must be granted by ``spawn``) and capture its output."""
        if not argv:
            raise ValueError("argv must not be empty")
        path = self._ask("spawn.resolve", program=str(argv[0]))
        return subprocess.run(
            [str(path), *map(str, argv[1:])],
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            close_fds=True,
        )


@final
class WorkerContext:
    """The ``ctx`` a sandboxed export receives: a PluginContext over RPC."""

    __slots__ = (
        "cache_dir",
        "config",
        "data_dir",
        "events",
        "log",
        "messages",
        "net",
        "paths",
        "plugin_dir",
        "plugin_id",
        "secrets",
        "spawn",
        "state",
        "tmp_dir",
        "workspace",
    )

    def __init__(self, worker: _Worker, config: dict[str, Any]) -> None:
        init = worker.init
        self.plugin_id: Final = init.plugin_id
        self.config: Final = config
        # Paths are made once per worker (a Path costs microseconds, and they never change).
        self.data_dir: Final = worker.data_dir
        self.plugin_dir: Final = worker.plugin_dir
        self.cache_dir: Final = worker.cache_dir
        self.tmp_dir: Final = worker.tmp_dir
        self.workspace: Final = worker.workspace
        self.paths: Final = dict(worker.paths)
        self.log: Final = worker.log
        self.events: Final = worker.events
        self.state: Final = worker.state
        self.messages: Final = worker.messages
        self.secrets: Final = worker.secrets
        self.net: Final = worker.net
        self.spawn: Final = worker.spawn


@final
class _LogHandler(logging.Handler):
    def __init__(self, ch: _Channel) -> None:
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

    def __init__(self, worker: _Worker, name: Literal["stdout", "stderr"]) -> None:
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


# -- the serve loop --------------------------------------------------------------


def _usage_ms(ru: resource.struct_rusage) -> tuple[float, float]:
    return ru.ru_utime * 1000.0, ru.ru_stime * 1000.0


@final
class _Worker:
    """The RPC loop: one call at a time, in the main thread."""

    def __init__(self, init: WorkerInit, ch: _Channel) -> None:
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
            obj: Any = importlib.import_module(module)
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
            obj = importlib.import_module(module)
            for part in qual.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type):
                obj = obj()
            self._entries[target] = obj
        return obj

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
            if isinstance(exc, PluginError) or exc.code == "error":
                exc.details.setdefault("traceback", traceback.format_exc())
            error = info_from_error(exc)
        except BaseException as exc:
            error = ErrorInfo(
                code="plugin_error",
                message=f"{type(exc).__name__}: {exc}",
                type=type(exc).__qualname__,
                traceback=traceback.format_exc(),
            )
        _CallFlag.running = False
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
        if error is None:
            self.ch.send(Result(id=call.id, value=value, usage=usage))
        else:
            self.ch.send(Failure(id=call.id, error=error, usage=usage))


def _reap_children() -> None:
    """Reap exited children the plugin left behind (a strict worker is its PID namespace's init).

    Runs between calls only; during calls a strict worker reaps orphans on SIGCHLD
    (:mod:`._reaper`), leaving the plugin's own children to the plugin.
    """
    _reaper.reap_after_call()


async def _awaited(aw: Any) -> Any:
    return await aw


# -- confinement -----------------------------------------------------------------


def _apply_rlimits(init: WorkerInit) -> None:
    from corral._sandbox.rlimits import apply_rlimits

    apply_rlimits(init.memory_mb, init.cpu_budget_seconds, init.max_processes, init.disk_mb)


def _confine(init: WorkerInit, ruleset_fd: int | None, seccomp_prog: bytes | None) -> None:
    """Everything between fork and the RPC loop, in an order where each step still can."""
    strict = init.isolation == "strict"
    # Environment: exactly the granted variables, nothing of the host's.
    os.environ.clear()
    os.environ.update(init.env)
    os.chdir(init.tmp_dir)
    tempfile.tempdir = init.tmp_dir
    sys.path[:] = [init.plugin_dir, *(p for p in sys.path if p and p != init.plugin_dir)]
    sys.dont_write_bytecode = True
    source_only(init.plugin_dir)  # the plugin's own byte code never runs
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    signal.signal(signal.SIGPROF, _on_sigxcpu)
    _apply_rlimits(init)
    _namespaces.set_no_new_privs()
    if strict:  # what it can write it cannot execute, by exec or by a loader's mmap
        for path in _writable_dirs(init):
            _namespaces.remount_noexec(path)
    if strict and ruleset_fd is None:
        raise OSError("no Landlock ruleset for a strict worker")
    if ruleset_fd is not None:  # strict: the grants; limited: scoping only (ABI 6+)
        from corral._sandbox.landlock import restrict_self

        restrict_self(ruleset_fd)
    # No inherited descriptors: 0-2 are /dev/null, 3 is the RPC socket, nothing else.
    _namespaces.close_fds_from(RPC_FD + 1)
    if not _namespaces.capabilities_dropped():
        _namespaces.drop_capabilities()
    if strict:  # PID 1 of its namespace: orphans come here, to be reaped promptly
        _reaper.install()
        from corral._sandbox.seccomp import install_filter

        if seccomp_prog is None:
            raise OSError("no seccomp filter for a strict worker")
        install_filter(seccomp_prog)
        if not _SOCKET_FILTER:
            raise OSError("no unix-socket seccomp layer for this machine")
        install_filter(_SOCKET_FILTER)
    elif seccomp_prog is not None:  # limited: only clone3, which could leave the pids cgroup
        from corral._sandbox.seccomp import install_filter

        install_filter(seccomp_prog)


def _writable_dirs(init: WorkerInit) -> list[str]:
    """The directories a strict worker may write, outermost first, each once (but none
    holding a granted program: that one must still run)."""
    paths = [init.tmp_dir, init.data_dir, init.cache_dir, init.workspace, *init.write_paths]
    dirs = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    dirs = [d for d in dirs if not any(e.startswith(d.rstrip("/") + "/") for e in init.exec_paths)]
    return [d for i, d in enumerate(dirs) if not any(
        d.startswith(outer.rstrip("/") + "/") for outer in dirs[:i])]


def spare(assign_fd: int, *, own_namespaces: bool = False) -> NoReturn:
    """Wait, forked ahead of time, for an :class:`~._rpc.Assign` on ``assign_fd``; then enter.

    Everything that does not depend on the plugin happens here, off the cold-start path.
    A strict spare (``own_namespaces``: its capabilities reach only its own user and
    mount namespaces) keeps them until it knows which directories to mount ``noexec``.
    """
    try:
        os.setsid()
        _namespaces.set_no_new_privs()
        if not own_namespaces:
            _namespaces.drop_capabilities()
        _prewarm()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=assign_fd)
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
        sock.close()
        if not data:  # the zygote is shutting down
            os._exit(0)
        # Now the zygote is the parent (a strict spare was adopted long ago): die with it.
        _namespaces.set_pdeathsig(signal.SIGKILL)
        msg = _assign_decoder.decode(data)
        ruleset_fd = fds[1] if len(fds) > 1 else None
        enter(msg.init, fds[0], ruleset_fd, msg.seccomp)
    finally:
        os._exit(_EXIT_SETUP)


def _prewarm() -> None:
    """Touch (and so copy-on-write) what every worker touches, before it is needed."""
    msgspec.json.decode(msgspec.json.encode({"warm": [1, 2.0, None, "x"]}))
    encode(Hello(pid=0))
    compile("def f(x, y):\n    return x\n", "<prewarm>", "exec")
    logging.getLogger("corral.plugin")
    resource.getrusage(resource.RUSAGE_SELF)


def enter(
    init: WorkerInit, rpc_fd: int, ruleset_fd: int | None, seccomp_prog: bytes | None
) -> NoReturn:
    """Become the worker (in a freshly forked child); never returns."""
    code = 0
    try:
        with contextlib.suppress(PermissionError):  # a spare already leads its session
            os.setsid()
        if ruleset_fd == RPC_FD:
            ruleset_fd = os.dup(ruleset_fd)
        if rpc_fd != RPC_FD:
            os.dup2(rpc_fd, RPC_FD, inheritable=False)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        sock = socket.socket(fileno=RPC_FD)
        ch = _Channel(sock)
        try:
            _confine(init, ruleset_fd, seccomp_prog)
        except BaseException as exc:
            feature = exc.details.get("feature") if isinstance(exc, CorralError) else None
            ch.send(
                Refused(
                    message=f"could not confine the worker: {exc}",
                    feature=feature if isinstance(feature, str) else None,
                )
            )
            os._exit(_EXIT_SETUP)
        worker = _Worker(init, ch)
        sys.stdout = worker.stdout
        sys.stderr = worker.stderr
        worker.serve()
    except BaseException:
        code = _EXIT_SETUP
    os._exit(code)
