"""A strict plugin and an in-process plugin talking through one real host.

Events both ways (the strict side subscribes and polls), shared state
incremented from both sides at once, messages and secrets, and every service
outside the grants denied by name; the same plugin code gets the same answers
at both isolation levels.
"""

from __future__ import annotations

import inspect
import itertools
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Host, PermissionDenied, PluginError
from corral._sandbox.worker.context import (
    EventsProxy,
    MessagesProxy,
    SecretsProxy,
    StateProxy,
    WorkerSubscription,
)
from corral._services.events.plugin import PluginEvents
from corral._services.events.subscriptions import Subscription
from corral._services.messages import PluginMessages
from corral._services.sandboxed import sandbox_problem
from corral._services.secrets import PluginSecrets
from corral._services.state import PluginState

STRICT = "acme.strict"
LOCAL = "acme.local"

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

#: Shared by both plugins: the same code, run in process and in a strict worker.
COMMON = '''
from corral import PermissionDenied


def attempt(op, ctx):
    """Try one service outside the grants; return the permission named in the refusal."""
    actions = {
        "publish": lambda: ctx.events.publish("forbidden.x", 1),
        "subscribe": lambda: ctx.events.subscribe("forbidden.>", lambda ev: None),
        "state.get": lambda: ctx.state.get("other.k"),
        "state.get_versioned": lambda: ctx.state.get_versioned("other.k"),
        "state.set": lambda: ctx.state.set("other.k", 1),
        "state.cas": lambda: ctx.state.compare_and_set("other.k", 0, 1),
        "state.update": lambda: ctx.state.update("other.k", lambda v: 1),
        "state.delete": lambda: ctx.state.delete("other.k"),
        "send": lambda: ctx.messages.send("acme.nobody", {"hi": 1}),
        "secret": lambda: ctx.secrets.get("other-token"),
    }
    try:
        actions[op]()
    except PermissionDenied as exc:
        return exc.permission
    return None


def bump(input, ctx):
    """``n`` increments of ``key``: even ones by a compare-and-set loop, odd ones by update.

    Each one pauses after writing (and a CAS also between reading and writing), outside
    the database's write lock, to let the other side in.
    """
    import time

    retries = 0
    for i in range(input["n"]):
        time.sleep(input["pause"])
        if i % 2:
            ctx.state.update(input["key"], lambda v: v + 1, default=0)
            continue
        while True:
            got = ctx.state.get_versioned(input["key"])
            value, version = (0, 0) if got is None else (got.value, got.version)
            time.sleep(input["pause"])
            if ctx.state.compare_and_set(input["key"], version, value + 1):
                break
            retries += 1
    return retries
'''

STRICT_CODE = COMMON + '''
SUBS = {}
HANDLED = []


class Plugin:
    def on_enable(self, ctx):
        SUBS["boot"] = ctx.events.subscribe("local.boot")


def boot_poll(input, ctx):
    return [e.data for e in SUBS["boot"].poll(timeout=1.0)]


def publish(input, ctx):
    ev = ctx.events.publish("strict.hello", input, priority=3)
    return None if ev is None else [ev.id, ev.topic, ev.data, ev.source, ev.priority]


def subscribe(input, ctx):
    sub = ctx.events.subscribe("local.*", lambda ev: HANDLED.append(ev.data),
                               filter=input)
    SUBS["local"] = sub
    return sub.id


def poll(input, ctx):
    events = SUBS["local"].poll(max_events=100, timeout=input)
    return [[e.topic, e.data, e.source] for e in events]


def handled(input, ctx):
    return HANDLED


def cancel(input, ctx):
    SUBS["local"].cancel()
    SUBS["local"].cancel()  # idempotent
    return SUBS["local"].active


def send(input, ctx):
    return ctx.messages.send(input["to"], input["message"], timeout=5.0)


def broadcast(input, ctx):
    return ctx.messages.broadcast(input)


def secret(input, ctx):
    return ctx.secrets.get(input)


def state_misc(input, ctx):
    v1 = ctx.state.set("counter.misc", "a")
    stale = ctx.state.compare_and_set("counter.misc", v1 - 1 if v1 > 1 else 99, "stale")
    fresh = ctx.state.compare_and_set("counter.misc", v1, "b")
    got = ctx.state.get_versioned("counter.misc")
    keys = ctx.state.keys("counter.>")
    gone = ctx.state.delete("counter.misc")
    again = ctx.state.delete("counter.misc")
    return [stale, fresh, got.value, got.version - v1, "counter.misc" in keys, gone, again,
            ctx.state.get("counter.misc", "dflt")]


def raw(input, ctx):
    getattr(ctx.events, input["method"])(*input["args"])
'''

LOCAL_CODE = COMMON + '''
RECEIVED = []
MESSAGES = []


class Plugin:
    def on_enable(self, ctx):
        ctx.events.subscribe("strict.>", lambda ev: RECEIVED.append(
            [ev.topic, ev.data, ev.source, ev.priority, ev.id]))

    def on_message(self, message, sender, ctx):
        MESSAGES.append([message, sender])
        if isinstance(message, dict) and message.get("fail"):
            raise ValueError("asked to fail")
        return {"echo": message, "from": sender, "by": ctx.plugin_id}


def received(input, ctx):
    return RECEIVED


def messages(input, ctx):
    return MESSAGES


def publish(input, ctx):
    ev = ctx.events.publish(input["topic"], input["data"])
    return None if ev is None else ev.id
'''


def _plugin(root: Path, pid: str, code: str, isolation: str, grants: list[str],
            exports: list[str], entry: bool) -> Path:
    pkg = pid.replace(".", "_")
    d = root / "src" / pid
    (d / pkg).mkdir(parents=True)
    (d / pkg / "__init__.py").write_text(code)
    exported = "\n".join(f'{e} = "{pkg}:{e}"' for e in exports)
    (d / "corral.toml").write_text(
        textwrap.dedent(
            f"""
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
            """
        )
        + exported
        + "\n"
    )
    return d


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("comm")
    strict = _plugin(
        root, STRICT, STRICT_CODE, "strict",
        ["events.publish:strict.*", "events.subscribe:local.*", "state.read:counter.*",
         "state.write:counter.*", f"messages.send:{LOCAL}", "secrets:token"],
        ["attempt", "bump", "publish", "subscribe", "poll", "handled", "cancel", "send",
         "broadcast", "secret", "state_misc", "raw", "boot_poll"],
        entry=True,
    )
    local = _plugin(
        root, LOCAL, LOCAL_CODE, "none",
        ["events.publish:local.*", "events.subscribe:strict.>", "state.read:counter.*",
         "state.write:counter.*"],
        ["attempt", "bump", "received", "messages", "publish"],
        entry=True,
    )
    with Host(home=root / "home", workspace=root) as h:
        h.register(strict, local)
        h.enable(STRICT)
        h.enable(LOCAL)
        h.secrets.set("token", "s3cret-value")
        yield h


def _wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.02)


def test_strict_publishes_and_the_in_process_subscriber_receives(host: Host) -> None:
    out = host.call(STRICT, "publish", {"n": 1})
    assert out is not None
    eid, topic, data, source, priority = out
    assert (topic, data, source, priority) == ("strict.hello", {"n": 1}, STRICT, 3)
    assert host.call(LOCAL, "received") == [["strict.hello", {"n": 1}, STRICT, 3, eid]]


def test_strict_subscribes_and_polls_what_the_in_process_plugin_publishes(host: Host) -> None:
    host.call(STRICT, "subscribe", None)
    assert host.call(STRICT, "poll", 0.0) == []
    for i in range(3):
        host.call(LOCAL, "publish", {"topic": "local.tick", "data": i})
    host.call(LOCAL, "publish", {"topic": "local.tock", "data": "x"})
    got = host.call(STRICT, "poll", 1.0)
    assert got == [["local.tick", 0, LOCAL], ["local.tick", 1, LOCAL], ["local.tick", 2, LOCAL],
                   ["local.tock", "x", LOCAL]]
    assert host.call(STRICT, "handled") == [0, 1, 2, "x"]  # the handler ran during the poll

    # A poll waiting with a timeout returns as soon as an event arrives.
    def later() -> None:
        time.sleep(0.3)
        host.call(LOCAL, "publish", {"topic": "local.late", "data": "late"})

    t = threading.Thread(target=later)
    t.start()
    start = time.monotonic()
    assert host.call(STRICT, "poll", 30.0) == [["local.late", "late", LOCAL]]
    assert time.monotonic() - start < 15  # well below the 30 s the poll would wait out
    t.join()

    assert host.call(STRICT, "cancel") is False
    host.call(LOCAL, "publish", {"topic": "local.tick", "data": "after"})
    assert "after" not in host.call(STRICT, "handled")


def test_a_subscription_made_in_on_enable_is_polled_in_later_calls(host: Host) -> None:
    host.call(LOCAL, "publish", {"topic": "local.boot", "data": "b1"})
    host.call(LOCAL, "publish", {"topic": "local.boot", "data": "b2"})
    assert host.call(STRICT, "boot_poll") == ["b1", "b2"]


def test_a_filtered_subscription_gets_only_matching_events(host: Host) -> None:
    host.call(STRICT, "subscribe", {"kind": {"in": ["a", "b"]}})
    try:
        for kind in ("a", "z", "b"):
            host.call(LOCAL, "publish", {"topic": "local.f", "data": {"kind": kind}})
        got = host.call(STRICT, "poll", 1.0)
        assert [d["kind"] for _, d, _ in got] == ["a", "b"]
    finally:
        host.call(STRICT, "cancel")


def test_interleaved_cas_and_update_from_both_sides_lose_nothing(host: Host) -> None:
    key = "counter.shared"
    n = 50
    results: dict[str, Any] = {}
    writers: list[str | None] = []
    watch = host.shared_state.subscribe(key, lambda change: writers.append(change.updated_by))
    host.call(STRICT, "handled")  # the worker is up before the race starts
    go = threading.Barrier(2)

    def run(pid: str) -> None:
        go.wait()
        try:
            results[pid] = host.call(pid, "bump", {"key": key, "n": n, "pause": 0.003})
        except BaseException as exc:  # reported below
            results[pid] = exc

    threads = [threading.Thread(target=run, args=(pid,)) for pid in (STRICT, LOCAL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results  # all() below must not pass on nothing
    assert all(isinstance(r, int) for r in results.values()), results
    got = host.shared_state.get(key)
    assert got is not None
    assert got.value == 2 * n
    assert got.version == 2 * n
    # The writes really were interleaved, not one side after the other.
    assert _wait_for(lambda: len(writers) == 2 * n)
    watch.cancel()
    assert writers.count(STRICT) == writers.count(LOCAL) == n
    switches = sum(a != b for a, b in itertools.pairwise(writers))
    assert switches >= 4, writers
    assert sum(results.values()) > 0  # and conflicting compare-and-sets were retried


def test_state_surface_from_the_strict_side(host: Host) -> None:
    stale, fresh, value, bumped, listed, gone, again, dflt = host.call(STRICT, "state_misc")
    assert (stale, fresh, value, bumped) == (False, True, "b", 1)
    assert (listed, gone, again) == (True, True, False)
    assert dflt == "dflt"


def test_messages_round_trip_from_strict_to_in_process(host: Host) -> None:
    reply = host.call(STRICT, "send", {"to": LOCAL, "message": {"q": 42}})
    assert reply == {"echo": {"q": 42}, "from": STRICT, "by": LOCAL}
    assert host.call(STRICT, "broadcast", {"flush": True}) == [LOCAL]
    assert _wait_for(lambda: [{"flush": True}, STRICT] in host.call(LOCAL, "messages"))
    # The receiver's failure comes back to the sandboxed sender as the host's error.
    with pytest.raises(PluginError, match="asked to fail"):
        host.call(STRICT, "send", {"to": LOCAL, "message": {"fail": True}})


def test_secrets_reach_the_strict_plugin_only_as_granted(host: Host) -> None:
    assert host.call(STRICT, "secret", "token") == "s3cret-value"
    with pytest.raises(PermissionDenied) as info:
        host.call(STRICT, "secret", "other-token")
    assert info.value.permission == "host-api:secrets:other-token"


DENIED = {
    "publish": "host-api:events.publish:forbidden.x",
    "subscribe": "host-api:events.subscribe:forbidden.>",
    "state.get": "host-api:state.read:other.k",
    "state.get_versioned": "host-api:state.read:other.k",
    "state.set": "host-api:state.write:other.k",
    "state.cas": "host-api:state.write:other.k",
    "state.update": "host-api:state.read:other.k",
    "state.delete": "host-api:state.write:other.k",
    "send": "host-api:messages.send:acme.nobody",
    "secret": "host-api:secrets:other-token",
}


@pytest.mark.parametrize("op", sorted(DENIED))
def test_outside_the_grants_is_denied_alike_at_both_levels(host: Host, op: str) -> None:
    assert host.call(STRICT, "attempt", op) == DENIED[op]
    assert host.call(LOCAL, "attempt", op) == DENIED[op]


def test_an_uncaught_refusal_reaches_the_caller_as_permission_denied(host: Host) -> None:
    with pytest.raises(PermissionDenied) as info:
        host.call(STRICT, "raw", {"method": "publish", "args": ["x.y", 1]})
    assert info.value.permission == "host-api:events.publish:x.y"


def _params(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(
    ("proxy", "local", "names"),
    [
        (EventsProxy, PluginEvents, ["publish", "apublish"]),
        (StateProxy, PluginState, ["get", "get_versioned", "set", "compare_and_set", "update",
                                   "delete", "keys", "aget", "aset", "acompare_and_set",
                                   "aupdate"]),
        (MessagesProxy, PluginMessages, ["send", "asend", "broadcast"]),
        (SecretsProxy, PluginSecrets, ["get"]),
        (WorkerSubscription, Subscription, ["poll", "cancel"]),
    ],
)
def test_sandboxed_ctx_has_the_in_process_signatures(
    proxy: type, local: type, names: list[str]
) -> None:
    for name in names:
        assert _params(getattr(proxy, name)) == _params(getattr(local, name)), name


def test_subscribe_differs_only_in_an_optional_handler() -> None:
    worker = _params(EventsProxy.subscribe)
    local = _params(PluginEvents.subscribe)
    assert [p[:2] for p in worker] == [p[:2] for p in local]
    assert [p[2] for p in worker if p[0] != "handler"] == [
        p[2] for p in local if p[0] != "handler"
    ]
    assert dict((p[0], p[2]) for p in worker)["handler"] is None
