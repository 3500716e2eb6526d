"""``corral call`` of a strict no-op as a whole process: shared fork server daemon vs private.

Run: ``.venv/bin/python benchmarks/bench_cli_call.py [runs]``.  Prints the median
of ``runs`` (15) whole-process calls with the per-home daemon warm, with
``CORRAL_FORKSERVER_SHARED=0`` (a private fork server per process, as before), and a
bare ``python -c pass`` for reference.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory() as tmp:
        home = setup(Path(tmp))
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("CORRAL_")
        }
        env["CORRAL_HOME"] = str(home)
        cmd = [sys.executable, "-m", "corral", "call", "bench.cli", "noop", "--input", "1"]
        try:
            subprocess.run(cmd, env=env, check=True, capture_output=True)  # starts the daemon
            shared = timed(cmd, env, runs)
            private = timed(cmd, {**env, "CORRAL_FORKSERVER_SHARED": "0"}, runs)
            bare = timed([sys.executable, "-c", "pass"], env, runs)
        finally:
            kill_daemons(home)
    ms = 1000.0
    s, p, b = (statistics.median(x) * ms for x in (shared, private, bare))
    print(f"corral call, strict no-op, whole process, median of {runs}:")
    print(f"  shared fork server daemon (warm): {s:.1f} ms (target <= 100 ms)")
    print(f"  private fork server:              {p:.1f} ms")
    print(f"  bare python -c pass:              {b:.1f} ms")
    print(f"  private / shared: {p / s:.2f}x; shared - bare: {s - b:.1f} ms")


if __name__ == "__main__":
    main()
