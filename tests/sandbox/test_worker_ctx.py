"""The worker's ``ctx`` at parity with the in-process one: gather, publisher, durable, state watch.

A strict plugin and an in-process plugin in one real host: the strict side
gathers answers, publishes through a topic handle, consumes a durable topic
across a worker restart (committed offsets) and watches shared state, all
through the broker and under its grants.
"""

from __future__ import annotations

import inspect
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Host
from corral._errors import PluginError
from corral._sandbox.worker.context import EventsProxy, StateProxy, WorkerDurableConsumer
from corral._services.events.plugin import PluginEvents
from corral._services.sandboxed import sandbox_problem
from corral._services.state import PluginState

STRICT = "acme.wctx"
LOCAL = "acme.wlocal"

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

STRICT_CODE = '''
import time

from corral import PermissionDenied

SUBS = {}
SEEN = []


def gather(input, ctx):
    return [[r.plugin_id, r.value, r.error] for r in ctx.events.gather("wc.ask", input,
                                                                       timeout=2.0)]


def pub(input, ctx):
    p = ctx.events.publisher("wc.pub")
    events = [p.publish(item) for item in input]
    return [p.topic, p.source, [None if e is None else e.id for e in events]]


def durable_open(input, ctx):
    SUBS["d"] = ctx.events.subscribe_durable(input, "wc.d.>", lambda ev: SEEN.append(ev.data))
    return [SUBS["d"].consumer, SUBS["d"].offset]


def durable_poll(input, ctx):
    got = SUBS["d"].poll(max_events=input["max"], timeout=input["timeout"])
    return [[e.topic, e.data] for e in got] + [["delivered", SUBS["d"].delivered]]


def durable_cancel(input, ctx):
    SUBS["d"].cancel()
    try:
        SUBS["d"].poll()
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)


def seen(input, ctx):
    return SEEN


def watch(input, ctx):
    SUBS["w"] = ctx.state.subscribe(input["pattern"], lambda c: SEEN.append(["w", c.key]),
                                    max_queue=input.get("max_queue", 10000))
    return SUBS["w"].id


def watch_poll(input, ctx):
    out = []
    end = time.monotonic() + input["wait"]
    while len(out) < input["n"] and time.monotonic() < end:
        out += SUBS["w"].poll(timeout=0.5)
    return [[c.key, c.value, c.version, c.deleted, c.updated_by] for c in out] + [
        ["dropped", SUBS["w"].dropped]]


def watch_cancel(input, ctx):
    SUBS["w"].cancel()
    SUBS["w"].cancel()
    return SUBS["w"].active


def denied(input, ctx):
    actions = {
        "publisher": lambda: ctx.events.publisher("other.x"),
        "gather": lambda: ctx.events.gather("other.x", 1),
        "durable": lambda: ctx.events.subscribe_durable("c", "other.>", print),
        "state.subscribe": lambda: ctx.state.subscribe("other.*"),
    }
    try:
        actions[input]()
    except PermissionDenied as exc:
        return exc.permission
    return None
'''

LOCAL_CODE = '''
PUBS = []


class Plugin:
    def on_enable(self, ctx):
        ctx.events.subscribe("wc.ask", lambda ev: {"double": ev.data * 2})
        ctx.events.subscribe("wc.pub", lambda ev: PUBS.append([ev.data, ev.source]))


def pubs(input, ctx):
    return PUBS


def set_state(input, ctx):
    return ctx.state.set(input["key"], input["value"])
'''

EXPORTS = ["gather", "pub", "durable_open", "durable_poll", "durable_cancel", "seen", "watch",
           "watch_poll", "watch_cancel", "denied"]


def _plugin(root: Path, pid: str, code: str, isolation: str, grants: list[str],
            exports: list[str], entry: bool) -> Path:
    pkg = pid.replace(".", "_")
    d = root / "src" / pid
    (d / pkg).mkdir(parents=True)
    (d / pkg / "__init__.py").write_text(code)
    exported = "\n".join(f'{e} = "{pkg}:{e}"' for e in exports)
    (d / "corral.toml").write_text(textwrap.dedent(f"""
        [plugin]
        id = "{pid}"
        name = "{pid}"
        version = "1.0.0"
        {f'entry = "{pkg}:Plugin"' if entry else ""}

        [permissions]
        host-api = {grants!r}

        [sandbox]
        isolation = "{isolation}"
        timeout-ms = 15000

        [exports]
        """) + exported + "\n")
    return d


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("wctx")
    strict = _plugin(root, STRICT, STRICT_CODE, "strict",
                     ["events.publish:wc.*", "events.subscribe:wc.>", "state.read:wc.*",
                      "state.write:wc.*"], EXPORTS, entry=False)
    local = _plugin(root, LOCAL, LOCAL_CODE, "none",
                    ["events.subscribe:wc.*", "state.write:wc.*"], ["pubs", "set_state"],
                    entry=True)
    with Host(home=root / "home", workspace=root) as h:
        h.register(strict, local)
        h.enable(STRICT)
        h.enable(LOCAL)
        yield h


def test_gather_collects_in_process_answers_for_the_worker(host: Host) -> None:
    assert host.call(STRICT, "gather", 21) == [[LOCAL, {"double": 42}, None]]
    sub = host.bus.subscribe("wc.ask", lambda ev: {1, 2})  # not JSON: cannot cross the socket
    try:
        got = host.call(STRICT, "gather", 1)
    finally:
        sub.cancel()
    assert [LOCAL, {"double": 2}, None] in got
    (host_answer,) = [r for r in got if r[0] is None]
    assert host_answer[1] is None
    assert "not JSON" in host_answer[2]


def test_a_publisher_handle_publishes_as_the_plugin(host: Host) -> None:
    topic, source, ids = host.call(STRICT, "pub", ["a", "b"])
    assert (topic, source) == ("wc.pub", STRICT)
    assert ids  # all() below must not pass on nothing
    assert all(isinstance(i, int) for i in ids)
    assert host.call(LOCAL, "pubs")[-2:] == [["a", STRICT], ["b", STRICT]]


@pytest.mark.parametrize(("op", "permission"), [
    ("publisher", "host-api:events.publish:other.x"),
    ("gather", "host-api:events.publish:other.x"),
    ("durable", "host-api:events.subscribe:other.>"),
    ("state.subscribe", "host-api:state.read:other.*"),
])
def test_the_new_methods_are_checked_against_the_grants(host: Host, op: str,
                                                        permission: str) -> None:
    assert host.call(STRICT, "denied", op) == permission


def test_a_durable_consumer_resumes_from_its_committed_offset_in_a_new_worker(
    host: Host,
) -> None:
    host.bus.declare_durable("wc.d.>")
    name, offset = host.call(STRICT, "durable_open", "c1")
    assert name == f"{STRICT}:c1"
    assert offset == 0
    for i in range(3):
        host.bus.publish("wc.d.x", i)
    host.bus.publish("wc.other", "not durable, not matched")
    got = host.call(STRICT, "durable_poll", {"max": 2, "timeout": 2.0})
    assert got == [["wc.d.x", 0], ["wc.d.x", 1], ["delivered", 2]]
    got = host.call(STRICT, "durable_poll", {"max": 100, "timeout": 2.0})
    assert got == [["wc.d.x", 2], ["delivered", 3]]
    assert host.call(STRICT, "seen") == [0, 1, 2]  # the handler ran in the worker
    committed = host.bus._log.consumers()[f"{STRICT}:c1"]  # type: ignore[union-attr]
    assert committed > 0
    # A new worker (the old one's memory is gone) picks up after the committed offset.
    host.attachments.supervisor().stop(STRICT)
    host.bus.publish("wc.d.y", "after restart")
    _, offset = host.call(STRICT, "durable_open", "c1")
    assert offset == committed
    start = time.monotonic()
    assert host.call(STRICT, "durable_poll", {"max": 100, "timeout": 0.3}) == [
        ["wc.d.y", "after restart"], ["delivered", 1]]
    assert host.call(STRICT, "durable_poll", {"max": 100, "timeout": 0.3}) == [
        ["delivered", 1]]  # nothing repeated; the empty poll waited its timeout
    assert time.monotonic() - start >= 0.3
    assert host.call(STRICT, "durable_cancel").startswith("UsageError: durable consumer")


def test_state_subscribe_delivers_changes_in_order_and_cancel_stops_them(host: Host) -> None:
    host.call(STRICT, "watch", {"pattern": "wc.*"})
    host.shared_state.set("wc.a", 1)
    host.call(LOCAL, "set_state", {"key": "wc.b", "value": {"x": 1}})
    host.shared_state.set("other.z", 1)  # outside the pattern
    host.shared_state.delete("wc.a")
    got = host.call(STRICT, "watch_poll", {"n": 3, "wait": 5.0})
    assert got == [["wc.a", 1, 1, False, None], ["wc.b", {"x": 1}, 1, False, LOCAL],
                   ["wc.a", None, 0, True, None], ["dropped", 0]]  # as the store says
    assert host.call(STRICT, "seen")[-3:] == [["w", "wc.a"], ["w", "wc.b"], ["w", "wc.a"]]
    assert host.call(STRICT, "watch_cancel") is False
    # raised in the worker as a UsageError; the host calls any corral error the
    # plugin itself raises a PluginError (it cannot tell it from a forged one)
    with pytest.raises(PluginError, match=r"\(usage\): state watch \d+ \(wc\.\*\) was cancelled"):
        host.call(STRICT, "watch_poll", {"n": 1, "wait": 0.1})


def test_a_full_state_watch_counts_what_it_dropped(host: Host) -> None:
    host.call(STRICT, "watch", {"pattern": "wc.*", "max_queue": 2})
    for i in range(5):
        host.shared_state.set("wc.q", i)
    time.sleep(0.5)  # the store's watcher thread has seen all five
    got = host.call(STRICT, "watch_poll", {"n": 2, "wait": 3.0})
    assert got == [["wc.q", 0, 1, False, None], ["wc.q", 1, 2, False, None], ["dropped", 3]]
    host.call(STRICT, "watch_cancel")


def _params(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_in_process_method_exists_in_the_worker_with_its_signature() -> None:
    for proxy, local in ((EventsProxy, PluginEvents), (StateProxy, PluginState)):
        public = [n for n, _ in inspect.getmembers(local, inspect.isfunction)
                  if not n.startswith("_")]
        missing = [n for n in public if not hasattr(proxy, n)]
        assert not missing, f"{proxy.__name__} lacks {missing}"
    for name in ("gather", "publisher", "subscribe_durable"):
        assert _params(getattr(EventsProxy, name)) == _params(getattr(PluginEvents, name)), name
    in_worker, in_process = _params(StateProxy.subscribe), _params(PluginState.subscribe)
    assert [p[:2] for p in in_worker[:3]] == [p[:2] for p in in_process]
    assert {"poll", "cancel", "offset", "active", "consumer"} <= set(dir(WorkerDurableConsumer))
