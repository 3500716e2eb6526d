"""Output helpers shared by the verbs: one JSON document, aligned tables, inputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from corral._errors import UsageError

if TYPE_CHECKING:
    from corral._host import Host

__all__ = ["Parser", "VerbAdder", "dump", "host_for", "json_input", "print_result", "table"]

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


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Rows as columns aligned under upper-case headers."""
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


def print_result(args: argparse.Namespace, result: Any) -> None:
    """A call's result: ``{"result": ...}`` with --json, else text or pretty JSON."""
    if args.json:
        dump({"result": result})
    elif isinstance(result, str):
        print(result)
    else:
        dump(result, indent=2)
