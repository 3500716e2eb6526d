"""The Prometheus text exposition format (0.0.4), written by hand: families, samples,
escaping, and folding a label's values to a bounded number.

Pure data to text, shared by the host's ``corral metrics`` and the registry server's
``/metrics``; no client library is needed on the import path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, final

__all__ = ["CONTENT_TYPE", "OTHER", "Family", "fold_labels", "render"]

#: What a ``/metrics`` response is served as.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: The label value that every value beyond the cap is folded into.
OTHER: Final = "other"

_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_TYPES: Final = ("counter", "gauge", "histogram", "summary", "untyped")


@final
@dataclass(slots=True)
class Family:
    """One metric family: its name, type, help and samples ``(suffix, labels, value)``."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.type not in _TYPES:
            raise ValueError(f"bad metric family {self.name!r} of type {self.type!r}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {self.name!r}")

    def add(self, suffix: str, labels: Mapping[str, str], value: float) -> None:
        """Add one sample (``suffix`` is ``_bucket``, ``_sum``, ``_count`` or "")."""
        for key in labels:
            if not _LABEL.match(key) or key.startswith("__"):
                raise ValueError(f"bad label name {key!r}")
        self.samples.append((suffix, dict(labels), float(value)))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render(families: list[Family]) -> str:
    """The exposition text of ``families``, each with its ``# HELP`` and ``# TYPE``."""
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for suffix, labels, value in fam.samples:
            name = fam.name + suffix
            if labels:
                inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def fold_labels(activity: Mapping[str, float], cap: int) -> dict[str, str]:
    """Each value's label: itself for the ``cap`` most active (ties by name), :data:`OTHER`
    for the rest, so a label never has more than ``cap + 1`` values.
    """
    ranked = sorted(activity, key=lambda v: (-activity[v], v))
    keep = set(ranked[: max(0, cap)])
    return {v: (v if v in keep else OTHER) for v in activity}
