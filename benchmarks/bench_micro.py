"""Micro-plugin figures, measured side by side with the alternatives in one run.

* in-process dispatch: ``MicroManager.execute`` over a bare call, against a
  plain dict dispatch, a pluggy hook call (1 implementation) and a blinker
  signal (1 receiver);
* a chain of 10 in-process micro-plugins (``Composition.run``) over 10 bare
  calls, against a pluggy hook with 10 implementations;
* bucketing uniformity over 1,000,000 keys (``normalized_hash``);
* a parallel fan-out over 8 strict (sandboxed) micro-plugins against the
  slowest one, through the harness (skipped, with the reason, when this
  machine cannot run strict isolation).

Run: ``python benchmarks/bench_micro.py [--quick] [--json FILE]`` (the harness).
"""

from __future__ import annotations

import math
import sys
import tempfile
import textwrap
import time
import timeit
from collections import Counter
from pathlib import Path
from typing import Any

from harness import Bench, Figure

from corral._services.micro.abtest import murmur3_32, normalized_hash
from corral._services.micro.compose import Composition, FanOut, Step
from corral._services.micro.manager import MicroManager

QUICK = "--quick" in sys.argv
NUMBER = 100_000 if QUICK else 200_000


#: The run's harness (figures of ``ns`` are recorded in it); made once in ``main``.
RUN: list[Bench] = []


def ns(stmt: str, env: dict[str, Any], number: int = NUMBER) -> float:
    """Median nanoseconds per execution of ``stmt`` (recorded in the harness, with its IQR)."""
    number = max(1, number // 10) if RUN[0].quick else number
    timeit.timeit(stmt, globals=env, number=max(1, number // 10))  # warm-up
    times = timeit.repeat(stmt, globals=env, number=number, repeat=RUN[0].repeats)
    return RUN[0].record(Figure(stmt, "ns", [t / number * 1e9 for t in times], per="call")).median


def inc(x: int) -> int:
    return x + 1


def bench_dispatch() -> None:
    import blinker
    import pluggy

    mgr = MicroManager()

    def add1(x: int) -> int:
        return x + 1

    mgr.register(add1, id="bench.add1", type="transformer")
    table = {"bench.add1": add1}

    spec = pluggy.HookspecMarker("bench")
    impl = pluggy.HookimplMarker("bench")

    class Spec:
        @spec
        def add1(self, x: int) -> int: ...  # type: ignore[empty-body]

    class Impl:
        @impl
        def add1(self, x: int) -> int:
            return x + 1

    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(Spec)
    pm.register(Impl())
    hook = pm.hook.add1

    signal = blinker.Signal()

    def receiver(sender: int) -> int:
        return sender + 1

    signal.connect(receiver)
    env = {"add1": add1, "table": table, "mgr": mgr, "hook": hook, "signal": signal}
    bare = ns("add1(1)", env)
    rows = [
        ("bare call  add1(1)", bare),
        ("dict dispatch  table[id](1)", ns("table['bench.add1'](1)", env)),
        ("corral  mgr.execute(id, 1)", ns("mgr.execute('bench.add1', 1)", env)),
        ("pluggy  hook.add1(x=1)", ns("hook(x=1)", env, NUMBER // 4)),
        ("blinker  signal.send(1)", ns("signal.send(1)", env, NUMBER // 4)),
    ]
    corral = rows[2][1]
    print("in-process dispatch (median of runs, ns per call)")
    for name, t in rows:
        print(f"  {name:34s} {t:8.1f} ns   over bare {t - bare:8.1f} ns   "
              f"x{t / corral:5.2f} of corral")
    print(f"  corral overhead over a bare call: {corral - bare:.1f} ns (target <= 150 ns)")
    fmt_mgr = MicroManager()

    def verdict(x: Any) -> Any:
        return {"valid": True, "reasons": []}

    fmt_mgr.register(verdict, id="bench.ok", type="validator")
    env2 = {"verdict": verdict, "mgr": fmt_mgr}
    v_bare = ns("verdict(1)", env2, NUMBER // 2)
    v = ns("mgr.execute('bench.ok', 1)", env2, NUMBER // 2)
    print(f"  (a validator, whose verdict is checked in full on each call: {v - v_bare:.1f} ns "
          "over bare)")
    mgr.close()
    fmt_mgr.close()


def bench_chain() -> None:
    import pluggy

    mgr = MicroManager()
    fns = []
    for i in range(10):

        def step(x: int) -> int:
            return x + 1

        fns.append(step)
        mgr.register(step, id=f"bench.s{i}", type="transformer", input="int", output="int")
    chain = Composition([f"bench.s{i}" for i in range(10)], mgr)
    f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 = fns

    def bare10(x: int) -> int:
        return f9(f8(f7(f6(f5(f4(f3(f2(f1(f0(x))))))))))

    spec = pluggy.HookspecMarker("bench10")
    impl = pluggy.HookimplMarker("bench10")

    class Spec:
        @spec
        def step(self, x: int) -> int: ...  # type: ignore[empty-body]

    pm = pluggy.PluginManager("bench10")
    pm.add_hookspecs(Spec)
    for _ in range(10):

        class Impl:
            @impl
            def step(self, x: int) -> int:
                return x + 1

        pm.register(Impl())
    hook = pm.hook.step
    env = {"bare10": bare10, "chain": chain, "hook": hook}
    n = NUMBER // 4
    bare = ns("bare10(1)", env, n)
    ours = ns("chain.run(1)", env, n)
    plug = ns("hook(x=1)", env, n)
    assert chain.run(1) == 11
    print("chain of 10 in-process micro-plugins (ns per run)")
    print(f"  10 nested bare calls            {bare:8.1f} ns")
    print(f"  corral Composition.run          {ours:8.1f} ns   overhead {ours - bare:8.1f} ns "
          "(target <= 1500 ns)")
    print(f"  pluggy hook, 10 implementations {plug:8.1f} ns   overhead {plug - bare:8.1f} ns "
          f"  (corral x{(plug - bare) / max(ours - bare, 1e-9):.1f} less overhead)")
    mgr.close()


def bench_buckets() -> None:
    n = 200_000 if QUICK else 1_000_000
    start = time.perf_counter()
    counts = Counter(normalized_hash(f"user-{i}", "experiment") for i in range(n))
    elapsed = time.perf_counter() - start
    expected = n / 100
    worst = max(abs(c - expected) / expected for c in counts.values())
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    # chi-square with 99 degrees of freedom: Wilson-Hilferty approximation of the p-value
    k = 99
    z = ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    p = 0.5 * math.erfc(z / math.sqrt(2))
    sigma = math.sqrt(expected * 0.99) / expected
    print(f"bucketing over {n:,} keys (murmur3 of 'experiment:user-N' % 100 + 1)")
    print(f"  buckets used {len(counts)}/100; share per bucket "
          f"{min(counts.values()) / n:.4%} .. {max(counts.values()) / n:.4%} (ideal 1%)")
    print(f"  worst bucket off by {worst:.2%} of its expected count "
          f"(one sigma of pure chance here: {sigma:.2%}); chi-square {chi2:.1f} on 99 d.f., "
          f"p = {p:.2f}")
    print(f"  hashing speed (pure Python murmur3): {elapsed / n * 1e6:.2f} us per key")
    assert murmur3_32("Hello world") == 2911983372


PLUGIN_CODE = '''
import time


def nap(value, ctx):
    time.sleep(value["ms"] / 1000)
    return value["ms"]
'''


def bench_sandboxed_fan_out(bench: Bench) -> None:
    """A parallel fan-out over 8 strict micro-plugins against the slowest one alone."""
    bench.section("parallel fan-out over 8 strict (sandboxed) micro-plugins")
    from corral._host import Host
    from corral._services.sandboxed import sandbox_problem

    problem = sandbox_problem("strict")
    if problem:
        print(f"  skipped: this machine cannot run isolation 'strict': {problem}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mgr = MicroManager()
        with Host(home=root / "home", workspace=root) as host:
            try:
                for i in range(8):
                    d = root / f"nap{i}"
                    (d / f"nap{i}").mkdir(parents=True)
                    (d / f"nap{i}" / "__init__.py").write_text(PLUGIN_CODE)
                    (d / "corral.toml").write_text(textwrap.dedent(f"""
                        [plugin]
                        id = "bench.nap{i}"
                        name = "nap {i}"
                        version = "1.0.0"

                        [sandbox]
                        isolation = "strict"

                        [[micro]]
                        id = "bench.nap{i}.nap"
                        type = "utility"
                        handler = "nap{i}:nap"
                        max-ms = 10000
                    """))
                    host.register(d)
                    host.enable(f"bench.nap{i}")
                    manifest = host.catalog.known()[f"bench.nap{i}"]
                    assert manifest.sandbox.isolation == "strict"

                    def invoke(micro_id: str, value: Any, pid: str = f"bench.nap{i}") -> Any:
                        return host.call(pid, micro_id, value)

                    mgr.register_plugin(f"bench.nap{i}", manifest.micro, invoke=invoke)
                ids = [f"bench.nap{i}.nap" for i in range(8)]
                for mid in ids:  # start the workers
                    mgr.execute(mid, {"ms": 1})
                fan = Composition(FanOut(tuple(Step(m) for m in ids)), mgr)
                slowest_ms = 100
                single = bench.time(f"the slowest ({slowest_ms} ms) alone",
                                    lambda: mgr.execute(ids[-1], {"ms": slowest_ms}))
                fanned = bench.time("8 in parallel through FanOut",
                                    lambda: fan.run({"ms": slowest_ms}))
                bench.ratio(fanned, single, target="<= 1.5")
            finally:
                mgr.close()


def main() -> None:
    bench = Bench("bench_micro", __doc__)
    RUN.append(bench)
    bench.section("in-process dispatch")
    bench_dispatch()
    bench.section("chain of 10")
    bench_chain()
    bench_buckets()
    bench_sandboxed_fan_out(bench)
    bench.done()


if __name__ == "__main__":
    main()
