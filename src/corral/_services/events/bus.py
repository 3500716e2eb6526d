"""The event bus: dotted topics, wildcard subscriptions, filters, priorities, dead letters.

Design for speed and isolation at once:

* ``publish`` looks the topic up in a dispatch cache (topic -> ordered
  deliverers), rebuilt lazily after every subscribe or cancel, and calls
  *inline* subscribers directly on the publisher's thread.  No lock, no queue.
* *Queued* subscribers (``delivery="queued"``, every ``async def`` handler)
  get the event through their own bounded queue served by their own thread:
  a slow or hung handler fills only its queue, and what does not fit becomes
  a :class:`DeadLetter` naming the subscriber and the reason.  The publisher
  never waits for them.
* *Polled* subscribers (:meth:`EventBus.subscribe_poll`) have a bounded queue
  and no thread: a sandboxed plugin drains it in batches through the broker.
* A handler that raises is dead-lettered with its exception; the rest of the
  delivery goes on.

Order is kept per topic and publisher: inline delivery happens in publish
order, and each queue is FIFO within one priority level.

Propagation levels (see ``docs/communication.md``): ``local`` stays in this
process; ``global`` also goes through the durable log to every process on the
home; ``system`` is for host lifecycle events on ``corral.>`` topics, which
only the host may publish.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final, final

import msgspec
import msgspec.structs

from corral._errors import PermissionDenied, UsageError
from corral._model.permissions import Permissions, pattern_matches
from corral._model.topics import (
    MAX_PAYLOAD_BYTES,
    SYSTEM_PREFIX,
    EventFilter,
    check_pattern,
    check_payload,
    check_subscribe,
    check_topic,
)
from corral._runtime.budgets import MIB
from corral._services.events.dispatch import (
    CACHE_MAX,
    DEFAULT_MAX_QUEUE,
    MAX_DEAD_LETTERS,
    PROPAGATIONS,
    SAMPLE_MASK,
    Delivery,
    Dispatch,
    Propagation,
    clock,
    now,
)
from corral._services.events.plugin import DurableConsumer, PluginEvents
from corral._services.events.publisher import TopicPublisher
from corral._services.events.subscriptions import (
    DeadLetter,
    Event,
    HandlerResult,
    Subscription,
    _describe,
    _Queue,
    event_bytes,
    record_event,
)

if TYPE_CHECKING:
    from corral._runtime.budgets import Budgets
    from corral._runtime.quotas import QuotaBook
    from corral._services.events.durable import DurableLog


__all__ = ["DEFAULT_MAX_QUEUE", "MAX_DEAD_LETTERS", "Delivery", "EventBus", "Propagation"]

# -- the bus -----------------------------------------------------------------------



@final
class EventBus:
    """Publish/subscribe between the host and its plugins.

    Every operation takes the acting plugin's :class:`Permissions` (``None``
    for the host itself) and checks ``events.publish:<topic>`` or
    ``events.subscribe:<pattern>``; plugins normally go through
    :meth:`for_plugin`, which caches the checks.

    :param on_dead_letter: called with every :class:`DeadLetter` (on the thread
        that produced it); the host may log or persist them.
    :param slow_handler: seconds; one publish in 64 times its inline handlers,
        and one found slower is moved to its own queue from then on.
    :param plugin_delivery: the default delivery of plugins' subscriptions;
        ``"queued"`` isolates even a handler that hangs on its first event.
    """

    def __init__(
        self,
        *,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        slow_handler: float = 0.01,
        plugin_delivery: Delivery = "inline",
    ) -> None:
        self.origin: Final = uuid.uuid4().hex[:12]
        self.max_payload_bytes = max_payload_bytes
        #: An inline handler seen taking longer than this (seconds) on a sampled
        #: publish is moved to queued delivery.
        self.slow_handler = slow_handler
        #: The delivery plugins get when they do not choose (``ctx.events.subscribe``).
        self.plugin_delivery: Delivery = plugin_delivery
        #: (subscription id, plugin id, seconds) of each handler moved to a queue.
        self.demotions: list[tuple[int, str | None, float]] = []
        self._ids = itertools.count(1)
        self._next_id = self._ids.__next__
        # no durable topics declared: ``publish`` may take its fast path
        self._plain = True
        self._sub_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._subs: list[Subscription] = []
        self._cache: dict[str, Dispatch] = {}
        self._dead_letters: deque[DeadLetter] = deque(maxlen=MAX_DEAD_LETTERS)
        # bytes of payload each kept dead letter holds, and their sum per subscriber plugin
        self._dead_sizes: deque[int] = deque(maxlen=MAX_DEAD_LETTERS)
        self._dead_bytes: dict[str | None, int] = {}
        #: The active plugins' budgets (``queue-mb``, ``events-mb``), set by the host.
        self.budgets: Budgets | None = None
        #: Quotas over time (``events-per-second`` of a publishing plugin), set by the host.
        self.quotas: QuotaBook | None = None
        self._dead_count = 0
        self._on_dead = on_dead_letter
        self._log: DurableLog | None = None
        self._durable: list[str] = []
        self._tailer: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._by_id: dict[int, Subscription] = {}
        self._consumers: list[DurableConsumer] = []

    # -- publishing ----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        data: Any = None,
        *,
        perms: Permissions | None = None,
        source: str | None = None,
        priority: int = 0,
        propagation: Propagation = "local",
    ) -> Event | None:
        """Publish ``data`` on ``topic``; return the event.

        ``None`` means nobody in this process listened and the event was not
        logged (not durable, not ``global``): it went nowhere.

        Inline subscribers have run when this returns; queued ones have the
        event in their queue.  Durable or ``global`` events are committed to
        the log first.  Payloads from plugins (``perms`` given) must be JSON
        data of at most ``max_payload_bytes``; the host's own are trusted.
        """
        if perms is None and propagation == "local" and self._plain:
            subs = self._cache.get(topic)
            if subs is None:
                subs = self._resolve(topic)
            if subs:
                eid = self._next_id()
                ev = Event(eid, topic, data, source, now(), priority, "local", self.origin)
                if eid & SAMPLE_MASK:
                    for deliver, sub in subs:
                        try:
                            deliver(ev)
                        except Exception as exc:
                            self._failed(sub, ev, exc)
                else:
                    self._dispatch_timed(ev, subs)
                return ev
            return None
        return self._publish_checked(topic, data, perms, source, priority, propagation)

    def publish_many(
        self,
        topic: str,
        items: Iterable[Any],
        *,
        perms: Permissions | None = None,
        source: str | None = None,
        priority: int = 0,
    ) -> int:
        """Publish each of ``items`` on ``topic`` (local), in order; return how many."""
        if perms is not None or self._durable:
            n = 0
            for data in items:
                self._publish_checked(topic, data, perms, source, priority, "local")
                n += 1
            return n
        subs = self._cache.get(topic)
        if subs is None:
            subs = self._resolve(topic)
        ids = self._ids
        now = time.time()
        origin = self.origin
        n = 0
        if not subs:
            for _ in items:
                n += 1
            return n
        for data in items:
            ev = Event(next(ids), topic, data, source, now, priority, "local", origin)
            if n:
                for deliver, sub in subs:
                    try:
                        deliver(ev)
                    except Exception as exc:
                        self._failed(sub, ev, exc)
            else:  # time the first event's handlers: a slow one is moved to a queue
                self._dispatch_timed(ev, subs)
                subs = self._cache.get(topic) or self._resolve(topic)
            n += 1
        return n

    def _publish_checked(
        self,
        topic: str,
        data: Any,
        perms: Permissions | None,
        source: str | None,
        priority: int,
        propagation: str,
    ) -> Event | None:
        ev, to_log = self._prepare(topic, data, perms, source, priority, propagation)
        if to_log:
            assert self._log is not None
            offset = self._log.append(
                topic, data, source=source, origin=self.origin, event_id=ev.id,
                timestamp=ev.timestamp, priority=priority, propagation=propagation,
                durable=to_log == 2,
            )
            ev = msgspec.structs.replace(ev, offset=offset)
        return ev if self._dispatch(ev) or to_log else None

    async def apublish(
        self,
        topic: str,
        data: Any = None,
        *,
        perms: Permissions | None = None,
        source: str | None = None,
        priority: int = 0,
        propagation: Propagation = "local",
    ) -> Event | None:
        """Async twin of :meth:`publish`: a durable write awaits its group commit."""
        ev, to_log = self._prepare(topic, data, perms, source, priority, propagation)
        if to_log:
            assert self._log is not None
            offset = await self._log.aappend(
                topic, data, source=source, origin=self.origin, event_id=ev.id,
                timestamp=ev.timestamp, priority=priority, propagation=propagation,
                durable=to_log == 2,
            )
            ev = msgspec.structs.replace(ev, offset=offset)
        return ev if self._dispatch(ev) or to_log else None

    def _prepare(
        self,
        topic: str,
        data: Any,
        perms: Permissions | None,
        source: str | None,
        priority: int,
        propagation: str,
    ) -> tuple[Event, int]:
        """Check a publish; return its event and 0 (local), 1 (to the log) or 2 (durable)."""
        check_topic(topic)
        if type(priority) is not int:
            raise UsageError(f"event priority must be an int, got {priority!r}", topic=topic)
        if propagation not in PROPAGATIONS:
            raise UsageError(
                f"unknown propagation {propagation!r} (local, global or system)", topic=topic
            )
        if perms is not None:
            self._check_publish(topic, propagation, perms, source)
            check_payload(data, max_bytes=self.max_payload_bytes, topic=topic)
        elif propagation == "system" and not topic.startswith(SYSTEM_PREFIX):
            raise UsageError(f"system events live under {SYSTEM_PREFIX}>, not {topic!r}")
        to_log = 2 if self._is_durable(topic) else 1 if propagation == "global" else 0
        if to_log:
            if self._log is None:
                raise UsageError(
                    f"{propagation} propagation of {topic!r} needs the durable log "
                    "(EventBus.attach_log)", topic=topic
                )
            if perms is None:
                check_payload(data, max_bytes=self.max_payload_bytes, topic=topic)
        ev = Event(next(self._ids), topic, data, source, time.time(), priority, propagation,
                   self.origin)
        return ev, to_log

    def _dispatch_timed(self, ev: Event, subs: Dispatch) -> None:
        """Deliver ``ev`` timing each inline handler; one slower than ``slow_handler``
        seconds is moved to queued delivery, so it stops holding up publishers."""
        limit = self.slow_handler
        for deliver, sub in subs:
            t0 = clock()
            try:
                deliver(ev)
            except Exception as exc:
                self._failed(sub, ev, exc)
            took = clock() - t0
            if took > limit and sub.delivery == "inline":
                self._demote(sub, took)

    def _demote(self, sub: Subscription, took: float) -> None:
        with self._lock:
            if not sub.active or sub.delivery != "inline":
                return
            sub._queue = _Queue(self, sub, DEFAULT_MAX_QUEUE, threaded=True)
            sub.delivery = "queued"
            self._cache = {}
            self.demotions.append((sub.id, sub.plugin_id, took))
        import logging

        logging.getLogger("corral.events").warning(
            "subscriber %s of %s (%s) took %.1f ms inline; now delivered through its own "
            "queue", sub.id, sub.pattern, sub.plugin_id or "the host", took * 1000)

    def _dispatch(self, ev: Event) -> bool:
        """Deliver ``ev`` to this process's subscribers; return whether there were any."""
        subs = self._cache.get(ev.topic)
        if subs is None:
            subs = self._resolve(ev.topic)
        if not ev.id & SAMPLE_MASK:
            self._dispatch_timed(ev, subs)
            return bool(subs)
        for deliver, sub in subs:
            try:
                deliver(ev)
            except Exception as exc:
                self._failed(sub, ev, exc)
        return bool(subs)

    def _check_publish(
        self, topic: str, propagation: str, perms: Permissions, source: str | None
    ) -> None:
        if propagation == "system" or topic.startswith(SYSTEM_PREFIX):
            raise PermissionDenied(
                f"plugin {source or '?'} may not publish system events ({topic!r}): "
                "only the host publishes under corral.>",
                permission=f"host-api:events.publish:{topic}",
                plugin_id=source,
            )
        perms.check_api("events.publish", topic, plugin_id=source)

    def gather(
        self,
        topic: str,
        data: Any = None,
        *,
        perms: Permissions | None = None,
        source: str | None = None,
        timeout: float = 5.0,
    ) -> list[HandlerResult]:
        """Publish locally and collect every subscriber's return value, attributed to its plugin.

        Queued subscribers answer from their own threads; one that has not
        answered within ``timeout`` seconds gets a ``timeout`` error result.
        """
        check_topic(topic)
        if perms is not None:
            self._check_publish(topic, "local", perms, source)
            check_payload(data, max_bytes=self.max_payload_bytes, topic=topic)
        ev = Event(next(self._ids), topic, data, source, time.time(), 0, "local", self.origin)
        subs = self._cache.get(topic)
        if subs is None:
            subs = self._resolve(topic)
        pending: list[tuple[Subscription, HandlerResult | Future[Any]]] = []
        for _, sub in subs:
            q = sub._queue
            if q is not None and sub.delivery == "queued":
                fut: Future[Any] = Future()
                q.put(ev, fut)
                pending.append((sub, fut))
                continue
            if q is not None:  # polled: no answer possible, deliver only
                q.put(ev)
                continue
            if sub.filter is not None and not sub.filter.matches(data):
                continue
            try:
                pending.append((sub, HandlerResult(sub.plugin_id, sub.id, value=sub.handler(ev))))
            except Exception as exc:
                self._failed(sub, ev, exc)
                pending.append((sub, HandlerResult(sub.plugin_id, sub.id, error=_describe(exc))))
        deadline = time.monotonic() + timeout
        out: list[HandlerResult] = []
        for sub, item in pending:
            if isinstance(item, HandlerResult):
                out.append(item)
                continue
            try:
                got = item.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                out.append(HandlerResult(sub.plugin_id, sub.id, error="timeout"))
                continue
            if got is not None:
                out.append(got)
        return out

    # -- subscribing ---------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Any],
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
        priority: int = 0,
        filter: EventFilter | Mapping[str, Any] | None = None,
        delivery: Delivery = "inline",
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> Subscription:
        """Call ``handler(event)`` for every event whose topic matches ``pattern``.

        Higher ``priority`` subscribers run first.  ``delivery="queued"`` (forced
        for ``async def`` handlers) runs the handler on the subscriber's own
        thread behind a queue of ``max_queue`` events, so a slow handler never
        holds up the publisher; inline handlers run on the publisher's thread.
        """
        if not callable(handler):
            raise UsageError(f"event handler for {pattern!r} is not callable")
        if delivery not in ("inline", "queued"):
            raise UsageError(f"unknown delivery {delivery!r} (inline or queued)")
        if inspect.iscoroutinefunction(handler):
            delivery = "queued"
        return self._add(pattern, handler, perms, plugin_id, priority, filter, delivery,
                         max_queue)

    def subscribe_poll(
        self,
        pattern: str,
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
        priority: int = 0,
        filter: EventFilter | Mapping[str, Any] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> Subscription:
        """A subscription whose events wait in a bounded queue until :meth:`Subscription.poll`."""
        return self._add(pattern, _no_handler, perms, plugin_id, priority, filter, "poll",
                         max_queue)

    def _add(
        self,
        pattern: str,
        handler: Callable[[Event], Any],
        perms: Permissions | None,
        plugin_id: str | None,
        priority: int,
        filter: EventFilter | Mapping[str, Any] | None,
        delivery: str,
        max_queue: int,
    ) -> Subscription:
        check_pattern(pattern)
        if type(priority) is not int:
            raise UsageError(f"subscriber priority must be an int, got {priority!r}")
        if type(max_queue) is not int or max_queue < 1:
            raise UsageError(f"max_queue must be a positive int, got {max_queue!r}")
        if perms is not None:
            check_subscribe(perms, pattern, plugin_id)
        flt = filter if isinstance(filter, EventFilter) or filter is None else EventFilter(filter)
        with self._lock:
            if self._closed:
                raise UsageError("the event bus is closed")
            sub = Subscription(self, next(self._sub_ids), pattern, handler, plugin_id,
                               priority, flt, delivery)
            if delivery != "inline":
                sub._queue = _Queue(self, sub, max_queue, threaded=delivery == "queued")
            self._subs.append(sub)
            self._by_id[sub.id] = sub
            # stable: equal priorities keep subscription order
            self._subs.sort(key=lambda s: -s.priority)
            self._cache = {}
        return sub

    def _cancel(self, sub: Subscription) -> None:
        with self._lock:
            if not sub.active:
                return
            sub.active = False
            self._subs.remove(sub)
            self._by_id.pop(sub.id, None)
            self._cache = {}
        if sub._queue is not None:
            for ev in sub._queue.stop():
                self._dead(sub, ev, "subscription cancelled with the event still queued")

    def _resolve(self, topic: str) -> Dispatch:
        """Build (and cache) the ordered deliverers for ``topic``; validates it once."""
        check_topic(topic)
        with self._lock:
            found = tuple(
                (s._deliverer(), s) for s in self._subs if pattern_matches(s.pattern, topic)
            )
            if len(self._cache) >= CACHE_MAX:
                self._cache = {}
            self._cache[topic] = found
        return found

    def subscription(self, sub_id: int) -> Subscription | None:
        """The live subscription with this id, if any."""
        return self._by_id.get(sub_id)

    def cancel_plugin(self, plugin_id: str) -> int:
        """Cancel every subscription and durable consumer of ``plugin_id`` (it stopped)."""
        with self._lock:
            subs = [s for s in self._subs if s.plugin_id == plugin_id]
            consumers = [c for c in self._consumers if c.plugin_id == plugin_id]
            self._consumers = [c for c in self._consumers if c.plugin_id != plugin_id]
        for s in subs:
            s.cancel()
        for c in consumers:
            c.cancel()
        return len(subs) + len(consumers)

    def subscriptions(self) -> list[Subscription]:
        """Live subscriptions, in delivery order."""
        with self._lock:
            return list(self._subs)

    def publisher(self, topic: str, *, source: str | None = None) -> TopicPublisher:
        """A handle that publishes on ``topic`` without looking the topic up each time.

        The fastest way to publish many events on one topic (what a blinker
        signal is to blinker); it follows subscribe and cancel like ``publish``.
        """
        return TopicPublisher(self, check_topic(topic), source, None)

    def for_plugin(self, plugin_id: str, perms: Permissions) -> PluginEvents:
        """``ctx.events`` for one plugin: the bus with its grants checked and cached."""
        return PluginEvents(self, plugin_id, perms)

    # -- failures ------------------------------------------------------------------

    def _failed(self, sub: Subscription, ev: Event, exc: BaseException) -> None:
        self._dead(sub, ev, f"handler raised {_describe(exc)}")

    def _dead(self, sub: Subscription, ev: Event, reason: str) -> None:
        limits = self.budgets.get(sub.plugin_id) if self.budgets is not None else None
        size = event_bytes(ev) if limits is not None else 0
        with self._lock:
            held = self._dead_bytes.get(sub.plugin_id, 0)
            if limits is not None and held + size > limits.events_mb * MIB:
                # events-mb bounds the dead-letter store too: keep why, not the payload
                ev = msgspec.structs.replace(ev, data=None)
                reason += f"; payload of {size} bytes not kept (events-mb)"
                size = 0
            letter = DeadLetter(sub.id, sub.plugin_id, sub.pattern, reason, ev, time.time())
            if len(self._dead_letters) == MAX_DEAD_LETTERS:
                gone = self._dead_letters[0].subscriber
                self._dead_bytes[gone] = self._dead_bytes.get(gone, 0) - self._dead_sizes[0]
            self._dead_letters.append(letter)
            self._dead_sizes.append(size)
            if size:
                self._dead_bytes[sub.plugin_id] = held + size
            self._dead_count += 1
        if self._on_dead is not None:
            with contextlib.suppress(Exception):  # a broken sink must not break delivery
                self._on_dead(letter)

    def dead_letters(self, subscriber: str | None = None) -> list[DeadLetter]:
        """The most recent dead letters (all, or one subscriber plugin's)."""
        letters = list(self._dead_letters)
        if subscriber is not None:
            letters = [d for d in letters if d.subscriber == subscriber]
        return letters

    @property
    def dead_letter_count(self) -> int:
        """Dead letters since this bus was made (including those no longer kept)."""
        return self._dead_count

    # -- durable and global ----------------------------------------------------------

    def attach_log(self, log: DurableLog, *, poll_interval: float = 0.02) -> None:
        """Use ``log`` for durable topics and ``global`` propagation; start the global tailer.

        The tailer delivers ``global`` events published by other processes on
        the same home to this process's subscribers.
        """
        with self._lock:
            if self._log is not None:
                raise UsageError("this bus already has a durable log")
            self._log = log
            self._durable = log.durable_patterns()
            self._plain = not self._durable
            start = log.last_offset()
            self._tailer = threading.Thread(
                target=self._tail, args=(start, poll_interval), name="corral-bus-tail",
                daemon=True,
            )
            self._tailer.start()

    def declare_durable(
        self, pattern: str, *, max_count: int | None = None, max_age: float | None = None
    ) -> None:
        """Make topics matching ``pattern`` durable (persisted, replayable); host only."""
        if self._log is None:
            raise UsageError("durable topics need the durable log (EventBus.attach_log)")
        check_pattern(pattern)
        self._log.declare(pattern, max_count=max_count, max_age=max_age)
        with self._lock:
            self._durable = self._log.durable_patterns()
            self._plain = not self._durable
            self._cache = {}

    def _is_durable(self, topic: str) -> bool:
        return any(pattern_matches(p, topic) for p in self._durable)

    def _tail(self, offset: int, interval: float) -> None:
        """Deliver other processes' global events; follow durable topics they declare."""
        log = self._log
        assert log is not None
        refreshed = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - refreshed > 1.0:
                    refreshed = time.monotonic()
                    durable = log.durable_patterns()
                    if durable != self._durable:
                        with self._lock:
                            self._durable = durable
                            self._plain = not durable
                            self._cache = {}
                records = log.read(offset, limit=1000, global_only=True)
            except Exception:
                if self._stop.wait(interval):
                    return
                continue
            for rec in records:
                offset = rec.offset
                if rec.origin != self.origin:
                    self._dispatch(record_event(rec))
            if not records:
                self._stop.wait(interval)

    def subscribe_durable(
        self,
        consumer: str,
        pattern: str,
        handler: Callable[[Event], Any],
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
        poll_interval: float = 0.02,
    ) -> DurableConsumer:
        """Deliver durable events matching ``pattern`` from ``consumer``'s committed offset on.

        Each handled event's offset is committed after the handler returns, so
        a consumer that was down catches up after a restart, in order, with
        nothing lost and nothing repeated (a crash inside a handler repeats
        that one event).  A handler that raises is dead-lettered and skipped.
        """
        if self._log is None:
            raise UsageError("durable subscriptions need the durable log (EventBus.attach_log)")
        check_pattern(pattern)
        if perms is not None:
            check_subscribe(perms, pattern, plugin_id)
        if not consumer or type(consumer) is not str:
            raise UsageError(f"a durable consumer needs a name, got {consumer!r}")
        durable = DurableConsumer(self, self._log, consumer, pattern, handler, plugin_id,
                                  poll_interval)
        with self._lock:
            self._consumers = [c for c in self._consumers if c.active] + [durable]
        return durable

    def close(self) -> None:
        """Cancel every subscription and durable consumer, and stop the tailer."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            consumers, self._consumers = self._consumers, []
        for s in subs:
            s.cancel()
        for c in consumers:
            c.cancel()
        self._stop.set()
        if self._tailer is not None:
            self._tailer.join(timeout=2)


def _no_handler(ev: Event) -> None:  # pragma: no cover - polled subscriptions never call it
    return None
