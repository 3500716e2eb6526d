"""``corral``'s entry point: builds the parser (only the verb asked for) and runs the verb.

Each ``_cli`` module registers the verbs of one area; output, exit codes and
JSON errors come from :mod:`corral._cli.output`, which only maps the error tree
of ``_errors``.  ``--json`` after a verb prints exactly one JSON document.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from corral._cli import analytics as _analytics
from corral._cli import core as _core
from corral._cli import daemon as _daemon
from corral._cli import dev as _dev
from corral._cli import docs as _docs
from corral._cli import install as _install
from corral._cli import keys as _keys
from corral._cli import micro as _micro
from corral._cli import pack as _pack
from corral._cli import pdk as _pdk
from corral._cli.output import Command, Parser, SafeStream, run
from corral._errors import UsageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["main"]


class _Skipped:
    """Stands in for the parser of a verb that was not asked for: building one costs ~1 ms."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def _parser(only: str | None = None) -> Parser:
    """The command line; with ``only``, just that verb's parser is really built."""
    p = Parser(prog="corral", description="A secure plugin platform for Python applications.")
    p.add_argument("--home", default=os.environ.get("CORRAL_HOME"), help="the host's home")
    p.add_argument("--workspace", default=None, help="what {workspace} means (default: .)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="verb", parser_class=Parser)

    def verb(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            skipped: argparse.ArgumentParser = _Skipped()  # type: ignore[assignment]
            return skipped
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.set_defaults(fn=fn)
        return sp

    _core.add_verbs(verb)
    _dev.add_verbs(verb)
    _daemon.add_verbs(verb)
    _micro.add_verbs(verb)
    _install.add_verbs(verb)
    _keys.add_verbs(verb)
    _pdk.add_verbs(verb)
    _pack.add_verbs(verb)
    _docs.add_verbs(verb)
    _analytics.add_verbs(verb)
    if only in (None, "config", "secret"):
        # deferred, like faces and registry below: ~10 ms each that `corral list` need not pay
        from corral._cli import config as _config

        _config.register(sub, Parser)
    if only is None:
        # listed for --help only: these verbs parse their own arguments (_registry below)
        for name, help in _SEPARATE_VERBS.items():
            sub.add_parser(name, help=help, description=help, add_help=False)
    return p


#: Verbs served by the registry's own command line (it parses its own arguments),
#: with the one line ``corral --help`` says of each.
_SEPARATE_VERBS = {
    "registry": "run and administer a plugin registry (serve, seed, admin, tuf, trust)",
    "search": "search a registry for plugins",
    "show": "everything a registry knows of one plugin",
    "publish": "validate, pack, sign and upload a plugin to a registry",
    "download": "download a plugin's .corral archive from a registry",
    "yank": "mark a published version yanked: new installs skip it (PEP 592)",
    "unyank": "make a yanked version installable again",
}
_REGISTRY_CLIENT_VERBS = frozenset(_SEPARATE_VERBS) - {"registry"}


_GLOBAL_OPTIONS = ("--home", "--workspace")


def _split_global(argv: list[str]) -> tuple[dict[str, str], str | None, list[str]]:
    """Global options, the verb and the rest, without parsing the verb's arguments.

    ``--home``/``--workspace`` may also come after the verb (up to a ``--``); they
    are taken out of the rest (``registry trust`` keeps its own ``--home``).
    """
    options: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in _GLOBAL_OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    break
                value = argv[i + 1]
                i += 1
            options[name[2:]] = value
        elif not arg.startswith("-"):
            rest = argv[i + 1 :]
            return options, arg, rest if arg == "registry" else _take_global(rest, options)
        else:
            break
        i += 1
    return options, None, []


def _take_global(rest: list[str], options: dict[str, str]) -> list[str]:
    """``rest`` without the global options in it, which go into ``options``."""
    kept: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            kept.extend(rest[i:])
            break
        name, eq, value = arg.partition("=")
        if name in _GLOBAL_OPTIONS and (eq or i + 1 < len(rest)):
            if not eq:
                value = rest[i + 1]
                i += 1
            options[name[2:]] = value
        else:
            kept.append(arg)
        i += 1
    return kept


def _registry(options: dict[str, str], verb: str, rest: list[str]) -> int:
    from corral._cli import registry as _registry_cli

    if verb == "registry":
        if "home" in options and not any(a.split("=")[0] == "--data" for a in rest):
            rest = [*rest, "--data", os.path.join(options["home"], "registry")]
        return _registry_cli.registry_main(rest)
    return _registry_cli.client_main(verb, rest)


#: Verbs that run no plugin code: they skip reading the secrets to scrub and the log printer.
_STATIC_VERBS = frozenset({"list", "schema", "doctor", "secret", "config", "keys", "new", "pack",
                           "docs", "registry", "daemon", *_REGISTRY_CLIENT_VERBS,
                           "recommend", "analytics"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Everything printed goes through :func:`corral._model.text.neutralise`; the
    verbs that may run plugin code also scrub the home's secret values.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options, verb, rest = _split_global(argv)
    if verb is not None:  # the global options first, wherever they were given
        argv = [*(f"--{k}={v}" for k, v in options.items()), verb, *rest]
    if verb is None or verb in _STATIC_VERBS:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = SafeStream(out), SafeStream(err)
        try:
            return _main(argv, options, verb, rest)
        finally:
            sys.stdout, sys.stderr = out, err
    from corral._cli import faces as _faces

    with _faces.faces(options.get("home") or os.environ.get("CORRAL_HOME")):
        return _main(argv, options, verb, rest)


def _main(argv: list[str], options: dict[str, str], verb: str | None, rest: list[str]) -> int:
    if verb == "registry" or verb in _REGISTRY_CLIENT_VERBS:
        return _registry(options, verb, rest)

    def verb_run() -> int:
        try:
            args = _parser(verb).parse_args(argv)
        except UsageError:
            if verb is None:
                raise
            args = _parser().parse_args(argv)  # the full parser says what is wrong
        if args.version:
            from corral._version import __version__

            print(f"corral {__version__}")
            return 0
        if not getattr(args, "fn", None):
            raise UsageError("a verb is needed; see corral --help")
        return int(args.fn(args))

    return run(verb_run, "--json" in argv)
