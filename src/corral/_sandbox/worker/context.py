"""The plugin's view of the host in a sandboxed worker: ``ctx``, a PluginContext over RPC.

Every proxy here asks the host's broker through the worker's :class:`~.channel.Channel`;
the host checks each request against the plugin's permissions.
"""

from __future__ import annotations

import collections
import logging
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import PluginError, UsageError
from corral._model.events import DEFAULT_MAX_QUEUE, Event, HandlerResult
from corral._model.state import StateChange, StateValue
from corral._sandbox.worker.channel import Channel

if TYPE_CHECKING:
    from corral._model.events import Delivery, Propagation
    from corral._model.topics import EventFilter
    from corral._sandbox.worker.serve import Worker

__all__ = [
    "EventsProxy",
    "MessagesProxy",
    "NetProxy",
    "SecretsProxy",
    "SpawnProxy",
    "StateProxy",
    "WorkerContext",
    "WorkerDurableConsumer",
    "WorkerPublisher",
    "WorkerStateWatch",
    "WorkerSubscription",
]


class _Proxy:
    __slots__ = ("_ch",)

    def __init__(self, ch: Channel) -> None:
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
        ch: Channel,
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

    def __init__(self, ch: Channel, plugin_id: str, log: logging.Logger) -> None:
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
        ch: Channel,
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

    def __init__(self, ch: Channel, watch_id: int, pattern: str,
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

    def __init__(self, ch: Channel, plugin_id: str) -> None:
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
        "cache",
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

    def __init__(self, worker: Worker, config: dict[str, Any]) -> None:
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
        self.cache: Final = worker.cache


