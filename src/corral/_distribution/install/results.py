"""What an install operation hands back: the change it made, and what an update found.

Both turn into the JSON of ``--json`` with :meth:`to_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Change", "UpdateResult"]


@dataclass(frozen=True)
class Change:
    """What one operation did: the generation now current and the differences."""

    generation: int
    action: str
    changed: bool
    changes: Mapping[str, Sequence[Mapping[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON data for ``--json``."""
        return {
            "generation": self.generation,
            "action": self.action,
            "changed": self.changed,
            **{k: [dict(x) for x in v] for k, v in self.changes.items()},
        }


@dataclass(frozen=True)
class UpdateResult:
    """Updates found (``available``), held for wider permissions (``held``), and the change.

    ``skipped`` lists ``{"id", "version", "reason"}`` of versions left out
    because they failed their self-test or start-up before.  A held plugin
    new to the home has ``"new": true``, its full permissions and isolation,
    and ``required_by``; an update held for bringing it has ``new_dependencies``.
    ``notes`` says what else the user should know (a self-test not run).
    """

    available: Sequence[Mapping[str, Any]]
    held: Sequence[Mapping[str, Any]]
    change: Change | None
    skipped: Sequence[Mapping[str, str]] = ()
    notes: Sequence[str] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON data for ``--json``."""
        return {
            "available": [dict(x) for x in self.available],
            "held": [dict(x) for x in self.held],
            "skipped": [dict(x) for x in self.skipped],
            "notes": list(self.notes),
            "applied": None if self.change is None else self.change.to_dict(),
        }
