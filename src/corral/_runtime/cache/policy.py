"""TinyLFU admission: a count-min sketch with a doorkeeper decides what enters a full cache.

When a cache level is full, a new entry displaces the oldest one only if the new
key was asked for more often recently than the one it would displace; keys seen
once (one-hit wonders, scans) stop at the doorkeeper and never push out a key in
use.  Counters are halved every ``sample`` records, so the estimate follows a
changing workload: this is how the cache adapts to its hit rate.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["Admission"]

_ROWS: Final = 4
_SEEDS: Final = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)
_MAX_COUNT: Final = 15  # 4-bit counters, as in TinyLFU


@final
class Admission:
    """Frequency estimates of recently asked keys and the admission rule over them."""

    __slots__ = ("_additions", "_door", "_mask", "_rows", "admitted", "rejected", "sample")

    def __init__(self, capacity_hint: int = 1024) -> None:
        width = 64
        while width < capacity_hint * 2 and width < (1 << 20):
            width <<= 1
        self._mask = width - 1
        self._rows = [bytearray(width) for _ in range(_ROWS)]
        #: Keys seen once since the last reset: they get a count only when seen again.
        self._door: set[int] = set()
        self._additions = 0
        #: Records between two halvings of every counter.
        self.sample = width * 8
        self.admitted = 0
        self.rejected = 0

    def record(self, key: object) -> None:
        """Note that ``key`` was asked for (a miss or a write)."""
        h = hash(key)
        if h not in self._door:
            self._door.add(h)
        else:
            mask = self._mask
            for row, seed in zip(self._rows, _SEEDS, strict=True):
                i = ((h ^ seed) * 0x01000193) & mask
                if row[i] < _MAX_COUNT:
                    row[i] += 1
        self._additions += 1
        if self._additions >= self.sample:
            self._age()

    def estimate(self, key: object) -> int:
        """How often ``key`` was asked for lately (doorkeeper included)."""
        h = hash(key)
        mask = self._mask
        count = min(row[((h ^ seed) * 0x01000193) & mask]
                    for row, seed in zip(self._rows, _SEEDS, strict=True))
        return count + (1 if h in self._door else 0)

    def admit(self, candidate: object, victim: object, victim_hits: int = 0) -> bool:
        """Whether ``candidate`` should displace ``victim`` (hit ``victim_hits`` times while
        held) in a full cache."""
        if self.estimate(candidate) > self.estimate(victim) + min(victim_hits, _MAX_COUNT):
            self.admitted += 1
            return True
        self.rejected += 1
        return False

    def _age(self) -> None:
        for row in self._rows:
            for i, v in enumerate(row):
                if v:
                    row[i] = v >> 1
        self._door.clear()
        self._additions //= 2
