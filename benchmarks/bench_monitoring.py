"""What monitoring costs, measured side by side in one run (issue 16 speed targets).

Run: .venv/bin/python benchmarks/bench_monitoring.py [--rounds N]

- the warm strict round trip (``Host.call`` of a strict no-op) of one worker, call by
  call with its cgroup account and with none (the call path before accounting), the
  host's flush sampling its cgroups meanwhile (target: at most 2 % added);
- in-process ``Host.call`` with monitoring on (``Host.set_monitoring``) vs off, the
  best of many short batches with the modes alternating (target: at most 100 ns added);
- what one cgroup sample of a worker costs (taken by the background flush once a
  second, never on the call path).
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


def strict_round_trip(root: Path, rounds: int) -> tuple[dict[str, list[float]], float]:
    """Warm strict calls of one worker, alternating call by call between its cgroup account
    (``on``) and no account at all (``off``: the call path as it was before accounting),
    while the host's flush samples the cgroups once a second; and one sample's time.
    """
    payload = {"small": "payload", "n": 1}
    with Host(home=root / "strict") as host:
        host.register(make_plugin(root / "src", "bench.strict", "strict"))
        host.enable("bench.strict")
        for _ in range(300):
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
                times[mode].append(time.perf_counter() - t)
        state.account = account
        meter = account.meter
        assert meter is not None
        samples = []
        for _ in range(2000):
            t = time.perf_counter()
            meter.read()
            samples.append(time.perf_counter() - t)
        return times, statistics.median(samples)


def in_process(root: Path, batches: int) -> tuple[float, float, float]:
    """Best ns per ``Host.call`` of an in-process no-op over many short batches, the modes
    alternating batch by batch (the best of each is what preemption did not touch): off,
    on (one call in 64 timed), on (every call timed).
    """
    with Host(home=root / "inproc") as host:
        host.register(make_plugin(root / "src-in", "bench.inproc", "none"))
        host.enable("bench.inproc")
        payload = {"n": 1, "name": "x"}
        n = 20_000
        modes = {"off": (False, 16), "on": (True, 64), "every": (True, 1)}
        best = dict.fromkeys(modes, float("inf"))
        for _ in range(batches):
            for mode, (on, every) in modes.items():
                host.set_monitoring(on, every=every)
                glb = {"c": host.call, "p": payload}
                took = min(timeit.repeat("c('bench.inproc', 'noop', p)", globals=glb, number=n,
                                         repeat=3))
                best[mode] = min(best[mode], took / n * 1e9)
            host.flush_metrics()
    return best["off"], best["on"], best["every"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        times, sample = strict_round_trip(root, args.rounds)
        inproc_off, inproc_on, inproc_every = in_process(root, args.batches)
    med = {mode: statistics.median(v) for mode, v in times.items()}
    print(f"warm strict round trip (Host.call of a no-op, one worker, n={args.rounds} each, "
          "alternating)")
    for mode, label in (("on", "with its cgroup account"), ("off", "without any account")):
        print(f"  {label:24s} median {med[mode] * 1e6:7.1f} us  "
              f"p99 {pct(times[mode], 0.99) * 1e6:8.1f} us")
    pair = statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True))
    print(f"  ratio on/off            {med['on'] / med['off']:.3f}  "
          f"({(med['on'] / med['off'] - 1) * 100:+.1f} %, target <= +2 %); median of "
          f"per-pair ratios {pair:.3f}")
    print(f"  one cgroup sample (background, once a second): median {sample * 1e6:.1f} us")
    print("in-process Host.call of a no-op (best of short batches, modes alternating)")
    print(f"  monitoring off            {inproc_off:7.1f} ns")
    print(f"  monitoring on (1 in 64)   {inproc_on:7.1f} ns   added "
          f"{inproc_on - inproc_off:+6.1f} ns (target <= 100 ns)")
    print(f"  monitoring on (every call){inproc_every:7.1f} ns   added "
          f"{inproc_every - inproc_off:+6.1f} ns (for reference)")
    print(f"  ratio on/off              {inproc_on / inproc_off:.2f}x")


if __name__ == "__main__":
    main()
