"""Micro-plugin verbs: ``micro list|run``, ``chain`` and ``rollout start|status|abort``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from corral._cli.output import VerbAdder, dump, host_for, json_input, print_result, table
from corral._errors import UsageError
from corral._model.text import neutralise

__all__ = ["add_verbs"]


def cmd_micro_list(args: argparse.Namespace) -> int:
    with host_for(args) as host:
        host.start()
        infos = host.micro.list(args.type)
    if args.json:
        dump({"micro": [i.to_dict() for i in infos]})
        return 0
    if not infos:
        print("no micro-plugins")
        return 0
    rows = [[i.id, i.type, f"{i.input} -> {i.output}", str(i.max_ms), i.mode,
             i.plugin_id or "-"] for i in infos]
    print(table(rows, ["id", "type", "shape", "max-ms", "mode", "plugin"]))
    return 0


def cmd_micro_run(args: argparse.Namespace) -> int:
    value = json_input(args)
    with host_for(args) as host:
        host.start()
        if any(m.id == args.id for m in host.micro.list()):
            result = host.micro.execute(args.id, value)
        else:
            result = host.run_pipeline(args.id, value)
    print_result(args, result, args.id)
    return 0


def cmd_chain(args: argparse.Namespace) -> int:
    from corral._services.micro.compose import Composition

    ids = [i.strip() for i in args.ids.split(",") if i.strip()]
    if not ids:
        raise UsageError("chain: give micro-plugin ids separated by commas")
    value = json_input(args)
    with host_for(args) as host:
        host.start()
        result = Composition(ids, host.micro).run(value)
    print_result(args, result, ids[-1])
    return 0


def _rollout_store(args: argparse.Namespace) -> Any:
    from corral._disk.layout import default_home
    from corral._services.micro.rollout import ROLLOUTS_DB, RolloutStore

    home = Path(args.home).expanduser() if args.home else default_home()
    return RolloutStore(home / ROLLOUTS_DB)


def cmd_rollout(args: argparse.Namespace) -> int:
    from corral._services.micro.rollout import Rollout, RolloutPolicy

    store = _rollout_store(args)
    try:
        if args.action == "start":
            if not args.id or not args.stable or not args.canary:
                raise UsageError("rollout start: give ID, --stable MICRO and --canary MICRO")
            try:
                steps = tuple(int(s) for s in args.steps.split(","))
            except ValueError:
                raise UsageError(f"rollout --steps: comma-separated integers, got "
                                 f"{args.steps!r}", key="steps") from None
            policy = RolloutPolicy(steps=steps, interval=args.interval,
                                   max_error_rate=args.max_error_rate,
                                   max_p99_ms=args.max_p99_ms, threshold=args.threshold,
                                   min_calls=args.min_calls)
            with host_for(args) as host:
                host.start()
                host.micro.get(args.stable)  # NotFoundError names an unknown id
                host.micro.get(args.canary)
            docs = [Rollout.start(store, args.id, stable=args.stable, canary=args.canary,
                                  policy=policy).to_dict()]
        elif args.action == "abort":
            if not args.id:
                raise UsageError("rollout abort: give the rollout ID")
            rollout = Rollout.open(store, args.id)
            rollout.abort(args.reason)
            docs = [rollout.to_dict()]
        else:
            ids = [args.id] if args.id else store.ids()
            docs = [Rollout.open(store, i).to_dict() for i in ids]
    finally:
        store.close()
    if args.json:
        dump({"rollouts": docs})
        return 0
    if not docs:
        print("no rollouts")
    for d in docs:
        print(f"{d['id']}: {d['stable']} -> {d['canary']}  {d['status']} at {d['percent']}%  "
              f"(failed checks {d['failed_checks']}/{d['policy']['threshold']})")
        for e in d["events"][-5:]:
            print(f"  {e['decision']:8s} {e['percent']:3d}%  {neutralise(e['reason'], d['id'])}")
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``micro``, ``chain`` and ``rollout``."""
    micro = verb("micro", lambda args: args.micro_fn(args), "list or run micro-plugins")
    msub = micro.add_subparsers(dest="micro_verb", required=True)
    sp = msub.add_parser("list", help="list the micro-plugins of enabled plugins")
    sp.add_argument("--type", help="only this kind (validator, formatter, ...)")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(micro_fn=cmd_micro_list)
    sp = msub.add_parser("run", help="run a micro-plugin or a [[pipeline]], print its result")
    sp.add_argument("id")
    sp.add_argument("--input", help="the input, as JSON")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(micro_fn=cmd_micro_run)
    sp = verb("chain", cmd_chain, "run micro-plugins as a chain (each output feeds the next)")
    sp.add_argument("ids", help="micro-plugin ids, comma-separated")
    sp.add_argument("--input", help="the first input, as JSON")
    sp = verb("rollout", cmd_rollout, "gradual rollout of a new micro-plugin version")
    sp.add_argument("action", choices=("start", "status", "abort"))
    sp.add_argument("id", nargs="?", help="the rollout id")
    sp.add_argument("--stable", help="start: the micro id serving now")
    sp.add_argument("--canary", help="start: the micro id rolled out")
    sp.add_argument("--steps", default="1,5,25,50,100", help="start: percentages, increasing")
    sp.add_argument("--interval", type=float, default=60.0, help="start: seconds between checks")
    sp.add_argument("--max-error-rate", type=float, default=0.01, help="start: 0..1")
    sp.add_argument("--max-p99-ms", type=float, default=None, help="start: p99 latency limit")
    sp.add_argument("--threshold", type=int, default=3, help="start: failed checks to roll back")
    sp.add_argument("--min-calls", type=int, default=20, help="start: calls a check needs")
    sp.add_argument("--reason", default="aborted by hand", help="abort: why")
