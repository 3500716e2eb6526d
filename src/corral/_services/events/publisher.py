"""A topic resolved once: publishing many events on one topic without a lookup each.

What a blinker signal is to blinker.  The handle keeps the dispatch tuple it
resolved and the identity of the bus's cache it came from; the bus replaces
that cache on every subscribe, cancel and durable declaration, so one
identity check per publish keeps the handle exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from corral._model.topics import check_payload
from corral._services.events.dispatch import (
    SAMPLE_MASK,
    Dispatch,
    now,
)
from corral._services.events.subscriptions import Event

if TYPE_CHECKING:
    from corral._services.events.bus import EventBus

__all__ = ["TopicPublisher"]


@final
class TopicPublisher:
    """A topic resolved once: :meth:`publish` skips the lookup (see :meth:`EventBus.publisher`).

    It re-resolves whenever the bus's dispatch cache was replaced (a subscribe,
    a cancel, a durable declaration), so it never delivers to a stale set.
    """

    __slots__ = ("_bus", "_gate", "_max_bytes", "_next", "_origin", "_seen", "_subs", "publish",
                 "source", "topic")

    def __init__(
        self, bus: EventBus, topic: str, source: str | None, max_bytes: int | None,
        gate: Callable[[], None] | None = None,
    ) -> None:
        self._bus = bus
        self.topic: Final = topic
        self.source: Final = source
        self._max_bytes = max_bytes
        self._next = bus._next_id
        self._origin = bus.origin
        self._seen: dict[str, Dispatch] | None = None
        self._subs: Dispatch = ()
        #: A plugin's ``events-per-second`` quota: raises when spent.
        self._gate = gate
        #: ``publish(data=None) -> Event | None``: local propagation, priority 0.
        #: Plugin handles check the payload (JSON, size); the host's are trusted.
        self.publish: Callable[..., Event | None] = (
            self._publish_host if max_bytes is None else self._publish_plugin
        )

    def _publish_plugin(self, data: Any = None) -> Event | None:
        assert self._max_bytes is not None
        if self._gate is not None:
            self._gate()
        check_payload(data, max_bytes=self._max_bytes, topic=self.topic)
        return self._publish_host(data)

    def _publish_host(self, data: Any = None) -> Event | None:
        if self._bus._cache is not self._seen:
            return self._refresh(data)
        subs = self._subs
        if not subs:
            return None
        eid = self._next()
        ev = Event(eid, self.topic, data, self.source, now(), 0, "local", self._origin)
        if eid & SAMPLE_MASK:
            for deliver, sub in subs:
                try:
                    deliver(ev)
                except Exception as exc:
                    self._bus._failed(sub, ev, exc)
        else:
            self._bus._dispatch_timed(ev, subs)
        return ev

    def _refresh(self, data: Any) -> Event | None:
        bus = self._bus
        with bus._lock:
            if not bus._plain:  # durable topics exist: take the checked path every time
                self._seen = None
            else:
                subs = bus._cache.get(self.topic)
                self._subs = subs if subs is not None else bus._resolve(self.topic)
                self._seen = bus._cache
        return bus._publish_checked(self.topic, data, None, self.source, 0, "local")
