"""Closing hosts without leaking event loops, and looking at what a test left on disk."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

from corral._host import Host


def close_quietly(h: Host) -> None:
    """Close ``h`` so that a leaked event loop cannot fail some unrelated test.

    A Host that leaves its private event loop unclosed makes the garbage
    collector raise an unraisable ResourceWarning in whatever test runs next.
    ``test_host.py::test_close_closes_private_event_loop`` checks for that leak
    on purpose; every other test closes through here so it fails only there.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        h.close()
        gc.collect()


def snapshot(folder: Path) -> set[str]:
    """Every path under ``folder``, relative, to compare before and after."""
    if not folder.exists():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def read_lines(path: Path) -> list[str]:
    """The lines of ``path`` (a hook log, say), or none if nothing wrote it yet."""
    return path.read_text().splitlines() if path.exists() else []
