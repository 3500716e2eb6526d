"""Core verbs: list, info, add, enable, disable, remove, call, validate, doctor, schema."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from corral._cli.daemon import stop_idle
from corral._cli.output import VerbAdder, dump, host_for, json_input, print_result, table
from corral._cli.quota import print_purge
from corral._model.text import neutralise
from corral._runtime.budgets import usage_line

__all__ = ["add_verbs"]


def cmd_list(args: argparse.Namespace) -> int:
    with host_for(args) as host:
        infos = host.list(
            state=args.state, category=args.category, tag=args.tag, capability=args.capability
        )
    if args.json:
        dump({"plugins": [i.to_dict() for i in infos]})
        return 0
    if not infos:
        print("no plugins")
        return 0
    rows = [
        [i.id, i.version + (" (linked)" if i.linked else ""), i.state, i.isolation,
         i.category or "-", i.description]
        for i in infos
    ]
    print(table(rows, ["id", "version", "state", "isolation", "category", "description"],
                fit_last=True))
    return 0


def _ms(value: Any) -> str:
    """Milliseconds for people: one decimal (``--json`` keeps the exact number)."""
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def cmd_info(args: argparse.Namespace) -> int:
    with host_for(args) as host:
        info = host.info(args.id)
    if args.json:
        dump(info)
        return 0

    def one(text: str) -> str:  # the manifest's own words, kept to one line
        return neutralise(text, one_line=True)

    print(f"{info['id']} {info['version']}  ({info['state']})")
    print(f"  {one(info['name'])}: {one(info['description'])}")
    for key in ("category", "isolation", "source", "path", "license"):
        if info.get(key):
            print(f"  {key:13s}{one(info[key])}")
    if info.get("linked"):
        print(f"  {'linked':13s}yes: it runs from {one(info['path'])}")
    if info["tags"]:
        print(f"  {'tags':13s}{one(', '.join(info['tags']))}")
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
            f"wall ms p50 {_ms(wall['p50'])} p95 {_ms(wall['p95'])} p99 {_ms(wall['p99'])} "
            f"max {_ms(wall['max'])}"
        )
    if info.get("budgets"):
        print("  budgets")
        for key, entry in info["budgets"].items():
            print(f"    {key:13s}{usage_line(entry)}")
    if info.get("error"):
        print(f"  error        {neutralise(info['error'].get('message'), info['id'])}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with host_for(args) as host:
        before = {i.id: i.version for i in host.list(discovered=False)}
        infos = host.register(*args.paths, link=args.link)  # sandboxed plugins are import-probed
    if args.json:
        dump({"registered": [i.to_dict() for i in infos]})
    else:
        for i in infos:
            done = ("registered" if i.id not in before else
                    "unchanged" if before[i.id] == i.version else "upgraded")
            how = ", linked" if i.linked else ""
            print(f"{done} {i.id} {i.version} ({i.isolation}{how})")
    return 0


def _lifecycle(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        last = False
        with host_for(args) as host:
            if verb == "enable":
                result: dict[str, Any] = {"enabled": [host.enable(args.id).id]}
            elif verb == "disable":
                result = {"disabled": host.disable(args.id, cascade=args.cascade)}
            else:
                purged = host.unregister(args.id, purge_data=args.purge)
                result = {"removed": [args.id]}
                if purged is not None:
                    result["purged"] = purged
                last = not host.list(discovered=False)
        if verb == "remove" and last:
            stop_idle(args)  # nothing left to run: the idle fork-server daemon goes too
        if args.json:
            dump(result)
        else:
            purged = result.pop("purged", None)
            for key, ids in result.items():
                print(f"{key} {', '.join(ids)}")
            if purged is not None:
                print_purge(purged)
        return 0

    return run


def cmd_call(args: argparse.Namespace) -> int:
    value = json_input(args)
    with host_for(args) as host:
        result = host.call(args.id, args.export, value)
    print_result(args, result, args.id)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from corral._errors import UsageError

    if args.json and args.sarif is not None:
        raise UsageError("validate: choose --json or --sarif, not both")
    with host_for(args) as host:
        report = host.validate(args.path, sandbox=not args.no_sandbox)
    if args.sarif is not None:
        import json

        from corral._pdk.sarif import to_sarif

        text = json.dumps(to_sarif(report), ensure_ascii=False, indent=2) + "\n"
        if args.sarif == "-":
            print(text, end="")
        else:
            from pathlib import Path

            Path(args.sarif).write_text(text, encoding="utf-8")
    elif args.json:
        dump(report)
    if not args.json and args.sarif != "-":
        _print_report(args, report)
    if not report["ok"]:
        first = report["errors"][0]
        return 4 if first.get("code") in ("permission_denied", "policy_denied") else 3
    return 0


def _print_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The text form of a validate report: one section per kind of issue."""
    status = "ok" if report["ok"] else "invalid"
    source = neutralise(report["plugin"] or args.path, one_line=True)
    print(f"{source}: {status}")
    for section in ("errors", "security", "performance", "warnings", "suggestions"):
        issues = [i for i in report.get(section, ()) if "see" not in i]
        if not issues:
            continue
        print(f"  {section}")
        for issue in issues:
            rule = f"{issue['rule']} " if "rule" in issue else ""
            where = f"{issue['key']}: " if section == "warnings" and issue.get("key") else ""
            text = f"{issue.get('level', 'error')}: {rule}{where}{issue['message']}"
            print(f"    {neutralise(text, source)}")
    m = report.get("metrics") or {}
    if m:
        ms = "not measured" if m.get("import_ms") is None else f"{m['import_ms']:.1f} ms"
        print(f"  metrics: {m.get('files', 0)} files, {m.get('bytes', 0)} bytes, import {ms}")


def cmd_doctor(args: argparse.Namespace) -> int:
    from corral._services.sandboxed import sandbox_problem

    rows: list[dict[str, Any]] = []
    try:
        from corral._sandbox.kernel import probe, protections

        feats = probe()
        rows = [r._asdict() for r in [*feats.describe(), *protections(feats)]]
    except ImportError:
        pass
    levels = {
        level: (sandbox_problem(level) or "ok") for level in ("limited", "strict")
    }
    levels["none"] = "ok"
    accounting = _accounting()
    if args.json:
        dump({"features": rows, "isolation": levels, "accounting": accounting})
        return 0
    for row in rows:
        status = "yes" if row["available"] else "NO"
        print(f"{row['name']:22s}{status:5s}{row['detail']}")
    status = "yes" if accounting["exact"] else "NO"
    print(f"{'cgroup accounting':22s}{status:5s}{accounting['detail']}")
    for level, status in levels.items():
        print(f"isolation {level:22s}{status}")
    return 0


def _accounting() -> dict[str, Any]:
    """How sandboxed workers are measured: which cgroup version and controllers, or why
    only their rusage (approximate).
    """
    try:
        from corral._sandbox.cgroups import detect_accounting
        from corral._sandbox.forkserver.settings import forkserver_env
    except ImportError:  # pragma: no cover - not Linux
        found, why = None, "no cgroups on this platform"
    else:
        found, why = detect_accounting()
        if forkserver_env("ACCOUNTING") == "0":
            found, why = None, "turned off by CORRAL_FORKSERVER_ACCOUNTING=0"
    if found is None:
        return {"exact": False, "version": None, "controllers": [],
                "detail": f"{why}; workers are measured by their rusage (approximate)"}
    return {"exact": True, "version": found.version, "controllers": list(found.controllers),
            "detail": found.describe() + "; in-process plugins: approximate"}


def cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from corral._model.manifest_doc import manifest_markdown

        print(manifest_markdown(), end="")
        return 0
    from corral._model.schema import manifest_json_schema

    dump(manifest_json_schema(), indent=2 if args.indent else None)
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register the core verbs: plugins and their lifecycle, calls, validation, doctor."""
    sp = verb("list", cmd_list, "list plugins, registered and discovered")
    sp.add_argument("--state")
    sp.add_argument("--category")
    sp.add_argument("--tag")
    sp.add_argument("--capability")
    verb("info", cmd_info, "everything about one plugin").add_argument("id")
    sp = verb("add", cmd_add, "register plugin directories or .corral archives")
    sp.add_argument("paths", nargs="+")
    sp.add_argument("--link", action="store_true",
                    help="register directories where they are (no copy): edits take effect")
    verb("enable", _lifecycle("enable"), "enable a plugin and its dependencies").add_argument("id")
    sp = verb("disable", _lifecycle("disable"), "disable a plugin")
    sp.add_argument("id")
    sp.add_argument("--cascade", action="store_true", help="disable dependents first")
    sp = verb("remove", _lifecycle("remove"), "unregister a plugin and delete its copy")
    sp.add_argument("id")
    sp.add_argument("--purge", action="store_true",
                    help="also delete its data, cache, state, metrics, subscriptions and quota "
                    "usage, and report what was removed")
    sp = verb("call", cmd_call, "run an export or micro-plugin and print its result")
    sp.add_argument("id")
    sp.add_argument("export")
    sp.add_argument("--input", help="the input, as JSON")
    sp = verb("validate", cmd_validate, "manifest, security scan and performance lint of a plugin")
    sp.add_argument("path")
    sp.add_argument("--sarif", nargs="?", const="-", metavar="FILE",
                    help="print SARIF 2.1.0 (or write it to FILE, text report on stdout)")
    sp.add_argument("--no-sandbox", action="store_true",
                    help="do not import the plugin (static checks only)")
    verb("doctor", cmd_doctor, "what isolation this machine can enforce")
    sp = verb("schema", cmd_schema, "print the JSON Schema of corral.toml (or its reference)")
    sp.add_argument("--markdown", action="store_true",
                    help="print the Markdown reference of every key (docs/manifest.md)")
    sp.add_argument("--indent", action="store_true",
                    help="indent the JSON (as docs/corral.schema.json is)")
