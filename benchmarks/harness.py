"""The one way corral's benchmarks measure: warm-up, repeats, median and spread, JSON.

Every figure is timed the same way (``warmup`` untimed runs, then ``repeats``
timed ones; median and interquartile range), and every ratio is between two
figures of the same run, an anchor measured in the same process on the same
payload.  No reference numbers, no scaling.  Usage in a benchmark::

    from harness import Bench

    bench = Bench("core", __doc__)            # parses --quick, --repeats, --warmup, --json
    ours = bench.time("corral list", run_list, target="<= 150 ms")
    anchor = bench.time("stevedore list", run_stevedore)
    bench.ratio(ours, anchor)                 # printed now, written to --json at the end
    bench.done()
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured quantity: its samples (in ``unit``) and what it is compared with."""

    name: str
    unit: str
    samples: list[float]
    target: str = ""
    note: str = ""
    per: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        """Interquartile range: the spread, robust to one slow outlier."""
        if len(self.samples) < 4:
            return max(self.samples) - min(self.samples)
        q = statistics.quantiles(self.samples, n=4)
        return q[2] - q[0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "median": self.median, "iqr": self.iqr,
                "min": min(self.samples), "n": len(self.samples), "target": self.target,
                "per": self.per, "note": self.note, "samples": self.samples}


@dataclass
class Bench:
    """A benchmark run: its options, the figures and ratios measured so far."""

    title: str
    doc: str | None = None
    argv: Sequence[str] | None = None
    figures: list[Figure] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        ap = argparse.ArgumentParser(description=(self.doc or self.title).strip().split("\n")[0])
        ap.add_argument("--quick", action="store_true",
                        help="few repeats: checks the benchmark works, figures are rough")
        ap.add_argument("--repeats", type=int, default=None, help="timed runs per figure")
        ap.add_argument("--warmup", type=int, default=None, help="untimed runs first")
        ap.add_argument("--json", metavar="FILE", help="write every figure and ratio here")
        self.extra = ap
        self.args, self.rest = ap.parse_known_args(self.argv)
        self.quick = bool(self.args.quick)
        self.repeats = self.args.repeats or (3 if self.quick else 15)
        self.warmup = self.args.warmup if self.args.warmup is not None else 1
        print(f"# {self.title}  (repeats {self.repeats}, warm-up {self.warmup}; "
              f"median ± IQR; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")

    # -- measuring ----------------------------------------------------------------

    def time(self, name: str, fn: Callable[[], object], *, inner: int = 1, unit: str = "ms",
             target: str = "", note: str = "", repeats: int | None = None,
             warmup: int | None = None, setup: Callable[[], object] | None = None) -> Figure:
        """Time ``fn`` (``inner`` calls per sample, reported per call) after a warm-up.

        ``setup`` runs untimed before each sample (e.g. a fresh state).
        """
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[unit]
        for _ in range(self.warmup if warmup is None else warmup):
            if setup is not None:
                setup()
            for _ in range(inner):
                fn()
        samples = []
        for _ in range(repeats or self.repeats):
            if setup is not None:
                setup()
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t) * scale / inner)
        return self.record(Figure(name, unit, samples, target, note, "call" if inner > 1 else ""))

    def process(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, target: str = "", note: str = "",
                repeats: int | None = None, warmup: int | None = None,
                setup: Callable[[], object] | None = None) -> Figure:
        """Wall-clock ms of running ``cmd`` as a whole process (it must exit 0)."""
        def run() -> None:
            subprocess.run(list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
                           check=True, capture_output=True)
        return self.time(name, run, target=target, note=note, repeats=repeats, warmup=warmup,
                         setup=setup)

    def record(self, figure: Figure) -> Figure:
        """Keep and print a figure measured by other means (same units, same statistics)."""
        self.figures.append(figure)
        tgt = f"  (target {figure.target})" if figure.target else ""
        per = f"/{figure.per}" if figure.per else ""
        print(f"  {figure.name:<58} {_fmt(figure.median)} ± {_fmt(figure.iqr)} "
              f"{figure.unit}{per}{tgt}", flush=True)
        return figure

    def value(self, name: str, number: float, unit: str, *, target: str = "",
              note: str = "") -> Figure:
        """A one-sample figure (a throughput, a count): printed and kept like the others."""
        return self.record(Figure(name, unit, [number], target, note))

    def ratio(self, ours: Figure, anchor: Figure, *, target: str = "", label: str = "") -> float:
        """``ours / anchor`` by median, both from this run; printed and kept."""
        if ours.unit != anchor.unit:
            raise ValueError(f"cannot compare {ours.unit} with {anchor.unit}")
        value = ours.median / anchor.median
        self.ratios.append({"name": label or f"{ours.name} / {anchor.name}", "ours": ours.name,
                            "anchor": anchor.name, "ratio": value, "target": target})
        tgt = f"  (target {target})" if target else ""
        print(f"  ratio {label or ours.name + ' / ' + anchor.name:<52} {value:7.2f}x{tgt}",
              flush=True)
        return value

    def section(self, title: str) -> None:
        print(f"\n{title}", flush=True)

    def done(self) -> None:
        """Write the JSON result file, if asked."""
        if self.args.json:
            doc = {"benchmark": self.title, "quick": self.quick, "repeats": self.repeats,
                   "warmup": self.warmup, "python": sys.version.split()[0],
                   "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0],
                               "platform": platform.platform()},
                   "figures": [f.to_dict() for f in self.figures], "ratios": self.ratios}
            Path(self.args.json).write_text(json.dumps(doc, indent=1) + "\n")
            print(f"\nwrote {self.args.json}")


def _fmt(x: float) -> str:
    return f"{x:9.3f}" if abs(x) < 10 else f"{x:9.1f}"
