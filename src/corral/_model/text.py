"""Untrusted text made harmless for a terminal: the one rule every face applies.

Text from a plugin (or a registry) may carry escape sequences that clear the
screen, set the window title or write the clipboard, bidi controls that
reorder what the user reads, and newlines that forge a host line such as
``corral: error: ...``.  :func:`neutralise` shows the dangerous characters as
escapes (``\\x1b``, ``\\u202e``) and indents every further line of multi-line
text under a prefix naming its source.  Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["UNSAFE", "neutralise"]

#: C0 controls but tab and newline, DEL, C1 controls, the Arabic letter mark,
#: LRM/RLM, the line and paragraph separators, bidi embeddings, overrides and
#: isolates, and lone surrogates (which a terminal cannot even encode); as a
#: regular expression.  None of them is printable by :meth:`str.isprintable`.
UNSAFE: Final = ("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                 "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@functools.cache
def _pattern(one_line: bool) -> re.Pattern[str]:
    """Compiled on first need: most text is printable and never needs it."""
    return re.compile(UNSAFE[:-1] + "\t\n]" if one_line else UNSAFE)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x20 else f"\\u{code:04x}"


def neutralise(text: object, source: str | None = None, *, one_line: bool = False) -> str:
    """``text`` safe to print: unsafe characters shown as escapes, lines kept in their place.

    ``one_line`` also escapes tab and newline (for a table cell or a name).
    Otherwise, with a ``source`` (a plugin id, a registry), every line after
    the first is indented under ``  <source>| ``, so no line of it can pass
    for a line of the host; without one, newlines are kept as they are (for
    text the host itself laid out).  Escapes in JSON's ``\\uXXXX`` form are
    also valid inside a JSON string, so JSON output stays exact.
    """
    s = text if isinstance(text, str) else str(text)
    if not (s.isprintable() or (not one_line and s.replace("\n", "").replace("\t", "")
                                                .isprintable())):
        s = _pattern(one_line).sub(_escape, s)
    if source is not None and not one_line and "\n" in s:
        s = s.replace("\n", f"\n  {neutralise(source, one_line=True)}| ")
    return s
