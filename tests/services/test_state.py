"""Shared state: versions, compare-and-set, atomic update, watchers, grants, two processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral._errors import CorralError, PermissionDenied, UsageError
from corral._model.permissions import Permissions
from corral._services.state import StateChange, StateStore, state_broker_op


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = StateStore(tmp_path / "state.db", poll_interval=0.01)
    yield s
    s.close()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def test_versions_set_get_delete(store: StateStore) -> None:
    assert store.get("a.b") is None
    assert store.set("a.b", {"n": 1}) == 1
    assert store.set("a.b", {"n": 2}) == 2
    got = store.get("a.b")
    assert got is not None
    assert (got.value, got.version) == ({"n": 2}, 2)
    assert store.delete("a.b") is True
    assert store.delete("a.b") is False
    assert store.get("a.b") is None


def test_compare_and_set(store: StateStore) -> None:
    assert store.compare_and_set("c", 0, "first") is True
    assert store.compare_and_set("c", 0, "again") is False
    assert store.compare_and_set("c", 1, "second") is True
    assert store.compare_and_set("c", 1, "stale") is False
    got = store.get("c")
    assert got is not None
    assert (got.value, got.version) == ("second", 2)
    with pytest.raises(UsageError, match="expected_version"):
        store.compare_and_set("c", -1, 1)


def test_update_is_atomic_across_threads(store: StateStore) -> None:
    def work() -> None:
        for _ in range(100):
            store.update("count", lambda v: v + 1, default=0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = store.get("count")
    assert got is not None
    assert (got.value, got.version) == (400, 400)


def test_a_failing_update_changes_nothing(store: StateStore) -> None:
    store.set("k", 1)
    with pytest.raises(CorralError, match="update function for state key 'k' raised"):
        store.update("k", lambda v: v / 0)
    with pytest.raises(UsageError, match="not JSON data"):
        store.update("k", lambda v: {v})
    got = store.get("k")
    assert got is not None
    assert (got.value, got.version) == (1, 1)


@pytest.mark.parametrize("key", ["", "a.*", "a.>", "a..b", "a b", 3])
def test_malformed_keys(store: StateStore, key: Any) -> None:
    with pytest.raises(UsageError, match="malformed state key"):
        store.set(key, 1)


def test_values_must_be_json_and_not_too_large(store: StateStore) -> None:
    with pytest.raises(UsageError, match="not JSON data"):
        store.set("v", {1, 2})
    with pytest.raises(UsageError, match="more than"):
        store.set("v", "x" * (1024 * 1024 + 10))
    assert store.get("v") is None


def test_grants_per_key(store: StateStore) -> None:
    perms = Permissions(host_api=("state.read:git.>", "state.write:git.stats.*"))
    ctx = store.for_plugin("acme.git", perms)
    assert ctx.set("git.stats.commits", 5) == 1
    assert ctx.get("git.stats.commits") == 5
    assert ctx.get("git.other", "dflt") == "dflt"
    with pytest.raises(PermissionDenied) as info:
        ctx.set("git.config", 1)
    assert info.value.permission == "host-api:state.write:git.config"
    with pytest.raises(PermissionDenied) as info:
        ctx.get("secret.thing")
    assert info.value.permission == "host-api:state.read:secret.thing"
    with pytest.raises(PermissionDenied):
        ctx.subscribe(">", print)
    store.set("secret.thing", 1)
    assert ctx.keys() == ["git.stats.commits"]
    assert state_broker_op(store, "acme.git", perms, "state.get",
                           {"key": "git.stats.commits"}) == 5
    assert state_broker_op(store, "acme.git", perms, "state.cas",
                           {"key": "git.stats.commits", "version": 1, "value": 6}) is True
    with pytest.raises(PermissionDenied):
        state_broker_op(store, "acme.git", perms, "state.set", {"key": "x", "value": 1})


def test_subscribers_see_changes_in_order(store: StateStore) -> None:
    seen: list[StateChange] = []
    watch = store.subscribe("jobs.>", seen.append)
    bad = store.subscribe("jobs.>", lambda c: 1 / 0)
    store.set("jobs.a", 1)
    store.set("other", 1)
    store.update("jobs.a", lambda v: v + 1)
    store.delete("jobs.a")
    wait_for(lambda: len(seen) == 3)
    assert [(c.key, c.value, c.version, c.deleted) for c in seen] == [
        ("jobs.a", 1, 1, False), ("jobs.a", 2, 2, False), ("jobs.a", None, 0, True)]
    assert len(bad.errors) == 3
    watch.cancel()
    bad.cancel()


INCREMENTER = r"""
import sys
from corral._services.state import StateStore
store = StateStore(sys.argv[1])
mode, n = sys.argv[2], int(sys.argv[3])
for _ in range(n):
    if mode == "update":
        store.update("counter.update", lambda v: v + 1, default=0, plugin_id="p")
    else:
        while True:
            got = store.get("counter.cas")
            value, version = (got.value, got.version) if got else (0, 0)
            if store.compare_and_set("counter.cas", version, value + 1):
                break
store.close()
"""


def test_two_processes_lose_no_update(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    script = tmp_path / "inc.py"
    script.write_text(INCREMENTER)
    StateStore(db).close()
    for mode in ("update", "cas"):
        procs = [
            subprocess.Popen([sys.executable, str(script), str(db), mode, "500"])
            for _ in range(2)
        ]
        for p in procs:
            assert p.wait(timeout=60) == 0
    store = StateStore(db)
    for key in ("counter.update", "counter.cas"):
        got = store.get(key)
        assert got is not None
        assert (got.value, got.version) == (1000, 1000)
    store.close()


def test_watchers_see_other_processes(tmp_path: Path, store: StateStore) -> None:
    seen: list[int] = []
    store.subscribe("remote.*", lambda c: seen.append(c.value))
    code = (
        "import sys\nfrom corral._services.state import StateStore\n"
        "s = StateStore(sys.argv[1])\n"
        "[s.set('remote.x', i) for i in range(5)]\ns.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(store.path)], check=True, timeout=60)
    wait_for(lambda: len(seen) == 5)
    assert seen == [0, 1, 2, 3, 4]


def test_async_twins(store: StateStore) -> None:
    import asyncio

    ctx = store.for_plugin("acme.a", Permissions(host_api=("state.read:a.>", "state.write:a.>")))

    async def main() -> Any:
        assert await ctx.aset("a.n", 1) == 1
        assert await ctx.acompare_and_set("a.n", 1, 2) is True
        got = await ctx.aupdate("a.n", lambda v: v * 10)
        return got.value, await ctx.aget("a.n")

    assert asyncio.run(main()) == (20, 20)
