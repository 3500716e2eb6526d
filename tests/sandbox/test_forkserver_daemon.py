"""The per-home fork server daemon shared by one-shot CLI processes, judged from outside.

Real ``corral call`` subprocesses, a real daemon, real sockets and credentials; each
test kills whatever daemon (and fork servers, workers) it left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import Host
from corral._sandbox.cgroups import detect
from corral._sandbox.forkserver.client import ForkServerClient
from corral._sandbox.forkserver.daemon import daemon_key
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

CODE = """
import time
from pathlib import Path


def noop(inp, ctx):
    return inp


def read(inp, ctx):
    return Path(inp).read_text()


def sleep(inp, ctx):
    time.sleep(inp)
    return inp
"""


def tagged(home: Path) -> set[int]:
    """Every live process carrying this home's daemon tag: daemon, fork servers, workers."""
    needle = f"corral-forkserver:{home / 'run'}/".encode()
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            out.add(int(entry))
    return out


def ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def daemons(home: Path) -> set[int]:
    """The daemons of ``home``: tagged processes whose parent is not tagged."""
    procs = tagged(home)
    out = set()
    for pid in procs:
        with contextlib.suppress(OSError):
            if ppid_of(pid) not in procs:
                out.add(pid)
    return out


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def kill_all(home: Path) -> None:
    for _round in range(50):
        procs = tagged(home)
        if not procs:
            return
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    plugin = tmp_path / "src" / "acme.shared"
    (plugin / "acme_shared").mkdir(parents=True)
    (plugin / "acme_shared" / "__init__.py").write_text(CODE)
    (plugin / "corral.toml").write_text(
        textwrap.dedent(
            """
            [plugin]
            id = "acme.shared"
            name = "Shared"
            version = "1.0.0"

            [sandbox]
            isolation = "strict"
            timeout-ms = 20000

            [exports]
            noop = "acme_shared:noop"
            read = "acme_shared:read"
            sleep = "acme_shared:sleep"
            """
        )
    )
    h = tmp_path / "home"
    with Host(home=h) as host:
        host.register(plugin)
        host.enable("acme.shared")
    yield h
    kill_all(h)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    env.update(extra)
    return env


def cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=cli_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def call_noop(home: Path, **extra: str) -> float:
    start = time.perf_counter()
    res = cli(home, "call", "acme.shared", "noop", "--input", "7", "--json", **extra)
    took = time.perf_counter() - start
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"result": 7}
    return took


def children(pid: int) -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out.update(
                    int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                )
    return out


def tree(pid: int) -> set[int]:
    """``pid`` and all its live descendants."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children(p))
    return out


def test_two_cli_calls_share_one_daemon(home: Path) -> None:
    first = call_noop(home)
    found = daemons(home)
    assert len(found) == 1
    socks = list((home / "run").glob("forkserver-*.sock"))
    assert [s.name for s in socks] == [f"forkserver-{daemon_key()}.sock"]
    assert (home / "run").stat().st_mode & 0o777 == 0o700
    second = min(call_noop(home) for _ in range(3))
    assert daemons(home) == found  # the same daemon served them all
    assert second < first  # no interpreter start, no imports for the fork server


def test_each_cli_workers_die_with_it(home: Path) -> None:
    call_noop(home)
    (daemon,) = daemons(home)
    # What served that call is gone; only the standby fork server (and its spare) waits.
    assert wait_for(lambda: len(children(daemon)) == 1)
    (server,) = children(daemon)  # the next client's fork server
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "call", "acme.shared", "sleep", "--input", "30"],
        env=cli_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The worker is running (and the next spare is forked) under that fork server.
        assert wait_for(lambda: len(tree(server)) >= 3, timeout=20)
        busy = tree(server)
        proc.kill()  # no clean shutdown: the fork server only sees its socket close
        proc.wait()
        assert wait_for(lambda: not (tagged(home) & busy))
        assert tagged(home) <= tree(daemon)  # no orphan anywhere; the daemon stays
        assert daemons(home) == {daemon}
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_daemon_is_replaced(home: Path) -> None:
    call_noop(home)
    (old,) = daemons(home)
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: old not in tagged(home))
    assert list((home / "run").glob("forkserver-*.sock"))  # left behind
    call_noop(home)
    (new,) = daemons(home)
    assert new != old


def test_idle_daemon_exits_and_unlinks(home: Path) -> None:
    call_noop(home, CORRAL_FORKSERVER_IDLE="1")
    assert daemons(home)
    assert wait_for(lambda: not tagged(home), timeout=10)
    assert list((home / "run").glob("forkserver-*.sock")) == []
    call_noop(home)  # and a new one starts on demand
    assert len(daemons(home)) == 1


def test_concurrent_first_calls_start_one_daemon(home: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "corral", "call", "acme.shared", "noop", "--input", "1"],
            env=cli_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == b"1"
    assert len(daemons(home)) == 1
    assert len(list((home / "run").glob("forkserver-*.sock"))) == 1


def test_a_changed_install_starts_another_daemon(home: Path) -> None:
    assert daemon_key("0.0.0-other") != daemon_key()
    run = home / "run"
    a = ForkServerClient(shared_dir=run)
    b = ForkServerClient(shared_dir=run, key=daemon_key("0.0.0-other"))
    try:
        a.start()
        b.start()
        assert a.daemon_pid is not None
        assert b.daemon_pid is not None
        assert a.daemon_pid != b.daemon_pid
        assert a.pid not in (None, a.daemon_pid)  # each client has its own fork server
        assert {a.daemon_pid, b.daemon_pid} == daemons(home)
        server = a.pid
    finally:
        a.close()
        b.close()
    assert server is not None
    assert wait_for(lambda: server not in tagged(home))  # close() stopped its fork server
    assert len(daemons(home)) == 2  # the daemons stay, for the next client
    assert len(list(run.glob("forkserver-*.sock"))) == 2


def test_a_failing_shared_path_falls_back_to_a_private_forkserver(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    client = ForkServerClient(shared_dir=tmp_path / "file" / "run")  # cannot be a directory
    try:
        client.start()
        assert client.daemon_pid is None
        assert client.pid is not None
        assert client.tag.startswith("corral-forkserver-")
    finally:
        client.close()


def test_disabled_by_env(home: Path) -> None:
    call_noop(home, CORRAL_FORKSERVER_SHARED="0")
    assert tagged(home) == set()


def test_long_home_path(tmp_path: Path, home: Path) -> None:
    deep = home / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    run = deep / "run"
    client = ForkServerClient(shared_dir=run)
    try:
        client.start()
        assert client.daemon_pid is not None  # bound and reached through /proc/self/fd
        assert len(str(next(run.glob("forkserver-*.sock")))) > 108
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            if client.daemon_pid is not None:
                os.kill(client.daemon_pid, signal.SIGKILL)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to another uid")
def test_another_uid_cannot_use_the_daemon(home: Path) -> None:
    call_noop(home)
    run = home / "run"
    (path,) = run.glob("forkserver-*.sock")

    def as_nobody(target: Path) -> str:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            msg = b"?"
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.settimeout(5)
                try:
                    s.connect(str(target))
                    msg = b"closed" if s.recv(256) == b"" else b"served"
                except OSError as exc:
                    msg = f"refused {exc.errno}".encode()
            finally:
                os.write(w, msg)
                os._exit(0)
        os.close(w)
        try:
            return os.read(r, 100).decode()
        finally:
            os.close(r)
            os.waitpid(pid, 0)

    (daemon,) = daemons(home)
    assert wait_for(lambda: len(children(daemon)) == 1)
    standby = children(daemon)
    assert as_nobody(path).startswith("refused")  # <home>/run is 0700
    # Even when it can reach the socket (a link in an open directory), the daemon
    # checks the credentials of whoever connects.
    with tempfile.TemporaryDirectory(dir="/tmp") as open_dir:
        os.chmod(open_dir, 0o755)
        link = Path(open_dir) / "s.sock"
        os.link(path, link)
        path.chmod(0o777)
        try:
            assert as_nobody(link) == "closed"
        finally:
            path.chmod(0o600)
    assert children(daemon) == standby  # its standby fork server was not handed over


def test_strict_confinement_is_unchanged(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    res = cli(home, "call", "acme.shared", "read", "--input", json.dumps(str(secret)), "--json")
    assert res.returncode != 0
    assert "top secret" not in res.stdout + res.stderr
    assert json.loads(res.stdout)["error"]["code"] == "permission_denied"  # names the grant
    assert f"fs-read:{secret}" in json.loads(res.stdout)["error"]["message"]
    assert len(daemons(home)) == 1  # it did go through the daemon
    missing = json.dumps(str(home / "data" / "acme.shared" / "x"))
    res = cli(home, "call", "acme.shared", "read", "--input", missing, "--json")
    assert res.returncode != 0
    assert "No such file" in res.stdout  # its own data dir is readable: ENOENT, not EACCES


@pytest.mark.skipif(detect()[0] is None, reason=f"no pids cgroup: {detect()[1]}")
def test_forkserver_cgroups_are_removed(home: Path) -> None:
    hierarchy = detect()[0]
    assert hierarchy is not None
    for _ in range(3):
        call_noop(home)
    (daemon,) = daemons(home)

    def ours() -> set[int]:
        prefix = f"corral-{daemon}-"
        return {int(n[len(prefix) :]) for n in os.listdir(hierarchy.base) if n.startswith(prefix)}

    assert wait_for(lambda: ours() == children(daemon))  # those that served calls are gone
    (standby,) = children(daemon)
    os.kill(standby, signal.SIGKILL)  # it cannot clean up: the daemon does it for it
    assert wait_for(lambda: standby not in ours())
    assert wait_for(lambda: standby not in tagged(home) and len(tagged(home)) == 1)
    call_noop(home)  # a new fork server is forked for the next client
    assert daemons(home) == {daemon}
