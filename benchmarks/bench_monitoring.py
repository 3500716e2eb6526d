"""What monitoring costs, measured side by side in one run (issue 16 speed targets).

- the warm strict round trip (``Host.call`` of a strict no-op) of one worker, call by
  call with its cgroup account and with none (the call path before accounting), the
  host's flush sampling its cgroups meanwhile (target: at most 2 % added);
- in-process ``Host.call`` with monitoring on (``Host.set_monitoring``) vs off, short
  batches with the modes alternating batch by batch (target: at most 100 ns added);
- what one cgroup sample of a worker costs (taken by the background flush once a
  second, never on the call path).

The modes alternate within one loop, so each sample is recorded through the harness
(median and IQR of the samples; warm-up calls first, untimed).

``python benchmarks/bench_monitoring.py [--quick] [--json FILE] [--rounds N] [--batches N]``
(see benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Bench, Figure

from corral import Host

STRICT = (
    '[plugin]\nid = "{id}"\nname = "bench"\nversion = "1.0.0"\n'
    '[sandbox]\nisolation = "{isolation}"\n[exports]\nnoop = "{mod}:noop"\n'
)


def make_plugin(root: Path, plugin_id: str, isolation: str) -> Path:
    mod = plugin_id.replace(".", "_")
    d = root / plugin_id
    (d / mod).mkdir(parents=True)
    (d / mod / "__init__.py").write_text("def noop(inp, ctx):\n    return inp\n")
    (d / "corral.toml").write_text(STRICT.format(id=plugin_id, isolation=isolation, mod=mod))
    return d


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def strict_round_trip(bench: Bench, root: Path, rounds: int) -> None:
    """Warm strict calls of one worker, alternating call by call between its cgroup account
    (``on``) and no account at all (``off``: the call path as it was before accounting),
    while the host's flush samples the cgroups once a second; and one sample's time.
    """
    payload = {"small": "payload", "n": 1}
    with Host(home=root / "strict") as host:
        host.register(make_plugin(root / "src", "bench.strict", "strict"))
        host.enable("bench.strict")
        for _ in range(300):  # warm-up: worker started, caches filled
            host.call("bench.strict", "noop", payload)
        sup = host.attachments.supervisor()
        account = sup.account("bench.strict")
        assert account is not None, "no worker"
        assert account.exact, "no cgroup accounting on this machine"
        state = sup._plugins["bench.strict"]  # swapped between calls, never during one
        times: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(rounds):
            for mode in ("on", "off") if i % 2 else ("off", "on"):
                state.account = account if mode == "on" else None
                t = time.perf_counter()
                host.call("bench.strict", "noop", payload)
                times[mode].append((time.perf_counter() - t) * 1e6)
        state.account = account
        meter = account.meter
        assert meter is not None
        bench.section(f"warm strict round trip (Host.call of a no-op, one worker, "
                      f"{rounds} calls each, alternating)")
        on = bench.record(Figure("with its cgroup account", "us", times["on"],
                                 note=f"p99 {pct(times['on'], 0.99):.1f} us"))
        off = bench.record(Figure("without any account (anchor)", "us", times["off"],
                                  note=f"p99 {pct(times['off'], 0.99):.1f} us"))
        bench.ratio(on, off, target="<= 1.02", label="strict round trip: account on / off")
        pair = statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True))
        bench.value("median of per-pair ratios on/off", pair, "x")
        bench.time("one cgroup sample (background, once a second)", meter.read, inner=200,
                   unit="us")


def in_process(bench: Bench, root: Path, batches: int, n: int) -> None:
    """ns per ``Host.call`` of an in-process no-op over short batches, the modes alternating
    batch by batch: off, on (one call in 64 timed), on (every call timed).  A batch's
    figure is the best of 3 timeit repeats (what preemption did not touch)."""
    with Host(home=root / "inproc") as host:
        host.register(make_plugin(root / "src-in", "bench.inproc", "none"))
        host.enable("bench.inproc")
        payload = {"n": 1, "name": "x"}
        modes = {"off": (False, 16), "on": (True, 64), "every": (True, 1)}
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        for b in range(bench.warmup + batches):
            for mode, (on, every) in modes.items():
                host.set_monitoring(on, every=every)
                glb = {"c": host.call, "p": payload}
                took = min(timeit.repeat("c('bench.inproc', 'noop', p)", globals=glb, number=n,
                                         repeat=3))
                if b >= bench.warmup:
                    samples[mode].append(took / n * 1e9)
            host.flush_metrics()
    bench.section(f"in-process Host.call of a no-op ({batches} batches of {n} calls, "
                  "modes alternating)")
    fig_off = bench.record(Figure("monitoring off (anchor)", "ns", samples["off"], per="call"))
    fig_on = bench.record(Figure("monitoring on (1 in 64)", "ns", samples["on"], per="call"))
    fig_every = bench.record(Figure("monitoring on (every call)", "ns", samples["every"],
                                    per="call"))
    bench.value("monitoring on (1 in 64) adds (median difference)",
                fig_on.median - fig_off.median, "ns", target="<= 100 ns")
    bench.value("monitoring on (every call) adds (median difference)",
                fig_every.median - fig_off.median, "ns")
    bench.ratio(fig_on, fig_off, label="in process: monitoring on / off")


def main() -> None:
    bench = Bench("bench_monitoring", __doc__)
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300 if bench.quick else 3000)
    parser.add_argument("--batches", type=int, default=5 if bench.quick else 30)
    parser.add_argument("--calls", type=int, default=5000 if bench.quick else 20_000,
                        help="calls per in-process batch")
    args = parser.parse_args(bench.rest)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        strict_round_trip(bench, root, args.rounds)
        in_process(bench, root, args.batches, args.calls)
    bench.done()


if __name__ == "__main__":
    main()
