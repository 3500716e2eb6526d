"""The ``quota`` verb: show a plugin's quotas over time with their use, set one in the settings.

Also the text of the cleanup reports ``remove --purge`` and ``gc`` print.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, host_for, table
from corral._errors import UsageError
from corral._model.quotas import SETTABLE, window_name

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs", "print_orphans", "print_purge"]


def _amount(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        if value < 1024 * 1024:
            return f"{value / 1024:.1f} KiB"
        return f"{value / (1024 * 1024):.1f} MiB"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _rows(quotas: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for key, q in quotas.items():
        unit = q["unit"]
        limit = "unbounded" if q["limit"] is None else (
            f"{q['limit']} MiB" if unit == "bytes" else str(q["limit"]))
        rows.append([key, limit, window_name(q["window"]), _amount(q["used"], unit),
                     "MiB" if unit == "bytes" else unit, q["source"]])
    return rows


def cmd_quota(args: argparse.Namespace) -> int:
    with host_for(args) as host:
        if args.action == "show":
            if len(args.rest) > 1:
                raise UsageError("corral quota show takes at most one plugin id")
            ids = args.rest or [i.id for i in host.list(discovered=False)]
            shown = [{"plugin": pid, "quotas": host.quota_usage(pid)} for pid in ids]
            if args.json:
                dump(shown[0] if args.rest else {"plugins": shown})
                return 0
            if not shown:
                print("no plugin is registered")
            for i, entry in enumerate(shown):
                if i:
                    print()
                print(entry["plugin"])
                print(table(_rows(entry["quotas"]),
                            ["quota", "limit", "window", "used", "unit", "source"]))
            return 0
        if args.action == "set":
            if len(args.rest) != 3:
                raise UsageError("usage: corral quota set ID KEY VALUE (VALUE 'unset' removes it)")
            pid, key, raw = args.rest
            value: int | None
            if raw == "unset":
                value = None
            else:
                try:
                    value = int(raw)
                except ValueError:
                    raise UsageError(f"{key} must be a whole number or 'unset', got {raw!r}",
                                     key=key) from None
            entry = host.set_quota(pid, key, value)
            if args.json:
                dump({"plugin": pid, "quota": key, **entry})
            else:
                print(f"{pid} {key} = {'unbounded' if entry['limit'] is None else entry['limit']}"
                      f" ({entry['source']})")
            return 0
    raise UsageError("corral quota needs: show [ID] or set ID KEY VALUE")


def print_purge(report: dict[str, Any]) -> None:
    """The text of ``remove --purge``'s report."""
    removed = report["removed"]
    print(f"purged {report['plugin']}: {report['files']} file(s), "
          f"{_amount(report['bytes'], 'bytes')}")
    for key, counts in removed.items():
        if any(counts.values()):
            what = ", ".join(f"{n} {name}" for name, n in counts.items() if name != "bytes")
            size = f" ({_amount(counts['bytes'], 'bytes')})" if counts.get("bytes") else ""
            print(f"  {key:14s} {what}{size}")


def print_orphans(found: dict[str, Any], *, dry_run: bool) -> None:
    """The text of ``gc``'s orphans: what plugins no longer registered left behind."""
    verb = "would remove" if dry_run else "removed"
    dirs, rows, state = found["dirs"], found["rows"], found["state"]
    if not (dirs or rows or state):
        print("no orphans")
        return
    print(f"{verb} orphans: {len(dirs)} folder(s), {found['files']} file(s), "
          f"{_amount(found['bytes'], 'bytes')}")
    for d in dirs:
        print(f"  {d['dir']}/{d['name']}  {d['files']} file(s), {_amount(d['bytes'], 'bytes')}")
    for pid, counts in rows.items():
        print(f"  rows of {pid}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for pid, counts in state.items():
        print(f"  state of {pid}: {counts['keys']} key(s)")


def add_verbs(verb: VerbAdder) -> None:
    """Register ``quota show|set``."""
    sp = verb("quota", cmd_quota,
              "show a plugin's quotas over time and their use; set one in settings.toml")
    sp.add_argument("action", choices=["show", "set"],
                    help="show [ID]: limit, window, use and source; set ID KEY VALUE")
    sp.add_argument("rest", nargs="*", metavar="ARG",
                    help=f"show: an optional plugin id; set: ID KEY VALUE (KEY one of "
                    f"{', '.join(SETTABLE)}; VALUE a whole number or 'unset')")
