"""Compositions: chains, fan-out, conditions, nesting, validation, the dict form."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral._errors import NotFoundError, PluginError, PluginTimeout, UsageError
from corral._services.micro.compose import (
    Chain,
    Composition,
    FanOut,
    Pipeline,
    Ref,
    Step,
    compile_expression,
    pipeline_from_dict,
    validate_chain,
)
from corral._services.micro.manager import MicroManager


@pytest.fixture
def mgr() -> Iterator[MicroManager]:
    with MicroManager(watch_interval=0.005) as m:
        m.register(lambda s: s.strip(), id="t.strip", type="transformer", input="str",
                   output="str")
        m.register(len, id="t.len", type="transformer", input="str", output="int")
        m.register(lambda n: n * 2, id="t.double", type="transformer", input="int",
                   output="int")
        m.register(lambda n: f"<{n}>", id="t.fmt", type="formatter")
        m.register(lambda n: {"valid": n > 2, "reasons": [] if n > 2 else ["small"]},
                   id="t.big", type="validator", input="int")
        m.register(_boom, id="t.boom", type="transformer", input="int", output="int")
        m.register(lambda d: {**d, "flag": True}, id="t.cmd", type="command-enhancer")
        yield m


def _sleeper(seconds: float) -> Any:
    def sleep(x: Any) -> Any:
        time.sleep(seconds)
        return x

    return sleep


def _boom(n: Any) -> Any:
    raise RuntimeError("boom")


def test_chain_output_feeds_input(mgr: MicroManager) -> None:
    assert Composition(["t.strip", "t.len", "t.double", "t.fmt"], mgr).run("  abc ") == "<6>"
    assert validate_chain(["t.strip", "t.len"], mgr) == "int"


def test_validate_refuses_type_mismatch_naming_the_link(mgr: MicroManager) -> None:
    with pytest.raises(UsageError, match=r"link 3 \(t.strip\): takes str, but the link "
                                         r"before it gives int") as info:
        validate_chain(["t.strip", "t.len", "t.strip"], mgr)
    assert info.value.details["link"] == "t.strip"
    with pytest.raises(UsageError, match="link 1"):
        validate_chain(["t.len"], mgr, input="int")
    with pytest.raises(UsageError):
        Composition(["t.len", "t.len"], mgr)  # refused before running


def test_validate_unknown_id(mgr: MicroManager) -> None:
    with pytest.raises(NotFoundError, match=r"link 2 \(t.lne\): no micro-plugin 't.lne'; did "
                                            r"you mean 't.len'"):
        validate_chain(["t.strip", "t.lne"], mgr)


def test_validate_cycle(mgr: MicroManager) -> None:
    a = pipeline_from_dict({"id": "p.a", "steps": [{"micro": "t.strip"}, {"pipeline": "p.b"}]})
    b = pipeline_from_dict({"id": "p.b", "steps": [{"pipeline": "p.a"}]})
    with pytest.raises(UsageError, match=r"cycle: p.a -> p.b -> p.a"):
        validate_chain(a, mgr, {"p.a": a, "p.b": b})
    with pytest.raises(NotFoundError, match=r"no pipeline 'p.c'"):
        validate_chain(Ref("p.c"), mgr, {})


def test_link_failure_names_the_link(mgr: MicroManager) -> None:
    comp = Composition(["t.strip", "t.len", "t.boom", "t.fmt"], mgr)
    with pytest.raises(PluginError, match=r"link 3 \(t.boom\) failed: micro-plugin t.boom "
                                          r"raised RuntimeError: boom") as info:
        comp.run("abc")
    assert info.value.details["link"] == "t.boom"
    assert Composition(["t.strip"], mgr).run(" a ") == "a"


def test_on_error_skip_and_default(mgr: MicroManager) -> None:
    skip = Chain((Step("t.len"), Step("t.boom", on_error="skip"), Step("t.double")))
    assert Composition(skip, mgr).run("abc") == 6
    default = Chain((Step("t.len"), Step("t.boom", on_error="default", default=100),
                     Step("t.double")))
    assert Composition(default, mgr).run("abc") == 200
    with pytest.raises(UsageError, match="default does not fit"):
        validate_chain(Chain((Step("t.len"), Step("t.boom", on_error="default",
                                                      default="x"))), mgr)
    with pytest.raises(UsageError, match="on-error"):
        Step("t.boom", on_error="ignore")


def test_condition_by_validator_and_expression(mgr: MicroManager) -> None:
    gated = Chain((Step("t.len"), Step("t.double", if_valid="t.big")))
    comp = Composition(gated, mgr, input="str")
    assert comp.run("ab") == 2  # 2 is not big: skipped
    assert comp.run("abcd") == 8
    expr = Chain((Step("t.cmd", when="name == 'push' and not dry"),))
    comp2 = Composition(expr, mgr)
    assert comp2.run({"name": "push"}) == {"name": "push", "flag": True}
    assert comp2.run({"name": "push", "dry": True}) == {"name": "push", "dry": True}
    with pytest.raises(UsageError, match="not a validator"):
        validate_chain(Chain((Step("t.len"), Step("t.double", if_valid="t.double"))), mgr)
    with pytest.raises(UsageError, match="changes int into str"):
        validate_chain(Chain((Step("t.len"), Step("t.fmt", when="input > 1"))), mgr)


def test_fan_out_merges(mgr: MicroManager) -> None:
    all_ = Chain((Step("t.len"), FanOut((Step("t.double"), Step("t.fmt")))))
    assert Composition(all_, mgr).run("abc") == [6, "<3>"]
    keyed = Chain((Step("t.len"), FanOut((Step("t.double"), Step("t.fmt", name="text")),
                                         merge="keyed")))
    assert Composition(keyed, mgr).run("abc") == {"t.double": 6, "text": "<3>"}
    first = Chain((Step("t.len"), FanOut((Step("t.boom"), Step("t.double")), merge="first")))
    assert Composition(first, mgr).run("abc") == 6
    serial = FanOut((Step("t.boom"), Step("t.double")), merge="first", parallel=False)
    assert Composition(serial, mgr).run(5) == 10
    none_ok = FanOut((Step("t.boom"), Step("t.boom", name="b2")), merge="first")
    with pytest.raises(PluginError, match="no branch succeeded"):
        Composition(none_ok, mgr).run(1)
    with pytest.raises(PluginError, match=r"t\.boom"):
        Composition(FanOut((Step("t.double"), Step("t.boom"))), mgr).run(1)
    with pytest.raises(UsageError, match="share the key"):
        validate_chain(FanOut((Step("t.double"), Step("t.double")), merge="keyed"), mgr)
    with pytest.raises(UsageError, match="merge must be"):
        FanOut((Step("t.double"),), merge="best")


def test_fan_out_runs_in_parallel() -> None:
    with MicroManager() as m:
        # Each step waits until all four are running: run one after another,
        # the first would never see the others and the barrier would break.
        met = threading.Barrier(4, timeout=30)

        def meet(x: Any) -> Any:
            met.wait()
            return x

        for i in range(4):
            m.register(meet, id=f"s.sleep{i}", type="utility", max_ms=60_000)
        comp = Composition(FanOut(tuple(Step(f"s.sleep{i}") for i in range(4))), m)
        assert comp.run(1) == [1, 1, 1, 1]
        assert not met.broken


def test_nesting_and_refs(mgr: MicroManager) -> None:
    inner = pipeline_from_dict({"id": "p.inner", "steps": [{"micro": "t.len"},
                                                          {"micro": "t.double"}]})
    outer = Pipeline("p.outer", Chain((Step("t.strip"), Ref("p.inner"),
                                       Chain((Step("t.double"), Step("t.fmt"))))))
    pipes = {"p.inner": inner, "p.outer": outer}
    assert validate_chain(outer, mgr, pipes) == "str"
    assert Composition(outer, mgr, pipes).run(" ab ") == "<8>"


def test_timeout_in_a_chain_names_the_link() -> None:
    with MicroManager(watch_interval=0.005) as m:
        m.register(_sleeper(0.2), id="s.slow", type="utility", max_ms=20)
        m.register(lambda x: x, id="s.id", type="utility")
        comp = Composition(["s.id", "s.slow"], m)
        with pytest.raises(PluginTimeout, match=r"link 2 \(s.slow\)"):
            comp.run(1)


def test_revalidated_after_a_swap(mgr: MicroManager) -> None:
    comp = Composition(["t.len", "t.double"], mgr)
    assert comp.run("ab") == 4
    mgr.swap(lambda s: str(len(s)), id="t.len", type="transformer", input="str", output="str")
    with pytest.raises(UsageError, match=r"link 2 \(t.double\)"):
        comp.run("ab")


@pytest.mark.parametrize(
    ("expr", "value", "expected"),
    [
        ("a == 1", {"a": 1}, True),
        ("a != 1", {"a": 1}, False),
        ("a.b.c > 2", {"a": {"b": {"c": 3}}}, True),
        ("input.a < 2", {"a": 3}, False),
        ("a <= 3 and a >= 3", {"a": 3}, True),
        ("kind in ['tag', 'branch']", {"kind": "tag"}, True),
        ("kind not in ['tag']", {"kind": "tag"}, False),
        ("'x' in name", {"name": "xyz"}, True),
        ("not (a == 1 or b == 2)", {"a": 0, "b": 2}, False),
        ("missing == null", {}, True),
        ("a < 'b'", {"a": 1}, False),  # mixed types order as false
        ("items.1 == 'y'", {"items": ["x", "y"]}, True),
        ("input == 'raw'", "raw", True),
        ("flag", {"flag": True}, True),
        ("x == -1.5", {"x": -1.5}, True),
        ('s == "dq"', {"s": "dq"}, True),
        ("true and not false", None, True),
    ],
)
def test_expressions(expr: str, value: Any, expected: bool) -> None:
    assert compile_expression(expr)(value) is expected


@pytest.mark.parametrize("bad", ["a ==", "a == (1", "a $ 1", "and", "", "a == 1 b"])
def test_bad_expressions(bad: str) -> None:
    with pytest.raises(UsageError, match="expression"):
        compile_expression(bad)


def test_expression_is_not_eval() -> None:
    with pytest.raises(UsageError):
        compile_expression("__import__('os').system('true')")


def test_dict_form_round_trip_and_errors() -> None:
    data = {
        "id": "p.x",
        "description": "d",
        "steps": [
            {"micro": "t.len", "when": "input != ''"},
            {"parallel": [{"micro": "t.double", "name": "d"}, {"chain": [{"micro": "t.fmt"}]}],
             "merge": "all"},
            {"micro": "t.boom", "on-error": "default", "default": 1},
            {"pipeline": "p.y", "if-valid": "t.big", "on-error": "skip"},
        ],
    }
    p = pipeline_from_dict(data)
    assert p.to_dict() == data
    assert Pipeline.from_dict(p.to_dict()) == p
    bad: list[tuple[dict[str, Any], str]] = [
        ({"id": "p", "steps": [{"micro": "a", "mikro": 1}]},
         r"steps\[0\].mikro: unknown key 'mikro' \(did you mean 'micro'\?\)"),
        ({"id": "p", "steps": [{"micro": "a", "pipeline": "b"}]}, "exactly one of"),
        ({"id": "p", "steps": [{"micro": "a", "merge": "all"}]}, "only a parallel step"),
        ({"id": "p", "steps": [{"micro": "a", "on-error": "default"}]}, "required"),
        ({"id": "p", "steps": [{"micro": "a", "default": 1}]}, "only used with"),
        ({"id": "p", "steps": [{"micro": "a", "on-error": "oops"}]}, r"steps\[0\].*on-error"),
        ({"id": "p", "steps": [{"parallel": []}]}, "non-empty"),
        ({"id": "p", "steps": []}, "steps: must be"),
        ({"steps": [{"micro": "a"}]}, "^id: is required"),
        ({"id": "p", "stesp": []}, "did you mean 'steps'"),
        ({"id": "p", "steps": [{"micro": "a", "when": "a =="}]}, "expression"),
        ({"id": "p", "steps": [{"micro": 3}]}, r"steps\[0\].micro"),
    ]
    for doc, message in bad:
        with pytest.raises(UsageError, match=message) as info:
            pipeline_from_dict(doc)
        assert info.value.message == f"{info.value.details['key']}: " \
            f"{info.value.details['problem']}"
    with pytest.raises(UsageError) as info:
        pipeline_from_dict({"id": "p", "steps": [{"chain": [{"micro": "a", "on-error": "x"}]}]})
    assert info.value.details["key"] == "steps[0].chain[0].on-error"


def test_concurrent_runs_of_one_composition(mgr: MicroManager) -> None:
    comp = Composition(["t.strip", "t.len", "t.double"], mgr)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(2000):
                assert comp.run(" abc ") == 6
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_crashed_worker_fails_its_link_and_the_rest_keeps_serving() -> None:
    from dataclasses import dataclass

    from corral._errors import WorkerCrashed

    @dataclass
    class M:
        id: str
        type: str = "utility"
        max_ms: int = 100
        description: str = ""

    def invoke(micro_id: str, value: Any) -> Any:
        if micro_id == "acme.sb.crash":
            raise WorkerCrashed("acme.sb: the worker died (signal 9)", plugin_id="acme.sb")
        return value

    with MicroManager() as m:
        m.register_plugin("acme.sb", [M("acme.sb.crash"), M("acme.sb.echo")], invoke=invoke)
        comp = Composition(["acme.sb.echo", "acme.sb.crash"], m)
        with pytest.raises(WorkerCrashed, match=r"link 2 \(acme.sb.crash\) failed") as info:
            comp.run(1)
        assert info.value.details["link"] == "acme.sb.crash"
        assert m.execute("acme.sb.echo", 5) == 5
        assert m.get("acme.sb.echo").to_dict()["mode"] == "invoke"


def test_nested_fan_outs_do_not_starve_the_pool(mgr: MicroManager) -> None:
    inner = FanOut(tuple(Step("t.double", name=f"d{i}") for i in range(4)))
    outer = FanOut(tuple(Chain((inner,), name=f"o{i}") for i in range(40)))
    assert Composition(outer, mgr).run(2) == [[4, 4, 4, 4]] * 40
