"""Single flight: one caller computes a missing or stale entry while the others wait.

Concurrent ``get_or_compute`` calls for one key elect a leader; the others wait
for its result (or, when a stale value exists, return that at once).  A leader
that fails, or that does not finish within its lease, lets the next caller lead:
errors are never shared or kept.
"""

from __future__ import annotations

import threading
import time
from typing import Final, final

__all__ = ["Flights"]

#: How long a leader may hold a key before another caller may take over, in seconds.
DEFAULT_LEASE: Final = 30.0


@final
class Flights:
    """Leases on keys being computed, with waiting for them."""

    __slots__ = ("_cond", "_leases", "lease_seconds")

    def __init__(self, lease_seconds: float = DEFAULT_LEASE) -> None:
        self._cond = threading.Condition()
        self._leases: dict[object, float] = {}
        self.lease_seconds = lease_seconds

    def try_lead(self, key: object) -> bool:
        """Take the lease on ``key`` unless someone holds a live one."""
        now = time.monotonic()
        with self._cond:
            until = self._leases.get(key)
            if until is not None and until > now:
                return False
            self._leases[key] = now + self.lease_seconds
            return True

    def wait(self, key: object, timeout: float) -> bool:
        """Wait until ``key``'s lease is released (``True``) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                until = self._leases.get(key)
                now = time.monotonic()
                if until is None or until <= now:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(deadline, until) - now)

    def release(self, key: object) -> None:
        """Give up ``key``'s lease (computed, failed or abandoned) and wake the waiters."""
        with self._cond:
            if self._leases.pop(key, None) is not None:
                self._cond.notify_all()

    def leading(self) -> int:
        """How many keys are being computed now."""
        with self._cond:
            return len(self._leases)
