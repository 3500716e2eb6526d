"""``Host.call`` in process with a ``calls-per-minute`` quota vs without, in the same run.

Two in-process plugins with the same no-op export, one with ``calls-per-minute``
(set far above what the run makes, so no call is refused), one without; each
figure is ns per call over ``--calls`` calls a sample.  Printed: ns per call,
the ns the quota adds and the ratio, with a bare Python call of the same
function as the anchor.  A third plugin with a CPU quota (which reads the
thread's CPU clock around each call) is shown for comparison.

``python benchmarks/bench_quotas.py [--quick] [--json FILE] [--calls N]``
(see benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Bench

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
    bench = Bench("bench_quotas", __doc__)
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000 if bench.quick else 200_000,
                    help="calls per sample")
    calls = ap.parse_args(bench.rest).calls
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
            bare_fn, ctx = host._fast["bench.plain"]["noop"][:2]
            call = host.call
            bench.section(f"Host.call in process of a no-op ({calls} calls a sample)")
            bare = bench.time("bare function call", lambda: bare_fn(1, ctx), inner=calls,
                              unit="ns")
            # flush_metrics (untimed) keeps the metrics deque from filling
            plain = bench.time("no quota", lambda: call("bench.plain", "noop", 1), inner=calls,
                               unit="ns", setup=host.flush_metrics)
            quota = bench.time("calls-per-minute quota",
                               lambda: call("bench.calls", "noop", 1), inner=calls,
                               unit="ns", setup=host.flush_metrics)
            cpu = bench.time("cpu-seconds-per-hour quota",
                             lambda: call("bench.cpu", "noop", 1), inner=max(1, calls // 4),
                             unit="ns", setup=host.flush_metrics)
    bench.value("calls-per-minute quota adds (median difference)",
                quota.median - plain.median, "ns")
    bench.value("cpu-seconds-per-hour quota adds (median difference)",
                cpu.median - plain.median, "ns")
    bench.ratio(quota, plain)
    bench.ratio(cpu, plain)
    bench.ratio(plain, bare)
    bench.done()


if __name__ == "__main__":
    main()
