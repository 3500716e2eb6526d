"""Sandbox speed, measured side by side in one run (issue 3 targets).

Run: .venv/bin/python benchmarks/bench_sandbox.py [--rounds N]

- cold start: a strict no-op export in a running host, from call to first result,
  with the fork server already up (target: median <= 5 ms, p99 <= 10 ms);
- warm round trip of a small payload vs a raw socketpair echo between two
  processes (target: ratio <= 1.3);
- a ~1 ms CPU-bound export, strict vs in-process (target: overhead <= 3 %).
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor

PLUGIN = """
import time

def noop(inp, ctx):
    return inp

def work(inp, ctx):
    x = 0
    for i in range(inp):
        x += i
    return x
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_spec(root: Path, plugin_id: str) -> SandboxSpec:
    dirs = {}
    for name in ("data", "tmp", "cache"):
        d = root / plugin_id / name
        d.mkdir(parents=True, exist_ok=True)
        dirs[f"{name}_dir"] = d
    return SandboxSpec(plugin_id=plugin_id, isolation="strict", plugin_dir=root / "code", **dirs)


def calibrate(work: object) -> int:
    """Loop iterations that take about 1 ms in this process."""
    n = 1000
    while True:
        t = time.perf_counter()
        work(n, None)  # type: ignore[operator]
        took = time.perf_counter() - t
        if took > 0.0002:
            return max(1, int(n * 0.001 / took))
        n *= 2


class RawEcho:
    """A forked process echoing over a socketpair: the floor for any process round trip."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            while True:
                data = theirs.recv(65536)
                if not data:
                    os._exit(0)
                theirs.sendall(data)
        theirs.close()

    def round_trip(self, payload: bytes) -> float:
        t = time.perf_counter()
        self.sock.sendall(payload)
        self.sock.recv(65536)
        return time.perf_counter() - t

    def close(self) -> None:
        self.sock.close()
        os.waitpid(self.pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--cold", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "code").mkdir()
        (root / "code" / "benchplug.py").write_text(PLUGIN)
        with Supervisor() as sup:
            warm_spec = make_spec(root, "bench.warm")
            sup.call(warm_spec, "benchplug:noop", None)  # fork server up, probe done

            # Cold starts in a running host: the previous plugin's worker is stopped in
            # batches and the host pauses 20 ms between loads, as plugins do not all load
            # within the same millisecond (the fork server refills its spare meanwhile).
            cold = []
            batch: list[str] = []
            for i in range(args.cold):
                spec = make_spec(root, f"bench.cold{i}")
                time.sleep(0.02)
                t = time.perf_counter()
                sup.call(spec, "benchplug:noop", None)
                cold.append(time.perf_counter() - t)
                batch.append(spec.plugin_id)
                if len(batch) == 10:
                    for plugin_id in batch:
                        sup.stop(plugin_id)
                    batch.clear()
                    time.sleep(0.1)
            for plugin_id in batch:
                sup.stop(plugin_id)

            # Warm calls and raw echoes interleaved, so both see the same machine.
            payload = {"small": "payload", "n": 1}
            raw_payload = b"x" * 64
            echo_proc = RawEcho()
            for _ in range(200):
                sup.call(warm_spec, "benchplug:noop", payload)
                echo_proc.round_trip(raw_payload)
            warm, echo = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                sup.call(warm_spec, "benchplug:noop", payload)
                warm.append(time.perf_counter() - t)
                echo.append(echo_proc.round_trip(raw_payload))
            echo_proc.close()

            sys.path.insert(0, str(root / "code"))
            work = importlib.import_module("benchplug").work
            n = calibrate(work)
            inproc, strict = [], []
            for _ in range(max(200, args.rounds // 4)):
                t = time.perf_counter()
                work(n, None)
                inproc.append(time.perf_counter() - t)
                t = time.perf_counter()
                sup.call(warm_spec, "benchplug:work", n)
                strict.append(time.perf_counter() - t)

        cli, bare = cli_call(root)
        via_host, via_sup, unbudgeted = host_warm(root, args.rounds)

    ms = 1000.0
    warm_med, echo_med = statistics.median(warm), statistics.median(echo)
    in_med, st_med = statistics.median(inproc), statistics.median(strict)
    print(
        f"cold start strict no-op: median {statistics.median(cold) * ms:.2f} ms, "
        f"p99 {pct(cold, 0.99) * ms:.2f} ms  (n={len(cold)})"
    )
    print(
        f"warm round trip: median {warm_med * 1e6:.1f} us, p99 {pct(warm, 0.99) * 1e6:.1f} us; "
        f"raw socketpair echo: median {echo_med * 1e6:.1f} us; "
        f"ratio {warm_med / echo_med:.2f}"
    )
    print(
        f"1 ms CPU export: in-process median {in_med * ms:.3f} ms, strict {st_med * ms:.3f} ms; "
        f"overhead {(st_med / in_med - 1) * 100:.1f} %"
    )
    host_med, sup_med = statistics.median(via_host), statistics.median(via_sup)
    free_med = statistics.median(unbudgeted)
    print(
        f"warm Host.call strict no-op: median {host_med * 1e6:.1f} us, "
        f"p99 {pct(via_host, 0.99) * 1e6:.1f} us; same worker by Supervisor.call: median "
        f"{sup_med * 1e6:.1f} us; host's own share {(host_med - sup_med) * 1e6:.1f} us"
    )
    print(
        f"budget accounting: Host.call {host_med * 1e6:.1f} us, with it stubbed out "
        f"{free_med * 1e6:.1f} us; cost {(host_med / free_med - 1) * 100:+.1f} % (target <= 3 %)"
    )
    print(
        f"corral call of a strict no-op, whole process: median {statistics.median(cli) * ms:.1f} "
        f"ms (target <= 100 ms); bare interpreter {statistics.median(bare) * ms:.1f} ms"
    )


def host_warm(root: Path, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Warm ``Host.call`` of a strict no-op, interleaved with ``Supervisor.call`` of its worker
    and with ``Host.call`` whose budget accounting is stubbed out.

    The first difference is what the host adds to each sandboxed call (checks, budgets,
    metrics); the second is what the directory budgets alone add.
    """
    from corral import Host
    from corral._runtime.budgets import DirBudget

    plugin = root / "hostplug"
    (plugin / "hostplug").mkdir(parents=True)
    (plugin / "hostplug" / "__init__.py").write_text("def noop(inp, ctx):\n    return inp\n")
    (plugin / "corral.toml").write_text(
        '[plugin]\nid = "bench.host"\nname = "host"\nversion = "1.0.0"\n'
        '[sandbox]\nisolation = "strict"\n[exports]\nnoop = "hostplug:noop"\n'
    )
    payload = {"small": "payload", "n": 1}
    via_host, via_sup, unbudgeted = [], [], []
    real = DirBudget.before_call, DirBudget.after_call

    def skip(*args: object) -> None:
        return None

    with Host(home=root / "hosthome") as host:
        host.register(plugin)
        host.enable("bench.host")
        for _ in range(200):
            host.call("bench.host", "noop", payload)
        sup = host.attachments.supervisor()
        active = host.lifecycle.active("bench.host")
        assert active is not None
        spec = active.spec
        for _ in range(rounds):
            t = time.perf_counter()
            host.call("bench.host", "noop", payload)
            via_host.append(time.perf_counter() - t)
            t = time.perf_counter()
            sup.call(spec, "hostplug:noop", payload, config={})
            via_sup.append(time.perf_counter() - t)
            DirBudget.before_call = DirBudget.after_call = skip  # type: ignore[method-assign]
            t = time.perf_counter()
            host.call("bench.host", "noop", payload)
            unbudgeted.append(time.perf_counter() - t)
            DirBudget.before_call, DirBudget.after_call = real  # type: ignore[method-assign]
    return via_host, via_sup, unbudgeted


def cli_call(root: Path, runs: int = 20) -> tuple[list[float], list[float]]:
    """``corral call`` of a strict no-op as a whole process, and a bare interpreter."""
    import os
    import subprocess

    from corral import Host

    plugin = root / "cliplug"
    (plugin / "cliplug").mkdir(parents=True)
    (plugin / "cliplug" / "__init__.py").write_text("def noop(inp, ctx):\n    return inp\n")
    (plugin / "corral.toml").write_text(
        '[plugin]\nid = "bench.cli"\nname = "cli"\nversion = "1.0.0"\n'
        '[sandbox]\nisolation = "strict"\n[exports]\nnoop = "cliplug:noop"\n'
    )
    home = root / "clihome"
    with Host(home=home) as host:
        host.register(plugin)
        host.enable("bench.cli")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CORRAL_HOME"] = str(home)
    cmd = [sys.executable, "-m", "corral", "call", "bench.cli", "noop", "--input", "1"]
    bare_cmd = [sys.executable, "-c", "pass"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    cli, bare = [], []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        cli.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(bare_cmd, env=env, check=True, capture_output=True)
        bare.append(time.perf_counter() - t)
    return cli, bare


if __name__ == "__main__":
    main()
