"""The one output module of every command line: parser, JSON, errors, exit codes, tables.

Every verb (the host's, config/secret, the registry's) parses with :class:`Parser`,
prints JSON with :func:`dump` and runs under :func:`run`, which maps a
:class:`CorralError` to its exit code and ``{"error": {...}}`` document, prints
errors with one ``corral: error:`` prefix and leaves quietly on a broken pipe.
Every byte printed goes through :class:`SafeStream`, which applies
:func:`corral._model.text.neutralise` (and scrubs the home's secret values);
plugin text that may span lines is also given its source's prefix here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TextIO

from corral._errors import CorralError, MissingExtra, UsageError
from corral._model.text import neutralise

if TYPE_CHECKING:
    from corral._host import Host

__all__ = [
    "PREFIX",
    "Command",
    "Parser",
    "SafeStream",
    "VerbAdder",
    "dump",
    "error_document",
    "exit_code",
    "host_for",
    "json_input",
    "last_column_width",
    "print_result",
    "report",
    "run",
    "shorten",
    "table",
]

#: What every error line of the command line starts with, exactly once.
PREFIX = "corral: error: "

Command = Callable[[argparse.Namespace], int]


class VerbAdder(Protocol):
    """Adds a verb (with ``--json``) to the command line and returns its parser."""

    def __call__(self, name: str, fn: Command, help: str) -> argparse.ArgumentParser: ...


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting.

    The message names the verb (``corral info: ...``); the bare command adds
    nothing, as :func:`report` already starts the line with ``corral: error:``.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message if self.prog == "corral" else f"{self.prog}: {message}")


def dump(doc: Any, *, indent: int | None = None) -> None:
    """Print one JSON document (compact unless ``indent``: the C encoder is used then)."""
    import json

    sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=indent) + "\n")


def exit_code(exc: BaseException) -> int:
    """The exit code that reports ``exc``: its class's for a :class:`CorralError`, else 1."""
    return exc.exit_code if isinstance(exc, CorralError) else 1


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"error": {...}}`` for ``exc``; a foreign exception is code ``error``, named by type."""
    if isinstance(exc, CorralError):
        return {"error": exc.to_dict()}
    return {"error": {"code": CorralError.code, "message": f"{type(exc).__name__}: {exc}"}}


def report(exc: BaseException, as_json: bool, *, source: str = "corral",
           indent: int | None = None) -> None:
    """Say what went wrong: the JSON error document, or one ``corral: error:`` line on stderr.

    A plugin's words stay under its id (``source`` otherwise), so no line of
    them can pass for the host's; a message that already starts with the
    prefix does not get it twice.
    """
    doc = error_document(exc)
    if as_json:
        dump(doc, indent=indent)
        return
    error = doc["error"]
    if isinstance(error.get("plugin"), str):
        source = error["plugin"]
    message = str(error.get("message", ""))
    while message.startswith(PREFIX):
        message = message[len(PREFIX):]
    print(PREFIX + neutralise(message, source), file=sys.stderr)
    tb = error.get("traceback")
    if tb and error.get("code") != "permission_denied":  # a denial's headline names the grant
        print(f"  {neutralise(source, one_line=True)}| {neutralise(str(tb).rstrip(), source)}",
              file=sys.stderr)


def run(fn: Callable[[], int], as_json: bool, *, source: str = "corral",
        indent: int | None = None) -> int:
    """Run a verb; returns its exit code, or the one of the error it raised.

    Output is flushed here, so that a reader that went away (``corral search x
    | head -1``) ends the command quietly, with the exit code it had so far
    (0 when the verb itself did not fail), rather than with a traceback.
    """
    code = 0
    try:
        try:
            code = fn()
        except CorralError as exc:
            code = exc.exit_code
            report(exc, as_json, source=source, indent=indent)
        except KeyboardInterrupt:
            code = 130
        except BrokenPipeError:
            raise
        except ImportError as exc:  # an optional part left out: say which extra brings it
            missing = MissingExtra.from_import(exc)
            code = exit_code(exc) if missing is None else missing.exit_code
            report(exc if missing is None else missing, as_json, source=source, indent=indent)
        except Exception as exc:  # the host must say what broke, not dump a traceback
            code = exit_code(exc)
            report(exc, as_json, source=source, indent=indent)
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_gone()
    return code


def _reader_gone() -> None:
    """stdout's reader closed the pipe: what is left unwritten goes nowhere, quietly."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)  # the interpreter's last flush must not fail again
        os.close(devnull)
    except (OSError, ValueError):
        pass


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


#: The narrowest a fitted last column gets, however narrow the terminal.
_MIN_LAST = 20


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending with ``…`` when it was cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def last_column_width(used: int) -> int:
    """What is left of the terminal's width (``$COLUMNS``, else 80) after ``used`` characters."""
    import shutil

    return max(shutil.get_terminal_size().columns - used, _MIN_LAST)


def table(rows: list[list[str]], headers: list[str], *, fit_last: bool = False) -> str:
    """Rows as columns aligned under upper-case headers (cells kept to one line each).

    With ``fit_last``, the last column (a description) is cut with ``…`` to fit
    the terminal's width.
    """
    rows = [[neutralise(c, one_line=True) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if fit_last and headers:
        room = last_column_width(sum(widths[:-1]) + 2 * (len(headers) - 1))
        rows = [[*row[:-1], shorten(row[-1], room)] for row in rows]
        widths[-1] = min(widths[-1], max(room, len(headers[-1])))
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
