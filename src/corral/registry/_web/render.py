"""The pages' Jinja2 environment: templates from this package, every value escaped.

Autoescaping is on for every template; the only HTML that passes unescaped is
what :mod:`.markdown` sanitised and :mod:`.charts` drew (wrapped in
:class:`markupsafe.Markup` here, nowhere else).  Filters: ``num`` (1.2k),
``day`` (the date of an ISO time), ``clean`` (bidi and controls as escapes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from functools import cache
from pathlib import Path
from typing import Any, Final

import jinja2
from markupsafe import Markup

from .markdown import clean_text, render_markdown

__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "asset_version", "environment", "render", "safe_html"]

TEMPLATE_DIR: Final = Path(__file__).with_name("templates")
STATIC_DIR: Final = Path(__file__).with_name("static")


def _num(value: Any) -> str:
    n = float(value or 0)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + unit
    return f"{n:.0f}"


def _day(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, dt.datetime | dt.date):
        return value.strftime("%Y-%m-%d")
    return str(value)[:10]


def safe_html(html: str) -> Markup:
    """Mark HTML this package produced (sanitised Markdown, a chart) as safe to insert."""
    return Markup(html)  # noqa: S704 (only sanitised or self-drawn HTML reaches here)


@cache
def asset_version() -> str:
    """A short digest of the static files: their URLs change whenever they do."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


@cache
def environment() -> jinja2.Environment:
    """The one environment (templates compiled once per process)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["day"] = _day
    env.filters["clean"] = clean_text
    env.filters["markdown"] = lambda text: safe_html(render_markdown(str(text or "")))
    env.globals["asset"] = lambda name: f"/assets/{name}?v={asset_version()}"
    return env


def render(template: str, **context: Any) -> str:
    """Render ``template`` with ``context`` (values escaped unless marked safe)."""
    return environment().get_template(template).render(**context)
