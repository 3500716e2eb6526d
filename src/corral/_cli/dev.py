"""``corral dev PATH``: link a plugin folder, enable it, and reload it on every save until Ctrl-C.

An author's edit-and-call loop without re-adding: the plugin runs from its own
folder (``add --link``) and each change to its files reloads it, one line per reload.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from corral._cli.output import VerbAdder, host_for
from corral._errors import CorralError
from corral._model.text import neutralise

__all__ = ["add_verbs"]


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the watch as Ctrl-C does: the host closes cleanly


def cmd_dev(args: argparse.Namespace) -> int:
    # deferred: only this verb watches files; watchfiles loads a native extension
    from watchfiles import watch

    path = Path(args.path).expanduser().absolute()
    signal.signal(signal.SIGTERM, _stop)
    with host_for(args) as host:
        [info] = host.register(path, link=True)
        pid = info.id
        info = host.enable(pid)  # in this new process it is not active yet, whatever is recorded
        print(f"watching {path}: {pid} {info.version} {info.state} (Ctrl-C to stop)", flush=True)
        try:
            for changes in watch(path, debounce=args.debounce, raise_interrupt=True):
                try:
                    info = host.reload(pid)
                except CorralError as exc:
                    print(f"reload of {pid} failed: {neutralise(exc.message, pid)}",
                          file=sys.stderr, flush=True)
                    continue
                print(f"reloaded {pid} {info.version} ({len(changes)} change"
                      f"{'' if len(changes) == 1 else 's'}); {info.state}", flush=True)
        except KeyboardInterrupt:
            pass
    print(f"stopped watching {path}", flush=True)
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``dev``."""
    sp = verb("dev", cmd_dev,
              "link a plugin folder, enable it and reload it whenever its files change")
    sp.add_argument("path")
    sp.add_argument("--debounce", type=int, default=300, metavar="MS",
                    help="wait this long for more changes before reloading (default 300)")
