"""Core host figures, measured side by side with the alternatives in one run.

* ``import corral`` over a bare interpreter;
* ``corral list --json`` with 100 registered plugins, whole process, against
  stevedore's ExtensionManager loading 100 entry points in a fresh process;
* in-process ``Host.call`` overhead against a bare call and a pluggy hook call.

Run it with a virtualenv's interpreter by absolute path, e.g.
``/path/to/venv/bin/python benchmarks/bench_core.py``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from pathlib import Path

PY = sys.executable
RUNS = int(os.environ.get("BENCH_RUNS", "30"))
#: Child processes may cache bytecode, as an installed application would.
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list[str], env: dict[str, str] | None = None, runs: int = RUNS) -> list[float]:
    """Wall-clock milliseconds of ``runs`` executions of ``cmd`` (after one warm-up)."""
    env = env or BASE_ENV
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_import() -> None:
    bare = wall([PY, "-c", "pass"])
    imp = wall([PY, "-c", "import corral"])
    print("import corral")
    print(f"  bare interpreter      median {med(bare):7.2f} ms")
    print(f"  python -c 'import corral' {med(imp):7.2f} ms")
    print(f"  overhead              median {med(imp) - med(bare):7.2f} ms  (target <= 15 ms)")


def make_plugins(root: Path, n: int) -> list[Path]:
    dirs = []
    for i in range(n):
        d = root / f"p{i:03d}"
        pkg = d / f"bench_p{i:03d}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("def run(input, ctx):\n    return input\n")
        (d / "corral.toml").write_text(
            textwrap.dedent(
                f"""\
                [plugin]
                id = "bench.p{i:03d}"
                name = "Bench plugin {i}"
                version = "1.0.{i}"
                description = "Benchmark plugin number {i}"
                category = "bench"
                tags = ["bench", "t{i % 7}"]

                [sandbox]
                isolation = "none"

                [exports]
                run = "bench_p{i:03d}:run"
                """
            )
        )
        dirs.append(d)
    return dirs


def make_entry_points(root: Path, n: int) -> Path:
    """A real installed distribution with ``n`` entry points in group ``bench.plugins``."""
    site = root / "site"
    info = site / "benchdist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: benchdist\nVersion: 1.0\n")
    lines = ["[bench.plugins]"]
    for i in range(n):
        (site / f"sv_p{i:03d}.py").write_text("def run(x):\n    return x\n")
        lines.append(f"p{i:03d} = sv_p{i:03d}:run")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def bench_list() -> None:
    from corral import Host

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        with Host(home=home) as host:
            host.register(*make_plugins(root / "src", 100))
            for i in range(0, 100, 2):
                host.enable(f"bench.p{i:03d}")
            assert len(host.list()) == 100
        env = {**BASE_ENV, "CORRAL_HOME": str(home)}
        corral_cmd = [PY, "-m", "corral", "list", "--json"]
        out = subprocess.run(corral_cmd, env=env, check=True, capture_output=True, text=True)
        assert out.stdout.count('"id"') == 100, "list did not report 100 plugins"
        lst = wall(corral_cmd, env=env)
        site = make_entry_points(root, 100)
        sv_env = {**BASE_ENV, "PYTHONPATH": str(site)}
        sv_cmd = [
            PY,
            "-c",
            "from stevedore import ExtensionManager\n"
            "m = ExtensionManager('bench.plugins', invoke_on_load=False)\n"
            "assert len(m.extensions) == 100, len(m.extensions)\n",
        ]
        sv = wall(sv_cmd, env=sv_env)
        bare = wall([PY, "-c", "pass"])
    print("list 100 plugins, whole process")
    print(f"  corral list --json           median {med(lst):7.2f} ms  p95 "
          f"{sorted(lst)[int(0.95 * len(lst))]:7.2f} ms  (target <= 50 ms)")
    print(f"  stevedore ExtensionManager   median {med(sv):7.2f} ms")
    print(f"  bare interpreter             median {med(bare):7.2f} ms")
    print(f"  ratio corral/stevedore       {med(lst) / med(sv):.2f}x")


def bench_call() -> None:
    import pluggy

    from corral import Host

    def target(input, ctx):
        return input

    hookspec = pluggy.HookspecMarker("bench")
    hookimpl = pluggy.HookimplMarker("bench")

    class Spec:
        @hookspec
        def run(self, input):
            """The hook."""

    class Impl:
        @hookimpl
        def run(self, input):
            return input

    pm = pluggy.PluginManager("bench")
    pm.add_hookspecs(Spec)
    pm.register(Impl())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Host(home=root / "home") as host:
            host.register(*make_plugins(root / "src", 1))
            host.enable("bench.p000")
            payload = {"n": 1, "name": "x"}
            call = host.call
            assert call("bench.p000", "run", payload) == payload
            n = 200_000

            def best(stmt: str, glb: dict[str, object]) -> float:
                times = timeit.repeat(stmt, globals=glb, number=n, repeat=7)
                return min(times) / n * 1e9

            bare = best("f(p, None)", {"f": target, "p": payload})
            corral_ns = best("c('bench.p000', 'run', p)", {"c": call, "p": payload})
            pl = best("h(input=p)", {"h": pm.hook.run, "p": payload})
            host.flush_metrics()
    print("in-process call, small payload (best of 7 x 200k)")
    print(f"  bare function call     {bare:7.1f} ns")
    print(f"  corral Host.call       {corral_ns:7.1f} ns   overhead {corral_ns - bare:6.1f} ns "
          "(target <= 500 ns)")
    print(f"  pluggy hook, 1 impl    {pl:7.1f} ns   overhead {pl - bare:6.1f} ns")
    print(f"  ratio corral/bare      {corral_ns / bare:.2f}x")
    print(f"  ratio corral/pluggy    {corral_ns / pl:.2f}x")


def main() -> None:
    print(f"python {sys.version.split()[0]} at {PY}")
    bench_import()
    bench_list()
    bench_call()


if __name__ == "__main__":
    main()
