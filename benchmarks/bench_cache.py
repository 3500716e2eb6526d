"""``ctx.cache`` and memoised exports, measured side by side in one run (issue 16 targets).

Keys and values are rows of the package catalogue (``--catalogue``, else
``$CORRAL_CATALOGUE``, else ``examples/catalogue.tsv``): name -> its row.

- L1 hit in process (``ctx.cache.get`` of a held key), timed inside the plugin, against a
  plain ``dict.get`` timed the same way (target: <= 1 us);
- L2 hit from a strict worker (``ctx.cache`` of a shared namespace: one broker request
  and an SQLite read), timed inside the worker, against the warm strict round trip of a
  no-op export measured from the host in the same run (target: ratio <= 1);
- a memoised export's hit through ``Host.call`` in process against a bare call of an
  unmemoised export taking the same input (target: <= 2 us).

Loops timed inside a plugin give one sample per call (the harness's warm-up calls
first, untimed); the rest is timed by the harness.

``python benchmarks/bench_cache.py [--quick] [--json FILE] [--catalogue FILE] [--keys N]``
(see benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Bench, Figure

from corral import Host
from corral._services.sandboxed import sandbox_problem

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
import time


def load(inp, ctx):
    view = ctx.cache.namespace(inp["ns"]) if inp.get("ns") else ctx.cache
    for row in inp["rows"]:
        view.set(row["name"], row, ttl=3600)
        view.set("summary:" + row["name"], row["summary"], ttl=3600)
    return len(inp["rows"])


def loop_cache(inp, ctx):
    """ns per get of held keys (inp: keys, rounds), timed here."""
    view = ctx.cache.namespace(inp["ns"]) if inp.get("ns") else ctx.cache
    get = view.get
    keys = inp["keys"]
    t = time.perf_counter_ns()
    for _ in range(inp["rounds"]):
        for k in keys:
            get(k)
    return (time.perf_counter_ns() - t) / (inp["rounds"] * len(keys))


def loop_dict(inp, ctx):
    """ns per dict.get, the same loop: the anchor."""
    d = {row["name"]: row for row in inp["rows"]}
    get = d.get
    keys = inp["keys"]
    t = time.perf_counter_ns()
    for _ in range(inp["rounds"]):
        for k in keys:
            get(k)
    return (time.perf_counter_ns() - t) / (inp["rounds"] * len(keys))


def lookup(inp, ctx):
    return inp["name"].upper()


def lookup_row(inp, ctx):
    return {"name": inp["name"], "upper": inp["name"].upper()}


def noop(inp, ctx):
    return inp
'''


def manifest(plugin_id: str, isolation: str, grants: list[str]) -> str:
    mod = plugin_id.replace(".", "_")
    lines = [
        "[plugin]", f'id = "{plugin_id}"', 'name = "Bench"', 'version = "1.0.0"',
        "[sandbox]", f'isolation = "{isolation}"', "cache-mb = 64", "timeout-ms = 600000",
        "[permissions]", f"host-api = {grants!r}".replace("'", '"'),
        "[exports]",
        *(f'{name} = "{mod}:{name}"' for name in ("load", "loop_cache", "loop_dict", "noop",
                                                   "plain", "plain_row")),
        "[exports.lookup]", f'target = "{mod}:lookup"', 'cache = { ttl = "1h" }',
        "[exports.lookup_row]", f'target = "{mod}:lookup_row"', 'cache = { ttl = "1h" }',
    ]
    return "\n".join(lines) + "\n"


def make(root: Path, plugin_id: str, isolation: str, grants: list[str]) -> Path:
    d = root / plugin_id
    d.mkdir(parents=True)
    (d / f"{plugin_id.replace('.', '_')}.py").write_text(
        PLUGIN + "\n\nplain = lookup\nplain_row = lookup_row\n")
    (d / "corral.toml").write_text(manifest(plugin_id, isolation, grants))
    return d


def rows_of(path: Path, n: int) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return [dict(r) for _, r in zip(range(n), reader, strict=False)]


def main() -> None:
    bench = Bench("bench_cache", __doc__)
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalogue", type=Path,
                        default=Path(os.environ.get("CORRAL_CATALOGUE")
                                     or ROOT / "examples" / "catalogue.tsv"))
    parser.add_argument("--keys", type=int, default=1000, help="catalogue rows used as entries")
    args = parser.parse_args(bench.rest)
    rows = rows_of(args.catalogue, args.keys)
    n = 10_000 if bench.quick else 100_000  # Host.call per sample
    print(f"{len(rows)} catalogue rows from {args.catalogue.name}")
    keys = [r["name"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        host = Host(home=root / "home", workspace=root)
        try:
            host.enable(host.register(make(root / "src", "bench.local", "none", []))[0].id)
            host.call("bench.local", "load", {"rows": rows})

            def inside(pid: str, export: str, inp: dict[str, object]) -> list[float]:
                """ns per get as timed inside the plugin, one sample per call."""
                got = [float(host.call(pid, export, inp))
                       for _ in range(bench.warmup + bench.repeats)]
                return got[bench.warmup:]

            base = {"keys": keys, "rows": rows, "rounds": 20}
            bench.section("L1 hit in process, timed inside the plugin")
            dict_get = bench.record(Figure("dict.get of the same keys (anchor)", "ns",
                                           inside("bench.local", "loop_dict", base), per="get"))
            summaries = ["summary:" + k for k in keys]
            l1 = bench.record(Figure("L1 hit in process (str values)", "ns",
                                     inside("bench.local", "loop_cache",
                                            {**base, "keys": summaries}),
                                     target="<= 1000 ns", per="get"))
            bench.record(Figure("L1 hit in process (catalogue rows: a dict, decoded afresh)",
                                "ns", inside("bench.local", "loop_cache", base), per="get"))
            bench.ratio(l1, dict_get)

            bench.section(f"memoised export through Host.call in process ({n} calls a sample)")
            inp = {"name": keys[0]}
            call = host.call
            for _ in range(1000):
                call("bench.local", "lookup", inp)
                call("bench.local", "plain", inp)
                call("bench.local", "lookup_row", inp)
            memo = bench.time("memo hit via Host.call (str result)",
                              lambda: call("bench.local", "lookup", inp), inner=n, unit="ns",
                              target="<= 2000 ns")
            bare = bench.time("bare call, unmemoised (str result; anchor)",
                              lambda: call("bench.local", "plain", inp), inner=n, unit="ns")
            bench.ratio(memo, bare)
            memo_row = bench.time("memo hit via Host.call (dict result, decoded afresh)",
                                  lambda: call("bench.local", "lookup_row", inp), inner=n,
                                  unit="ns")
            bare_row = bench.time("bare call, unmemoised (dict result; anchor)",
                                  lambda: call("bench.local", "plain_row", inp), inner=n,
                                  unit="ns")
            bench.ratio(memo_row, bare_row)

            problem = sandbox_problem("strict")
            if problem is not None:
                print(f"L2 hit from a strict worker: skipped ({problem})")
                bench.done()
                return
            bench.section("L2 hit from a strict worker (shared namespace)")
            grants = ["cache.read:bench.shared", "cache.write:bench.shared"]
            host.enable(host.register(make(root / "src", "bench.strict", "strict",
                                           grants))[0].id)
            host.call("bench.strict", "noop", None)
            small = {"name": keys[0], "n": 1}
            for _ in range(500):
                host.call("bench.strict", "noop", small)
            trip = bench.time("warm strict round trip of a no-op (anchor)",
                              lambda: call("bench.strict", "noop", small),
                              inner=200 if bench.quick else 2000, unit="ns")
            # fill the shared namespace and its own from inside the worker, then read back
            shared_rows = rows[:200]
            host.call("bench.strict", "load", {"rows": shared_rows, "ns": "bench.shared"})
            host.call("bench.strict", "load", {"rows": rows[:1]})
            l2 = bench.record(Figure("L2 hit, strict worker (timed inside)", "ns",
                                     inside("bench.strict", "loop_cache",
                                            {"keys": [r["name"] for r in shared_rows],
                                             "rounds": 5, "ns": "bench.shared"}), per="get"))
            bench.record(Figure("L1 hit, strict worker (str value; no request to the host)",
                                "ns", inside("bench.strict", "loop_cache",
                                             {"keys": ["summary:" + keys[0]],
                                              "rounds": 20_000}), per="get"))
            bench.ratio(l2, trip, target="<= 1")
        finally:
            host.close()
    bench.done()


if __name__ == "__main__":
    main()
