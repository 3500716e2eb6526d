"""Markdown from strangers (READMEs, reviews, posts) rendered to HTML that cannot act.

markdown-it-py renders with raw HTML off; nh3 then keeps only an allowlist of
tags and attributes, links to ``http``, ``https`` and ``mailto`` (marked
``rel="nofollow ugc noopener"``), no ``style`` attribute, no images (a page
shows no picture a stranger points at), and bidi and control characters shown
as visible escapes so that no text reorders what the reader sees.
"""

from __future__ import annotations

import re
from typing import Final

import nh3
from markdown_it import MarkdownIt

from corral._model.text import UNSAFE

__all__ = ["ALLOWED_TAGS", "clean_text", "render_markdown"]

ALLOWED_TAGS: Final = frozenset({
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "kbd", "li", "ol", "p", "pre",
    "s", "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr",
    "ul",
})
_ATTRIBUTES: Final = {"a": {"href", "title"}, "abbr": {"title"}, "td": {"align"},
                      "th": {"align"}, "ol": {"start"}}
_SCHEMES: Final = frozenset({"http", "https", "mailto"})
#: Longest Markdown text rendered (longer is cut, with a note).
MAX_MARKDOWN: Final = 200_000
_UNSAFE_RE: Final = re.compile(UNSAFE[:-1] + "]")
_MD: Final = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_MD.enable("strikethrough")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x20 else f"\\u{code:04x}"


def clean_text(text: object) -> str:
    """``text`` with bidi and control characters shown as escapes (tab and newline kept)."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE_RE.sub(lambda m: m.group() if m.group() in "\t\n" else _escape(m), s)


def render_markdown(text: str) -> str:
    """Sanitised HTML for Markdown ``text`` (safe to insert into a page as is)."""
    if len(text) > MAX_MARKDOWN:
        text = text[:MAX_MARKDOWN] + "\n\n*(cut: the text is too long to show whole)*"
    html = _MD.render(clean_text(text))
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
        url_schemes=set(_SCHEMES),
        link_rel="nofollow ugc noopener",
        strip_comments=True,
    )
