"""Shared-state data: a key's value with its version, and one change seen by a watcher."""

from __future__ import annotations

from typing import Any, final

import msgspec

__all__ = ["StateChange", "StateValue"]


@final
class StateValue(msgspec.Struct, frozen=True):
    """A key's value and its version (1 for the first write, +1 for each one after)."""

    key: str
    value: Any
    version: int
    updated_at: float
    updated_by: str | None


@final
class StateChange(msgspec.Struct, frozen=True):
    """One write seen by a watcher; ``deleted`` writes carry ``value=None``."""

    key: str
    value: Any
    version: int
    deleted: bool
    updated_by: str | None
    at: float
