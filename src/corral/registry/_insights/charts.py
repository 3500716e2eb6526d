"""Time series as self-contained inline SVG for the web pages: no script, no external
reference, every label escaped, so a chart is safe to put straight into a page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Final

__all__ = ["bar_chart", "line_chart"]

_FONT: Final = "font-family=\"system-ui, sans-serif\" font-size=\"11\""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M".replace(".0M", "M")
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:g}"


def line_chart(points: Sequence[tuple[str, float]], *, title: str, width: int = 600,
               height: int = 160, unit: str = "") -> str:
    """An area chart of ``points`` (label, value), oldest first, as an ``<svg>`` element.

    The title and the first and last labels are drawn; every point carries a
    ``<title>`` (shown on hover) with its label and value.
    """
    width, height = max(int(width), 120), max(int(height), 60)
    left, right, top, bottom = 44, 8, 20, 18
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [max(float(v), 0.0) for _, v in points]
    peak = _nice_max(max(values, default=0.0))
    n = len(values)

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / peak

    total = sum(values)
    label = f"{title}: {_number(total)} {unit}".strip() if unit else title
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_esc(label)}">',
        f"<title>{_esc(label)}</title>",
        f'<text x="{left}" y="13" {_FONT} fill="currentColor">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="currentColor" stroke-opacity="0.4"/>',
        f'<text x="{left - 4}" y="{top + 4}" {_FONT} text-anchor="end" '
        f'fill="currentColor">{_esc(_number(peak))}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" {_FONT} text-anchor="end" '
        f'fill="currentColor">0</text>',
    ]
    if n:
        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        base = f"{x(n - 1):.1f},{top + plot_h} {x(0):.1f},{top + plot_h}"
        parts.append(f'<polygon points="{coords} {base}" fill="currentColor" '
                     f'fill-opacity="0.15"/>')
        parts.append(f'<polyline points="{coords}" fill="none" stroke="currentColor" '
                     f'stroke-width="1.5"/>')
        for i, ((name, _), v) in enumerate(zip(points, values, strict=True)):
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="currentColor">'
                         f"<title>{_esc(name)}: {_esc(_number(v))}</title></circle>")
        parts.append(f'<text x="{left}" y="{height - 4}" {_FONT} '
                     f'fill="currentColor">{_esc(points[0][0])}</text>')
        if n > 1:
            parts.append(f'<text x="{left + plot_w}" y="{height - 4}" {_FONT} '
                         f'text-anchor="end" fill="currentColor">{_esc(points[-1][0])}</text>')
    else:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" {_FONT} '
                     f'text-anchor="middle" fill="currentColor">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, width: int = 600,
              bar_height: int = 16) -> str:
    """Horizontal bars (label, value), e.g. version adoption or categories, as ``<svg>``."""
    width = max(int(width), 160)
    label_w, gap, top = min(180, width // 3), 4, 20
    height = top + len(bars) * (bar_height + gap) + 4
    peak = max((max(float(v), 0.0) for _, v in bars), default=0.0) or 1.0
    span = width - label_w - 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<text x="0" y="13" {_FONT} fill="currentColor">{_esc(title)}</text>',
    ]
    for i, (name, value) in enumerate(bars):
        v = max(float(value), 0.0)
        yy = top + i * (bar_height + gap)
        shown = name if len(name) <= 28 else name[:27] + "\u2026"
        parts.append(f'<text x="{label_w - 6}" y="{yy + bar_height - 4}" {_FONT} '
                     f'text-anchor="end" fill="currentColor">{_esc(shown)}</text>')
        parts.append(f'<rect x="{label_w}" y="{yy}" width="{span * v / peak:.1f}" '
                     f'height="{bar_height}" fill="currentColor" fill-opacity="0.35">'
                     f"<title>{_esc(name)}: {_esc(_number(v))}</title></rect>")
        parts.append(f'<text x="{label_w + span * v / peak + 4:.1f}" y="{yy + bar_height - 4}"'
                     f' {_FONT} fill="currentColor">{_esc(_number(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)
