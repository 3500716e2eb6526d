"""Core host figures, each beside an anchor measured in the same run.

* ``import corral`` over a bare interpreter;
* listing 100 plugins from metadata, whole process: ``corral list --json``
  (SQLite) against ``importlib.metadata`` entry points (what stevedore reads),
  nothing imported on either side;
* loading 100 plugins, whole process: ``Host.load`` of each against stevedore's
  ``ExtensionManager``, both importing every plugin module;
* a rescan of 500 unchanged plugin folders;
* in-process ``Host.call`` overhead against a bare call and a pluggy hook call.

``python benchmarks/bench_core.py [--quick] [--json FILE]`` (see benchmarks/harness.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from harness import Bench

PY = sys.executable
#: Child processes may cache bytecode, as an installed application would.
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def bench_import(bench: Bench) -> None:
    bench.section("import corral, whole process")
    bare = bench.process("bare interpreter: python -c pass", [PY, "-c", "pass"], env=BASE_ENV)
    imp = bench.process("python -c 'import corral'", [PY, "-c", "import corral"], env=BASE_ENV)
    bench.value("import overhead (median difference)", imp.median - bare.median, "ms",
                target="<= 15 ms")
    bench.ratio(imp, bare)


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


def bench_list(bench: Bench) -> None:
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
        site = make_entry_points(root, 100)
        sv_env = {**BASE_ENV, "PYTHONPATH": str(site)}
        meta_cmd = [PY, "-c",
                    "from importlib.metadata import entry_points\n"
                    "eps = entry_points(group='bench.plugins')\n"
                    "assert len(eps) == 100, len(eps)\n"
                    "print([(e.name, e.value) for e in eps])\n"]
        sv_cmd = [PY, "-c",
                  "from stevedore import ExtensionManager\n"
                  "m = ExtensionManager('bench.plugins', invoke_on_load=False)\n"
                  "assert len(m.extensions) == 100, len(m.extensions)\n"]
        load_cmd = [PY, "-c",
                    "from corral import Host\n"
                    "with Host() as h:\n"
                    "    for i in range(100):\n"
                    "        h.load(f'bench.p{i:03d}')\n"]
        bench.section("list 100 plugins from metadata, whole process (nothing imported)")
        lst = bench.process("corral list --json", corral_cmd, env=env, target="<= 50 ms")
        meta = bench.process("importlib.metadata entry points (stevedore's source)", meta_cmd,
                             env=sv_env)
        bench.ratio(lst, meta)
        bench.section("load 100 plugins, whole process (every module imported)")
        load = bench.process("corral: Host.load of each", load_cmd, env=env)
        sv = bench.process("stevedore ExtensionManager", sv_cmd, env=sv_env)
        bench.ratio(load, sv)


def bench_scan(bench: Bench) -> None:
    from corral._runtime.folders import scan_plugin_dirs

    bench.section("rescan 500 unchanged plugin folders (was a bound in tests/runtime/test_scan.py)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "plugins"
        make_plugins(root, 500)
        cache = scan_plugin_dirs(root, {}).cache
        assert len(scan_plugin_dirs(root, cache).unchanged) == 500
        ours = bench.time("scan_plugin_dirs with its cache", lambda: scan_plugin_dirs(root, cache),
                          target="<= 250 ms (a few ms expected)")
        anchor = bench.time("os.scandir + stat of each folder (the floor)",
                            lambda: [e.stat() for e in os.scandir(root)])
        bench.ratio(ours, anchor)


def bench_call(bench: Bench) -> None:
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

    bench.section("in-process call, small payload")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Host(home=root / "home") as host:
            host.register(*make_plugins(root / "src", 1))
            host.enable("bench.p000")
            payload = {"n": 1, "name": "x"}
            call = host.call
            hook = pm.hook.run
            assert call("bench.p000", "run", payload) == payload
            n = 2_000 if bench.quick else 20_000
            bare = bench.time("bare function call", lambda: target(payload, None), inner=n,
                              unit="ns")
            ours = bench.time("corral Host.call", lambda: call("bench.p000", "run", payload),
                              inner=n, unit="ns")
            pl = bench.time("pluggy hook, 1 impl", lambda: hook(input=payload), inner=n, unit="ns")
            host.flush_metrics()
    bench.value("Host.call overhead over a bare call", ours.median - bare.median, "ns",
                target="<= 500 ns")
    bench.ratio(ours, bare)
    bench.ratio(ours, pl)


def main() -> None:
    bench = Bench("bench_core", __doc__)
    bench_import(bench)
    bench_list(bench)
    bench_scan(bench)
    bench_call(bench)
    bench.done()


if __name__ == "__main__":
    main()
