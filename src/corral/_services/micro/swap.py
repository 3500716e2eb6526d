"""Hot swap: retire old versions of micro-plugins once the calls on them have drained.

The manager publishes its handlers as one immutable table (a ``dict``) and
replaces the whole table on every change, with a single attribute store.  A
call reads the table once into a local variable and takes every handler it
needs from that snapshot, so a call (or a whole composition) sees either the
old set or the new set, never a mix.

Draining costs the calls nothing: a running call's frame holds a reference to
the snapshot it started on, so the retired table's reference count (CPython)
says how many calls are still running on it.  :class:`Drains` keeps the
retired tables and, when a table is referenced by nothing but itself, calls
the ``on_drained`` callback (the host stops the old worker there) and releases
the :class:`SwapTicket`.  A call abandoned after its time limit no longer
counts: its caller has already moved on.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, final

from corral._model.micro import MicroInfo

__all__ = ["Drains", "SwapTicket"]

OnDrained = Callable[[tuple[MicroInfo, ...]], None]


@final
class SwapTicket:
    """Handed back by a change to the table: the replaced versions drain in the background."""

    __slots__ = ("_done", "replaced")

    def __init__(self, replaced: tuple[MicroInfo, ...]) -> None:
        #: the versions taken out of service
        self.replaced: Final = replaced
        self._done = threading.Event()

    @property
    def drained(self) -> bool:
        """True once no call that started on the old versions is still running."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until drained; False on timeout."""
        return self._done.wait(timeout)


@dataclass(slots=True)
class _Retired:
    table: dict[str, Any]
    ticket: SwapTicket
    on_drained: OnDrained | None
    since: float = field(default_factory=time.monotonic)


@final
class Drains:
    """Retired tables waiting for their calls to finish."""

    __slots__ = ("_lock", "_retired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired: list[_Retired] = []

    def retire(self, table: dict[str, Any], replaced: tuple[MicroInfo, ...],
               on_drained: OnDrained | None) -> SwapTicket:
        """Start draining ``table``, which held the ``replaced`` versions."""
        ticket = SwapTicket(replaced)
        if not replaced:
            ticket._done.set()
            return ticket
        with self._lock:
            self._retired.append(_Retired(table, ticket, on_drained))
        return ticket

    def __len__(self) -> int:
        return len(self._retired)

    def check(self) -> int:
        """Release every drained table; return how many are still draining."""
        with self._lock:
            # Two references: ``r.table`` and getrefcount's argument; more is a call in flight.
            done = [r for r in self._retired if sys.getrefcount(r.table) <= 2]
            for r in done:
                self._retired.remove(r)
            left = len(self._retired)
        for r in done:
            r.table = {}
            if r.on_drained is not None:
                with contextlib.suppress(Exception):  # a host callback must not stop draining
                    r.on_drained(r.ticket.replaced)
            r.ticket._done.set()
        return left

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until everything retired so far has drained; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.check():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True
