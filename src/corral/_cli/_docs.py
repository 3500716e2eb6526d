"""The command line's docs verb: Markdown and HTML documentation of a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._output import VerbAdder

__all__ = ["add_verbs"]


def add_verbs(verb: VerbAdder) -> None:
    """Register these verbs (none yet)."""
