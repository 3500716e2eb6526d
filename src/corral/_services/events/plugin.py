"""The plugin's face of the bus: ``ctx.events``, durable consumers and the broker's ops.

:class:`PluginEvents` checks every call against the plugin's grants (and
caches what was allowed); :class:`DurableConsumer` replays a durable topic
from a committed offset; :func:`bus_broker_op` serves sandboxed plugins,
which subscribe by polling batches of events across the socket.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import NotFoundError, UsageError
from corral._model.jsoncheck import json_problem
from corral._model.topics import (
    EventFilter,
    check_pattern,
    check_payload,
    check_subscribe,
    check_topic,
)
from corral._services.events.dispatch import (
    CACHE_MAX,
    DEFAULT_MAX_QUEUE,
    SAMPLE_MASK,
    Delivery,
    Propagation,
    now,
)
from corral._services.events.publisher import TopicPublisher
from corral._services.events.subscriptions import Event, HandlerResult, Subscription, record_event

if TYPE_CHECKING:
    from corral._model.permissions import Permissions
    from corral._services.events.bus import EventBus
    from corral._services.events.durable import DurableLog

__all__ = ["DurableConsumer", "PluginEvents", "bus_broker_op"]


@final
class DurableConsumer:
    """A named consumer of durable topics, with its offset committed in the log."""

    __slots__ = ("_bus", "_handler", "_interval", "_log", "_stop", "_thread", "consumer",
                 "delivered", "pattern", "plugin_id")

    def __init__(
        self,
        bus: EventBus,
        log: DurableLog,
        consumer: str,
        pattern: str,
        handler: Callable[[Event], Any],
        plugin_id: str | None,
        interval: float,
    ) -> None:
        self._bus = bus
        self._log = log
        self.consumer: Final = consumer
        self.pattern: Final = pattern
        self._handler = handler
        self.plugin_id: Final = plugin_id
        self._interval = interval
        self.delivered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"corral-durable-{consumer}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        log = self._log
        offset = log.committed(self.consumer)
        while not self._stop.is_set():
            records, scanned = log.scan(offset, pattern=self.pattern, limit=500,
                                        durable_only=True)
            if not records:
                if scanned == offset:
                    self._stop.wait(self._interval)
                offset = scanned
                continue
            for rec in records:
                if self._stop.is_set():
                    return
                ev = record_event(rec)
                try:
                    self._handler(ev)
                except Exception as exc:
                    sub = Subscription(self._bus, 0, self.pattern, self._handler,
                                       self.plugin_id, 0, None, "durable")
                    self._bus._failed(sub, ev, exc)
                log.commit(self.consumer, rec.offset)
                self.delivered += 1
            offset = scanned

    @property
    def active(self) -> bool:
        """Whether the consumer is still delivering."""
        return not self._stop.is_set()

    @property
    def offset(self) -> int:
        """The last committed offset of this consumer."""
        return self._log.committed(self.consumer)

    def cancel(self) -> None:
        """Stop after the event in hand; its offset is committed if it was handled."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


@final
class PluginEvents:
    """``ctx.events``: the bus seen by one plugin, every call checked against its grants."""

    __slots__ = ("_allowed", "_bus", "_perms", "_quota", "plugin_id")

    def __init__(self, bus: EventBus, plugin_id: str, perms: Permissions) -> None:
        self._bus = bus
        self.plugin_id: Final = plugin_id
        self._perms = perms
        self._allowed: set[str] = set()
        # events-per-second, if the plugin has that quota (_runtime/quotas.py)
        meter = bus.quotas.meter(plugin_id) if bus.quotas is not None else None
        self._quota = meter if meter is not None and meter.events is not None else None

    def publish(
        self,
        topic: str,
        data: Any = None,
        *,
        priority: int = 0,
        propagation: Propagation = "local",
    ) -> Event | None:
        """Publish as this plugin (needs ``events.publish:<topic>``)."""
        bus = self._bus
        if self._quota is not None:
            self._quota.take_event()
        # EventBus.publish's local fast path, repeated: calling it would add a frame per event.
        if topic in self._allowed and propagation == "local" and bus._plain:
            check_payload(data, max_bytes=bus.max_payload_bytes, topic=topic)
            subs = bus._cache.get(topic)
            if subs is None:
                subs = bus._resolve(topic)
            if subs:
                eid = bus._next_id()
                ev = Event(eid, topic, data, self.plugin_id, now(), priority, "local",
                           bus.origin)
                if eid & SAMPLE_MASK:
                    for deliver, sub in subs:
                        try:
                            deliver(ev)
                        except Exception as exc:
                            bus._failed(sub, ev, exc)
                else:
                    bus._dispatch_timed(ev, subs)
                return ev
            return None
        published = bus._publish_checked(topic, data, self._perms, self.plugin_id, priority,
                                         propagation)
        if len(self._allowed) < CACHE_MAX:
            self._allowed.add(topic)
        return published

    def publisher(self, topic: str) -> TopicPublisher:
        """A handle publishing on ``topic`` as this plugin; the grant is checked once, here."""
        self._bus._check_publish(check_topic(topic), "local", self._perms, self.plugin_id)
        return TopicPublisher(self._bus, topic, self.plugin_id, self._bus.max_payload_bytes,
                              gate=self._quota.take_event if self._quota is not None else None)

    async def apublish(
        self,
        topic: str,
        data: Any = None,
        *,
        priority: int = 0,
        propagation: Propagation = "local",
    ) -> Event | None:
        """Async twin of :meth:`publish` (durable writes wait off the event loop)."""
        if propagation == "local" and self._bus._plain:
            return self.publish(topic, data, priority=priority)
        if self._quota is not None:
            self._quota.take_event()
        return await self._bus.apublish(topic, data, perms=self._perms, source=self.plugin_id,
                                        priority=priority, propagation=propagation)

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Any],
        *,
        priority: int = 0,
        filter: EventFilter | Mapping[str, Any] | None = None,
        delivery: Delivery | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> Subscription:
        """Subscribe as this plugin (a granted ``events.subscribe`` pattern must cover it).

        ``delivery`` defaults to the bus's ``plugin_delivery``.
        """
        return self._bus.subscribe(
            pattern, handler, perms=self._perms, plugin_id=self.plugin_id, priority=priority,
            filter=filter, delivery=delivery or self._bus.plugin_delivery, max_queue=max_queue,
        )

    def gather(self, topic: str, data: Any = None, *, timeout: float = 5.0) -> list[HandlerResult]:
        """Publish and collect the subscribers' answers (see :meth:`EventBus.gather`)."""
        if self._quota is not None:
            self._quota.take_event()
        return self._bus.gather(topic, data, perms=self._perms, source=self.plugin_id,
                                timeout=timeout)

    def subscribe_durable(
        self, consumer: str, pattern: str, handler: Callable[[Event], Any]
    ) -> DurableConsumer:
        """A durable consumer named ``<plugin id>:<consumer>``."""
        return self._bus.subscribe_durable(
            f"{self.plugin_id}:{consumer}", pattern, handler, perms=self._perms,
            plugin_id=self.plugin_id,
        )


def _int_arg(args: Mapping[str, Any], name: str, default: int, plugin_id: str) -> int:
    value = args.get(name, default)
    if type(value) is not int:
        raise UsageError(f"{name} must be an int, got {value!r}", plugin_id=plugin_id)
    return value


def bus_broker_op(
    bus: EventBus,
    plugin_id: str,
    perms: Permissions,
    op: str,
    args: Mapping[str, Any],
) -> Any:
    """Serve a sandboxed plugin's ``events.*`` broker request.

    ``events.publish {topic, payload, priority?, propagation?}`` -> event id;
    ``events.subscribe {pattern, priority?, filter?, max_queue?}`` -> subscription id;
    ``events.poll {subscription, max?, timeout?}`` -> list of event dicts;
    ``events.unsubscribe {subscription}``;
    ``events.publisher {topic}`` -> ``None`` once the publish grant is checked;
    ``events.gather {topic, payload, timeout?}`` -> list of handler-result dicts;
    ``events.durable_subscribe {consumer, pattern}`` -> the committed offset;
    ``events.durable_poll {consumer, pattern, after, max?, timeout?}`` ->
    ``{"events": [...], "offset": scanned}``; ``events.durable_commit {consumer, offset}``.
    A durable consumer's name is ``<plugin id>:<consumer>``, so a plugin reaches its own only.
    """
    if op in ("events.publish", "events.gather") and bus.quotas is not None:
        meter = bus.quotas.meter(plugin_id)  # events-per-second (_runtime/quotas.py)
        if meter is not None:
            meter.take_event()
    if op == "events.publish":
        data = args.get("payload", args.get("data"))
        ev = bus._publish_checked(
            str(args.get("topic", "")), data, perms, plugin_id,
            _int_arg(args, "priority", 0, plugin_id), str(args.get("propagation", "local")),
        )
        return None if ev is None else ev.id
    if op == "events.subscribe":
        flt = args.get("filter")
        if flt is not None and not isinstance(flt, Mapping):
            raise UsageError(f"an event filter is a mapping, got {flt!r}", plugin_id=plugin_id)
        new = bus.subscribe_poll(
            str(args.get("pattern", "")), perms=perms, plugin_id=plugin_id,
            priority=_int_arg(args, "priority", 0, plugin_id), filter=flt,
            max_queue=min(_int_arg(args, "max_queue", DEFAULT_MAX_QUEUE, plugin_id), 1_000_000),
        )
        return new.id
    if op in ("events.poll", "events.unsubscribe"):
        sub_id = args.get("subscription")
        sub = bus.subscription(sub_id) if type(sub_id) is int else None
        if sub is None or sub.plugin_id != plugin_id or sub.delivery != "poll":
            raise NotFoundError(f"{plugin_id} has no subscription {sub_id!r}",
                                plugin_id=plugin_id)
        if op == "events.unsubscribe":
            sub.cancel()
            return None
        max_events = min(_int_arg(args, "max", 1000, plugin_id), 10_000)
        timeout = args.get("timeout", 0.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise UsageError(f"timeout must be a number, got {timeout!r}", plugin_id=plugin_id)
        # to_builtins turns the Event structs into dicts at C speed
        return msgspec.to_builtins(sub.poll(max_events, min(max(float(timeout), 0.0), 30.0)))
    if op == "events.publisher":
        bus._check_publish(check_topic(str(args.get("topic", ""))), "local", perms, plugin_id)
        return None
    if op == "events.gather":
        results = bus.gather(str(args.get("topic", "")), args.get("payload"), perms=perms,
                             source=plugin_id, timeout=_wait_arg(args, plugin_id, default=5.0))
        return [_wire_result(r) for r in results]
    if op.startswith("events.durable_"):
        return _durable_op(bus, plugin_id, perms, op, args)
    raise UsageError(f"unknown events operation {op!r}", plugin_id=plugin_id)


def _wait_arg(args: Mapping[str, Any], plugin_id: str, *, default: float = 0.0) -> float:
    """A ``timeout`` argument, clamped to 0..30 s (the call's own timeout-ms still applies)."""
    timeout = args.get("timeout", default)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise UsageError(f"timeout must be a number, got {timeout!r}", plugin_id=plugin_id)
    return min(max(float(timeout), 0.0), 30.0)


def _wire_result(result: HandlerResult) -> dict[str, Any]:
    """A handler's answer as JSON for a worker; a value that is not JSON becomes an error."""
    out: dict[str, Any] = msgspec.to_builtins(result)
    if result.error is None and json_problem(result.value) is not None:
        out["value"] = None
        out["error"] = f"the answer is not JSON data: {json_problem(result.value)}"
    return out


def _durable_op(
    bus: EventBus, plugin_id: str, perms: Permissions, op: str, args: Mapping[str, Any]
) -> Any:
    """``events.durable_*``: a durable consumer that the worker polls, offsets kept in the log."""
    import time

    log = bus._log
    if log is None:
        raise UsageError("durable subscriptions need the durable log (EventBus.attach_log)",
                         plugin_id=plugin_id)
    consumer = args.get("consumer")
    if type(consumer) is not str or not consumer:
        raise UsageError(f"a durable consumer needs a name, got {consumer!r}",
                         plugin_id=plugin_id)
    name = f"{plugin_id}:{consumer}"
    if op == "events.durable_commit":
        offset = _int_arg(args, "offset", 0, plugin_id)
        if not 0 <= offset <= log.last_offset():
            raise UsageError(f"offset {offset} is not in the durable log", plugin_id=plugin_id)
        log.commit(name, offset)
        return None
    pattern = str(args.get("pattern", ""))
    check_pattern(pattern)
    check_subscribe(perms, pattern, plugin_id)  # each time: the host keeps no session
    if op == "events.durable_subscribe":
        return log.committed(name)
    if op != "events.durable_poll":
        raise UsageError(f"unknown events operation {op!r}", plugin_id=plugin_id)
    after = _int_arg(args, "after", 0, plugin_id)
    limit = min(max(_int_arg(args, "max", 1000, plugin_id), 1), 10_000)
    deadline = time.monotonic() + _wait_arg(args, plugin_id)
    while True:
        records, scanned = log.scan(after, pattern=pattern, limit=limit, durable_only=True)
        if records or time.monotonic() >= deadline:
            events = [record_event(r) for r in records]
            return {"events": msgspec.to_builtins(events), "offset": scanned}
        if scanned == after:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        after = scanned
