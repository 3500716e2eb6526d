"""Flame graphs of a sampled profile, as one self-contained SVG or HTML page.

No script, font or stylesheet is fetched from anywhere; every name comes from
plugin code, so each is escaped for XML and stripped of what XML cannot hold.
"""

from __future__ import annotations

import html
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["flame_html", "flame_svg"]

_WIDTH: Final = 1200
_ROW: Final = 17
_PAD: Final = 10
_CHAR: Final = 7.0
_MIN_WIDTH: Final = 0.3
#: Characters XML 1.0 cannot hold, even escaped.
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    return html.escape(_NOT_XML.sub("?", text), quote=True)


def _tree(stacks: Mapping[tuple[int, ...], float]) -> dict[str, Any]:
    root: dict[str, Any] = {"frame": -1, "ms": 0.0, "children": {}}
    for stack, ms in stacks.items():
        node = root
        node["ms"] += ms
        for i in stack:
            node = node["children"].setdefault(i, {"frame": i, "ms": 0.0, "children": {}})
            node["ms"] += ms
    return root


def _colour(name: str) -> str:
    if name.startswith("[broker]"):
        return "rgb(90,140,220)"
    if name.startswith("[io]"):
        return "rgb(160,160,170)"
    if name.startswith("[host]"):
        return "rgb(150,110,200)"
    h = zlib.crc32(name.encode("utf-8", "replace"))
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 120},{40 + (h >> 16) % 40})"


def flame_svg(frames: Sequence[tuple[str, str, int]],
              stacks: Mapping[tuple[int, ...], float], title: str) -> str:
    """An SVG flame graph: the root at the bottom, each frame as wide as its time."""
    tree = _tree(stacks)
    total = tree["ms"] or 1.0
    scale = (_WIDTH - 2 * _PAD) / total
    boxes: list[tuple[int, float, float, str, str]] = []  # depth, x, width, label, tooltip
    depth_max = 0
    todo: list[tuple[dict[str, Any], int, float]] = [(tree, 0, float(_PAD))]
    while todo:
        node, depth, x = todo.pop()
        width = node["ms"] * scale
        if width < _MIN_WIDTH:
            continue
        if node["frame"] < 0:
            label = "all"
        else:
            name, file, line = frames[node["frame"]]
            label = name
            if file:
                label = f"{name} ({file}:{line})"
        share = 100.0 * node["ms"] / total
        boxes.append((depth, x, width, label, f"{label}: {node['ms']:.1f} ms, {share:.1f}%"))
        depth_max = max(depth_max, depth)
        cx = x
        for child in sorted(node["children"].values(), key=lambda c: c["frame"]):
            todo.append((child, depth + 1, cx))
            cx += child["ms"] * scale
    height = (depth_max + 1) * _ROW + 3 * _PAD + 20
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="monospace" font-size="12">',
        f"<title>{_xml(title)}</title>",
        f'<rect x="0" y="0" width="{_WIDTH}" height="{height}" fill="rgb(250,250,245)"/>',
        f'<text x="{_PAD}" y="{_PAD + 12}" font-size="14">{_xml(title)}</text>',
    ]
    base = height - _PAD - _ROW
    for depth, x, width, label, tip in boxes:
        y = base - depth * _ROW
        name = label.split(" (", 1)[0]
        out.append(f'<g><title>{_xml(tip)}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{_ROW - 1}" '
                   f'fill="{_colour(name)}" rx="2"/>')
        fits = int((width - 4) / _CHAR)
        if fits >= 3:
            shown = label if len(label) <= fits else label[: fits - 2] + ".."
            out.append(f'<text x="{x + 2:.2f}" y="{y + _ROW - 5}">{_xml(shown)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def flame_html(frames: Sequence[tuple[str, str, int]],
               stacks: Mapping[tuple[int, ...], float], title: str) -> str:
    """One HTML page: the flame graph inline and the top functions by their own time."""
    svg = flame_svg(frames, stacks, title).split("\n", 1)[1]  # no XML declaration inside HTML
    own: dict[int, float] = {}
    for stack, ms in stacks.items():
        own[stack[-1]] = own.get(stack[-1], 0.0) + ms
    total = sum(stacks.values()) or 1.0
    rows = []
    for i, ms in sorted(own.items(), key=lambda kv: -kv[1])[:30]:
        name, file, line = frames[i]
        where = f"{file}:{line}" if file else ""
        rows.append(f"<tr><td>{_xml(name)}</td><td>{_xml(where)}</td>"
                    f"<td>{ms:.1f}</td><td>{100 * ms / total:.1f}%</td></tr>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{_xml(title)}</title>"
        "<style>body{font-family:monospace;margin:1em}table{border-collapse:collapse}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}</style>"
        f"</head><body>\n{svg}<h2>By own time</h2><table><tr><th>function</th>"
        "<th>where</th><th>ms</th><th>share</th></tr>" + "".join(rows)
        + "</table></body></html>\n"
    )
