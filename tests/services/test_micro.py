"""The micro-plugin manager: kinds and shapes, registration, execution, limits."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from corral._errors import (
    InvalidPluginError,
    NotFoundError,
    PluginError,
    PluginTimeout,
    UsageError,
)
from corral._services.micro.manager import JSON_TYPES, MicroManager, Verdict, fits, micro


@pytest.fixture
def mgr() -> Iterator[MicroManager]:
    with MicroManager() as m:
        yield m


@micro(id="t.text.upper", type="transformer")
def upper(s: str) -> str:
    return s.upper()


@micro(id="t.text.semver", type="validator")
def is_semver(s: str) -> Verdict:
    parts = s.split(".")
    ok = len(parts) == 3 and all(p.isdigit() for p in parts)
    return {"valid": ok, "reasons": [] if ok else [f"{s!r} is not MAJOR.MINOR.PATCH"]}


def test_register_execute_list_unregister(mgr: MicroManager) -> None:
    info = mgr.register(upper)
    mgr.register(is_semver)
    assert (info.id, info.type, info.input, info.output) == ("t.text.upper", "transformer",
                                                            "str", "str")
    assert mgr.execute("t.text.upper", "abc") == "ABC"
    assert mgr.execute("t.text.semver", "1.2.3") == {"valid": True, "reasons": []}
    assert mgr.execute("t.text.semver", "x")["valid"] is False
    assert [i.id for i in mgr.list()] == ["t.text.semver", "t.text.upper"]
    assert [i.id for i in mgr.list("validator")] == ["t.text.semver"]
    assert "t.text.upper" in mgr
    assert len(mgr) == 2
    mgr.unregister("t.text.upper")
    with pytest.raises(NotFoundError, match=r"t\.text\.upper"):
        mgr.execute("t.text.upper", "abc")
    assert mgr.execute("t.text.semver", "1.0.0")["valid"]


def test_manager_decorator_and_ctx(mgr: MicroManager) -> None:
    @mgr.micro(id="t.fmt.hello", type="formatter")
    def hello(name: str) -> str:
        return f"hello {name}"

    assert mgr.execute("t.fmt.hello", "ada") == "hello ada"

    def with_ctx(value: Any, ctx: Any) -> Any:
        return [value, ctx]

    mgr.register(with_ctx, id="t.util.ctx", type="utility", ctx="CTX")
    assert mgr.execute("t.util.ctx", 1) == [1, "CTX"]


def test_unknown_id_suggests(mgr: MicroManager) -> None:
    mgr.register(upper)
    with pytest.raises(NotFoundError, match=r"did you mean 't.text.upper'"):
        mgr.execute("t.text.uper", "x")
    with pytest.raises(NotFoundError):
        mgr.get("nope.nope")
    with pytest.raises(NotFoundError):
        mgr.unregister("nope.nope")


def test_duplicate_id_refused(mgr: MicroManager) -> None:
    mgr.register(upper)
    with pytest.raises(UsageError, match="already registered"):
        mgr.register(upper)


@pytest.mark.parametrize(
    ("kind", "fn", "message"),
    [
        ("validator", lambda: _returns_str, "must return a verdict"),
        ("formatter", lambda: _returns_int, "must return str"),
        ("command-enhancer", lambda: _takes_str, "takes dict"),
        ("command-enhancer", lambda: _dict_to_str, "must return dict"),
    ],
)
def test_shape_checked_at_registration(mgr: MicroManager, kind: str, fn: Any,
                                       message: str) -> None:
    with pytest.raises(InvalidPluginError, match=message) as info:
        mgr.register(fn(), id="t.bad.one", type=kind)
    assert "t.bad.one" in str(info.value)
    assert "t.bad.one" not in mgr


def _returns_str(x: Any) -> str:
    return ""


def _returns_int(x: Any) -> int:
    return 0


def _takes_str(x: str) -> dict[str, Any]:
    return {}


def _dict_to_str(x: dict[str, Any]) -> str:
    return ""


@dataclass
class Thing:
    a: int


def test_non_json_annotation_and_bad_options(mgr: MicroManager) -> None:
    def takes_thing(x: Thing) -> int:
        return 1

    with pytest.raises(InvalidPluginError, match="not JSON data"):
        mgr.register(takes_thing, id="t.bad.thing", type="utility")
    with pytest.raises(InvalidPluginError, match="type must be one of"):
        mgr.register(upper, type="reformatter")
    with pytest.raises(InvalidPluginError, match="max-ms"):
        mgr.register(upper, max_ms=0)
    with pytest.raises(InvalidPluginError, match="is not one of"):
        mgr.register(lambda x: x, id="t.bad.decl", type="utility", output="float")
    with pytest.raises(UsageError, match="needs an id"):
        mgr.register(lambda x: x, type="utility")


def test_declared_schema_without_annotations(mgr: MicroManager) -> None:
    info = mgr.register(len, id="t.len.decl", type="transformer", input="str",
                        output="int")
    assert (info.input, info.output) == ("str", "int")
    assert mgr.execute("t.len.decl", "abc") == 3


@pytest.mark.parametrize(
    ("kind", "result", "problem"),
    [
        ("validator", "yes", "verdict"),
        ("validator", {"valid": "yes", "reasons": []}, "'valid'"),
        ("validator", {"valid": True, "reasons": [1]}, "reasons"),
        ("formatter", 12, "str expected, got int"),
        ("command-enhancer", ["cmd"], "dict expected, got list"),
    ],
)
def test_wrong_shape_at_run_time(mgr: MicroManager, kind: str, result: Any,
                                 problem: str) -> None:
    mgr.register(lambda x: result, id="t.liar.one", type=kind)
    mgr.register(upper)
    with pytest.raises(PluginError, match=problem) as info:
        mgr.execute("t.liar.one", {"cmd": "x"})
    assert "t.liar.one" in info.value.message
    assert info.value.details["micro"] == "t.liar.one"
    assert mgr.execute("t.text.upper", "ok") == "OK"  # the rest keeps serving


def test_declared_output_type_checked(mgr: MicroManager) -> None:
    mgr.register(lambda x: "3", id="t.num.lie", type="transformer", output="int")
    mgr.register(lambda x: 3, id="t.num.ok", type="transformer", output="number")
    mgr.register(lambda x: 3.5, id="t.num.float", type="transformer", output="number")
    with pytest.raises(PluginError, match="int expected, got str"):
        mgr.execute("t.num.lie", None)
    assert mgr.execute("t.num.ok", None) == 3
    assert mgr.execute("t.num.float", None) == 3.5


def test_hook_and_utility_return_anything(mgr: MicroManager) -> None:
    mgr.register(lambda x: None, id="t.hook.none", type="hook")
    mgr.register(lambda x: {"any": [1]}, id="t.util.any", type="utility")
    assert mgr.execute("t.hook.none", 1) is None
    assert mgr.execute("t.util.any", 1) == {"any": [1]}


def test_raises_becomes_plugin_error(mgr: MicroManager) -> None:
    def boom(x: Any) -> Any:
        raise ValueError("kaput")

    mgr.register(boom, id="t.boom.one", type="utility")
    mgr.register(upper)
    with pytest.raises(PluginError, match=r"t.boom.one raised ValueError: kaput") as info:
        mgr.execute("t.boom.one", 1)
    assert "kaput" in info.value.details["traceback"]
    assert mgr.execute("t.text.upper", "x") == "X"


def test_hang_inline_times_out_then_moves_to_a_thread() -> None:
    with MicroManager(watch_interval=0.005) as mgr:
        release = threading.Event()

        def slow(x: Any) -> Any:
            release.wait(30)
            return x

        mgr.register(slow, id="t.slow.one", type="utility", max_ms=30)
        mgr.register(upper)
        with pytest.raises(PluginTimeout, match=r"t.slow.one .* 30 ms") as info:
            mgr.execute("t.slow.one", 1)
        assert info.value.details["limit"] == "max-ms"
        assert mgr.get("t.slow.one").mode == "thread"
        start = time.monotonic()
        with pytest.raises(PluginTimeout):
            mgr.execute("t.slow.one", 1)
        # the caller returned on time: well below the 30 s the handler would take
        assert time.monotonic() - start < 10
        assert mgr.execute("t.text.upper", "x") == "X"
        release.set()


def test_blocking_handler_returns_on_time(mgr: MicroManager) -> None:
    gate = threading.Event()

    def hang(x: Any) -> Any:
        gate.wait(30)
        return x

    mgr.register(hang, id="t.hang.one", type="utility", max_ms=20, blocking=True)
    start = time.monotonic()
    with pytest.raises(PluginTimeout, match=r"t\.hang\.one"):
        mgr.execute("t.hang.one", 1)
    assert time.monotonic() - start < 10  # well below the 30 s the handler would take
    gate.set()
    mgr.register(lambda x: x + 1, id="t.fast.thread", type="utility", blocking=True)
    assert mgr.execute("t.fast.thread", 1) == 2


def test_async_handler(mgr: MicroManager) -> None:
    async def double(x: int) -> int:
        return x * 2

    info = mgr.register(double, id="t.async.double", type="transformer")
    assert info.mode == "thread"
    assert mgr.execute("t.async.double", 4) == 8


def test_fast_call_no_timeout_false_positive(mgr: MicroManager) -> None:
    mgr.register(upper)
    for _ in range(20_000):
        assert mgr.execute("t.text.upper", "a") == "A"


def test_host_invoke_path(mgr: MicroManager) -> None:
    calls: list[tuple[str, Any]] = []

    def invoke(micro_id: str, value: Any) -> Any:
        calls.append((micro_id, value))
        return f"{micro_id}:{value}"

    @dataclass
    class M:
        id: str
        type: str
        max_ms: int = 100
        description: str = ""

    mgr.register_plugin("acme.p", [M("acme.p.fmt", "formatter")], invoke=invoke)
    assert mgr.execute("acme.p.fmt", 1) == "acme.p.fmt:1"
    assert mgr.get("acme.p.fmt").mode == "invoke"
    assert mgr.get("acme.p.fmt").plugin_id == "acme.p"
    # replacing the plugin's set drops micro-plugins it no longer declares
    ticket = mgr.register_plugin("acme.p", [M("acme.p.other", "utility")],
                                 functions={"acme.p.other": lambda x, ctx: ctx},
                                 ctx={"c": 1}, version="2")
    assert ticket.wait(2)
    assert "acme.p.fmt" not in mgr
    assert mgr.execute("acme.p.other", 0) == {"c": 1}
    with pytest.raises(InvalidPluginError, match="has no handler"):
        mgr.register_plugin("acme.q", [M("acme.q.x", "utility")], functions={})
    mgr.unregister_plugin("acme.p")
    assert len(mgr) == 0


def test_drain_waits_for_a_held_snapshot(mgr: MicroManager) -> None:
    mgr.register(upper)
    held = mgr._entries
    ticket = mgr.swap(lambda s: s.lower(), id="t.text.upper", type="transformer", version="2")
    assert not ticket.wait(0.1)  # something still holds the old table
    del held
    gc.collect()
    assert ticket.wait(2)
    assert [i.version for i in ticket.replaced] == ["1"]


def test_fits() -> None:
    assert fits("int", "number")
    assert fits("verdict", "dict")
    assert fits("any", "str")
    assert not fits("str", "int")
    assert not fits("number", "int")
    assert set(JSON_TYPES) >= {"any", "str", "verdict"}
    assert sys.implementation.name == "cpython"  # the drain relies on reference counts
