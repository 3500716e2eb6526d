"""A/B tests: murmur3, Unleash-compatible buckets, weights, metrics and the report."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from corral._errors import PluginError, UsageError
from corral._services.micro.abtest import (
    ABTest,
    Variant,
    mann_whitney_u,
    murmur3_32,
    normalized_hash,
    percentile,
    two_proportion_z,
)
from corral._services.micro.manager import MicroManager


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"", 0, 0),
        (b"", 1, 0x514E28B7),
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\0\0\0\0", 0, 0x2362F9DE),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
        (b"aaa", 0x9747B28C, 0x283E0130),
        (b"aa", 0x9747B28C, 0x5D211726),
        (b"a", 0x9747B28C, 0x7FA09EA6),
        (b"abcd", 0x9747B28C, 0xF0478627),
        (b"Hello, world!", 0x9747B28C, 0x24884CBA),
        (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
        ("Hello world", 0, 2911983372),
    ],
)
def test_murmur3_known_vectors(data: bytes | str, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected


def test_unleash_normalized_values() -> None:
    # Unleash's client specification: the same values in the node, java and go clients.
    assert normalized_hash("123", "gr1") == 73
    assert normalized_hash("999", "groupX") == 25


def test_buckets_are_uniform_enough() -> None:
    counts = Counter(normalized_hash(f"user-{i}", "exp") for i in range(100_000))
    assert set(counts) == set(range(1, 101))
    assert max(abs(c - 1000) for c in counts.values()) < 150  # about 4.7 sigma


@pytest.fixture
def mgr() -> Iterator[MicroManager]:
    with MicroManager() as m:
        m.register(lambda x: f"A:{x}", id="ab.fmt.a", type="formatter")
        m.register(lambda x: f"B:{x}", id="ab.fmt.b", type="formatter")
        m.register(_flaky, id="ab.fmt.flaky", type="formatter")
        yield m


def _flaky(x: Any) -> str:
    if int(x) % 5 == 0:
        raise ValueError("flaky")
    return "ok"


def test_assignment_is_sticky_and_weighted(mgr: MicroManager) -> None:
    test = ABTest("checkout", [Variant("a", 70, "ab.fmt.a"), Variant("b", 30, "ab.fmt.b")],
                  mgr)
    first = {k: test.assign(k).name for k in map(str, range(2000))}
    again = ABTest("checkout", [Variant("a", 70), Variant("b", 30)])
    assert {k: again.assign(k).name for k in first} == first  # across instances
    share = Counter(first.values())["a"] / len(first)
    assert 0.66 < share < 0.74
    assert test.call("42", 1) == f"{first['42'].upper()}:1"
    for v in ("a", "b"):
        bucket_ok = next(k for k in first if first[k] == v)
        assert test.call(bucket_ok, "x") == f"{v.upper()}:x"
    per_mille = ABTest("g", [Variant("a", 500), Variant("b", 500)])
    assert per_mille.normalizer == 1000
    assert 1 <= per_mille.bucket("k") <= 1000


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([Variant("a", 50), Variant("b", 40)], r"sum to 100 .* or 1000 .*got 90 \(a=50 \+ b=40\)"),
        ([Variant("a", 50), Variant("b", -1)], r"variants\[1\].weight"),
        ([Variant("a", 50), Variant("a", 50)], r"variants\[1\].name"),
        ([Variant("a", 100)], "at least two"),
        ([Variant("a", 50.0), Variant("b", 50)], r"variants\[0\].weight"),  # type: ignore[arg-type]
    ],
)
def test_bad_weights(variants: list[Variant], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ABTest("g", variants)


def test_stats_and_errors_recorded(mgr: MicroManager) -> None:
    test = ABTest("flaky", [Variant("a", 50, "ab.fmt.a"), Variant("b", 50, "ab.fmt.flaky")],
                  mgr)
    for i in range(500):
        with contextlib.suppress(PluginError):
            test.call(f"k{i}", i)
    stats = test.stats()
    assert stats["a"]["calls"] + stats["b"]["calls"] == 500
    assert stats["a"]["errors"] == 0
    assert stats["b"]["errors"] > 0
    assert stats["a"]["p99_ms"] is not None
    with pytest.raises(UsageError, match="no variant"):
        test.record("zz", ok=True, ms=1)
    with pytest.raises(UsageError, match="nothing to run"):
        ABTest("g", [Variant("a", 50), Variant("b", 50)]).call("k")


def test_report_significance() -> None:
    rng = random.Random(7)
    test = ABTest("rep", [Variant("control", 50), Variant("new", 50)])
    for _ in range(2000):
        test.record("control", ok=rng.random() > 0.01, ms=rng.gauss(10, 1))
        test.record("new", ok=rng.random() > 0.05, ms=rng.gauss(12, 1))
    rep = test.report()
    comp = rep["comparisons"][0]
    assert comp["error_rate"]["significant"]
    assert comp["latency"]["significant"]
    assert "error rate significantly higher" in comp["summary"]
    assert "latency significantly higher" in comp["summary"]
    same = ABTest("same", [Variant("control", 50), Variant("new", 50)])
    for _ in range(500):
        same.record("control", ok=rng.random() > 0.02, ms=rng.gauss(10, 1))
        same.record("new", ok=rng.random() > 0.02, ms=rng.gauss(10, 1))
    comp2 = same.report(alpha=0.001)["comparisons"][0]
    assert "no significant difference" in comp2["summary"]


def test_statistics_helpers() -> None:
    assert percentile([], 99) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    z, p = two_proportion_z(10, 1000, 10, 1000)
    assert (z, p) == (0, 1.0)
    assert two_proportion_z(0, 0, 1, 1) == (0.0, 1.0)
    # textbook: 45/100 vs 60/100 -> z about 2.12, p about 0.034
    z, p = two_proportion_z(45, 100, 60, 100)
    assert (round(z, 2), round(p, 3)) == (2.12, 0.034)
    # U against a hand-computed value: a=[1,2,3], b=[4,5,6] -> U_b = 9 (b all larger)
    u, _ = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u == 9
    u, p = mann_whitney_u([1, 2, 3], [1, 2, 3])
    assert (u, p) == (4.5, 1.0)
