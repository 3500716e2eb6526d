"""The plugin development kit's verbs: new and test."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from corral._cli.output import dump
from corral._errors import MissingExtra, UsageError

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["PYTEST_EXIT", "add_verbs"]

#: pytest's exit code -> ours: 0 passed; 1 tests failed -> 5 (the plugin failed);
#: 2 interrupted -> 130; 3 internal error -> 1; 4 pytest usage error -> 2; 5 no tests -> 3.
PYTEST_EXIT: Final = {0: 0, 1: 5, 2: 130, 3: 1, 4: 2, 5: 3}

_TEST_HELP = (
    "run a plugin's tests (PATH/tests) with the corral.testing fixtures, in a throwaway "
    "host and the real sandbox; arguments after -- go to pytest. Exit 0 all passed, "
    "5 a test failed, 3 no tests found or not a plugin, 2 usage error, 1 pytest broke "
    "or is not installed (pip install 'corral[pdk]')"
)


def _interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _ask(question: str, default: str) -> str:
    shown = f" [{default}]" if default else ""
    try:
        answer = input(f"{question}{shown}: ").strip()
    except EOFError:
        answer = ""
    return answer or default


def cmd_new(args: argparse.Namespace) -> int:
    from corral._pdk.new import DEFAULT_TEMPLATE, ask_missing, create_plugin

    values: dict[str, str | None] = {
        "name": args.name,
        "template": args.template,
        "id": args.id,
        "description": args.description,
        "author": args.author,
        "email": args.email,
        "isolation": args.isolation,
    }
    if _interactive() and not args.json:
        ask_missing(values, _ask)
    created = create_plugin(
        args.name,
        template=values["template"] or DEFAULT_TEMPLATE,
        plugin_id=values["id"],
        directory=args.dir,
        author=values["author"],
        email=values["email"],
        description=values["description"],
        isolation=values["isolation"] or "strict",
        force=args.force,
    )
    if args.json:
        dump(created.to_dict())
        return 0
    print(f"created {created.id} ({created.template}, isolation {created.isolation}) "
          f"in {created.path}")
    for rel in created.files:
        print(f"  {rel}")
    print(f"next: corral validate {created.path} && corral test {created.path}")
    return 0


def _plugin_flag() -> list[str]:
    """``-p corral.testing`` unless pytest loads it anyway (through our ``pytest11`` entry point).

    Naming it twice makes pytest refuse to start ("already registered").
    """
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ["-p", "corral.testing"]
    from importlib.metadata import entry_points

    if any(ep.value == "corral.testing" for ep in entry_points(group="pytest11")):
        return []
    return ["-p", "corral.testing"]


def _require_pytest() -> None:
    """Refuse early, naming the extra, when pytest is missing (not exit 5, "a test failed")."""
    import importlib.util

    try:
        found = importlib.util.find_spec("pytest") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra.of("pytest", "pdk", needed_by="corral test")


def cmd_test(args: argparse.Namespace) -> int:
    import subprocess

    from corral._model.manifest import load_manifest

    _require_pytest()
    if args.path == "--":
        args.path, args.pytest_args = ".", ["--", *(args.pytest_args or [])]
    plugin_dir = Path(args.path).expanduser().absolute()
    if not plugin_dir.is_dir():
        raise UsageError(f"{plugin_dir}: not a plugin directory", path=str(plugin_dir))
    manifest = load_manifest(plugin_dir)  # an invalid manifest is exit 3, before pytest
    tests = plugin_dir / "tests"
    if not tests.is_dir():
        from corral._errors import InvalidPluginError

        raise InvalidPluginError(f"{plugin_dir} has no tests/ folder", plugin_id=manifest.id,
                                 path=str(tests))
    # REMAINDER takes everything after PATH (argparse drops a leading "--"): a --json
    # before any "--" is ours, the rest is pytest's.
    rest = list(args.pytest_args or [])
    if "--" in rest:
        ours, extra = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
    else:
        ours, extra = [], rest
        while extra and extra[0] == "--json":
            ours.append(extra.pop(0))
    for arg in ours:
        if arg != "--json":
            raise UsageError(f"corral test: unrecognized argument {arg!r} (pytest arguments go "
                             "after --)", argument=arg)
        args.json = True
    command = [
        sys.executable, "-m", "pytest", str(tests),
        *_plugin_flag(),
        "--corral-plugin", str(plugin_dir),
        "--rootdir", str(plugin_dir),
        "-p", "no:cacheprovider",
        *extra,
    ]
    env = dict(os.environ)
    env["CORRAL_PLUGIN"] = str(plugin_dir)
    # With --json, pytest's report goes to stderr so that stdout holds one JSON document.
    proc = subprocess.run(command, env=env, check=False,
                          stdout=sys.stderr if args.json else None)
    code = PYTEST_EXIT.get(proc.returncode, 1)
    if args.json:
        dump({"plugin": manifest.id, "path": str(plugin_dir), "ok": code == 0,
              "pytest_exit": proc.returncode, "exit": code})
    return code


def add_verbs(verb: VerbAdder) -> None:
    """Register ``new`` (scaffold a plugin) and ``test`` (run its tests)."""
    sp = verb("new", cmd_new, "create a plugin from a template; asks for what is missing "
              "when run in a terminal")
    templates: dict[str, str] = {}
    if isinstance(sp, argparse.ArgumentParser):  # only when this verb is really built
        from corral._pdk.new import TEMPLATES

        templates = dict(TEMPLATES)
    sp.add_argument("name", help="a human name ('Git Stats') or a plugin id ('acme.git-stats')")
    sp.add_argument("--template", choices=list(templates), default=None,
                    help="; ".join(f"{k}: {v}" for k, v in templates.items())
                    + " (default: command)")
    sp.add_argument("--id", default=None, help="the plugin id (default: NAME if it is an id, "
                    "else local.<slug of NAME>)")
    sp.add_argument("--dir", default=None, help="where to create it (default: ./<last part "
                    "of the id>)")
    sp.add_argument("--author", default=None)
    sp.add_argument("--email", default=None)
    sp.add_argument("--description", default=None)
    sp.add_argument("--isolation", choices=["strict", "limited", "none"], default=None,
                    help="default: strict (the real sandbox)")
    sp.add_argument("--force", action="store_true",
                    help="replace DIR even if it is not empty")
    sp = verb("test", cmd_test, _TEST_HELP)
    sp.add_argument("path", nargs="?", default=".", help="the plugin directory (default: .)")
    sp.add_argument("pytest_args", nargs=argparse.REMAINDER,
                    help="after --: arguments for pytest, e.g. -- -k greet -x")
