"""``Host.call`` in process with a ``calls-per-minute`` quota vs without, in the same run.

Run: ``.venv/bin/python benchmarks/bench_quotas.py [calls] [rounds]``.  Two in-process
plugins with the same no-op export, one with ``calls-per-minute`` (set far above what the
run makes, so no call is refused), one without; each round times ``calls`` calls of each,
alternating, and the best round of each is kept.  Prints ns per call, the ns the quota
adds and the ratio, with a bare Python call of the same function as the anchor.  A third
plugin with a CPU quota (which measures thread CPU time) is shown for comparison.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from corral import Host

CODE = "def noop(inp, ctx):\n    return inp\n"


def plugin(root: Path, plugin_id: str, quotas: str) -> Path:
    mod = plugin_id.replace(".", "_")
    d = root / plugin_id
    d.mkdir()
    (d / f"{mod}.py").write_text(CODE)
    (d / "corral.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "q"\nversion = "1.0.0"\n'
        f'[sandbox]\nisolation = "none"\n[exports]\nnoop = "{mod}:noop"\n{quotas}'
    )
    return d


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = {
            "plain": plugin(root, "bench.plain", ""),
            "calls": plugin(root, "bench.calls", "[quotas]\ncalls-per-minute = 100000000\n"),
            "cpu": plugin(root, "bench.cpu", "[quotas]\ncpu-seconds-per-hour = 3000000\n"),
        }
        with Host(home=root / "home") as host:
            for d in dirs.values():
                host.enable(host.register(d)[0].id)
            ids = {k: f"bench.{k}" for k in dirs}
            bare = host._fast["bench.plain"]["noop"][0]
            ctx = host._fast["bench.plain"]["noop"][1]
            best = {k: float("inf") for k in (*dirs, "bare")}
            for _ in range(rounds):
                for key, pid in ids.items():
                    n = calls if key != "cpu" else calls // 4
                    start = time.perf_counter_ns()
                    for _ in range(n):
                        host.call(pid, "noop", 1)
                    best[key] = min(best[key], (time.perf_counter_ns() - start) / n)
                    host.flush_metrics()  # keep the metrics deque from filling
                start = time.perf_counter_ns()
                for _ in range(calls):
                    bare(1, ctx)
                best["bare"] = min(best["bare"], (time.perf_counter_ns() - start) / calls)
    added = best["calls"] - best["plain"]
    print(f"Host.call in process, best of {rounds} rounds of {calls} calls")
    print(f"  bare function call          {best['bare']:8.1f} ns")
    print(f"  no quota                    {best['plain']:8.1f} ns")
    print(f"  calls-per-minute quota      {best['calls']:8.1f} ns   "
          f"(+{added:.1f} ns, x{best['calls'] / best['plain']:.3f})")
    print(f"  cpu-seconds-per-hour quota  {best['cpu']:8.1f} ns   "
          f"(+{best['cpu'] - best['plain']:.1f} ns, x{best['cpu'] / best['plain']:.3f})")


if __name__ == "__main__":
    main()
