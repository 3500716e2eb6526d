"""Charts drawn on the server as small inline SVG: no script, no style attribute, no fetch.

Labels are escaped here, so a chart is safe to insert into a page as is.  The
page's stylesheet colours them through classes (``chart-line``, ``chart-bar``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Final

__all__ = ["bar_chart", "line_chart"]

_W: Final = 600
_H: Final = 160
_PAD: Final = 28


def _num(value: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}".replace(".0", "")
    return f"{value:.0f}"


def line_chart(points: Sequence[tuple[str, float]], *, title: str) -> str:
    """A line over ``(label, value)`` points in order, the first and last labels shown."""
    label = escape(title)
    if not points:
        return (f'<svg class="chart" viewBox="0 0 {_W} 40" role="img" aria-label="{label}">'
                f'<title>{label}</title><text x="8" y="24" class="chart-text">'
                "No data yet</text></svg>")
    top = max(v for _, v in points) or 1.0
    n = len(points)
    inner_w, inner_h = _W - 2 * _PAD, _H - 2 * _PAD
    xy = [
        (_PAD + (inner_w * i / (n - 1) if n > 1 else inner_w / 2),
         _H - _PAD - inner_h * v / top)
        for i, (_, v) in enumerate(points)
    ]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="chart-dot">'
        f"<title>{escape(lbl)}: {_num(v)}</title></circle>"
        for (x, y), (lbl, v) in zip(xy, points, strict=True)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{label}">'
        f"<title>{label}</title>"
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" '
        'class="chart-axis"/>'
        f'<text x="{_PAD}" y="{_PAD - 10}" class="chart-text">{_num(top)}</text>'
        f'<polyline points="{path}" class="chart-line" fill="none"/>{dots}'
        f'<text x="{_PAD}" y="{_H - 8}" class="chart-text">{escape(points[0][0])}</text>'
        f'<text x="{_W - _PAD}" y="{_H - 8}" class="chart-text" text-anchor="end">'
        f"{escape(points[-1][0])}</text></svg>"
    )


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str) -> str:
    """Horizontal bars, one per ``(label, value)``, each with its value written beside it."""
    label = escape(title)
    top = max((v for _, v in bars), default=0) or 1.0
    row = 22
    height = row * len(bars) + 8
    parts = [f'<svg class="chart chart-bars" viewBox="0 0 {_W} {height}" role="img" '
             f'aria-label="{label}"><title>{label}</title>']
    for i, (name, value) in enumerate(bars):
        y = 4 + i * row
        width = (_W - 160) * value / top
        parts.append(
            f'<text x="0" y="{y + 15}" class="chart-text">{escape(name)}</text>'
            f'<rect x="70" y="{y + 3}" width="{width:.1f}" height="{row - 8}" '
            'class="chart-bar"/>'
            f'<text x="{76 + width:.1f}" y="{y + 15}" class="chart-text">{_num(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
