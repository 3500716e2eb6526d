"""The plugin author's whole path as a plain script: how many commands, how many seconds.

Runs the walk of ``tests/test_author_path.py`` (keys generate, new, test,
validate, pack, publish to a TUF registry served on loopback, registry trust,
install, enable, call, verify, docs; every step checked) in a temporary
directory, ``--runs`` times, and prints each step's wall time and the totals.

    .venv/bin/python benchmarks/bench_author_path.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _walk_module() -> ModuleType:
    """``tests/test_author_path.py``, loaded from its file (the walk lives there)."""
    path = ROOT / "tests" / "test_author_path.py"
    spec = importlib.util.spec_from_file_location("corral_author_path_walk", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="walks to run (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    mod = _walk_module()
    walks = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="corral-author-path-") as tmp:
            walks.append(mod.author_walk(Path(tmp)))
    steps = [[s.seconds for s in w.steps] for w in walks]
    medians = [statistics.median(col) for col in zip(*steps, strict=True)]
    first = walks[0]
    phases = {p: {"commands": first.count(p),
                  "seconds": statistics.median(w.seconds(p) for w in walks)}
              for p in ("registry", "author", "user", "check")}
    path = {"commands": first.path_commands(),
            "seconds": statistics.median(w.path_seconds() for w in walks),
            "min_seconds": min(w.path_seconds() for w in walks),
            "max_seconds": max(w.path_seconds() for w in walks)}
    if args.json:
        print(json.dumps({"runs": args.runs, "python": sys.version.split()[0],
                          "steps": [{"phase": s.phase, "step": s.name, "median_s": m}
                                    for s, m in zip(first.steps, medians, strict=True)],
                          "phases": phases, "path": path}, indent=2))
        return 0
    print(f"author's path, {args.runs} run(s), median seconds per step")
    print(f"{'#':>2}  {'phase':8}  {'step':20}  {'median s':>8}")
    for i, (s, m) in enumerate(zip(first.steps, medians, strict=True), 1):
        print(f"{i:>2}  {s.phase:8}  {s.name:20}  {m:8.2f}")
    for p, v in phases.items():
        print(f"    {p:8}  {v['commands']:>2} commands  {v['seconds']:6.2f} s")
    print(f"the path (author + user): {path['commands']} commands, {path['seconds']:.2f} s "
          f"median (min {path['min_seconds']:.2f}, max {path['max_seconds']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
