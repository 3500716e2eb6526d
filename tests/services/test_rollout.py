"""Gradual rollout: steps, Flagger-style checks and rollback, persistence, decisions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._errors import NotFoundError, PluginError, UsageError
from corral._services.micro.manager import MicroManager
from corral._services.micro.rollout import Rollout, RolloutPolicy, RolloutStatus, RolloutStore


class Clock:
    """A hand-driven clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RolloutStore]:
    s = RolloutStore(tmp_path / "rollouts.db")
    yield s
    s.close()


POLICY = RolloutPolicy(steps=(1, 5, 25, 50, 100), interval=60, max_error_rate=0.05,
                       max_p99_ms=100, threshold=2, min_calls=10)


def feed(r: Rollout, n: int, *, errors: int = 0, ms: float = 5.0) -> None:
    for i in range(n):
        r.record("r.fmt.v2", ok=i >= errors, ms=ms)


def test_advances_through_steps_and_promotes(store: RolloutStore) -> None:
    clock = Clock()
    r = Rollout.start(store, "fmt-v2", stable="r.fmt.v1", canary="r.fmt.v2", policy=POLICY,
                      clock=clock)
    assert (r.percent, r.status) == (1, RolloutStatus.RUNNING)
    assert r.tick() is None  # not due yet
    seen = []
    for _ in range(5):
        feed(r, 20)
        clock.now += 60
        seen.append((r.tick(), r.percent))
    assert seen == [("advance", 5), ("advance", 25), ("advance", 50), ("advance", 100),
                    ("promote", 100)]
    assert r.status is RolloutStatus.PROMOTED
    assert r.route("anyone") == "r.fmt.v2"
    events = store.events("fmt-v2")
    assert [e["decision"] for e in events] == ["start", "advance", "advance", "advance",
                                               "advance", "promote"]
    assert "checks passed" in events[1]["reason"]


def test_rollback_after_threshold_failed_checks(store: RolloutStore) -> None:
    clock = Clock()
    r = Rollout.start(store, "bad", stable="r.fmt.v1", canary="r.fmt.v2", policy=POLICY,
                      clock=clock)
    feed(r, 20)
    clock.now += 60
    assert r.tick() == "advance"
    feed(r, 20, errors=5)  # 25% errors
    clock.now += 60
    assert (r.tick(), r.percent) == ("hold", 5)
    feed(r, 3)
    clock.now += 60
    assert r.tick() == "wait"  # too few calls: no verdict either way
    feed(r, 20, ms=500)  # latency breaks its limit
    clock.now += 60
    assert r.tick() == "rollback"
    assert (r.percent, r.status) == (0, RolloutStatus.ROLLED_BACK)
    assert r.route("anyone") == "r.fmt.v1"
    reasons = [e["reason"] for e in store.events("bad")]
    assert "error rate 0.25 > 0.05" in reasons[2]
    assert "not enough data: 3" in reasons[3]
    assert "p99 500 ms > 100 ms" in reasons[4]
    assert "rolled back to 0%" in reasons[4]
    clock.now += 600
    assert r.tick() is None  # finished rollouts make no more decisions


def test_restart_resumes(tmp_path: Path) -> None:
    clock = Clock()
    store = RolloutStore(tmp_path / "rollouts.db")
    r = Rollout.start(store, "resume", stable="r.fmt.v1", canary="r.fmt.v2", policy=POLICY,
                      clock=clock)
    feed(r, 20)
    clock.now += 60
    r.tick()
    feed(r, 20, errors=10)
    clock.now += 60
    r.tick()
    store.close()
    again = RolloutStore(tmp_path / "rollouts.db")
    r2 = Rollout.open(again, "resume", clock=clock)
    d = r2.to_dict()
    assert (d["percent"], d["failed_checks"], d["status"]) == (5, 1, "running")
    assert d["policy"] == POLICY.to_dict()
    feed(r2, 20, errors=10)
    clock.now += 60
    assert r2.tick() == "rollback"  # the second failed check, counted across the restart
    with pytest.raises(NotFoundError):
        Rollout.open(again, "nope", clock=clock)
    again.close()


def test_routing_is_sticky_and_proportional(store: RolloutStore) -> None:
    clock = Clock()
    policy = RolloutPolicy(steps=(10, 50, 100), interval=1, min_calls=1)
    r = Rollout.start(store, "share", stable="a.x.s", canary="a.x.c", policy=policy,
                      clock=clock)
    keys = [f"user-{i}" for i in range(5000)]
    at10 = {k for k in keys if r.route(k) == "a.x.c"}
    assert 0.08 < len(at10) / len(keys) < 0.12
    r.record("a.x.c", ok=True, ms=1)
    clock.now += 1
    assert r.tick() == "advance"
    at50 = {k for k in keys if r.route(k) == "a.x.c"}
    assert at10 <= at50  # a key on the canary stays there as the share grows
    assert 0.45 < len(at50) / len(keys) < 0.55


def test_abort_and_restart(store: RolloutStore) -> None:
    clock = Clock()
    r = Rollout.start(store, "ab", stable="a.x.s", canary="a.x.c", clock=clock)
    with pytest.raises(UsageError, match="already running"):
        Rollout.start(store, "ab", stable="a.x.s", canary="a.x.c", clock=clock)
    r.abort("bad smell")
    assert (r.percent, r.status) == (0, RolloutStatus.ABORTED)
    assert store.events("ab")[-1] == {"at": clock.now, "decision": "abort", "percent": 0,
                                      "reason": "bad smell"}
    with pytest.raises(UsageError, match="not running"):
        r.abort()
    again = Rollout.start(store, "ab", stable="a.x.s", canary="a.x.c", clock=clock)
    assert again.percent == 1
    assert store.ids() == ["ab"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": (1, 150)}, r"steps\[1\]: a percentage must be an integer in 0..100, got 150"),
        ({"steps": (-1, 5)}, r"steps\[0\]"),
        ({"steps": (5, 5)}, r"steps\[1\]: steps must increase"),
        ({"steps": ()}, "at least one"),
        ({"interval": 0}, "interval"),
        ({"max_error_rate": 1.5}, "max-error-rate"),
        ({"max_p99_ms": -1}, "max-p99-ms"),
        ({"threshold": 0}, "threshold"),
        ({"min_calls": 0}, "min-calls"),
    ],
)
def test_bad_policy(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RolloutPolicy(**kwargs)


def test_same_stable_and_canary_refused(store: RolloutStore) -> None:
    with pytest.raises(UsageError, match="both"):
        Rollout.start(store, "x", stable="a.b.c", canary="a.b.c")


def test_call_through_manager_rolls_back_a_failing_canary(store: RolloutStore) -> None:
    clock = Clock()
    with MicroManager() as mgr:
        mgr.register(lambda x: "old", id="r.fmt.v1", type="formatter")

        def broken(x: Any) -> str:
            raise RuntimeError("v2 is broken")

        mgr.register(broken, id="r.fmt.v2", type="formatter")
        policy = RolloutPolicy(steps=(50, 100), interval=10, threshold=1, min_calls=5)
        r = Rollout.start(store, "live", stable="r.fmt.v1", canary="r.fmt.v2", policy=policy,
                          clock=clock)
        failures = 0
        for i in range(200):
            if i == 100:
                clock.now += 10
            try:
                assert r.call(mgr, f"k{i}", i) == "old"
            except PluginError:
                failures += 1
        assert r.status is RolloutStatus.ROLLED_BACK
        assert failures > 0
        assert all(r.call(mgr, f"k{i}", i) == "old" for i in range(50))
