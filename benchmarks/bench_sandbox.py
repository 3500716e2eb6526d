"""Sandbox speed, measured side by side in one run (issue 3 targets).

Run: python benchmarks/bench_sandbox.py [--quick] [--json FILE]

- cold start: a strict no-op export, from call to first result, three ways:
  back to back (target: median <= 5 ms), after a pause that lets the fork
  server pre-fork its spare, and the first call of a fresh fork server;
- warm round trip of a small payload vs a raw socketpair echo between two
  processes (target: ratio <= 1.3);
- a ~1 ms CPU-bound export, strict vs in-process (target: overhead <= 3 %);
- warm ``Host.call`` against ``Supervisor.call`` and with budgets stubbed out;
- ``corral call`` as a whole process, with the daemon warm and with none.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Bench

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
    bench = Bench("bench_sandbox", __doc__)
    rounds = 200 if bench.quick else 2000
    cold_n = 10 if bench.quick else 60
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "code").mkdir()
        (root / "code" / "benchplug.py").write_text(PLUGIN)
        counter = iter(range(1_000_000))
        bench.section("cold start: a strict no-op export, call to first result")
        with Supervisor() as sup:
            warm_spec = make_spec(root, "bench.warm")
            sup.call(warm_spec, "benchplug:noop", None)  # fork server up, probe done
            started: list[str] = []
            box: list[SandboxSpec] = []

            def fresh_spec(pause: float = 0.0) -> None:
                # untimed: the previous cold worker stops, a new plugin's spec is made
                while started:
                    sup.stop(started.pop())
                if pause:
                    time.sleep(pause)
                box[:] = [make_spec(root, f"bench.cold{next(counter)}")]

            def cold_call() -> None:
                sup.call(box[0], "benchplug:noop", None)
                started.append(box[0].plugin_id)

            back = bench.time("back to back (no pause: the spare may not be ready)", cold_call,
                              setup=fresh_spec, repeats=cold_n, target="median <= 5 ms")
            paused = bench.time("after a 50 ms pause (a pre-forked spare is ready)", cold_call,
                                setup=lambda: fresh_spec(0.05), repeats=cold_n)
            bench.ratio(back, paused)
            fresh_spec()

            # Warm calls and raw echoes interleaved, so both see the same machine.
            payload = {"small": "payload", "n": 1}
            raw_payload = b"x" * 64
            echo_proc = RawEcho()
            bench.section("warm round trip of a small payload")
            inner = 20 if bench.quick else 200
            warm = bench.time("Supervisor.call of a strict no-op",
                              lambda: sup.call(warm_spec, "benchplug:noop", payload),
                              inner=inner, unit="us")
            echo = bench.time("raw socketpair echo between two processes",
                              lambda: echo_proc.round_trip(raw_payload), inner=inner, unit="us")
            bench.ratio(warm, echo, target="<= 1.3")
            echo_proc.close()

            sys.path.insert(0, str(root / "code"))
            work = importlib.import_module("benchplug").work
            n = calibrate(work)
            bench.section("a ~1 ms CPU-bound export")
            inproc = bench.time("in-process", lambda: work(n, None), inner=20)
            strict = bench.time("strict worker", lambda: sup.call(warm_spec, "benchplug:work", n),
                                inner=20)
            bench.ratio(strict, inproc, target="<= 1.03")

        def first_call_of_fresh_fork_server() -> None:
            with Supervisor() as fresh:
                fresh.call(make_spec(root, f"bench.first{next(counter)}"), "benchplug:noop",
                           None)

        bench.section("cold start with a fresh fork server (its start included)")
        first = bench.time("new Supervisor: first strict call", first_call_of_fresh_fork_server,
                           repeats=max(3, cold_n // 4))
        bench.ratio(first, back)

        host_warm(bench, root, rounds)
        cli_call(bench, root)
    bench.done()


def host_warm(bench: Bench, root: Path, rounds: int) -> None:
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
        inner = max(10, rounds // 20)

        def unbudgeted() -> None:
            DirBudget.before_call = DirBudget.after_call = skip  # type: ignore[method-assign]
            try:
                host.call("bench.host", "noop", payload)
            finally:
                DirBudget.before_call, DirBudget.after_call = real  # type: ignore[method-assign]

        bench.section("warm Host.call of a strict no-op")
        via_host = bench.time("Host.call", lambda: host.call("bench.host", "noop", payload),
                              inner=inner, unit="us")
        via_sup = bench.time("Supervisor.call of the same worker",
                             lambda: sup.call(spec, "hostplug:noop", payload, config={}),
                             inner=inner, unit="us")
        free = bench.time("Host.call with budget accounting stubbed out", unbudgeted,
                          inner=inner, unit="us")
        bench.ratio(via_host, via_sup, label="host's share: Host.call / Supervisor.call")
        bench.ratio(via_host, free, target="<= 1.03", label="budget accounting cost")


def kill_daemons(home: Path) -> None:
    """Stop the fork server daemon of ``home`` (its command line names the home)."""
    import contextlib
    import signal

    needle = f"corral-forkserver:{home / 'run'}/".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    os.kill(int(entry), signal.SIGKILL)


def cli_call(bench: Bench, root: Path) -> None:
    """``corral call`` of a strict no-op as a whole process: warm daemon, then none."""
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
    bench.section("corral call of a strict no-op, whole process")
    try:
        warm = bench.process("with the home's fork server daemon warm", cmd, env=env,
                             target="<= 100 ms")
        cold = bench.process("no daemon running (stopped before each run)", cmd, env=env,
                             setup=lambda: kill_daemons(home), warmup=0)
    finally:
        kill_daemons(home)
    bare = bench.process("bare interpreter: python -c pass", [sys.executable, "-c", "pass"],
                         env=env)
    bench.ratio(warm, bare)
    bench.ratio(cold, warm)


if __name__ == "__main__":
    main()
