"""Hang blame: which of a plugin's own frames a stuck call was in, safe to report.

A stack (from a worker's dump or a host thread) becomes the innermost frames whose
file lies in the plugin's folder: file relative to it, line and function, neutralised.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterable
from typing import Final

from corral._model.text import neutralise

__all__ = ["plugin_frames", "thread_stack"]

#: How many of the plugin's frames a ``timeout`` error names.
BLAME_FRAMES: Final = 5
_NAME_CAP: Final = 200


def thread_stack(thread_id: int | None) -> list[tuple[str, int, str]]:
    """``(file, line, function)`` of a live thread of this process, innermost first."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is None:
        return []
    return [(f.filename, f.lineno or 0, f.name) for f in reversed(traceback.extract_stack(frame))]


def plugin_frames(stack: Iterable[tuple[str, int, str]], plugin_dir: str,
                  limit: int = BLAME_FRAMES) -> list[dict[str, object]]:
    """The innermost ``limit`` frames of ``stack`` (innermost first) in ``plugin_dir``."""
    prefix = os.path.join(os.path.abspath(plugin_dir), "")
    out: list[dict[str, object]] = []
    for path, line, name in stack:
        if not path.startswith(prefix) or ".." in path.split(os.sep):
            continue
        out.append({
            "file": neutralise(path[len(prefix):][:_NAME_CAP], one_line=True),
            "line": int(line),
            "function": neutralise(name[:_NAME_CAP], one_line=True),
        })
        if len(out) >= limit:
            break
    return out
