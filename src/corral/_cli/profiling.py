"""The ``profile`` and ``suggest`` verbs: an export's sampled profile, advice from its calls.

``corral profile ID [EXPORT]`` calls the export again and again with ``--input`` for
``--seconds`` under ``Host.monitor`` (a separate process cannot sample the calls of
another application's host: that is what ``Host.monitor`` is for) and writes a flame
graph or speedscope JSON. ``corral suggest ID`` reads the host database only.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, host_for, json_input, table
from corral._errors import UsageError

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs"]

_FORMATS = ("svg", "html", "speedscope")


def _export_of(host: Any, plugin_id: str, export: str | None) -> str:
    if export is not None:
        return export
    exports = sorted(host.catalog.row(plugin_id).manifest.get("exports", {}))
    if len(exports) != 1:
        raise UsageError(f"corral profile: name the export of {plugin_id} to call "
                         f"(one of: {', '.join(exports) or 'none'})", plugin_id=plugin_id)
    return str(exports[0])


def cmd_profile(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.seconds > 3600:
        raise UsageError(f"corral profile: --seconds must be in (0, 3600], got {args.seconds}")
    if args.format is not None and args.output is None:
        raise UsageError("corral profile: --format needs -o FILE")
    value = json_input(args)
    with host_for(args) as host:
        export = _export_of(host, args.id, args.export)
        calls = 0
        with host.monitor(args.id, interval=args.interval_ms / 1000.0) as report:
            end = time.perf_counter() + args.seconds
            while True:
                host.call(args.id, export, value)
                calls += 1
                if time.perf_counter() >= end:
                    break
        written = report.write(args.output, args.format) if args.output else None
    doc = report.to_dict()
    doc.update(export=export, calls=calls, output=args.output, format=written)
    if args.json:
        dump(doc)
        return 0
    print(f"{args.id} {export}: {calls} calls in {doc['seconds']:.1f} s, "
          f"{doc['samples']} samples ({doc['sampled_ms']:.0f} ms in the plugin), "
          f"host services {100 * doc['broker_share']:.1f}%, I/O {100 * doc['io_share']:.1f}%")
    rows = [[f["function"], f"{f['file']}:{f['line']}" if f["file"] else "",
             f"{f['self_ms']:.1f}", f"{100 * f['self_share']:.1f}%", f"{f['total_ms']:.1f}"]
            for f in doc["functions"][:15]]
    if rows:
        print(table(rows, ["function", "where", "self ms", "self", "total ms"]))
    if written:
        print(f"wrote {written} to {args.output}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    with host_for(args) as host:
        found = host.suggest(args.id)
    if args.json:
        dump({"plugin": args.id, "suggestions": found})
        return 0
    if not found:
        print(f"{args.id}: nothing to suggest from its recorded calls")
        return 0
    for s in found:
        print(f"[{s['rule']}] {s['title']}")
        for key, value in s["figures"].items():
            print(f"    {key}: {value}")
        print(f"  → {s['advice']}")
        if s.get("diff"):
            print("    " + s["diff"].rstrip("\n").replace("\n", "\n    "))
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``profile`` and ``suggest``."""
    sp = verb("profile", cmd_profile,
              "sample an export's calls and write a flame graph or speedscope profile")
    sp.add_argument("id")
    sp.add_argument("export", nargs="?", help="the export to call (default: its only one)")
    sp.add_argument("--input", help="the input of every call, as JSON")
    sp.add_argument("--seconds", type=float, default=5.0,
                    help="how long to keep calling it (at least one call)")
    sp.add_argument("-o", "--output", metavar="FILE",
                    help="write the profile here (.svg, .html, else speedscope JSON)")
    sp.add_argument("--format", choices=_FORMATS, help="the format of -o FILE")
    sp.add_argument("--interval-ms", type=float, default=5.0, help="time between samples")
    sp = verb("suggest", cmd_suggest,
              "bottlenecks and limit suggestions from a plugin's recorded calls")
    sp.add_argument("id")
