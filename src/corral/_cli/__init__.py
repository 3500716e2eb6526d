"""The ``corral`` command line: a thin face over the library.

Each module here registers the verbs of one area.  Exit codes and JSON errors
come from the error tree in ``_errors``; this package only maps them.
``--json`` after a verb prints exactly one JSON document.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from .._errors import CorralError, UsageError
from ._output import Command, Parser, dump

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> Parser:
    from . import _core, _micro

    p = Parser(prog="corral", description="A secure plugin platform for Python applications.")
    p.add_argument("--home", default=os.environ.get("CORRAL_HOME"), help="the host's home")
    p.add_argument("--workspace", default=None, help="what {workspace} means (default: .)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="verb", parser_class=Parser)

    def verb(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.set_defaults(fn=fn)
        return sp

    _core.add_verbs(verb)
    _micro.add_verbs(verb)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.version:
            from .._version import __version__

            print(f"corral {__version__}")
            return 0
        if not getattr(args, "fn", None):
            raise UsageError("a verb is needed; see corral --help")
        return int(args.fn(args))
    except CorralError as exc:
        _report(exc.to_dict(), as_json)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the host must say what broke, not dump a traceback
        _report({"code": "error", "message": f"{type(exc).__name__}: {exc}"}, as_json)
        return 1


def _report(error: dict[str, Any], as_json: bool) -> None:
    if as_json:
        dump({"error": error})
    else:
        print(f"corral: error: {error['message']}", file=sys.stderr)
        tb = error.get("traceback")
        if tb:
            print(tb.rstrip(), file=sys.stderr)
