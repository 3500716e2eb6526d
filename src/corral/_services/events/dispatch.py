"""What every part of the bus shares: delivery kinds, bounds, the clock and the dispatch tuple.

The lowest module of the events package, so that publishers, subscriptions and the
plugin's face can use the bus's constants without importing the bus itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from corral._model.events import DEFAULT_MAX_QUEUE, Delivery, Propagation

if TYPE_CHECKING:
    from corral._model.events import Event
    from corral._services.events.subscriptions import Subscription

__all__ = [
    "CACHE_MAX",
    "DEFAULT_MAX_QUEUE",
    "MAX_DEAD_LETTERS",
    "PROPAGATIONS",
    "SAMPLE_MASK",
    "Delivery",
    "Dispatch",
    "Propagation",
    "clock",
    "now",
]

#: Dead letters kept in memory (the ``on_dead_letter`` callback sees all of them).
MAX_DEAD_LETTERS: Final = 10_000
CACHE_MAX: Final = 10_000
PROPAGATIONS: Final = frozenset({"local", "global", "system"})
now: Final = time.time
clock: Final = time.perf_counter
#: One publish in 64 times its inline handlers (see ``EventBus.slow_handler``).
SAMPLE_MASK: Final = 63


#: The handlers of one topic, resolved once and cached by the bus.
Dispatch = tuple[tuple[Callable[["Event"], Any], "Subscription"], ...]
