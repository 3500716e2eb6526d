"""The statistics of ``corral suggest`` against values computed by hand and by SciPy."""

from __future__ import annotations

import math
import random

import pytest

from corral._services.monitor.stats import DecayingHistogram, mann_whitney, percentile


def test_mann_whitney_exact_matches_a_hand_count() -> None:
    # x = [1, 2], y = [3, 4, 5]: x wins no pair, U = 0; of the C(5, 2) = 10 equally likely
    # arrangements only this one has U = 0 and only its mirror U = 6: p = 2 * 1/10
    m = mann_whitney([1.0, 2.0], [3.0, 4.0, 5.0])
    assert (m.u, m.method) == (0.0, "exact")
    assert m.p == pytest.approx(0.2)
    assert m.superiority == 0.0
    assert m.effect == -1.0
    assert mann_whitney([3.0, 4.0, 5.0], [1.0, 2.0]).effect == 1.0


def test_mann_whitney_asymptotic_matches_a_hand_computation() -> None:
    # ties force the normal approximation: ranks of [1,2,2,3 | 2,3,4,5] by hand:
    # 1→1, 2→3 (three tied at ranks 2-4), 3→5.5, 4→7, 5→8; R_x = 1+3+3+5.5 = 12.5
    x, y = [1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0]
    m = mann_whitney(x, y)
    u = 12.5 - 4 * 5 / 2
    assert m.u == pytest.approx(u)
    assert m.method == "asymptotic"
    ties = (3 ** 3 - 3) + (2 ** 3 - 2)
    sigma = math.sqrt(4 * 4 / 12 * (9 - ties / (8 * 7)))
    z = (max(u, 16 - u) - 8 - 0.5) / sigma
    assert m.p == pytest.approx(math.erfc(z / math.sqrt(2)))


@pytest.mark.parametrize(("n1", "n2", "ties", "shift"), [
    (5, 7, False, 1.0), (8, 8, False, 0.5), (8, 30, False, 0.3), (20, 30, False, 0.5),
    (20, 30, True, 0.8), (3, 40, True, 0.0), (200, 150, False, 0.1), (60, 60, True, 0.0),
])
def test_mann_whitney_matches_scipy(n1: int, n2: int, ties: bool, shift: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(n1 * 1000 + n2)
    x = [rng.gauss(shift, 1) for _ in range(n1)]
    y = [rng.gauss(0, 1) for _ in range(n2)]
    if ties:
        x, y = [float(round(v)) for v in x], [float(round(v)) for v in y]
    ours = mann_whitney(x, y)
    theirs = stats.mannwhitneyu(x, y, alternative="two-sided", method=ours.method)
    assert ours.u == pytest.approx(theirs.statistic)
    assert ours.p == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-15)


def test_mann_whitney_needs_both_samples() -> None:
    with pytest.raises(ValueError, match="both samples"):
        mann_whitney([], [1.0])


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.99) == 5.0


def test_decaying_histogram_forgets_old_use() -> None:
    now = 10 * 86_400.0
    h = DecayingHistogram(1.0, now=now, half_life=86_400.0)
    for _ in range(100):
        h.add(500.0, now - 9 * 86_400)  # big, but nine half-lives ago: weight 1/512 each
    for _ in range(10):
        h.add(10.0, now)
    assert 10.0 <= h.percentile(0.9) < 10.0 * 1.05 ** 2
    fresh = DecayingHistogram(1.0, now=now)
    for _ in range(100):
        fresh.add(500.0, now)
    for _ in range(10):
        fresh.add(10.0, now)
    assert fresh.percentile(0.9) >= 500.0
    assert DecayingHistogram(1.0).percentile(0.5) == 0.0
