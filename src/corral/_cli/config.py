"""The ``corral config`` and ``corral secret`` verbs: thin faces over ``_config``/``_secrets``.

Register them on the main parser with :func:`register`; each verb is a
``cmd_*(args) -> int`` that raises :class:`CorralError` on failure, as the
other verbs do.  No verb ever prints a secret's value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._cli.output import Parser, dump
from corral._errors import CorralError, NotFoundError, UsageError
from corral._model.text import neutralise

if TYPE_CHECKING:
    from corral._services.config import ConfigManager

__all__ = [
    "cmd_config_get",
    "cmd_config_set",
    "cmd_config_show",
    "cmd_config_unset",
    "cmd_config_validate",
    "cmd_secret_list",
    "cmd_secret_rm",
    "cmd_secret_set",
    "register",
]


def _home(args: argparse.Namespace) -> Path:
    if getattr(args, "home", None):
        return Path(args.home).expanduser().absolute()
    from corral._disk.layout import default_home

    return default_home().absolute()


def _manager(args: argparse.Namespace) -> tuple[ConfigManager, dict[str, CorralError]]:
    """The home's config manager with the schemas of its registered plugins.

    A plugin whose schema is broken is reported, not fatal: the others still work.
    """
    from corral._disk.layout import DB_NAME
    from corral._runtime.database import HostDatabase
    from corral._services.config import ConfigManager, load_schema

    home = _home(args)
    manager = ConfigManager(home, env=getattr(args, "env", None))
    broken: dict[str, CorralError] = {}
    if (home / DB_NAME).exists():
        store = HostDatabase(home / DB_NAME)
        try:
            rows = store.all()
        finally:
            store.close()
        for row in rows:
            try:
                manager.add_schema(row.id, load_schema(row.id, row.path))
            except CorralError as exc:
                broken[row.id] = exc
    return manager, broken


def _parse_value(text: str, as_string: bool) -> Any:
    if as_string:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# -- config ---------------------------------------------------------------------------


def cmd_config_get(args: argparse.Namespace) -> int:
    """``corral config get ID [KEY] [--env NAME]``: the effective value."""
    manager, broken = _manager(args)
    if args.id in broken:
        raise broken[args.id]
    value = manager.get(args.id, args.key, env=args.env)
    if args.json:
        dump({"plugin": args.id, "key": args.key, "env": manager.env if args.env is None
               else args.env, "value": value}, indent=2)
    elif isinstance(value, str):  # a default may come from the plugin's schema
        print(neutralise(value, args.id))
    else:
        print(json.dumps(value, indent=2, ensure_ascii=False))
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    """``corral config set ID KEY VALUE [--env NAME] [--string]``: validated, then written."""
    manager, broken = _manager(args)
    if args.id in broken:
        raise broken[args.id]
    manager.set(args.id, args.key, _parse_value(args.value, args.string), env=args.env)
    where = f"env.{args.env}.plugins" if args.env else "plugins"
    if args.json:
        dump({"set": {"plugin": args.id, "key": args.key, "env": args.env,
                       "file": str(manager.path)}}, indent=2)
    else:
        print(f'set {where}."{args.id}".{args.key} in {manager.path}')
    return 0


def cmd_config_unset(args: argparse.Namespace) -> int:
    """``corral config unset ID KEY [--env NAME]``: remove a key from the file."""
    manager, _ = _manager(args)
    if not manager.unset(args.id, args.key, env=args.env):
        raise NotFoundError(f'{args.key} is not set for {args.id} in {manager.path}',
                            plugin_id=args.id, key=args.key)
    if args.json:
        dump({"unset": {"plugin": args.id, "key": args.key, "env": args.env}}, indent=2)
    else:
        print(f"unset {args.key} of {args.id}")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    """``corral config validate [--env NAME]``: exit 2 and name each bad key path."""
    manager, broken = _manager(args)
    errors: dict[str, CorralError] = dict(broken)
    errors.update(manager.validate(env=args.env))
    exit_code = max((e.exit_code for e in errors.values()), default=0)
    if args.json:
        dump({"valid": not errors, "env": args.env or manager.env,
               "errors": {pid: e.to_dict() for pid, e in sorted(errors.items())}}, indent=2)
        return exit_code
    if not errors:
        print(f"config valid ({manager.path}" + (f", env {args.env}" if args.env else "") + ")")
        return 0
    for pid, err in sorted(errors.items()):
        print(f"{pid}: {neutralise(err.message, pid)}", file=sys.stderr)
    return exit_code


def cmd_config_show(args: argparse.Namespace) -> int:
    """``corral config show [--env NAME]``: every plugin's config, with each key's source."""
    manager, broken = _manager(args)
    shown = manager.show(env=args.env)
    for pid, err in broken.items():
        shown["plugins"].setdefault(pid, {})["error"] = err.to_dict()
    if args.json:
        dump(shown, indent=2)
        return 0
    print(f"# {shown['file']}" + (f"  (env {shown['env']})" if shown["env"] else ""))
    if not shown["plugins"]:
        print("no plugin configuration")
    for pid, entry in sorted(shown["plugins"].items()):
        print(f"{pid}")
        for key, source in sorted(entry.get("sources", {}).items()):
            value = _at(entry.get("config", {}), key)
            print(f"  {neutralise(key, one_line=True)} = {json.dumps(value, ensure_ascii=False)}"
                  f"    # {neutralise(source, one_line=True)}")
        if entry.get("error"):
            print(f"  error: {neutralise(entry['error']['message'], pid)}")
    return 0


def _at(config: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


# -- secrets --------------------------------------------------------------------------


def _secrets(args: argparse.Namespace) -> Any:
    from corral._services.secrets import SecretStore

    return SecretStore(_home(args))


def cmd_secret_set(args: argparse.Namespace) -> int:
    """``corral secret set NAME [--from-env VAR]``: the value from a variable, stdin or a prompt.

    Never from the command line, where ``ps`` and the shell history would see it.
    """
    if args.from_env:
        if args.from_env not in os.environ:
            raise UsageError(f"environment variable {args.from_env} is not set")
        value = os.environ[args.from_env]
    elif sys.stdin is not None and not sys.stdin.isatty():
        value = sys.stdin.read()
        if value.endswith("\n"):
            value = value[:-1]
    else:
        import getpass

        value = getpass.getpass(f"value of secret {args.name}: ")
    _secrets(args).set(args.name, value)
    if args.json:
        dump({"secret": {"name": args.name, "set": True}}, indent=2)
    else:
        print(f"secret {args.name} set")
    return 0


def cmd_secret_list(args: argparse.Namespace) -> int:
    """``corral secret list``: names and update times, never values."""
    info = _secrets(args).info()
    if args.json:
        dump({"secrets": info}, indent=2)
    elif not info:
        print("no secrets")
    else:
        for entry in info:
            print(entry["name"])
    return 0


def cmd_secret_rm(args: argparse.Namespace) -> int:
    """``corral secret rm NAME``."""
    if not _secrets(args).remove(args.name):
        raise NotFoundError(f"no secret {args.name!r} is set", secret=args.name)
    if args.json:
        dump({"removed": {"name": args.name}}, indent=2)
    else:
        print(f"secret {args.name} removed")
    return 0


# -- registration ---------------------------------------------------------------------


def register(sub: Any, parser_class: type[argparse.ArgumentParser] = Parser) -> None:
    """Add ``config`` and ``secret`` to the main parser's subparsers action ``sub``."""

    def verb(parent: Any, name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.set_defaults(fn=fn)
        return sp

    config = sub.add_parser("config", help="plugin configuration",
                            description="plugin configuration")
    csub = config.add_subparsers(dest="config_verb", parser_class=parser_class, required=True,
                                 metavar="{get,set,unset,validate,show}")
    sp = verb(csub, "get", cmd_config_get, "print a plugin's effective config or one key")
    sp.add_argument("id")
    sp.add_argument("key", nargs="?")
    sp.add_argument("--env", help="apply this overlay (default: $CORRAL_ENV)")
    sp = verb(csub, "set", cmd_config_set, "set a key in config.toml (validated first)")
    sp.add_argument("id")
    sp.add_argument("key")
    sp.add_argument("value", help="JSON, or else taken as a string")
    sp.add_argument("--env", help="write into this overlay")
    sp.add_argument("--string", action="store_true", help="take VALUE as a string")
    sp = verb(csub, "unset", cmd_config_unset, "remove a key from config.toml")
    sp.add_argument("id")
    sp.add_argument("key")
    sp.add_argument("--env", help="remove from this overlay")
    sp = verb(csub, "validate", cmd_config_validate, "validate every plugin's config")
    sp.add_argument("--env", help="apply this overlay")
    sp = verb(csub, "show", cmd_config_show, "every plugin's config and where each key comes from")
    sp.add_argument("--env", help="apply this overlay")

    secret = sub.add_parser("secret", help="encrypted secrets", description="encrypted secrets")
    ssub = secret.add_subparsers(dest="secret_verb", parser_class=parser_class, required=True,
                                 metavar="{set,list,rm}")
    sp = verb(ssub, "set", cmd_secret_set, "store a secret (value from --from-env, stdin or "
              "a prompt)")
    sp.add_argument("name")
    sp.add_argument("--from-env", metavar="VAR", help="read the value from this variable")
    verb(ssub, "list", cmd_secret_list, "list secret names (never values)")
    verb(ssub, "rm", cmd_secret_rm, "remove a secret").add_argument("name")
