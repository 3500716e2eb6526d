"""The ``corral`` command line: a thin face over :class:`corral.Host`.

Exit codes and JSON errors come from the error tree in ``_errors``; this module
only maps them.  ``--json`` after a verb prints exactly one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ._errors import CorralError, UsageError

if TYPE_CHECKING:
    from ._host import Host

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines.extend("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)
    return "\n".join(lines)


def _host(args: argparse.Namespace) -> Host:
    from ._host import Host

    return Host(home=args.home, workspace=args.workspace)


def cmd_list(args: argparse.Namespace) -> int:
    with _host(args) as host:
        infos = host.list(
            state=args.state, category=args.category, tag=args.tag, capability=args.capability
        )
    if args.json:
        _dump({"plugins": [i.to_dict() for i in infos]})
        return 0
    if not infos:
        print("no plugins")
        return 0
    rows = [
        [i.id, i.version, i.state, i.isolation, i.category or "-", i.description[:50]]
        for i in infos
    ]
    print(_table(rows, ["id", "version", "state", "isolation", "category", "description"]))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _host(args) as host:
        info = host.info(args.id)
    if args.json:
        _dump(info)
        return 0
    print(f"{info['id']} {info['version']}  ({info['state']})")
    print(f"  {info['name']}: {info['description']}")
    for key in ("category", "isolation", "source", "path", "license"):
        if info.get(key):
            print(f"  {key:13s}{info[key]}")
    if info["tags"]:
        print(f"  {'tags':13s}{', '.join(info['tags'])}")
    if info["dependencies"]:
        deps = ", ".join(f"{k} {v}".strip() for k, v in info["dependencies"].items())
        print(f"  {'dependencies':13s}{deps}")
    print("  permissions")
    if not info["permissions"]:
        print("    (none: it may touch nothing outside itself)")
    for key, grants in info["permissions"].items():
        print(f"    {key:12s}{', '.join(grants)}")
    print("  sandbox      " + ", ".join(f"{k}={v}" for k, v in info["sandbox"].items()))
    if info["exports"]:
        print("  exports")
        for name, target in info["exports"].items():
            print(f"    {name:20s}{target}")
    if info["micro"]:
        print("  micro-plugins")
        for m in info["micro"]:
            print(f"    {m['id']:30s}{m['type']}")
    metrics = info.get("metrics", {})
    if metrics.get("calls"):
        wall = metrics["wall_ms"]
        print(
            f"  calls        {metrics['calls']} "
            f"({', '.join(f'{k} {v}' for k, v in metrics['outcomes'].items())}); "
            f"wall ms p50 {wall['p50']} p95 {wall['p95']} p99 {wall['p99']} max {wall['max']}"
        )
    if info.get("error"):
        print(f"  error        {info['error'].get('message')}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with _host(args) as host:
        infos = host.register(*args.paths)
    if args.json:
        _dump({"registered": [i.to_dict() for i in infos]})
    else:
        for i in infos:
            print(f"registered {i.id} {i.version} ({i.isolation})")
    return 0


def _lifecycle(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        with _host(args) as host:
            if verb == "enable":
                result: dict[str, Any] = {"enabled": [host.enable(args.id).id]}
            elif verb == "disable":
                result = {"disabled": host.disable(args.id, cascade=args.cascade)}
            else:
                host.unregister(args.id, purge_data=args.purge)
                result = {"removed": [args.id]}
        if args.json:
            _dump(result)
        else:
            for key, ids in result.items():
                print(f"{key} {', '.join(ids)}")
        return 0

    return run


def cmd_call(args: argparse.Namespace) -> int:
    value: Any = None
    if args.input is not None:
        try:
            value = json.loads(args.input)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--input is not valid JSON: {exc}", input=args.input) from None
    with _host(args) as host:
        result = host.call(args.id, args.export, value)
    if args.json:
        _dump({"result": result})
    elif isinstance(result, str):
        print(result)
    else:
        _dump(result)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    with _host(args) as host:
        report = host.validate(args.path)
    if args.json:
        _dump(report)
    else:
        status = "ok" if report["ok"] else "invalid"
        print(f"{report['plugin'] or args.path}: {status}")
        for err in report["errors"]:
            print(f"  error: {err['message']}")
        for warn in report["warnings"]:
            print(f"  warning: {warn['key']}: {warn['message']}")
    if not report["ok"]:
        first = report["errors"][0]
        return 4 if first.get("code") in ("permission_denied", "policy_denied") else 3
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ._sandboxing import sandbox_problem

    rows: list[dict[str, Any]] = []
    try:
        from ._sandbox._kernel import probe

        feats = probe()
        rows = [r._asdict() for r in feats.describe()]
    except ImportError:
        pass
    levels = {
        level: (sandbox_problem(level) or "ok") for level in ("limited", "strict")
    }
    levels["none"] = "ok"
    if args.json:
        _dump({"features": rows, "isolation": levels})
        return 0
    for row in rows:
        status = "yes" if row["available"] else "NO"
        print(f"{row['name']:22s}{status:5s}{row['detail']}")
    for level, status in levels.items():
        print(f"isolation {level:22s}{status}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ._schema import manifest_json_schema

    _dump(manifest_json_schema())
    return 0


def _parser() -> _Parser:
    p = _Parser(prog="corral", description="A secure plugin platform for Python applications.")
    p.add_argument("--home", default=os.environ.get("CORRAL_HOME"), help="the host's home")
    p.add_argument("--workspace", default=None, help="what {workspace} means (default: .)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="verb", parser_class=_Parser)

    def verb(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> _Parser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.set_defaults(fn=fn)
        return sp

    sp = verb("list", cmd_list, "list plugins, registered and discovered")
    sp.add_argument("--state")
    sp.add_argument("--category")
    sp.add_argument("--tag")
    sp.add_argument("--capability")
    verb("info", cmd_info, "everything about one plugin").add_argument("id")
    verb("add", cmd_add, "register plugin directories or .corral archives").add_argument(
        "paths", nargs="+"
    )
    verb("enable", _lifecycle("enable"), "enable a plugin and its dependencies").add_argument("id")
    sp = verb("disable", _lifecycle("disable"), "disable a plugin")
    sp.add_argument("id")
    sp.add_argument("--cascade", action="store_true", help="disable dependents first")
    sp = verb("remove", _lifecycle("remove"), "unregister a plugin and delete its copy")
    sp.add_argument("id")
    sp.add_argument("--purge", action="store_true", help="also delete its data")
    sp = verb("call", cmd_call, "run an export or micro-plugin and print its result")
    sp.add_argument("id")
    sp.add_argument("export")
    sp.add_argument("--input", help="the input, as JSON")
    verb("validate", cmd_validate, "check a plugin without registering it").add_argument("path")
    verb("doctor", cmd_doctor, "what isolation this machine can enforce")
    verb("schema", cmd_schema, "print the JSON Schema of corral.toml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = _parser().parse_args(argv)
        if args.version:
            from ._version import __version__

            print(f"corral {__version__}")
            return 0
        if not getattr(args, "fn", None):
            raise UsageError("a verb is needed: corral {list,info,add,enable,disable,remove,"
                             "call,validate,doctor,schema} (see corral --help)")
        return int(args.fn(args))
    except CorralError as exc:
        _report(exc.to_dict(), exc.exit_code, as_json)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the host must say what broke, not dump a traceback
        _report({"code": "error", "message": f"{type(exc).__name__}: {exc}"}, 1, as_json)
        return 1


def _report(error: dict[str, Any], code: int, as_json: bool) -> None:
    if as_json:
        _dump({"error": error})
    else:
        print(f"corral: error: {error['message']}", file=sys.stderr)
        tb = error.get("traceback")
        if tb:
            print(tb.rstrip(), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
