"""Hot swap: in-flight calls finish on the old version, new calls see the new one, draining."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from corral._errors import NotFoundError
from corral._services.micro.compose import Composition
from corral._services.micro.manager import MicroInfo, MicroManager


def test_started_call_finishes_on_old_version() -> None:
    with MicroManager() as mgr:
        entered, release = threading.Event(), threading.Event()

        def v1(x: Any) -> Any:
            entered.set()
            release.wait(5)
            return "v1"

        mgr.register(v1, id="s.greet", type="utility", version="1", max_ms=10_000)
        result: list[Any] = []
        caller = threading.Thread(target=lambda: result.append(mgr.execute("s.greet", 0)))
        caller.start()
        assert entered.wait(5)
        drained: list[tuple[MicroInfo, ...]] = []
        ticket = mgr.swap(lambda x: "v2", id="s.greet", type="utility", version="2",
                          on_drained=drained.append)
        assert mgr.execute("s.greet", 0) == "v2"  # new calls: the new version
        assert not ticket.drained  # the old call is still running (blocked on release)
        assert drained == []
        release.set()
        caller.join(5)
        assert result == ["v1"]  # the started call finished on the old version
        assert ticket.wait(5)
        assert mgr.drain(5)
        assert [i.version for i in drained[0]] == ["1"]
        assert mgr.get("s.greet").version == "2"


def test_swap_unknown_id() -> None:
    with MicroManager() as mgr, pytest.raises(NotFoundError, match="not registered"):
        mgr.swap(lambda x: x, id="s.nope", type="utility")


def _pair(version: int, active: Counter[int], lock: threading.Lock) -> tuple[Any, Any]:
    """Two links that must come from the same version."""

    def first(x: Any) -> Any:
        with lock:
            active[version] += 1
        try:
            return {"v": version, "x": x}
        finally:
            with lock:
                active[version] -= 1

    def second(d: Any) -> Any:
        with lock:
            active[version] += 1
        try:
            if d["v"] != version:
                raise AssertionError(f"half-swapped: link 1 from v{d['v']}, link 2 from "
                                     f"v{version}")
            return version
        finally:
            with lock:
                active[version] -= 1

    return first, second


def test_sustained_load_across_many_swaps() -> None:
    """Zero failed calls and never a mixed pair while the pair is swapped 200 times."""
    with MicroManager() as mgr:
        active: Counter[int] = Counter()
        lock = threading.Lock()
        a, b = _pair(0, active, lock)
        # generous limits: this machine may be loaded, and limits are not the subject here
        mgr.register(a, id="s.pair.a", type="utility", version="0", max_ms=60_000)
        mgr.register(b, id="s.pair.b", type="utility", version="0", max_ms=60_000)
        chain = Composition(["s.pair.a", "s.pair.b"], mgr)
        failures: list[BaseException] = []
        calls = Counter[str]()
        stop = threading.Event()
        drained_while_active: list[int] = []

        def on_drained(infos: tuple[MicroInfo, ...]) -> None:
            for info in infos:
                with lock:
                    if active[int(info.version)] != 0:
                        drained_while_active.append(int(info.version))

        def load(name: str) -> None:
            n = 0
            try:
                while not stop.is_set():
                    version = chain.run(n)
                    assert isinstance(version, int)
                    assert mgr.execute("s.pair.a", n)["x"] == n
                    n += 1
            except BaseException as exc:  # collected and asserted below
                failures.append(exc)
            calls[name] = n

        threads = [threading.Thread(target=load, args=(f"t{i}",)) for i in range(3)]
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)  # let the swapping thread in often: more swaps per second
        for t in threads:
            t.start()
        tickets = []
        for version in range(1, 201):
            a, b = _pair(version, active, lock)
            tickets.append(mgr.swap(
                mgr.prepare(a, id="s.pair.a", type="utility", version=str(version),
                            max_ms=60_000),
                mgr.prepare(b, id="s.pair.b", type="utility", version=str(version),
                            max_ms=60_000),
                on_drained=on_drained,
            ))
            time.sleep(0.0005)
        stop.set()
        sys.setswitchinterval(switch)
        for t in threads:
            t.join(10)
        assert mgr.drain(10)
        assert failures == []
        assert all(t.drained for t in tickets)
        assert drained_while_active == []
        assert sum(calls.values()) > 200
        assert mgr.get("s.pair.a").version == "200"


def test_plugin_set_swap_is_atomic() -> None:
    """A whole plugin's set is replaced in one step (register_plugin)."""

    class M:
        def __init__(self, id: str) -> None:
            self.id, self.type, self.max_ms, self.description = id, "utility", 100, ""

    with MicroManager() as mgr:
        micros = [M("acme.p.a"), M("acme.p.b")]

        def fns(v: int) -> dict[str, Any]:
            return {"acme.p.a": lambda x, ctx: {"v": v}, "acme.p.b": lambda d, ctx: d["v"] == v}

        mgr.register_plugin("acme.p", micros, functions=fns(0), ctx=None)
        chain = Composition(["acme.p.a", "acme.p.b"], mgr)
        stop = threading.Event()
        bad: list[Any] = []

        def load() -> None:
            while not stop.is_set():
                if chain.run(None) is not True:
                    bad.append("mixed")

        t = threading.Thread(target=load)
        t.start()
        stopped: list[str] = []
        for v in range(1, 100):
            mgr.register_plugin("acme.p", micros, functions=fns(v), version=str(v),
                                on_drained=lambda infos: stopped.append(infos[0].version))
        stop.set()
        t.join(5)
        assert mgr.drain(5)
        assert bad == []
        assert len(stopped) == 99


def test_a_failed_call_does_not_hold_the_old_version() -> None:
    def boom(x: Any) -> Any:
        raise ValueError("no")

    with MicroManager() as mgr:
        mgr.register(boom, id="s.boom", type="utility")
        chain = Composition(["s.boom"], mgr)
        caught = []
        calls: list[Callable[[], Any]] = [lambda: mgr.execute("s.boom", 1),
                                          lambda: chain.run(1)]
        for call in calls:
            try:
                call()
            except Exception as exc:  # kept on purpose, as a caller might
                caught.append(exc)
        ticket = mgr.swap(lambda x: x, id="s.boom", type="utility", version="2")
        assert ticket.wait(2)
        assert len(caught) == 2
