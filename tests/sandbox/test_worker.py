"""Sandboxed workers, judged from outside: real processes, real kernel confinement."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._errors import (
    CorralError,
    NotFoundError,
    PermissionDenied,
    PluginError,
    PluginTimeout,
    ResourceLimitExceeded,
    WorkerCrashed,
)
from corral._sandbox.rpc import FrameReader, ProtocolError, Result, Usage, decode_worker, encode
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor

LEVELS = ["limited", "strict"]

#: The hostile (and a few honest) test plugin exports, written into a tmp_path package.
SOURCE = r"""
import _socket  # the kernel's sockets, below a strict worker's transparent network routing
import asyncio
import os
import signal
import socket
import struct
import subprocess
import time

from corral._errors import PermissionDenied


def noop(inp, ctx):
    return None


def compute(inp, ctx):
    return sum(i * i for i in range(inp["n"]))


async def acompute(inp, ctx):
    await asyncio.sleep(0.001)
    return inp["n"] * 2


def pid(inp, ctx):
    return os.getpid()


def env(inp, ctx):
    return dict(os.environ)


def where(inp, ctx):
    return {"cwd": os.getcwd(), "data": str(ctx.data_dir), "config": ctx.config}


def fds(inp, ctx):
    found = []
    for fd in range(4096):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


def read(inp, ctx):
    try:
        with open(inp["path"]) as f:
            return {"ok": True, "text": f.read()}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}


def write(inp, ctx):
    try:
        with open(inp["path"], "w") as f:
            f.write(inp["text"])
        return {"ok": True}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}


def link_tricks(inp, ctx):
    out = {}
    sym = os.path.join(str(ctx.data_dir), "sym")
    hard = os.path.join(str(ctx.data_dir), "hard")
    try:
        os.symlink(inp["target"], sym)
        with open(sym) as f:
            out["symlink_read"] = f.read()
    except OSError as exc:
        out["symlink_read"] = type(exc).__name__
    try:
        with open(sym, "w") as f:
            f.write("pwned")
        out["symlink_write"] = "written"
    except OSError as exc:
        out["symlink_write"] = type(exc).__name__
    try:
        os.link(inp["target"], hard)
        out["hardlink"] = "linked"
    except OSError as exc:
        out["hardlink"] = type(exc).__name__
    try:
        os.rename(inp["target"], os.path.join(str(ctx.data_dir), "moved"))
        out["rename"] = "moved"
    except OSError as exc:
        out["rename"] = type(exc).__name__
    return out


def socket_families(inp, ctx):
    out = {}
    for name, fam, kind in (("tcp6", socket.AF_INET6, socket.SOCK_STREAM),
                            ("udp4", socket.AF_INET, socket.SOCK_DGRAM),
                            ("udp6", socket.AF_INET6, socket.SOCK_DGRAM),
                            ("raw4", socket.AF_INET, socket.SOCK_RAW),
                            ("netlink", socket.AF_NETLINK, socket.SOCK_RAW)):
        try:
            _socket.socket(fam, kind).close()
            out[name] = "created"
        except OSError as exc:
            out[name] = type(exc).__name__
    return out


def raw_connect(inp, ctx):
    try:
        s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return {"ok": False, "stage": "socket", "error": str(exc)}
    try:
        s.settimeout(2)
        s.connect(("127.0.0.1", inp["port"]))
        s.sendall(b"leak")
        return {"ok": True}
    except OSError as exc:
        return {"ok": False, "stage": "connect", "error": str(exc)}
    finally:
        s.close()


def unix_connect(inp, ctx):
    kind = socket.SOCK_DGRAM if inp.get("dgram") else socket.SOCK_STREAM
    try:
        s = socket.socket(socket.AF_UNIX, kind)
    except OSError as exc:
        return {"ok": False, "stage": "socket", "error": str(exc)}
    try:
        if inp.get("dgram"):
            s.sendto(b"leak", inp["path"])
        else:
            s.connect(inp["path"])
            s.sendall(b"leak")
        return {"ok": True}
    except OSError as exc:
        return {"ok": False, "stage": "connect", "error": str(exc)}
    finally:
        s.close()


def net(inp, ctx):
    s = ctx.net.connect("127.0.0.1", inp["port"])
    try:
        s.sendall(b"ping")
        return s.recv(64).decode()
    finally:
        s.close()


def net_denied(inp, ctx):
    try:
        ctx.net.connect("127.0.0.1", inp["port"])
    except PermissionDenied as exc:
        return {"denied": exc.permission}
    return {"denied": None}


def spawn(inp, ctx):
    try:
        r = ctx.spawn.run(inp["argv"])
    except PermissionDenied as exc:
        return {"denied": exc.permission}
    return {"rc": r.returncode, "out": r.stdout.decode()}


def raw_exec(inp, ctx):
    try:
        r = subprocess.run(inp["argv"], capture_output=True, check=False)
    except OSError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "rc": r.returncode}


def sleep(inp, ctx):
    time.sleep(inp["s"])
    return "woke"


def burn(inp, ctx):
    x = 0
    while True:
        x += 1


def hog(inp, ctx):
    blocks = []
    for _ in range(inp["mb"]):
        blocks.append(bytearray(1024 * 1024))
    return len(blocks)


def huge(inp, ctx):
    return "x" * inp["n"]


def chatty(inp, ctx):
    for _ in range(inp["lines"]):
        print("y" * 100)
    return "done"


def logs(inp, ctx):
    ctx.log.info("hello from %s", "plugin")
    print("printed line")
    return 1


def exit_(inp, ctx):
    os._exit(inp["code"])


def boom(inp, ctx):
    raise ValueError("boom " + str(inp))


def broker(inp, ctx):
    ctx.state.set("k", inp)
    got = ctx.state.get("k")
    try:
        ctx.secrets.get("nope")
    except PermissionDenied as exc:
        return {"got": got, "denied": exc.permission}
    return {"got": got, "denied": None}


def broker_uncaught(inp, ctx):
    ctx.secrets.get("nope")


def signal_others(inp, ctx):
    out = {}
    for pid in inp["pids"]:
        try:
            os.kill(pid, signal.SIGCONT)  # harmless if it ever got through
            out[str(pid)] = "sent"
        except OSError as exc:
            out[str(pid)] = type(exc).__name__
    return out


def proc_peek(inp, ctx):
    out = {}
    for path in inp["paths"]:
        try:
            with open(path, "rb") as f:
                f.read(16)
            out[path] = "read"
        except OSError as exc:
            out[path] = type(exc).__name__
    return out


def forker(inp, ctx):
    for _ in range(inp["n"]):
        if os.fork() == 0:
            os.setsid()  # try to escape the worker's process group too
            time.sleep(60)
            os._exit(0)
    return inp["n"]


def hang_up(inp, ctx):
    os.close(3)
    time.sleep(30)


def hello_mid_call(inp, ctx):
    from corral._sandbox.rpc import Hello, encode
    os.write(3, encode(Hello(pid=1)))
    time.sleep(10)


def log_flood(inp, ctx):
    for _ in range(inp["n"]):
        ctx.log.warning("x" * 1000)
    return "survived"


def bad_request(inp, ctx):
    out = []
    for op, args in (("net.connect", {"host": 123, "port": "x"}), ("spawn.resolve", {}),
                     ("no.such.op", {"a": 1})):
        try:
            ctx.net._ask(op, **args)
            out.append(None)
        except PermissionDenied as exc:
            out.append(exc.permission)
    return out


def forge_denial(inp, ctx):
    raise PermissionDenied("totally the host", permission="fs-read:/etc/shadow")


def delete_missing(inp, ctx):
    ctx.state.delete("nope")


def garbage(inp, ctx):
    os.write(3, b"\x00\x00\x00\x08garbage!")
    time.sleep(10)


def oversized(inp, ctx):
    os.write(3, struct.pack(">I", 2**31) + b"x" * 16)
    time.sleep(10)


def forged(inp, ctx):
    from corral._sandbox.rpc import Result, Usage, encode
    os.write(3, encode(Result(id=987654, value=b"1", usage=Usage(0.0, 0.0, 0))))
    time.sleep(10)
"""


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sandbox")
    code = root / "code"
    (code / "hostile").mkdir(parents=True)
    (code / "hostile" / "__init__.py").write_text("")
    (code / "hostile" / "plug.py").write_text(SOURCE)
    return root


def make_spec(root: Path, plugin_id: str, isolation: str, **kw: Any) -> SandboxSpec:
    base = root / "plugins" / plugin_id
    dirs = {}
    for name in ("data", "tmp", "cache"):
        d = base / name
        d.mkdir(parents=True, exist_ok=True)
        dirs[f"{name}_dir"] = d
    return SandboxSpec(
        plugin_id=plugin_id,
        isolation=isolation,  # type: ignore[arg-type]
        plugin_dir=root / "code",
        **dirs,
        **kw,
    )


@pytest.fixture(scope="module")
def sup() -> Iterator[Supervisor]:
    s = Supervisor(broker=_Broker())
    yield s
    s.close()


class _Broker:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, plugin_id: str, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((plugin_id, op))
        if op == "state.set":
            self.state[args["key"]] = args["value"]
            return None
        if op == "state.get":
            return self.state.get(args["key"])
        if op == "state.delete":
            raise NotFoundError(f"no key {args['key']!r}", plugin_id=plugin_id)
        raise PermissionDenied(f"{plugin_id}: no {op}", permission=f"host-api:{op}")


def children_of(pid: int) -> set[int]:
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out.update(int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return out


def tagged(tag: str) -> list[int]:
    """Every process (worker, spare, fork server) whose command line carries ``tag``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if tag.encode() in cmdline:
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- the I/O-free protocol -------------------------------------------------------------


def test_frame_reader_reassembles_and_caps() -> None:
    frame = encode(Result(id=1, value=b"[1]", usage=Usage(1.0, 2.0, 3)))
    reader = FrameReader(1024)
    assert reader.feed(frame[:3]) == []
    bodies = reader.feed(frame[3:] + frame)
    assert [decode_worker(b) for b in bodies] == [decode_worker(frame[4:])] * 2
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameReader(8).feed(b"\x00\x00\x01\x00")
    with pytest.raises(ProtocolError, match="malformed"):
        decode_worker(b"\xc1garbage")
    with pytest.raises(ProtocolError):  # a host message is not a worker message
        decode_worker(encode(Usage(1.0, 2.0, 3))[4:])


# -- calls -----------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_noop_compute_async_and_metrics(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"calls.{level}", level)
    assert sup.call(spec, "hostile.plug:noop", None) is None
    assert sup.call(spec, "hostile.plug:compute", {"n": 1000}) == sum(i * i for i in range(1000))
    assert sup.call(spec, "hostile.plug:acompute", {"n": 21}) == 42
    m = sup.last_metrics(spec.plugin_id)
    assert m is not None
    assert m.outcome == "ok"
    assert m.result_bytes == 2
    assert m.wall_ms > 0
    assert m.peak_rss_kb > 0
    got = sup.call(spec, "hostile.plug:where", None, config={"a": 1})
    assert got == {"cwd": str(spec.tmp_dir), "data": str(spec.data_dir), "config": {"a": 1}}


@pytest.mark.parametrize("level", LEVELS)
def test_worker_is_reused(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"reuse.{level}", level)
    inner = {sup.call(spec, "hostile.plug:pid", None) for _ in range(5)}
    pid = sup.worker_pid(spec.plugin_id)
    assert pid is not None
    assert len(inner) == 1
    for _ in range(3):
        sup.call(spec, "hostile.plug:noop", None)
        assert sup.worker_pid(spec.plugin_id) == pid
    if level == "limited":
        assert inner == {pid}
    else:
        assert inner == {1}  # PID 1 of its own PID namespace


@pytest.mark.parametrize("level", LEVELS)
def test_plugin_exception_is_plugin_error(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"boom.{level}", level)
    sup.call(spec, "hostile.plug:noop", None)
    pid = sup.worker_pid(spec.plugin_id)
    with pytest.raises(PluginError) as info:
        sup.call(spec, "hostile.plug:boom", 7)
    assert "boom 7" in info.value.message
    assert "ValueError: boom 7" in info.value.details["traceback"]
    assert sup.worker_pid(spec.plugin_id) == pid  # an exception does not cost the worker
    with pytest.raises(PluginError, match="has no attribute"):
        sup.call(spec, "hostile.plug:missing", None)


# -- confinement -----------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_environment_is_scrubbed(
    sup: Supervisor, root: Path, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOST_SECRET", "s3cret")
    spec = make_spec(root, f"env.{level}", level, env={"LANG": "C.UTF-8", "GRANTED": "1"})
    assert sup.call(spec, "hostile.plug:env", None) == {"LANG": "C.UTF-8", "GRANTED": "1"}


@pytest.mark.parametrize("level", LEVELS)
def test_no_descriptor_leaks(sup: Supervisor, root: Path, level: str, tmp_path: Path) -> None:
    spec = make_spec(root, f"fds.{level}", level)
    with open(tmp_path / "held-open", "w"):  # a host descriptor that must not leak
        assert sup.call(spec, "hostile.plug:fds", None) == [0, 1, 2, 3]


def test_strict_file_system(sup: Supervisor, root: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    spec = make_spec(root, "fs.strict", "strict")
    got = sup.call(spec, "hostile.plug:read", {"path": str(canary)})
    assert got["ok"] is False
    assert sup.call(spec, "hostile.plug:read", {"path": "/etc/hostname"})["ok"] is False
    got = sup.call(spec, "hostile.plug:write", {"path": str(canary), "text": "pwned"})
    assert got["ok"] is False
    outside = tmp_path / "new-file"
    assert sup.call(spec, "hostile.plug:write", {"path": str(outside), "text": "x"})["ok"] is False
    own_code = root / "code" / "hostile" / "plug.py"
    before = own_code.read_text()
    assert sup.call(spec, "hostile.plug:write", {"path": str(own_code), "text": "x"})["ok"] is False
    inside = spec.data_dir / "out.txt"
    assert sup.call(spec, "hostile.plug:write", {"path": str(inside), "text": "mine"}) == {
        "ok": True
    }
    assert sup.call(spec, "hostile.plug:read", {"path": str(inside)}) == {
        "ok": True,
        "text": "mine",
    }
    assert canary.read_text() == "untouched"
    assert not outside.exists()
    assert own_code.read_text() == before
    assert inside.read_text() == "mine"
    granted = make_spec(root, "fs.strict.granted", "strict", read_paths=(canary,))
    assert sup.call(granted, "hostile.plug:read", {"path": str(canary)}) == {
        "ok": True,
        "text": "untouched",
    }


def test_strict_link_tricks(sup: Supervisor, root: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    spec = make_spec(root, "links.strict", "strict")
    got = sup.call(spec, "hostile.plug:link_tricks", {"target": str(canary)})
    assert got["symlink_read"] != "untouched"
    assert got["symlink_write"] != "written"
    assert got["hardlink"] != "linked"
    assert got["rename"] != "moved"
    assert canary.read_text() == "untouched"
    assert not (spec.data_dir / "hard").exists()


# -- network ---------------------------------------------------------------------------


class _Listener:
    """A loopback TCP server that records what it received and echoes ``pong``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(64)
                except OSError:
                    continue
                self.received.append(data)
                conn.sendall(b"pong")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    lst = _Listener()
    yield lst
    lst.close()


def test_strict_network_denied_without_grant(
    sup: Supervisor, root: Path, listener: _Listener
) -> None:
    spec = make_spec(root, "net.none", "strict")
    got = sup.call(spec, "hostile.plug:raw_connect", {"port": listener.port})
    assert got["ok"] is False
    families = sup.call(spec, "hostile.plug:socket_families", None)
    assert families  # all() below must not pass on nothing
    assert all(v != "created" for v in families.values()), families
    time.sleep(0.1)
    assert listener.received == []


def test_strict_pathname_unix_sockets_unreachable(sup: Supervisor, root: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        stream_path, dgram_path = f"{d}/stream.sock", f"{d}/dgram.sock"
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream.bind(stream_path)
        stream.listen()
        stream.setblocking(False)
        dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dgram.bind(dgram_path)
        dgram.setblocking(False)
        os.chmod(d, 0o777)
        try:
            spec = make_spec(root, "unix.strict", "strict")
            got = sup.call(spec, "hostile.plug:unix_connect", {"path": stream_path})
            assert got["ok"] is False
            got = sup.call(spec, "hostile.plug:unix_connect", {"path": dgram_path, "dgram": True})
            assert got["ok"] is False
            with pytest.raises(BlockingIOError):
                stream.accept()
            with pytest.raises(BlockingIOError):
                dgram.recv(64)
        finally:
            stream.close()
            dgram.close()


def test_granted_net_connect_through_scm_rights(
    sup: Supervisor, root: Path, listener: _Listener
) -> None:
    other = socket.create_server(("127.0.0.1", 0))
    other_port = other.getsockname()[1]
    try:
        spec = make_spec(root, "net.granted", "strict", net_connect=(f"127.0.0.1:{listener.port}",))
        assert sup.call(spec, "hostile.plug:net", {"port": listener.port}) == "pong"
        assert listener.received == [b"ping"]
        got = sup.call(spec, "hostile.plug:net_denied", {"port": other_port})
        assert got == {"denied": f"net-connect:127.0.0.1:{other_port}"}
        # Even with a grant, the plugin's own sockets reach nothing.
        assert sup.call(spec, "hostile.plug:raw_connect", {"port": listener.port})["ok"] is False
        with pytest.raises(PermissionDenied) as info:
            sup.call(spec, "hostile.plug:net", {"port": other_port})
        assert info.value.permission == f"net-connect:127.0.0.1:{other_port}"
    finally:
        other.close()
    assert listener.received == [b"ping"]


# -- spawn -----------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_spawn_granted_and_denied(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"spawn.{level}", level, spawn=("echo",))
    assert sup.call(spec, "hostile.plug:spawn", {"argv": ["echo", "hi"]}) == {
        "rc": 0,
        "out": "hi\n",
    }
    assert sup.call(spec, "hostile.plug:spawn", {"argv": ["ls", "/"]}) == {"denied": "spawn:ls"}


def test_strict_spawn_grant_executes_exactly_its_programs(sup: Supervisor, root: Path) -> None:
    """With spawn = ["echo"], exec itself (not only ctx.spawn) reaches echo and nothing else."""
    import shutil as _shutil
    import sys as _sys

    spec = make_spec(root, "spawn.exact", "strict", spawn=("echo",))
    echo = _shutil.which("echo")
    assert echo is not None
    assert sup.call(spec, "hostile.plug:raw_exec", {"argv": [echo, "x"]}) == {"ok": True, "rc": 0}
    for other in (["/bin/ls", "/"], [_sys.executable, "-c", "pass"], ["/bin/sh", "-c", "true"]):
        got = sup.call(spec, "hostile.plug:raw_exec", {"argv": other})
        assert got["ok"] is False, (other, got)
        assert "Permission denied" in got["error"]


def test_strict_exec_blocked_without_spawn_grant(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "spawn.none", "strict")
    got = sup.call(spec, "hostile.plug:raw_exec", {"argv": ["/bin/echo", "x"]})
    assert got["ok"] is False
    assert sup.call(spec, "hostile.plug:spawn", {"argv": ["echo"]}) == {"denied": "spawn:echo"}


# -- broker and logs ---------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_broker_round_trip_and_denial(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"broker.{level}", level)
    got = sup.call(spec, "hostile.plug:broker", {"v": [1, 2]})
    assert got == {"got": {"v": [1, 2]}, "denied": "host-api:secrets.get"}
    with pytest.raises(PermissionDenied) as info:
        sup.call(spec, "hostile.plug:broker_uncaught", None)
    assert info.value.permission == "host-api:secrets.get"
    assert info.value.plugin_id == spec.plugin_id
    with pytest.raises(NotFoundError, match="no key 'nope'"):
        sup.call(spec, "hostile.plug:delete_missing", None)
    # A denial the host never made is the plugin's own exception, not a host verdict.
    with pytest.raises(PluginError) as forged:
        sup.call(spec, "hostile.plug:forge_denial", None)
    assert not isinstance(forged.value, PermissionDenied)
    assert "permission_denied" in forged.value.message


def test_log_and_print_reach_the_host(
    sup: Supervisor, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = make_spec(root, "logs.strict", "strict")
    with caplog.at_level(logging.DEBUG, logger="corral.plugin.logs.strict"):
        assert sup.call(spec, "hostile.plug:logs", None) == 1
    text = caplog.text
    assert "hello from plugin" in text
    assert "printed line" in text


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_timeout_kills_only_that_worker(sup: Supervisor, root: Path, level: str) -> None:
    bystander = make_spec(root, f"bystander.{level}", level)
    sup.call(bystander, "hostile.plug:noop", None)
    by_pid = sup.worker_pid(bystander.plugin_id)
    spec = make_spec(root, f"timeout.{level}", level, timeout_ms=300)
    sup.call(spec, "hostile.plug:noop", None)
    pid = sup.worker_pid(spec.plugin_id)
    assert pid is not None
    with pytest.raises(PluginTimeout) as info:
        sup.call(spec, "hostile.plug:sleep", {"s": 30})
    assert info.value.details["limit"] == "timeout-ms"
    assert info.value.details["measured"] >= 300
    assert not alive(pid)
    assert sup.call(spec, "hostile.plug:sleep", {"s": 0}) == "woke"
    assert sup.worker_pid(bystander.plugin_id) == by_pid
    assert sup.last_metrics(spec.plugin_id) is not None


@pytest.mark.parametrize("level", LEVELS)
def test_cpu_limit(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"cpu.{level}", level, cpu_seconds=1, timeout_ms=20_000)
    with pytest.raises(ResourceLimitExceeded) as info:
        sup.call(spec, "hostile.plug:burn", None)
    assert info.value.details["limit"] == "cpu-seconds"
    assert info.value.details["measured"] > 0.5  # CPU timers are tick-sampled
    assert sup.call(spec, "hostile.plug:noop", None) is None


@pytest.mark.parametrize("level", LEVELS)
def test_memory_limit(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"mem.{level}", level, memory_mb=200)
    assert sup.call(spec, "hostile.plug:hog", {"mb": 20}) == 20
    with pytest.raises(ResourceLimitExceeded) as info:
        sup.call(spec, "hostile.plug:hog", {"mb": 4000})
    assert info.value.details["limit"] == "memory-mb"
    assert sup.call(spec, "hostile.plug:noop", None) is None


@pytest.mark.parametrize("level", LEVELS)
def test_result_and_output_caps(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"caps.{level}", level, max_result_bytes=10_000, max_output_bytes=5_000)
    assert len(sup.call(spec, "hostile.plug:huge", {"n": 5_000})) == 5_000
    with pytest.raises(ResourceLimitExceeded) as info:
        sup.call(spec, "hostile.plug:huge", {"n": 1_000_000})
    assert info.value.details["limit"] == "result-size"
    assert info.value.details["measured"] > 10_000
    assert sup.call(spec, "hostile.plug:chatty", {"lines": 10}) == "done"
    with pytest.raises(ResourceLimitExceeded) as info:
        sup.call(spec, "hostile.plug:chatty", {"lines": 1000})
    assert info.value.details["limit"] == "output-size"
    assert sup.call(spec, "hostile.plug:noop", None) is None


# -- crashes and hostile RPC -----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_crash_then_recover(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"crash.{level}", level)
    sup.call(spec, "hostile.plug:noop", None)
    first = sup.worker_pid(spec.plugin_id)
    with pytest.raises(WorkerCrashed) as info:
        sup.call(spec, "hostile.plug:exit_", {"code": 3})
    assert info.value.details["exit_status"] == 3
    assert sup.call(spec, "hostile.plug:noop", None) is None
    second = sup.worker_pid(spec.plugin_id)
    assert second is not None
    assert second != first

    # SIGKILL from outside, mid-call.
    def kill_soon() -> None:
        time.sleep(0.3)
        os.kill(second, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    with pytest.raises(WorkerCrashed) as info:
        sup.call(spec, "hostile.plug:sleep", {"s": 30})
    killer.join()
    assert info.value.details["signal"] == "SIGKILL"
    assert sup.call(spec, "hostile.plug:noop", None) is None


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("attack", ["garbage", "oversized", "forged"])
def test_hostile_frames_kill_only_that_worker(
    sup: Supervisor, root: Path, level: str, attack: str
) -> None:
    bystander = make_spec(root, f"frames-bystander.{level}", level)
    sup.call(bystander, "hostile.plug:noop", None)
    by_pid = sup.worker_pid(bystander.plugin_id)
    spec = make_spec(root, f"frames.{attack}.{level}", level)
    sup.call(spec, "hostile.plug:noop", None)
    pid = sup.worker_pid(spec.plugin_id)
    assert pid is not None
    t0 = time.monotonic()
    with pytest.raises(WorkerCrashed) as info:
        sup.call(spec, f"hostile.plug:{attack}", None)
    assert time.monotonic() - t0 < 5  # killed at once, well before its 10 s+ sleep ends
    assert "protocol" in info.value.details
    assert not alive(pid)
    assert sup.call(spec, "hostile.plug:noop", None) is None
    assert sup.worker_pid(bystander.plugin_id) == by_pid
    assert sup.call(bystander, "hostile.plug:noop", None) is None


def test_circuit_breaker_opens_and_resets(root: Path) -> None:
    with Supervisor() as sup:
        spec = make_spec(root, "circuit", "limited")
        for _i in range(3):
            with pytest.raises(WorkerCrashed) as info:
                sup.call(spec, "hostile.plug:exit_", {"code": 9})
            assert info.value.details["exit_status"] == 9
        assert info.value.details.get("circuit") == "open"
        with pytest.raises(WorkerCrashed) as info:
            sup.call(spec, "hostile.plug:noop", None)
        assert info.value.details["circuit"] == "open"
        assert sup.worker_pid(spec.plugin_id) is None
        sup.reset(spec.plugin_id)
        assert sup.call(spec, "hostile.plug:noop", None) is None


def test_stop_and_close_leave_no_zombies_or_orphans(root: Path) -> None:
    before = children_of(os.getpid())
    sup = Supervisor()
    pids = []
    for level in LEVELS:
        spec = make_spec(root, f"zombies.{level}", level, spawn=("echo",))
        sup.call(spec, "hostile.plug:spawn", {"argv": ["echo", "x"]})
        pid = sup.worker_pid(spec.plugin_id)
        assert pid is not None
        pids.append(pid)
    with pytest.raises(WorkerCrashed):
        sup.call(make_spec(root, "zombies.crash", "strict"), "hostile.plug:exit_", {"code": 1})
    sup.stop("zombies.limited")
    assert not alive(pids[0])
    assert sup.worker_pid("zombies.limited") is None
    server = sup._forkserver.pid
    assert server is not None
    assert alive(server)
    tag = sup._forkserver.tag
    assert server in tagged(tag)
    assert pids[1] in tagged(tag)
    sup.close()
    assert children_of(os.getpid()) == before
    for pid in [*pids, server]:
        assert not Path(f"/proc/{pid}").exists()
    assert tagged(tag) == []  # no worker, spare or fork server left anywhere, not even orphaned
    with pytest.raises(CorralError, match="closed"):
        sup.call(make_spec(root, "zombies.after", "limited"), "hostile.plug:noop", None)


def test_acall(sup: Supervisor, root: Path) -> None:
    import asyncio

    spec = make_spec(root, "acall.strict", "strict")
    assert asyncio.run(sup.acall(spec, "hostile.plug:compute", {"n": 10})) == 285


def test_idle_workers_are_stopped(root: Path) -> None:
    with Supervisor(idle_seconds=0.0) as sup:
        idle = make_spec(root, "idle.a", "limited")
        sup.call(idle, "hostile.plug:noop", None)
        pid = sup.worker_pid(idle.plugin_id)
        assert pid is not None
        time.sleep(1.1)  # idle checks run at most once a second
        sup.call(make_spec(root, "idle.b", "limited"), "hostile.plug:noop", None)
        assert sup.worker_pid(idle.plugin_id) is None
        assert not alive(pid)
        assert sup.call(idle, "hostile.plug:noop", None) is None


def test_workers_die_with_the_forkserver(root: Path) -> None:
    with Supervisor() as sup:
        pids = []
        for level in LEVELS:
            spec = make_spec(root, f"orphan.{level}", level)
            sup.call(spec, "hostile.plug:noop", None)
            pid = sup.worker_pid(spec.plugin_id)
            assert pid is not None
            pids.append(pid)
        server = sup._forkserver.pid
        assert server is not None
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(alive(p) for p in pids)
        spec = make_spec(root, "orphan.limited", "limited")
        with pytest.raises(CorralError):
            sup.call(spec, "hostile.plug:noop", None)
        assert sup.call(spec, "hostile.plug:noop", None) is None  # a new fork server
        tag = sup._forkserver.tag
    assert tagged(tag) == []


# -- more hostile plugins ----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_cannot_signal_outside_processes(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"signals.{level}", level)
    sup.call(spec, "hostile.plug:noop", None)
    server = sup._forkserver.pid
    assert server is not None
    targets = [os.getpid(), server]
    got = sup.call(spec, "hostile.plug:signal_others", {"pids": targets})
    assert got  # all() below must not pass on nothing
    assert all(v != "sent" for v in got.values()), got
    assert alive(server)


def test_strict_cannot_peek_at_outside_processes(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "peek.strict", "strict")
    sup.call(spec, "hostile.plug:noop", None)
    server = sup._forkserver.pid
    assert server is not None
    paths = [f"/proc/{os.getpid()}/environ", f"/proc/{server}/cmdline", "/proc/1/environ"]
    got = sup.call(spec, "hostile.plug:proc_peek", {"paths": paths})
    assert got  # all() below must not pass on nothing
    assert all(v != "read" for v in got.values()), got


@pytest.mark.parametrize("level", LEVELS)
def test_forked_children_die_with_their_worker(root: Path, level: str) -> None:
    with Supervisor() as sup:
        spec = make_spec(root, f"forker.{level}", level)
        assert sup.call(spec, "hostile.plug:forker", {"n": 5}) == 5
        tag = sup._forkserver.tag
        assert len(tagged(tag)) >= 1 + 1 + 5  # fork server, worker, children
        sup.stop(spec.plugin_id)
        deadline = time.monotonic() + 5
        while len(tagged(tag)) > 2 and time.monotonic() < deadline:  # fork server + spare
            time.sleep(0.02)
        assert len(tagged(tag)) <= 2
    assert tagged(tag) == []


@pytest.mark.parametrize("level", LEVELS)
def test_worker_hanging_up_is_killed(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"hangup.{level}", level)
    sup.call(spec, "hostile.plug:noop", None)
    pid = sup.worker_pid(spec.plugin_id)
    assert pid is not None
    t0 = time.monotonic()
    with pytest.raises(WorkerCrashed):
        sup.call(spec, "hostile.plug:hang_up", None)
    assert time.monotonic() - t0 < 15  # well below the 30 s the worker sleeps after hanging up
    assert not alive(pid)


def test_rpc_and_host_api_abuse(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "abuse.strict", "strict", max_output_bytes=20_000)
    with pytest.raises(WorkerCrashed) as info:
        sup.call(spec, "hostile.plug:hello_mid_call", None)
    assert "protocol" in info.value.details
    got = sup.call(spec, "hostile.plug:bad_request", None)
    assert got == ["net-connect:?", "spawn:?", "host-api:no.such.op"]
    with pytest.raises(ResourceLimitExceeded) as limit:
        sup.call(spec, "hostile.plug:log_flood", {"n": 100})
    assert limit.value.details["limit"] == "output-size"
    assert sup.call(spec, "hostile.plug:noop", None) is None


def test_strict_refuses_when_the_kernel_lacks_a_feature(root: Path) -> None:
    with Supervisor() as sup:
        # What _kernel.probe() would report on a kernel without Landlock.
        sup._missing_for_strict = ["landlock"]
        spec = make_spec(root, "refuse.strict", "strict")
        with pytest.raises(CorralError, match="landlock") as info:
            sup.call(spec, "hostile.plug:noop", None)
        assert not isinstance(info.value, WorkerCrashed)
        assert info.value.details["missing"] == ["landlock"]
        assert sup.worker_pid(spec.plugin_id) is None
        assert sup._forkserver.pid is None  # nothing was even forked
        limited = make_spec(root, "refuse.limited", "limited")
        assert sup.call(limited, "hostile.plug:noop", None) is None


@pytest.mark.parametrize("level", LEVELS)
def test_worker_that_cannot_confine_itself_refuses(sup: Supervisor, root: Path, level: str) -> None:
    spec = make_spec(root, f"unconfinable.{level}", level)
    spec.tmp_dir.rmdir()  # its private cwd is gone: it must not run anywhere else
    with pytest.raises(CorralError, match="could not confine") as info:
        sup.call(spec, "hostile.plug:noop", None)
    assert not isinstance(info.value, WorkerCrashed)
    assert sup.worker_pid(spec.plugin_id) is None
    spec.tmp_dir.mkdir()
    assert sup.call(spec, "hostile.plug:noop", None) is None


# -- the spec itself ----------------------------------------------------------------------


@pytest.mark.parametrize(("isolation", "bounds", "problem"), [
    ("none", {}, "isolation must be 'limited' or 'strict', got 'none'"),
    ("Strict", {}, "isolation must be 'limited' or 'strict', got 'Strict'"),
    ("strict", {"memory_mb": 0}, "memory_mb must be positive"),
    ("limited", {"cpu_seconds": -1}, "cpu_seconds must be positive"),
    ("strict", {"timeout_ms": 0}, "timeout_ms must be positive"),
    ("strict", {"max_result_bytes": 0}, "max_result_bytes must be positive"),
])
def test_a_spec_that_would_leave_a_worker_unconfined_or_unbounded_is_refused(
    tmp_path: Path, isolation: str, bounds: dict[str, int], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        make_spec(tmp_path, "acme.bad", isolation, **bounds)


def test_a_spec_with_the_smallest_bounds_is_accepted(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "acme.small", "limited", memory_mb=1, cpu_seconds=1,
                     timeout_ms=1, max_result_bytes=1)
    assert (spec.isolation, spec.memory_mb, spec.cpu_seconds, spec.timeout_ms,
            spec.max_result_bytes) == ("limited", 1, 1, 1, 1)
