"""Event data: an event, a subscriber's result and a dead letter; shared by host and worker."""

from __future__ import annotations

from typing import Any, Final, Literal, final

import msgspec

__all__ = ["DEFAULT_MAX_QUEUE", "DeadLetter", "Delivery", "Event", "HandlerResult", "Propagation"]

#: Where an event goes: this host only, every host sharing the durable log, or the host itself.
Propagation = Literal["local", "global", "system"]
#: How a subscriber is handed events: on the publisher's thread, or through its own queue.
Delivery = Literal["inline", "queued"]
#: Default bound of a queued or polled subscriber's queue.
DEFAULT_MAX_QUEUE: Final = 10_000


class Event(msgspec.Struct, frozen=True, gc=False):
    """One published event, shared read-only by every subscriber.

    ``id`` is unique within the publishing bus (``origin`` names that bus);
    ``offset`` is the position in the durable log for durable and global events.
    """

    id: int
    topic: str
    data: Any
    source: str | None
    timestamp: float
    priority: int
    propagation: str
    origin: str
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON data (what a sandboxed subscriber receives)."""
        return {
            "id": self.id,
            "topic": self.topic,
            "data": self.data,
            "source": self.source,
            "timestamp": self.timestamp,
            "priority": self.priority,
            "propagation": self.propagation,
            "origin": self.origin,
            "offset": self.offset,
        }


@final
class HandlerResult(msgspec.Struct, frozen=True):
    """What one subscriber returned for an event, attributed to its plugin."""

    plugin_id: str | None
    subscription_id: int
    value: Any = None
    error: str | None = None


@final
class DeadLetter(msgspec.Struct, frozen=True):
    """An event that could not be delivered to one subscriber, and why."""

    subscription_id: int
    subscriber: str | None
    pattern: str
    reason: str
    event: Event
    at: float
