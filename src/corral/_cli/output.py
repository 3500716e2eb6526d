"""Output helpers shared by the verbs: one JSON document, aligned tables, inputs.

Every byte the command line prints goes through :class:`SafeStream`, which
applies :func:`corral._model.text.neutralise` (and scrubs the home's secret values);
plugin text that may span lines is also given its source's prefix here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TextIO

from corral._errors import UsageError
from corral._model.text import neutralise

if TYPE_CHECKING:
    from corral._host import Host

__all__ = [
    "Parser",
    "SafeStream",
    "VerbAdder",
    "dump",
    "host_for",
    "json_input",
    "print_result",
    "table",
]

Command = Callable[[argparse.Namespace], int]


class VerbAdder(Protocol):
    """Adds a verb (with ``--json``) to the command line and returns its parser."""

    def __call__(self, name: str, fn: Command, help: str) -> argparse.ArgumentParser: ...


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def dump(doc: Any, *, indent: int | None = None) -> None:
    """Print one JSON document (compact unless ``indent``: the C encoder is used then)."""
    import json

    sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=indent) + "\n")


class SafeStream:
    """Stands in for stdout or stderr: secret values are redacted, then the text neutralised.

    Only control and bidi characters change, so host text reads as before and
    JSON stays exact (what is left of it in strings are valid ``\\uXXXX`` escapes).
    """

    def __init__(self, raw: TextIO, redact: Callable[[str], str] | None = None) -> None:
        self.raw = raw
        self._redact = redact

    def write(self, text: str) -> int:
        out = text if self._redact is None else self._redact(text)
        self.raw.write(neutralise(out))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Rows as columns aligned under upper-case headers (cells kept to one line each)."""
    rows = [[neutralise(c, one_line=True) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines.extend("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)
    return "\n".join(lines)


def host_for(args: argparse.Namespace) -> Host:
    """The host of ``--home``/``--workspace`` (or ``CORRAL_HOME`` and the current directory)."""
    from corral._host import Host

    return Host(home=args.home, workspace=args.workspace, shared_fork_server=True)


def json_input(args: argparse.Namespace) -> Any:
    """``--input`` parsed as JSON (``None`` when absent)."""
    if args.input is None:
        return None
    import json

    try:
        return json.loads(args.input)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--input is not valid JSON: {exc}", input=args.input) from None


def print_result(args: argparse.Namespace, result: Any, source: str) -> None:
    """A call's result: ``{"result": ...}`` with --json, else text (lines under ``source``)."""
    if args.json:
        dump({"result": result})
    elif isinstance(result, str):
        print(neutralise(result, source))
    else:
        dump(result, indent=2)
