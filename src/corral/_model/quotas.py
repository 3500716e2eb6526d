"""Quotas over time: the ``[quotas]`` table's keys, their bounds and windows (docs/quotas.md).

Pure data: what each quota bounds and how a table of them is checked.  The
accounting lives in ``_runtime/quotas.py``; the byte quotas of what the host
holds (``cache-mb``, ``state-mb``) are the ``[sandbox]`` budgets, named here only
so the host's settings can override them under the same names.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, final

from corral._errors import ManifestError

__all__ = [
    "BYTE_QUOTAS",
    "CPU_WEIGHT_DEFAULT",
    "QUOTAS",
    "QUOTA_KEYS",
    "SETTABLE",
    "QuotaRule",
    "check_quota_table",
    "quota_dict",
    "window_name",
]


@final
@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One ``[quotas]`` key: its bounds, its window and what it counts."""

    low: int
    high: int
    #: Seconds of the sliding window, or ``None`` for a key that is no count over time.
    window: int | None
    #: What is counted: ``calls``, ``cpu-seconds``, ``events``, ``weight``.
    unit: str
    #: Its value when neither the manifest nor the settings give one (``None``: unbounded).
    default: int | None
    description: str


#: The ``[quotas]`` keys, in the order they are shown.
QUOTAS: Final[Mapping[str, QuotaRule]] = MappingProxyType({
    "calls-per-minute": QuotaRule(
        1, 100_000_000, 60, "calls", None,
        "Calls of the plugin's exports and micro-plugins in any 60 seconds."),
    "cpu-seconds-per-hour": QuotaRule(
        1, 3600 * 1024, 3600, "cpu-seconds", None,
        "CPU seconds the plugin may use in any hour (its worker's user and system time; "
        "in process, the calling thread's)."),
    "cpu-seconds-per-day": QuotaRule(
        1, 86400 * 1024, 86400, "cpu-seconds", None,
        "CPU seconds the plugin may use in any 24 hours."),
    "events-per-second": QuotaRule(
        1, 10_000_000, 1, "events", None,
        "Events the plugin may publish in any second."),
    "cpu-weight": QuotaRule(
        1, 10000, None, "weight", 100,
        "The plugin's share of the CPU against the other plugins' workers when the CPU is "
        "contended (cgroup cpu.weight; cpu.shares = weight * 1024 / 100 on cgroup v1); "
        "100 is an equal share."),
})
QUOTA_KEYS: Final = tuple(QUOTAS)
#: The default cgroup CPU weight (an equal share).
CPU_WEIGHT_DEFAULT: Final = 100
#: Budgets of what the host holds that the settings may override under ``[quotas.ID]``
#: (declared in the manifest's ``[sandbox]`` table, see docs/budgets.md).
BYTE_QUOTAS: Final = ("cache-mb", "state-mb")
#: Every key ``[quotas.ID]`` in the host's settings (and ``corral quota set``) accepts.
SETTABLE: Final = (*QUOTA_KEYS, *BYTE_QUOTAS)


def window_name(seconds: int | None) -> str:
    """``60`` -> ``"1m"``: a window as people say it."""
    if seconds is None:
        return "-"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def check_quota_table(
    value: object, where: str, *, file: str | None = None,
    bounds: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, int]:
    """A ``[quotas]`` table checked: known keys, integers within bounds.

    ``where`` is the key path shown in errors (``quotas``, ``quotas."acme.x"``);
    ``bounds`` adds keys beyond :data:`QUOTAS` (the byte quotas, in the settings).

    Raises:
        ManifestError: naming the key at fault.
    """
    if not isinstance(value, Mapping):
        raise ManifestError(f"must be a table, got {_kind(value)}", file=file, key=where)
    extra = dict(bounds or {})
    out: dict[str, int] = {}
    for name, item in value.items():
        rule = QUOTAS.get(name)
        if rule is None and name not in extra:
            allowed = (*QUOTA_KEYS, *extra)
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ManifestError(f"unknown key{hint}; allowed: {', '.join(allowed)}",
                                file=file, key=f"{where}.{name}")
        low, high = (rule.low, rule.high) if rule is not None else extra[name]
        if type(item) is not int:
            raise ManifestError(f"must be an integer {low}..{high}, got {_kind(item)}",
                                file=file, key=f"{where}.{name}")
        if not low <= item <= high:
            raise ManifestError(f"must be {low}..{high}, got {item}", file=file,
                                key=f"{where}.{name}")
        out[str(name)] = item
    return out


def quota_dict(values: Mapping[str, int]) -> dict[str, Any]:
    """A checked table in manifest order (for ``Manifest.to_dict``)."""
    return {key: values[key] for key in QUOTA_KEYS if key in values}
