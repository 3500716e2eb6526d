"""The installer's verbs: install, uninstall, update, rollback, history, verify, gc.

Each verb is a thin face over :class:`corral._distribution.install.Installer`.  ``update``
exits 4 when an update was held for wider permissions or for a plugin new to
the home (what could be applied still is), so that scripts notice that someone
must look; ``install`` and ``update`` exit 4 (``policy_denied``) rather than
move an installed plugin to another source or signing key.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from corral._cli.daemon import stop_idle
from corral._cli.output import dump, host_for, table
from corral._cli.quota import print_orphans
from corral._model.text import neutralise

if TYPE_CHECKING:

    from corral._cli.output import VerbAdder
    from corral._distribution.install import Change, Installer

__all__ = ["add_verbs"]


class _Bar:
    """A one-line progress bar with totals on stderr (``\\r`` redraws, a newline when done)."""

    def __init__(self) -> None:
        self._label = ""

    def __call__(self, label: str, done: int, total: int) -> None:
        width = 24
        filled = width if total <= 0 else min(width, width * done // total)
        unit = "B" if label.startswith("download") else ""
        count = f"{done}{unit}/{total}{unit}" if total > 0 else f"{done}{unit}"
        sys.stderr.write(f"\r{label[:40]:40s} [{'#' * filled}{'.' * (width - filled)}] {count}")
        if total > 0 and done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@contextlib.contextmanager
def _installer(args: argparse.Namespace) -> Iterator[Installer]:
    """The installer of ``--home`` with the source of ``--source`` or ``$CORRAL_REGISTRY``."""
    from pathlib import Path

    from corral._disk.layout import default_home
    from corral._distribution.install import Installer, open_source

    home = default_home() if args.home is None else Path(args.home)
    # without either, ``update`` uses the source recorded in corral.lock
    location = getattr(args, "source", None) or os.environ.get("CORRAL_REGISTRY")
    source = open_source(location, home) if location else None
    progress = _Bar() if not args.json and sys.stderr.isatty() else None
    try:
        yield Installer(
            home, source, allow_unsigned=getattr(args, "allow_unsigned", False),
            progress=progress,
        )
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _print_change(doc: dict[str, Any]) -> None:
    for x in doc.get("repaired", []):
        print(f"  ! {x['id']} {x['version']}: store tree did not match its record, re-fetched")
    if not doc["changed"]:
        print(f"nothing to do (generation {doc['generation']})")
        return
    for x in doc["added"]:
        print(f"  + {x['id']} {x['version']}")
    for x in doc["removed"]:
        print(f"  - {x['id']} {x['version']}")
    for x in doc["upgraded"]:
        print(f"  ^ {x['id']} {x['from']} -> {x['to']}")
    for x in doc["downgraded"]:
        print(f"  v {x['id']} {x['from']} -> {x['to']}")
    print(f"generation {doc['generation']}: {doc['action']}")


def _show(args: argparse.Namespace, change: Change) -> int:
    """Print what an operation changed: one JSON document, or lines."""
    if args.json:
        dump(change.to_dict())
    else:
        _print_change(change.to_dict())
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    with _installer(args) as inst:
        change = inst.install(args.ids, from_lock=args.from_lock, enable=args.enable,
                              accept_permissions=args.accept_permissions,
                              allow_source_change=args.allow_source_change)
    return _show(args, change)


def cmd_uninstall(args: argparse.Namespace) -> int:
    with _installer(args) as inst:
        change = inst.uninstall(args.ids)
    return _show(args, change)


def cmd_rollback(args: argparse.Namespace) -> int:
    with _installer(args) as inst:
        change = inst.rollback(args.to)
    return _show(args, change)


def _perms(changes: dict[str, list[str]], brings: list[str] | None = None) -> str:
    parts = [f"+{k}: {', '.join(v)}" for k, v in changes.items()]
    parts += [f"+new plugin: {', '.join(brings)}"] if brings else []
    return "; ".join(parts) or "-"


def cmd_update(args: argparse.Namespace) -> int:
    with _installer(args) as inst:
        result = inst.update(
            args.ids, check=args.check, accept_permissions=args.accept_permissions,
            retry_failed=args.retry_failed, allow_source_change=args.allow_source_change,
        )
    doc = result.to_dict()
    code = 4 if result.held else 0
    if args.json:
        dump(doc)
        return code
    for x in doc["skipped"]:
        print(f"skipped: {x['id']} {x['version']} failed before "
              f"({neutralise(x['reason'], one_line=True)}); "
              "run with --retry-failed to try it again", file=sys.stderr)
    for note in doc["notes"]:
        print(f"note: {neutralise(note, one_line=True)}", file=sys.stderr)
    if not doc["available"]:
        print("everything is up to date")
        return 0
    held = {h["id"] for h in doc["held"]}
    rows = [
        [a["id"], a["installed"] or "-", a["available"],
         _perms(a["permissions"], a.get("new_dependencies")),
         "held" if a["id"] in held else ("available" if args.check else "applied")]
        for a in doc["available"]
    ]
    print(table(rows, ["id", "installed", "available", "new permissions", "status"]))
    wider = sorted(h["id"] for h in doc["held"] if h["installed"] and h["permissions"])
    if wider:
        verb = "asks" if len(wider) == 1 else "ask"
        print(
            f"held: {', '.join(wider)} {verb} for more permissions; review the "
            "difference above and run again with --accept-permissions to apply",
            file=sys.stderr,
        )
    for h in doc["held"]:
        if h.get("new"):
            print(
                f"held: {h['id']} {h['available']} is new to this home (required by "
                f"{', '.join(h['required_by']) or 'the update'}) and asks for "
                f"{neutralise(_perms(h['permissions']), one_line=True)}; none of its code "
                "ran: review it and run again with --accept-permissions to apply",
                file=sys.stderr,
            )
    if doc["applied"]:
        _print_change(doc["applied"])
    return code


def cmd_history(args: argparse.Namespace) -> int:
    with _installer(args) as inst:
        rows = inst.history()
    if args.json:
        dump({"generations": rows})
        return 0
    if not rows:
        print("no generations: nothing was ever installed")
        return 0
    for g in rows:
        mark = "*" if g["current"] else " "
        parts = [f"+{x['id']} {x['version']}" for x in g["added"]]
        parts += [f"-{x['id']} {x['version']}" for x in g["removed"]]
        parts += [f"{x['id']} {x['from']}->{x['to']}" for x in g["upgraded"] + g["downgraded"]]
        print(f"{mark}{g['generation']:>4}  {g['created']}  {g['action']}")
        if parts:
            print("       " + ", ".join(parts))
        if g.get("failed") is not None:
            print(f"       FAILED: {neutralise(g['failed'], one_line=True)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _installer(args) as inst:
        results = inst.verify()
    bad = [r for r in results if r["state"] != "ok"]
    if args.json:
        dump({"plugins": results, "ok": not bad})
    else:
        if not results:
            print("nothing is installed")
        for r in results:
            print(f"{r['id']:30s} {r['version']:10s} {r['state']}")
            for p in r.get("problems", [])[:10]:
                print(f"    {p}")
    return 4 if bad else 0


def cmd_gc(args: argparse.Namespace) -> int:
    if args.dry_run:  # lists what plugins no longer registered left; removes nothing
        with host_for(args) as host:
            found = host.orphans()
        if args.json:
            dump({"removed": [], "pruned": [], "orphans": found, "dry_run": True})
        else:
            print_orphans(found, dry_run=True)
        return 0
    with _installer(args) as inst:
        pruned = [] if args.keep is None else inst.prune(args.keep)
        gone = inst.gc()
    with host_for(args) as host:
        found = host.collect_orphans()
        metrics = host.prune_metrics()
    stop_idle(args)  # gc tidies the home: an idle fork-server daemon goes too
    if args.json:
        dump({"removed": gone, "pruned": pruned, "orphans": found, "metrics_pruned": metrics})
    else:
        if args.keep is not None:
            print(f"pruned {len(pruned)} old generation(s)")
        print(f"removed {len(gone)} unused store tree(s)")
        print_orphans(found, dry_run=False)
        if metrics["metrics"]:
            print(f"deleted {metrics['metrics']} call metric(s) past their retention")
    return 0


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=None,
                   help="a folder of .corral archives or a registry URL (default $CORRAL_REGISTRY)")
    # search/publish call the same URL --registry: the other spelling works, unlisted
    p.add_argument("--registry", dest="source", default=None, help=argparse.SUPPRESS)
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept plugins that carry no signature")
    p.add_argument("--allow-source-change", action="store_true",
                   help="let an installed plugin come from another source or signing key")


def add_verbs(verb: VerbAdder) -> None:
    """Register the installer's verbs."""
    p = verb("install", cmd_install, "install plugins with their dependencies, atomically")
    p.add_argument("ids", nargs="*", metavar="ID[@SPEC]")
    p.add_argument("--from", dest="from_lock", default=None, metavar="LOCK",
                   help="install exactly the versions and hashes of a corral.lock")
    p.add_argument("--enable", action="store_true",
                   help="also enable what was asked for; a plugin that fails to start "
                   "rolls the install back (exit 5)")
    p.add_argument("--accept-permissions", action="store_true",
                   help="install even if a new version brings plugins new to this home")
    _source_args(p)
    p = verb("uninstall", cmd_uninstall, "uninstall plugins (and dependencies nothing needs)")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = verb("update", cmd_update, "list and apply updates (held if they widen permissions)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--check", action="store_true", help="only list available updates")
    p.add_argument("--accept-permissions", action="store_true",
                   help="apply updates that ask for more permissions")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again versions that failed their self-test or start-up before")
    _source_args(p)
    p = verb("rollback", cmd_rollback, "go back to an earlier generation (no network)")
    p.add_argument("--to", type=int, default=None, metavar="N",
                   help="the generation to go back to (default: the nearest earlier one "
                   "that did not fail and differs from the current)")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept unsigned plugins in the generation rolled back to")
    p = verb("history", cmd_history, "generations, newest first, with what changed")
    p = verb("verify", cmd_verify,
             "re-check every installed file against its signed manifest and the trust store")
    p = verb("gc", cmd_gc, "delete store trees no generation refers to, orphans (data of "
             "plugins no longer registered) and metrics past their retention")
    p.add_argument("--dry-run", action="store_true",
                   help="list the orphans that would be removed; remove nothing")
    p.add_argument("--keep", type=int, default=None, metavar="K",
                   help="first delete generations but the current one and the K most recent")
