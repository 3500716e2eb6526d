"""``corral call`` of a strict no-op as a whole process: shared fork server daemon vs private.

Run: ``python benchmarks/bench_cli_call.py [--quick] [--json FILE]``.  Whole-process
calls with the per-home daemon warm, with no daemon running (each run starts it),
with ``CORRAL_FORKSERVER_SHARED=0`` (a private fork server per process), and a bare
``python -c pass``, all in one run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Bench

from corral import Host


def setup(root: Path) -> Path:
    plugin = root / "cliplug"
    (plugin / "cliplug").mkdir(parents=True)
    (plugin / "cliplug" / "__init__.py").write_text("def noop(inp, ctx):\n    return inp\n")
    (plugin / "corral.toml").write_text(
        '[plugin]\nid = "bench.cli"\nname = "cli"\nversion = "1.0.0"\n'
        '[sandbox]\nisolation = "strict"\n[exports]\nnoop = "cliplug:noop"\n'
    )
    home = root / "home"
    with Host(home=home) as host:
        host.register(plugin)
        host.enable("bench.cli")
    return home


def timed(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def kill_daemons(home: Path) -> None:
    """Stop the daemon this benchmark started (its command line names the home)."""
    needle = f"corral-forkserver:{home / 'run'}/".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    os.kill(int(entry), signal.SIGKILL)


def main() -> None:
    bench = Bench("bench_cli_call", __doc__)
    with tempfile.TemporaryDirectory() as tmp:
        home = setup(Path(tmp))
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("CORRAL_")
        }
        env["CORRAL_HOME"] = str(home)
        cmd = [sys.executable, "-m", "corral", "call", "bench.cli", "noop", "--input", "1"]
        bench.section("corral call of a strict no-op, whole process")
        try:
            shared = bench.process("shared fork server daemon, warm", cmd, env=env,
                                   target="<= 100 ms")
            kill_daemons(home)
            cold = bench.process("shared daemon not running (stopped before each run)", cmd,
                                 env=env, setup=lambda: kill_daemons(home), warmup=0)
            private = bench.process("private fork server (CORRAL_FORKSERVER_SHARED=0)", cmd,
                                    env={**env, "CORRAL_FORKSERVER_SHARED": "0"})
            bare = bench.process("bare interpreter: python -c pass",
                                 [sys.executable, "-c", "pass"], env=env)
        finally:
            kill_daemons(home)
    bench.ratio(private, shared)
    bench.ratio(cold, shared)
    bench.ratio(shared, bare)
    bench.done()


if __name__ == "__main__":
    main()
