"""Events, subscriptions and the bounded queues that keep slow subscribers apart.

A queued subscriber's handler runs on the subscription's own thread; a polled
one (a sandboxed plugin) is drained in batches.  Either way the queue is
bounded, and an event that does not fit becomes a :class:`DeadLetter`.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import UsageError
from corral._model.events import DeadLetter, Event, HandlerResult
from corral._runtime.budgets import mib

if TYPE_CHECKING:
    import asyncio

    from corral._model.topics import EventFilter
    from corral._services.events.bus import EventBus
    from corral._services.events.durable import LogRecord

__all__ = [
    "DeadLetter", "Event", "HandlerResult", "Subscription", "event_bytes", "record_event"
]


@final
class _Queue:
    """A bounded, three-level priority FIFO; served by a thread or drained by ``poll``."""

    __slots__ = ("_budget", "_bus", "_held", "_levels", "_lock", "_loop", "_size", "_sleeping",
                 "_stopped", "_thread", "_wake", "busy_since", "maxsize", "sub")

    def __init__(self, bus: EventBus, sub: Subscription, maxsize: int, threaded: bool) -> None:
        self._bus = bus
        self.sub = sub
        self.maxsize = maxsize
        # a plain lock for the queue, and an event set only when a consumer sleeps:
        # a put costs one uncontended lock, not a Condition's Python-level notify
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        # index 0: priority > 0, 1: priority 0, 2: priority < 0
        self._levels: tuple[deque[tuple[Event, Future[Any] | None, int]], ...] = (
            deque(), deque(), deque()
        )
        self._size = 0
        # queue-mb: the bytes queued for the subscriber plugin, shared by all its queues
        budgets = bus.budgets
        self._budget = budgets.queue(sub.plugin_id) if budgets is not None else None
        self._held = 0
        self._stopped = False
        self.busy_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(
                target=self._serve, name=f"corral-sub-{sub.id}", daemon=True
            )
            self._thread.start()

    def __len__(self) -> int:
        return self._size

    def put(self, ev: Event, fut: Future[Any] | None = None) -> None:
        flt = self.sub.filter
        if flt is not None and not flt.matches(ev.data):
            # Filtered before queueing: neither a handler nor a poll may see it, and it
            # takes no room in the queue.
            if fut is not None:
                fut.set_result(None)
            return
        budget = self._budget
        size = event_bytes(ev) if budget is not None else 0
        with self._lock:
            if self._stopped:
                reason = "subscription cancelled"
            elif self._size >= self.maxsize:
                reason = f"queue full ({self.maxsize} events)"
                if self.busy_since is not None:
                    reason += f"; handler busy for {time.time() - self.busy_since:.1f} s"
            elif budget is not None and not budget.take(size):
                reason = (f"queue-mb: the host holds {mib(budget.used)} of {mib(budget.cap)} "
                          f"for {self.sub.plugin_id}'s subscriptions")
            else:
                p = ev.priority
                self._levels[0 if p > 0 else 1 if p == 0 else 2].append((ev, fut, size))
                self._size += 1
                self._held += size
                if self._sleeping:
                    self._sleeping = False
                    self._wake.set()
                return
        self._bus._dead(self.sub, ev, reason)
        if fut is not None:
            fut.set_result(HandlerResult(self.sub.plugin_id, self.sub.id, error=reason))

    def _take(self, n: int) -> list[tuple[Event, Future[Any] | None]]:
        """Up to ``n`` queued items, highest priority level first (call with the lock held)."""
        out: list[tuple[Event, Future[Any] | None, int]] = []
        for level in self._levels:
            if not level:
                continue
            room = n - len(out)
            if room <= 0:
                break
            if len(level) <= room:
                out.extend(level)
                level.clear()
            else:
                out.extend(level.popleft() for _ in range(room))
        self._size -= len(out)
        if self._budget is not None and out:
            freed = sum(item[2] for item in out)
            self._held -= freed
            self._budget.give(freed)
        return [(ev, fut) for ev, fut, _ in out]

    def _wait(self, timeout: float | None) -> bool:
        """Sleep until something is queued, the queue stops, or ``timeout`` passes.

        Returns whether there may be something to take.
        """
        with self._lock:
            if self._size or self._stopped:
                return True
            self._sleeping = True
            self._wake.clear()
        return self._wake.wait(timeout)

    def poll(self, max_events: int, timeout: float) -> list[Event]:
        """Up to ``max_events`` events, waiting at most ``timeout`` seconds for the first."""
        if timeout > 0:
            self._wait(timeout)
        with self._lock:
            return [ev for ev, _ in self._take(max_events)]

    def stop(self) -> list[Event]:
        """Stop serving; return what was still queued (the caller dead-letters it)."""
        with self._lock:
            self._stopped = True
            left = [ev for ev, _ in self._take(self._size)]
            self._sleeping = False
            self._wake.set()
        return left

    def _serve(self) -> None:
        sub = self.sub
        is_async = inspect.iscoroutinefunction(sub.handler)
        if is_async:
            import asyncio  # only async handlers need it

            self._loop = asyncio.new_event_loop()
        while True:
            self._wait(None)
            with self._lock:
                if self._stopped:
                    break
                batch = self._take(256)
                if not batch:
                    continue
                self.busy_since = time.time()
            for ev, fut in batch:
                self.busy_since = time.time()
                try:
                    value = sub.handler(ev)
                    if is_async:
                        assert self._loop is not None
                        value = self._loop.run_until_complete(value)
                except Exception as exc:
                    self._bus._failed(sub, ev, exc)
                    if fut is not None:
                        fut.set_result(
                            HandlerResult(sub.plugin_id, sub.id, error=_describe(exc))
                        )
                else:
                    if fut is not None:
                        fut.set_result(HandlerResult(sub.plugin_id, sub.id, value=value))
            self.busy_since = None
        if self._loop is not None:
            self._loop.close()


@final
class Subscription:
    """A live subscription; :meth:`cancel` ends it (idempotent)."""

    __slots__ = ("_bus", "_queue", "active", "delivery", "filter", "handler", "id", "pattern",
                 "plugin_id", "priority")

    def __init__(
        self,
        bus: EventBus,
        sub_id: int,
        pattern: str,
        handler: Callable[[Event], Any],
        plugin_id: str | None,
        priority: int,
        event_filter: EventFilter | None,
        delivery: str,
    ) -> None:
        self._bus = bus
        self.id: Final = sub_id
        self.pattern: Final = pattern
        self.handler: Final = handler
        self.plugin_id: Final = plugin_id
        self.priority: Final = priority
        self.filter: Final = event_filter
        self.delivery = delivery  # inline handlers found slow become queued
        self.active = True
        self._queue: _Queue | None = None

    @property
    def pending(self) -> int:
        """Events waiting in this subscriber's queue (0 for inline delivery)."""
        return len(self._queue) if self._queue is not None else 0

    def poll(self, max_events: int = 1000, timeout: float = 0.0) -> list[Event]:
        """Drain up to ``max_events`` events of a polled subscription (a sandboxed plugin's)."""
        if self.delivery != "poll" or self._queue is None:
            raise UsageError(f"subscription {self.id} is not a polled subscription")
        return self._queue.poll(max_events, timeout)

    def cancel(self) -> None:
        """Stop delivery; events still queued become dead letters."""
        self._bus._cancel(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {self.pattern} by {self.plugin_id or 'host'}>"

    def _deliverer(self) -> Callable[[Event], Any]:
        """The callable ``publish`` runs for this subscriber (inline: the handler itself)."""
        if self._queue is not None:
            return self._queue.put
        flt = self.filter
        handler = self.handler
        if flt is None:
            return handler
        matches = flt.matches

        def filtered(ev: Event) -> Any:
            if matches(ev.data):
                return handler(ev)
            return None

        return filtered


def event_bytes(ev: Event) -> int:
    """What an event costs a queue: its payload as JSON, its topic, and a fixed overhead."""
    try:
        return len(msgspec.json.encode(ev.data)) + len(ev.topic) + 200
    except (TypeError, ValueError):
        return len(ev.topic) + 200


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def record_event(rec: LogRecord) -> Event:
    """The :class:`Event` of a durable log record."""
    return Event(rec.event_id, rec.topic, rec.data, rec.source, rec.timestamp, rec.priority,
                 rec.propagation, rec.origin, rec.offset)
