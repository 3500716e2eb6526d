"""The plugin author's whole path as a plain script: how many commands, how many seconds.

Runs the walk of ``tests/pdk/test_author_path.py`` (keys generate, new, test,
validate, pack, publish to a TUF registry served on loopback, registry trust,
install, enable, call, verify, docs; every step checked) in a temporary
directory (3 times, once with ``--quick``), and prints each step's wall time and
the totals through the harness.

    python benchmarks/bench_author_path.py [--quick] [--json FILE]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from harness import Bench, Figure

ROOT = Path(__file__).resolve().parents[1]


def _walk_module() -> ModuleType:
    """``tests/pdk/test_author_path.py``, loaded from its file (the walk lives there)."""
    sys.path.insert(0, str(ROOT / "tests"))  # the walk imports the tests' helpers
    path = ROOT / "tests" / "pdk" / "test_author_path.py"
    spec = importlib.util.spec_from_file_location("corral_author_path_walk", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main() -> int:
    bench = Bench("bench_author_path", __doc__)
    mod = _walk_module()
    runs = 1 if bench.quick else 3
    walks = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="corral-author-path-") as tmp:
            walks.append(mod.author_walk(Path(tmp)))
    first = walks[0]
    bench.section(f"the author's path, {runs} walk(s): seconds per step")
    for i, s in enumerate(first.steps):
        bench.record(Figure(f"{i + 1:>2} {s.phase:8} {s.name}", "s",
                            [w.steps[i].seconds for w in walks]))
    bench.section("totals")
    for p in ("registry", "author", "user", "check"):
        bench.record(Figure(f"phase {p} ({first.count(p)} commands)", "s",
                            [w.seconds(p) for w in walks]))
    bench.value("commands on the path (author + user)", first.path_commands(), "commands",
                target="12")
    bench.record(Figure("the path (author + user)", "s", [w.path_seconds() for w in walks],
                        target="<= 45 s (was tests/pdk/test_author_path.py)"))
    bench.done()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
