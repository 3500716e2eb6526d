"""``[exports.NAME] cache = {ttl = "10m"}``: declarative memoisation of a pure export, as data.

Durations are written as a number of seconds or a string such as ``"90s"``, ``"10m"``,
``"2h"`` or ``"1d"``; parsing them here keeps the manifest free of I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

__all__ = ["EXPORT_CACHE_KEYS", "MAX_TTL_SECONDS", "ExportCache", "parse_duration"]

#: The keys of an export's ``cache`` table.
EXPORT_CACHE_KEYS: Final = ("ttl", "stale")
#: The longest a memoised result may live: 30 days.
MAX_TTL_SECONDS: Final = 30 * 86400
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([smhd])$")


@final
@dataclass(frozen=True, slots=True)
class ExportCache:
    """How long an export's results are kept: ``ttl`` fresh, then ``stale`` more seconds
    during which one caller recomputes while the others get the stale result."""

    ttl: float
    stale: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """The table in manifest spelling (seconds)."""
        out = {"ttl": self.ttl}
        if self.stale:
            out["stale"] = self.stale
        return out


def parse_duration(value: object) -> float | None:
    """Seconds for ``value`` (``30``, ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``), or ``None``
    when it is not a duration of 0 .. :data:`MAX_TTL_SECONDS` seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        return None
    if not 0 <= seconds <= MAX_TTL_SECONDS:  # NaN compares false: refused too
        return None
    return seconds
