"""Malformed worker traffic is the plugin's fault: deep, oversized or mistyped frames from
real strict workers end as ``crashed`` for that plugin, never as a host error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import Host
from corral._errors import CorralError, PluginError, WorkerCrashed
from corral._sandbox.rpc import (
    MAX_DEPTH,
    ProtocolError,
    Request,
    decode_result,
    decode_worker,
    encode,
)
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

#: Hostile exports: some go through ctx and the worker's own encoder, some write raw
#: frames to the RPC socket (descriptor 3), as code running in the worker can.
SOURCE = r'''
import os
import struct
import sys
import time

import msgspec

from corral._sandbox.rpc import Result, Usage, encode

_pack = msgspec.msgpack.encode


def nest(n):
    v = None
    for _ in range(n):
        v = [v]
    return v


def call_id():
    frame = sys._getframe(1)
    while "call" not in frame.f_locals:
        frame = frame.f_back
    return frame.f_locals["call"].id


def send(data):
    view = memoryview(data)
    while view:
        view = view[os.write(3, view):]
    time.sleep(10)


def raw_map(**fields):
    """A msgpack map of raw, already encoded values (so anything can be nested in it)."""
    body = bytes([0x80 | len(fields)])
    for key, value in fields.items():
        body += _pack(key) + value
    return struct.pack(">I", len(body)) + body


def echo(inp, ctx):
    return {"ok": inp}


def deep_result(inp, ctx):
    return nest(inp)


def deep_state(inp, ctx):
    ctx.state.set("deep.k", nest(inp))
    return "stored"


def deep_publish(inp, ctx):
    ctx.events.publish("deep.t", nest(inp))
    return "published"


def raw_deep_result(inp, ctx):
    value = b"[" * inp + b"]" * inp
    send(encode(Result(id=call_id(), value=value, usage=Usage(0.0, 0.0, 0))))


def raw_deep_request(inp, ctx):
    send(raw_map(type=_pack("request"), id=_pack(1), op=_pack("state.set"),
                 args=b"\x91" * inp + b"\xc0"))


def raw_deep_log_field(inp, ctx):
    # An unknown field, and the tag last: msgspec skips values recursively to find it.
    send(raw_map(level=_pack(20), name=_pack("x"), message=_pack("m"),
                 junk=b"\x91" * inp + b"\xc0", type=_pack("log")))


def raw_oversized(inp, ctx):
    send(struct.pack(">I", inp) + b"\x00" * 64)


def raw_wrong_types(inp, ctx):
    send(raw_map(type=_pack("result"), id=_pack("one"), value=_pack(b"1"),
                 usage=_pack({"cpu_user_ms": 0.0, "cpu_system_ms": 0.0, "peak_rss_kb": 0})))


def raw_bad_json(inp, ctx):
    send(encode(Result(id=call_id(), value=b"[1, 2", usage=Usage(0.0, 0.0, 0))))
'''


# -- the decoders alone ------------------------------------------------------------------


def frame_map(**fields: bytes) -> bytes:
    body = bytes([0x80 | len(fields)])
    for key, value in fields.items():
        body += msgspec.msgpack.encode(key) + value
    return body


def test_decoders_refuse_depth_before_recursing() -> None:
    p = msgspec.msgpack.encode
    # 100 000 levels: msgspec alone raises RecursionError on every one of these.
    for body in (
        frame_map(type=p("request"), id=p(1), op=p("x"), args=b"\x91" * 100_000 + b"\xc0"),
        frame_map(args=b"\x91" * 100_000 + b"\xc0", type=p("request"), id=p(1), op=p("x")),
        frame_map(type=p("hello"), pid=p(1), junk=b"\x81\xa1k" * 100_000 + b"\xc0"),
        frame_map(type=p("hello"), pid=p(1), junk=b"\xdc\x00\x01" * 100_000 + b"\xc0"),
        b"\x91" * 100_000,  # truncated as well as deep
    ):
        with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
            decode_worker(body)
        with pytest.raises(ProtocolError, match="nested deeper"):
            decode_worker(memoryview(body))
    # Frames that begin like an honest Result skip the scan: the schema must stop them.
    deep = b"\x91" * 100_000 + b"\xc0"
    usage = frame_map(cpu_user_ms=p(0.0), cpu_system_ms=p(0.0), peak_rss_kb=p(0))
    for body in (
        frame_map(type=p("result"), id=p(1), value=p(b"1"), junk=deep),
        frame_map(type=p("result"), id=deep, value=p(b"1"), usage=usage),
        frame_map(type=p("result"), id=p(1), value=deep, usage=usage),
        frame_map(type=p("result"), id=p(1), value=p(b"1"), usage=usage[:-1] + b"\x91" + deep),
        frame_map(type=p("result"), id=p(1), value=p(b"1"), usage=b"\x84" + usage[1:]
                  + p("junk") + deep),
        b"\x84" + p("type") + p("result") + p("type") + deep,  # the tag again
    ):
        assert body.startswith(b"\x84\xa4type\xa6result")
        with pytest.raises(ProtocolError, match="malformed worker message"):
            decode_worker(body)
    with pytest.raises(ProtocolError, match=f"result nested deeper than {MAX_DEPTH} levels"):
        decode_result(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ProtocolError, match="result nested deeper"):
        decode_result(b"[" * 100_000)  # unclosed: a recursive decoder would still descend
    with pytest.raises(ProtocolError, match="result nested deeper"):  # brackets in strings
        decode_result(b'[' * 65 + b'"]]]]"' + b"]" * 65)
    with pytest.raises(ProtocolError, match="result nested deeper"):  # escaped quotes too
        decode_result(b'[' * 65 + b'"\\"]]]]"' + b"]" * 65)


def test_decoders_accept_the_limit_exactly() -> None:
    """Positive control: MAX_DEPTH levels pass (the message map is the first)."""
    args = {"v": json.loads("[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))}
    msg = decode_worker(encode(Request(id=1, op="state.set", args=args))[4:])
    assert isinstance(msg, Request)
    assert msg.args == args
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode_worker(encode(Request(id=1, op="state.set", args={"v": [args["v"]]}))[4:])
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert decode_result(deepest.encode()) == json.loads(deepest)
    # Brackets in strings, escapes, many shallow containers: not deep, decoded as before.
    tricky: Any = {"s": "[[[[" * 40, "q": 'a"[{' * 40, "rows": [{"a": [i]} for i in range(500)]}
    text = msgspec.json.encode(tricky)
    assert decode_result(text) == tricky
    assert decode_result(b'"\\\\"') == "\\"
    many = Request(id=2, op="events.publish", args={"payload": [{"é": [1.5, None]}] * 500})
    assert decode_worker(encode(many)[4:]) == many


def test_other_decoding_failures_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="malformed worker message"):
        decode_worker(frame_map(type=msgspec.msgpack.encode("result"), id=b"\xa3one"))
    with pytest.raises(ProtocolError, match="result is not JSON"):
        decode_result(b"[1, 2")


# -- real strict workers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    (root / "code" / "hostile_frames").mkdir(parents=True)
    (root / "code" / "hostile_frames" / "__init__.py").write_text(SOURCE)
    return root


class _Broker:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, plugin_id: str, op: str, args: dict[str, Any]) -> Any:
        self.seen.append((plugin_id, op))
        return 1


@pytest.fixture(scope="module")
def broker() -> _Broker:
    return _Broker()


@pytest.fixture(scope="module")
def sup(broker: _Broker) -> Iterator[Supervisor]:
    s = Supervisor(broker=broker)
    yield s
    s.close()


def spec_for(root: Path, plugin_id: str) -> SandboxSpec:
    base = root / "plugins" / plugin_id
    for name in ("data", "tmp", "cache"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        plugin_id=plugin_id, isolation="strict", plugin_dir=root / "code", timeout_ms=20_000,
        data_dir=base / "data", tmp_dir=base / "tmp", cache_dir=base / "cache",
    )


CASES = [
    ("deep_result", 100, "result nested deeper than 64 levels"),
    ("deep_state", 100, "frame nested deeper than 64 levels"),
    ("deep_publish", 100, "frame nested deeper than 64 levels"),
    ("raw_deep_result", 100_000, "result nested deeper than 64 levels"),
    ("raw_deep_request", 100_000, "frame nested deeper than 64 levels"),
    ("raw_deep_log_field", 100_000, "frame nested deeper than 64 levels"),
    ("raw_oversized", 2**31, "exceeds the .*-byte frame cap"),
    ("raw_wrong_types", 0, r"Expected `int`, got `str` - at `\$.id`"),
    ("raw_bad_json", 0, "result is not JSON"),
]


@pytest.mark.parametrize(("export", "arg", "message"), CASES, ids=[c[0] for c in CASES])
def test_hostile_frame_crashes_only_that_call(
    sup: Supervisor, broker: _Broker, root: Path, export: str, arg: int, message: str
) -> None:
    spec = spec_for(root, f"frames.{export}")
    assert sup.call(spec, "hostile_frames:echo", 1) == {"ok": 1}
    first = sup.worker_pid(spec.plugin_id)
    with pytest.raises(WorkerCrashed, match=message) as info:
        sup.call(spec, f"hostile_frames:{export}", arg)
    assert info.value.code == "crashed"
    assert "broke the RPC protocol" in info.value.message
    assert sup.worker_pid(spec.plugin_id) is None  # killed
    metrics = sup.last_metrics(spec.plugin_id)
    assert metrics is not None
    assert metrics.outcome == "crashed"
    # The host goes on, and a fresh worker serves the next call.
    assert sup.call(spec, "hostile_frames:echo", 2) == {"ok": 2}
    assert sup.worker_pid(spec.plugin_id) not in (None, first)
    assert (spec.plugin_id, "state.set") not in broker.seen  # nothing deep got through


def test_too_deep_for_the_worker_itself_is_a_plugin_error(sup: Supervisor, root: Path) -> None:
    """100 000 levels never leave the worker (its encoder gives up): a plugin error."""
    spec = spec_for(root, "frames.very_deep")
    for export in ("deep_result", "deep_state"):
        with pytest.raises(PluginError, match="RecursionError"):
            sup.call(spec, f"hostile_frames:{export}", 100_000)
        assert sup.call(spec, "hostile_frames:echo", 3) == {"ok": 3}


# -- an embedded host and the CLI ---------------------------------------------------------------


MANIFEST = """
[plugin]
id = "acme.frames"
name = "Frames"
version = "1.0.0"

[permissions]
host-api = ["state.write:deep.*", "events.publish:deep.*"]

[sandbox]
isolation = "strict"
timeout-ms = 20000

[exports]
echo = "hostile_frames:echo"
deep_result = "hostile_frames:deep_result"
deep_state = "hostile_frames:deep_state"
deep_publish = "hostile_frames:deep_publish"
raw_deep_request = "hostile_frames:raw_deep_request"
"""


def make_plugin(root: Path) -> Path:
    d = root / "src" / "acme.frames"
    (d / "hostile_frames").mkdir(parents=True)
    (d / "hostile_frames" / "__init__.py").write_text(SOURCE)
    (d / "corral.toml").write_text(textwrap.dedent(MANIFEST))
    return d


def test_embedded_host_catches_it_as_a_corral_error(tmp_path: Path) -> None:
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make_plugin(tmp_path))
        host.enable("acme.frames")
        for export, arg in (("deep_state", 100), ("raw_deep_request", 100_000)):
            with pytest.raises(CorralError) as info:  # what an embedding program catches
                host.call("acme.frames", export, arg)
            assert info.value.code == "crashed"
            assert "nested deeper than 64 levels" in info.value.message
            assert host.call("acme.frames", "echo", export) == {"ok": export}


def test_cli_call_exits_5(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Host(home=home) as host:
        host.register(make_plugin(tmp_path))
        host.enable("acme.frames")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(CORRAL_HOME=str(home), CORRAL_FORKSERVER_SHARED="0")

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", *args],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )

    res = corral("call", "acme.frames", "deep_publish", "--input", "100", "--json")
    assert res.returncode == 5, (res.stdout, res.stderr)
    out = res.stdout + res.stderr
    assert "crashed" in out
    assert "nested deeper than 64 levels" in out
    assert "Traceback" not in out
    res = corral("call", "acme.frames", "echo", "--input", "7", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"result": {"ok": 7}}
