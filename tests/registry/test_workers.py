"""``registry serve --workers N``: the workers end when ``serve`` is killed with SIGKILL.

Only the ``serve`` process is killed (not its process group, as a crash of the
parent alone would be): the kernel's parent-death signal must stop each worker,
which would otherwise keep the port and the data directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers.net import free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from ``/proc``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_bytes()
                parents[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found.update(kids)
        todo.extend(kids)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


@pytest.mark.timeout(180)
def test_workers_end_when_serve_is_killed(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "corral", "registry", "serve", "--data", str(tmp_path / "reg"),
         "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        workers = descendants(serve.pid)
        assert len(workers) >= 2, workers  # the supervisor's workers (and its helpers)
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(timeout=30)
        # a generous bound: the parent-death signal is immediate; a worker's graceful
        # shutdown takes well under a second, and without the signal it never comes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "workers outlived serve"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
    finally:
        log.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGKILL)
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
