"""Checks on what people write: names, passwords, titles and Markdown bodies.

Bodies are stored exactly as written (Markdown, raw): pages escape and sanitise
on output.  What is refused at the door: NUL and C0/C1 controls (tab and newline
aside in bodies), bidi embedding/override/isolate controls in one-line fields (a
title that reads backwards), empty text and text over the bound.
"""

from __future__ import annotations

import re
from typing import Final

from corral._errors import UsageError

from .._names import control_char_error

__all__ = ["BIDI_RE", "MAX_BODY", "MAX_NOTE", "MAX_TITLE", "check_body", "check_line",
           "check_password", "check_user_name"]

MAX_TITLE: Final = 200
MAX_BODY: Final = 20_000
MAX_NOTE: Final = 1_000
#: Bidi embeddings, overrides and isolates (the "Trojan Source" characters).
BIDI_RE: Final = re.compile("[\u202a-\u202e\u2066-\u2069]")
_C1_RE: Final = re.compile("[\u0080-\u009f]")
_USER_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$")


def check_user_name(name: str) -> str:
    """A user name: 1-40 lowercase letters, digits, ``-`` or ``_`` (no look-alike tricks)."""
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise UsageError(f"user name {name!r} must be 1-40 lowercase letters, digits, "
                         "'-' or '_', starting and ending with a letter or digit", field="name")
    return name


def check_password(password: str) -> str:
    """A password of 8-200 characters without control characters."""
    if not isinstance(password, str) or not 8 <= len(password) <= 200:
        raise UsageError("a password has 8 to 200 characters", field="password")
    if control_char_error(password, "password") is not None:
        raise UsageError("a password may not contain control characters", field="password")
    return password


def check_line(value: str, field: str, limit: int = MAX_TITLE) -> str:
    """One line of text (a title): not blank, bounded, no controls, no bidi controls."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{field} may not be empty", field=field)
    if len(value) > limit:
        raise UsageError(f"{field} is {len(value)} characters, the limit is {limit}",
                         field=field)
    bad = control_char_error(value, field) or _c1(value, field)
    if bad is not None:
        raise UsageError(bad[1], field=field)
    if BIDI_RE.search(value):
        raise UsageError(f"{field} may not contain bidirectional override characters",
                         field=field)
    return value.strip()


def check_body(value: str, field: str = "body", limit: int = MAX_BODY,
               *, allow_empty: bool = False) -> str:
    """Markdown text, stored raw: bounded, no controls but tab and newline."""
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise UsageError(f"{field} may not be empty", field=field)
    if len(value) > limit:
        raise UsageError(f"{field} is {len(value)} characters, the limit is {limit}",
                         field=field)
    bad = control_char_error(value, field, free_text=True) or _c1(value, field)
    if bad is not None:
        raise UsageError(bad[1], field=field)
    return value


def _c1(value: str, field: str) -> tuple[str, str] | None:
    found = _C1_RE.search(value)
    if found is None:
        return None
    return field, (f"{field} contains the control character U+{ord(found.group()):04X} "
                   f"at offset {found.start()}; control characters are not allowed")
