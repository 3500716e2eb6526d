"""A plugin's sampled profile: stacks with their time, the top functions, what it waited on.

Samples come from a worker (untrusted: every index and figure is checked, every
name neutralised and capped) or from the host's own sampler; :class:`ProfileReport`
merges them and writes speedscope JSON and flame graphs (:mod:`.flame`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, final

from corral._model.text import neutralise

__all__ = ["ProfileReport", "is_label"]

_NAME_CAP: Final = 300
_MAX_FRAMES: Final = 50_000
_MAX_STACKS: Final = 50_000
_MAX_DEPTH: Final = 512


def is_label(name: str) -> bool:
    """Whether a frame is a label (``[broker] op``, ``[io] read``, ``[host] ...``)."""
    return name.startswith("[")


def _clean(text: object) -> str:
    return neutralise(str(text)[:_NAME_CAP], one_line=True)


@final
class ProfileReport:
    """What a monitoring session sampled of one plugin (see ``Host.monitor``)."""

    def __init__(self, plugin_id: str, isolation: str, interval_ms: float) -> None:
        self.plugin_id = plugin_id
        self.isolation = isolation
        self.interval_ms = interval_ms
        #: ``(name, file, line)``; names are neutralised, files relative to the plugin.
        self.frames: list[tuple[str, str, int]] = []
        self._index: dict[tuple[str, str, int], int] = {}
        #: stack (frame indexes, root first) -> milliseconds sampled in it.
        self.stacks: dict[tuple[int, ...], float] = {}
        #: How many calls sent samples (sandboxed) and how many samples were taken.
        self.calls = 0
        self.samples = 0
        self.seconds = 0.0

    # -- adding samples -------------------------------------------------------------

    def add(self, frames: Sequence[Sequence[Any]], samples: Iterable[Sequence[Any]],
            count: int) -> None:
        """Merge one batch of ``frames`` and ``(stack, ms)`` samples (``count`` samples
        taken); bad entries are skipped."""
        local: list[int | None] = []
        for entry in frames[:_MAX_FRAMES]:
            try:
                name, file, line = entry
                key = (_clean(name), _clean(file), int(line))
            except (TypeError, ValueError):
                local.append(None)
                continue
            index = self._index.get(key)
            if index is None and len(self.frames) < _MAX_FRAMES:
                index = self._index[key] = len(self.frames)
                self.frames.append(key)
            local.append(index)
        self.calls += 1
        for sample in samples:
            try:
                stack, ms = sample
                ms = float(ms)
                if not math.isfinite(ms) or ms < 0 or len(stack) > _MAX_DEPTH:
                    continue
                mapped = [local[i] for i in stack]
            except (TypeError, ValueError, IndexError):
                continue
            kept = tuple(i for i in mapped if i is not None)
            if not kept or len(kept) != len(mapped):
                continue
            if kept in self.stacks:
                self.stacks[kept] += ms
            elif len(self.stacks) < _MAX_STACKS:
                self.stacks[kept] = ms
        self.samples += max(0, min(int(count), 10_000_000))

    # -- reading it ---------------------------------------------------------------

    @property
    def total_ms(self) -> float:
        """The time sampled in the plugin's code, in milliseconds."""
        return sum(self.stacks.values())

    def functions(self, limit: int = 20) -> list[dict[str, Any]]:
        """The top frames by self time: name, file, line, self and total ms and shares."""
        own: dict[int, float] = {}
        total: dict[int, float] = {}
        for stack, ms in self.stacks.items():
            own[stack[-1]] = own.get(stack[-1], 0.0) + ms
            for i in set(stack):
                total[i] = total.get(i, 0.0) + ms
        whole = self.total_ms or 1.0
        rows = []
        for i, ms in sorted(total.items(), key=lambda kv: (-own.get(kv[0], 0.0), -kv[1])):
            name, file, line = self.frames[i]
            rows.append({
                "function": name, "file": file, "line": line,
                "self_ms": round(own.get(i, 0.0), 3), "total_ms": round(ms, 3),
                "self_share": round(own.get(i, 0.0) / whole, 4),
                "total_share": round(ms / whole, 4),
            })
        return rows[:limit]

    def share(self, prefix: str) -> float:
        """The share of sampled time spent in frames labelled ``prefix`` (``[broker]``...)."""
        whole = self.total_ms
        if not whole:
            return 0.0
        hit = sum(ms for stack, ms in self.stacks.items()
                  if any(self.frames[i][0].startswith(prefix) for i in stack))
        return round(hit / whole, 4)

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        """The report as JSON data (what ``corral profile --json`` prints)."""
        return {
            "plugin": self.plugin_id,
            "isolation": self.isolation,
            "seconds": round(self.seconds, 3),
            "interval_ms": self.interval_ms,
            "calls": self.calls,
            "samples": self.samples,
            "sampled_ms": round(self.total_ms, 3),
            "broker_share": self.share("[broker]") or self.share("[host]"),
            "io_share": self.share("[io]"),
            "functions": self.functions(limit),
        }

    # -- writing it ---------------------------------------------------------------

    def speedscope(self) -> dict[str, Any]:
        """The profile in speedscope's file format (one ``sampled`` profile, milliseconds)."""
        frames = []
        for name, file, line in self.frames:
            frame: dict[str, Any] = {"name": name}
            if file:
                frame["file"] = file
                frame["line"] = line
            frames.append(frame)
        stacks = sorted(self.stacks.items())
        total = round(sum(ms for _, ms in stacks), 3)
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": frames},
            "profiles": [{
                "type": "sampled",
                "name": f"{self.plugin_id} ({self.isolation})",
                "unit": "milliseconds",
                "startValue": 0,
                "endValue": total,
                "samples": [list(stack) for stack, _ in stacks],
                "weights": [round(ms, 3) for _, ms in stacks],
            }],
            "name": f"corral profile {self.plugin_id}",
            "exporter": "corral",
        }

    def write(self, path: str | os.PathLike[str], fmt: str | None = None) -> str:
        """Write the profile to ``path`` as ``svg``, ``html`` or ``speedscope`` (by default
        from its suffix: ``.svg``, ``.html``, else speedscope JSON); returns the format."""
        from corral._services.monitor.flame import flame_html, flame_svg

        target = Path(path)
        if fmt is None:
            suffix = target.suffix.lower()
            fmt = {".svg": "svg", ".html": "html", ".htm": "html"}.get(suffix, "speedscope")
        title = f"corral profile of {self.plugin_id}"
        if fmt == "svg":
            text = flame_svg(self.frames, self.stacks, title)
        elif fmt == "html":
            text = flame_html(self.frames, self.stacks, title)
        elif fmt == "speedscope":
            text = json.dumps(self.speedscope(), ensure_ascii=True)
        else:
            from corral._errors import UsageError

            raise UsageError(f"unknown profile format {fmt!r}: use svg, html or speedscope")
        target.write_text(text, encoding="utf-8")
        return fmt
