"""The ``recommend`` and ``analytics`` verbs: recommendations from a registry, and the
home's opt-in usage reports (off by default; ``preview`` shows exactly what is sent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, host_for, table
from corral._disk.layout import default_home
from corral._errors import UsageError
from corral._version import __version__

if TYPE_CHECKING:
    from corral._analytics.state import AnalyticsState
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs"]

_RECOMMEND_HELP = (
    "recommend plugins to add, each with its reasons (used together with what you have, "
    "same category, compatible with your corral); default: for this home's plugins"
)
_ANALYTICS_HELP = (
    "opt-in usage reports to the registry (off by default): status, on, off, preview "
    "(prints exactly what would be sent), send [--dry-run]; CORRAL_ANALYTICS=0 disables"
)


def _installed(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(id, version) of every plugin registered in the home."""
    with host_for(args) as host:
        return sorted((i.id, i.version) for i in host.list())


def cmd_recommend(args: argparse.Namespace) -> int:
    from corral.registry.client import RegistryClient

    if args.limit < 1 or args.limit > 50:
        raise UsageError("--limit must be from 1 to 50", field="limit")
    if args.with_ is not None:
        have = [i.strip() for i in args.with_.split(",") if i.strip()]
    else:
        have = [pid for pid, _ in _installed(args)]
    with RegistryClient(args.registry) as reg:
        doc = reg.recommend(have, limit=args.limit, corral_version=__version__)
    recs = [r for r in doc.get("recommendations", []) if isinstance(r, dict)]
    if args.json:
        dump({"recommendations": [{"id": r.get("id"), "score": r.get("score"),
                                   "reasons": list(r.get("reasons", []))} for r in recs]})
        return 0
    if not recs:
        print("no recommendations" + ("" if have else " (no plugins to start from: --with)"))
        return 0
    rows = [[str(r.get("id")), f"{float(r.get('score', 0)):.3f}",
             "; ".join(str(x) for x in r.get("reasons", []))] for r in recs]
    print(table(rows, ["id", "score", "why"], fit_last=True))
    return 0


def _state(args: argparse.Namespace) -> AnalyticsState:
    from corral._analytics.state import AnalyticsState

    return AnalyticsState(Path(args.home or os.environ.get("CORRAL_HOME") or default_home()))


def _report_body(args: argparse.Namespace, state: AnalyticsState) -> bytes:
    from corral._analytics.report import build_report, report_bytes

    today = dt.datetime.now(dt.UTC).date()
    doc = build_report(_installed(args), __version__, day=today, nonce=state.nonce(today))
    return report_bytes(doc)


def cmd_analytics(args: argparse.Namespace) -> int:
    from corral._analytics.report import NOTICE

    state = _state(args)
    action = args.action
    if action == "status":
        doc: dict[str, Any] = {"opted_in": state.opted_in,
                               "disabled_by_environment": state.env_disabled(),
                               "enabled": state.enabled, "notice_shown": state.notice_shown}
        if args.json:
            dump(doc)
        else:
            word = "on" if state.enabled else "off"
            why = (" (CORRAL_ANALYTICS disables it)" if state.env_disabled() and state.opted_in
                   else "")
            print(f"analytics: {word}{why}")
        return 0
    if action in ("on", "off"):
        state.set_opted_in(action == "on")
        if action == "on" and not args.json:
            print(NOTICE, file=sys.stderr)
            state.mark_notice_shown()
        if args.json:
            dump({"opted_in": action == "on", "enabled": state.enabled})
        else:
            print(f"analytics {action}")
        return 0
    if action == "preview" or (action == "send" and args.dry_run):
        sys.stdout.write(_report_body(args, state).decode("ascii") + "\n")
        return 0
    # send
    if state.env_disabled():
        return _not_sent(args, "CORRAL_ANALYTICS disables analytics reports")
    if not state.opted_in:
        return _not_sent(args, "analytics is off for this home (corral analytics on)")
    body = _report_body(args, state)
    if not state.notice_shown:
        print(NOTICE, file=sys.stderr)
        state.mark_notice_shown()
    from corral.registry.client import RegistryClient

    with RegistryClient(args.registry) as reg:
        answer = reg.send_report(body)
    if args.json:
        dump({"sent": True, **answer})
    else:
        print("report sent" + (" (already counted today)" if answer.get("duplicate") else ""))
    return 0


def _not_sent(args: argparse.Namespace, why: str) -> int:
    if args.json:
        dump({"sent": False, "reason": why})
    else:
        print(f"nothing sent: {why}")
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``recommend`` and ``analytics``."""
    sp = verb("recommend", cmd_recommend, _RECOMMEND_HELP)
    sp.add_argument("--with", dest="with_", default=None, metavar="ID,ID,...",
                    help="recommend for these plugin ids instead of the home's")
    sp.add_argument("--limit", type=int, default=10, help="at most this many (1-50)")
    sp.add_argument("--registry", help="registry URL (default $CORRAL_REGISTRY)")
    sp = verb("analytics", cmd_analytics, _ANALYTICS_HELP)
    sp.add_argument("action", choices=["status", "on", "off", "preview", "send"])
    sp.add_argument("--dry-run", action="store_true",
                    help="send: print the report instead of sending it")
    sp.add_argument("--registry", help="registry URL (default $CORRAL_REGISTRY)")
