"""The command line's keys generate, list, trust, revoke: signing keys and the trust store."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._output import VerbAdder

__all__ = ["add_verbs"]


def add_verbs(verb: VerbAdder) -> None:
    """Register these verbs (none yet)."""
