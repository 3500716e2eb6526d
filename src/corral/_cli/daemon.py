"""The ``daemon`` verb: show or stop the home's fork-server daemon (see the README).

After ``enable``/``call``, each home keeps a small daemon that forks sandboxed
workers fast; it exits by itself after ``CORRAL_FORKSERVER_IDLE`` seconds idle.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, table
from corral._disk.layout import default_home
from corral._errors import UsageError

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs", "run_dir", "stop_idle"]


def run_dir(args: argparse.Namespace) -> Path:
    """``<home>/run`` of ``--home`` (else ``$CORRAL_HOME``, else the default home)."""
    return Path(args.home or os.environ.get("CORRAL_HOME") or default_home()) / "run"


def stop_idle(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Stop the home's daemons that serve no client (after removing its last plugin, gc)."""
    # The sandbox package stays off the path of every command that does not run a plugin.
    from corral._sandbox.forkserver.control import stop_daemons

    return stop_daemons(run_dir(args), idle_only=True)


def _left(d: dict[str, Any]) -> str:
    if d["idle_left"] is None:
        return "busy"
    return f"{int(d['idle_left'])}s"


def cmd_daemon(args: argparse.Namespace) -> int:
    from corral._sandbox.forkserver.control import daemons, stop_daemons

    if args.action == "status":
        found = daemons(run_dir(args))
        if args.json:
            dump({"daemons": found})
        elif not found:
            print("no fork-server daemon runs for this home")
        else:
            rows = [[str(d["pid"]), str(d["clients"]), _left(d), d["socket"]] for d in found]
            print(table(rows, ["pid", "clients", "idle left", "socket"]))
        return 0
    if args.action == "stop":
        stopped = stop_daemons(run_dir(args))
        if args.json:
            dump({"stopped": stopped})
        elif not stopped:
            print("no fork-server daemon runs for this home")
        for d in [] if args.json else stopped:
            state = "stopped" if d["stopped"] else "asked to stop (still serving)"
            print(f"{state} fork-server daemon {d['pid']}")
        return 0
    raise UsageError("corral daemon needs: status or stop")


def add_verbs(verb: VerbAdder) -> None:
    """Register ``daemon status|stop``."""
    sp = verb("daemon", cmd_daemon,
              "show or stop the home's fork-server daemon (it forks sandboxed workers fast)")
    sp.add_argument("action", choices=["status", "stop"],
                    help="status: pid, clients, idle time left; stop: let it finish and exit")
