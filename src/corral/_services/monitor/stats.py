"""The statistics behind ``corral suggest``: the Mann-Whitney U test and a decaying histogram.

Pure Python, no SciPy on the host path. :func:`mann_whitney` is two-sided, exact for
small samples without ties and otherwise the normal approximation with tie and
continuity corrections (what SciPy's ``mannwhitneyu`` computes). :class:`DecayingHistogram`
is the Kubernetes VPA recommender's: exponentially growing buckets, each value weighted
by how recent it is (a half-life), read by percentile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

__all__ = ["DecayingHistogram", "MannWhitney", "mann_whitney", "percentile"]

_EXACT_MAX: Final = 8


@final
@dataclass(frozen=True, slots=True)
class MannWhitney:
    """The test of whether ``x`` tends to be larger or smaller than ``y``."""

    #: U of ``x`` (how many of the pairs ``x`` wins, ties counting half).
    u: float
    #: Two-sided p-value.
    p: float
    #: ``U / (n_x n_y)``: the chance that a value of ``x`` exceeds one of ``y`` (0.5: none).
    superiority: float
    #: The rank-biserial correlation ``2 * superiority - 1``, in [-1, 1].
    effect: float
    method: str


def _ranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) and the tie term ``sum(t^3 - t)``."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j + 2) / 2.0
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    return ranks, ties


def _exact_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) when every arrangement of the two samples is equally likely."""
    # counts[i][j][k]: arrangements of i x's and j y's with U = k
    table: dict[tuple[int, int], list[int]] = {}

    def counts(i: int, j: int) -> list[int]:
        if i == 0 or j == 0:
            return [1]
        got = table.get((i, j))
        if got is None:
            a = counts(i - 1, j)  # the largest value is an x: it beats all j y's
            b = counts(i, j - 1)
            got = [0] * (i * j + 1)
            for k, c in enumerate(a):
                got[k + j] += c
            for k, c in enumerate(b):
                got[k] += c
            table[(i, j)] = got
        return got

    dist = counts(n1, n2)
    return sum(dist[max(u, 0):]) / math.comb(n1 + n2, n1)


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of ``x`` against ``y`` (each at least one value)."""
    n1, n2 = len(x), len(y)
    if not n1 or not n2:
        raise ValueError("mann_whitney needs values in both samples")
    ranks, ties = _ranks([*x, *y])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2.0
    u2 = n1 * n2 - u1
    big = max(u1, u2)
    if min(n1, n2) <= _EXACT_MAX and ties == 0:
        p = min(1.0, 2.0 * _exact_sf(int(big), n1, n2))
        method = "exact"
    else:
        n = n1 + n2
        var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
        if var <= 0:
            p = 1.0
        else:
            z = (big - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)
            p = min(1.0, math.erfc(z / math.sqrt(2.0)))  # 2 * the normal tail
        method = "asymptotic"
    sup = u1 / (n1 * n2)
    return MannWhitney(u=u1, p=p, superiority=sup, effect=2.0 * sup - 1.0, method=method)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation."""
    if not values:
        raise ValueError("percentile of nothing")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@final
class DecayingHistogram:
    """Values in buckets growing by ``ratio`` from ``first``, weighted by recency.

    A value recorded ``age`` seconds before ``now`` weighs ``0.5 ** (age / half_life)``,
    so a plugin's old habits fade as the VPA recommender's do (its half-life is 24 h).
    """

    def __init__(self, first: float, ratio: float = 1.05, *, half_life: float = 86_400.0,
                 now: float = 0.0) -> None:
        self.first = first
        self.ratio = ratio
        self.half_life = half_life
        self.now = now
        self.weights: dict[int, float] = {}
        self.total = 0.0

    def _bucket(self, value: float) -> int:
        if value <= self.first:
            return 0
        return 1 + int(math.log(value / self.first, self.ratio))

    def _start(self, bucket: int) -> float:
        return 0.0 if bucket == 0 else self.first * self.ratio ** (bucket - 1)

    def add(self, value: float, at: float) -> None:
        weight = 0.5 ** (max(0.0, self.now - at) / self.half_life)
        b = self._bucket(value)
        self.weights[b] = self.weights.get(b, 0.0) + weight
        self.total += weight

    def percentile(self, q: float) -> float:
        """The upper end of the bucket where the weight passes ``q`` of the total."""
        if self.total <= 0:
            return 0.0
        target = q * self.total
        seen = 0.0
        for b in sorted(self.weights):
            seen += self.weights[b]
            if seen >= target:
                return self._start(b + 1)
        return self._start(max(self.weights) + 1)
