"""What sampling costs a CPU-bound export: the same calls with profiling off and on, one run.

The export counts the words of the catalogue's summaries and ranks the top ones
(pure Python, no I/O: the catalogue is read once, at import). For each isolation
level the calls alternate in rounds between off and on (``Host.monitor``), so both
see the same machine; the figures are the median per-call wall time on over off,
and the same for the CPU time of the process running the plugin (the sampler's
thread included), which a machine busy with other work leaves unchanged.
The target is a ratio of at most 1.10.  Each call is one sample, recorded
through the harness (median and IQR).

``python benchmarks/bench_profiling.py [--quick] [--json FILE] [--catalogue FILE]
[--rounds N] [--calls N] [--rows N] [--levels none,strict]`` (see benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from harness import Bench, Figure

ROOT = Path(__file__).resolve().parents[1]

CODE = '''
import collections
import os
import re

_WORD = re.compile(r"[a-z]{3,}")
with open(os.path.join(os.path.dirname(__file__), "catalogue.tsv"), encoding="utf-8") as f:
    SUMMARIES = [line.rstrip("\\n").split("\\t")[4].lower() for line in f
                 if line.count("\\t") >= 4][1:]


def tokens(text):
    return _WORD.findall(text)


def rank(value, ctx):
    counts = collections.Counter()
    for summary in SUMMARIES[: value["rows"]]:
        for word in tokens(summary):
            counts[word] += 1
    return [w for w, _ in counts.most_common(10)]
'''


def _plugin(root: Path, isolation: str, catalogue: Path) -> Path:
    folder = root / f"bench-{isolation}"
    (folder / "bench_rank").mkdir(parents=True)
    (folder / "bench_rank" / "__init__.py").write_text(CODE)
    shutil.copyfile(catalogue, folder / "bench_rank" / "catalogue.tsv")
    (folder / "corral.toml").write_text(textwrap.dedent(f"""
        [plugin]
        id = "bench.rank-{isolation}"
        name = "rank"
        version = "1.0.0"
        [sandbox]
        isolation = "{isolation}"
        memory-mb = 512
        cpu-seconds = 600
        timeout-ms = 60000
        [exports]
        rank = "bench_rank:rank"
    """))
    return folder


def _timed(host: Any, pid: str, value: Any, calls: int) -> tuple[list[float], list[float]]:
    """Wall ms and CPU ms of each call: the CPU of the process that ran the plugin (this
    one in process, all its threads; the worker's own account for a sandboxed call)."""
    sup = host.attachments.supervisor() if not pid.endswith("-none") else None
    walls, cpus = [], []
    for _ in range(calls):
        t, c = time.perf_counter(), time.process_time()
        host.call(pid, "rank", value)
        walls.append((time.perf_counter() - t) * 1000.0)
        if sup is None:
            cpus.append((time.process_time() - c) * 1000.0)
        else:
            m = sup.last_metrics(pid)
            cpus.append(m.cpu_user_ms + m.cpu_system_ms if m is not None else 0.0)
    return walls, cpus


def _level(bench: Bench, isolation: str, catalogue: Path, args: argparse.Namespace) -> None:
    from corral import Host

    with tempfile.TemporaryDirectory(prefix="corral-bench-profiling-") as tmp:
        root = Path(tmp)
        folder = _plugin(root, isolation, catalogue)
        with Host(home=root / "home") as host:
            (info,) = host.register(folder)
            host.enable(info.id)
            value = {"rows": args.rows}
            _timed(host, info.id, value, 3 + bench.warmup)  # warm: worker up, module imported
            off: list[float] = []
            on: list[float] = []
            off_cpu: list[float] = []
            on_cpu: list[float] = []
            samples = 0
            for _ in range(args.rounds):
                a, a_cpu = _timed(host, info.id, value, args.calls)
                with host.monitor(info.id, interval=args.interval_ms / 1000.0) as report:
                    b, b_cpu = _timed(host, info.id, value, args.calls)
                samples += report.samples
                off += a
                on += b
                off_cpu += a_cpu
                on_cpu += b_cpu
            top = report.functions(1)
    bench.section(f"isolation {isolation}: {args.rounds} rounds x {args.calls} calls each side"
                  f" (top function: {top[0]['function'] if top else None})")
    w_off = bench.record(Figure(f"{isolation}: wall, profiling off (anchor)", "ms", off))
    w_on = bench.record(Figure(f"{isolation}: wall, profiling on", "ms", on))
    c_off = bench.record(Figure(f"{isolation}: plugin process CPU, off (anchor)", "ms", off_cpu))
    c_on = bench.record(Figure(f"{isolation}: plugin process CPU, on (sampler included)", "ms",
                               on_cpu))
    bench.value(f"{isolation}: samples per call", samples / len(on), "samples")
    bench.ratio(w_on, w_off, target="<= 1.10", label=f"{isolation}: wall on / off")
    bench.ratio(c_on, c_off, target="<= 1.10",
                label=f"{isolation}: CPU on / off")


def main() -> int:
    bench = Bench("bench_profiling", __doc__)
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalogue", type=Path, default=Path(
        os.environ.get("CORRAL_CATALOGUE") or ROOT / "examples" / "catalogue.tsv"))
    parser.add_argument("--rounds", type=int, default=3 if bench.quick else 6,
                        help="off/on rounds (default 6, --quick 3)")
    parser.add_argument("--calls", type=int, default=3 if bench.quick else 10,
                        help="calls per round and side (default 10, --quick 3)")
    parser.add_argument("--rows", type=int, default=5000, help="summaries ranked per call")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="time between samples")
    parser.add_argument("--levels", default="none,strict", help="isolation levels to measure")
    args = parser.parse_args(bench.rest)
    print(f"profiling overhead on a CPU-bound export ({args.rows} catalogue summaries "
          f"ranked per call)")
    for level in args.levels.split(","):
        _level(bench, level, args.catalogue, args)
    bench.done()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
