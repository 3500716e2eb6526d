"""A/B tests: sticky, Unleash-compatible bucketing, per-variant metrics, a significance report.

Bucketing follows Unleash's ``normalizedValue``: MurmurHash3 (x86, 32 bit,
seed 0) of the UTF-8 bytes of ``"GROUP:KEY"``, modulo the normalizer, plus 1;
so a key keeps its variant across restarts, processes and machines, and
agrees with Unleash's Java, Go and Node clients (for ASCII keys the Node
client hashes the same bytes).  Gradual-rollout percentages use the
normalizer 100.

Variant weights are integers that sum to 100 (percent) or to 1000 (Unleash's
own variant weights); the sum is the normalizer.  Unleash's variant
assignment also uses seed 86028157 -- pass ``seed=86028157`` and the feature
name as the group to reproduce it.

The report compares each variant with the first (the control): a
two-proportion z-test on error rates and a Mann-Whitney U test (normal
approximation, tie-corrected) on latencies, both two-sided, pure Python.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from corral._errors import UsageError

if TYPE_CHECKING:
    from corral._services.micro.manager import MicroManager

__all__ = [
    "ABTest",
    "Variant",
    "mann_whitney_u",
    "murmur3_32",
    "normalized_hash",
    "percentile",
    "two_proportion_z",
]

_C1: Final = 0xCC9E2D51
_C2: Final = 0x1B873593
_M32: Final = 0xFFFFFFFF
#: Latencies kept per variant (the oldest are dropped beyond this).
MAX_SAMPLES: Final = 100_000


def murmur3_32(data: bytes | str, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit of ``data`` (a str is hashed as UTF-8), unsigned."""
    key = data.encode() if isinstance(data, str) else data
    h = seed & _M32
    n = len(key)
    tail = n & ~3
    for i in range(0, tail, 4):
        k = key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
        h = ((h << 13) | (h >> 19)) & _M32
        h = (h * 5 + 0xE6546B64) & _M32
    k = 0
    rest = n & 3
    if rest == 3:
        k ^= key[tail + 2] << 16
    if rest >= 2:
        k ^= key[tail + 1] << 8
    if rest >= 1:
        k ^= key[tail]
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def normalized_hash(key: str, group: str, normalizer: int = 100, seed: int = 0) -> int:
    """Unleash's ``normalizedValue``: a bucket in ``1..normalizer`` for ``group:key``."""
    return murmur3_32(f"{group}:{key}", seed) % normalizer + 1


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _p_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_z(errors_a: int, n_a: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """Two-proportion z-test (pooled); returns ``(z, two-sided p)``; p is 1 without data."""
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    pooled = (errors_a + errors_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (errors_b / n_b - errors_a / n_a) / se
    return z, _p_two_sided(z)


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mann-Whitney U of ``b`` against ``a``: returns ``(U_b, two-sided p)``.

    Normal approximation with tie correction (meant for samples of 20 or more).
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks_b = 0.0
    ties = 0.0
    i = 0
    n = n1 + n2
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        ranks_b += rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 1)
        i = j + 1
    u_b = ranks_b - n2 * (n2 + 1) / 2
    mean = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u_b, 1.0
    z = (u_b - mean) / math.sqrt(var)
    return u_b, _p_two_sided(z)


@final
@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of a test: a name, an integer weight and (optionally) the micro id it runs."""

    name: str
    weight: int
    micro: str | None = None


@final
class _Stats:
    __slots__ = ("calls", "errors", "latencies_ms", "lock")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.latencies_ms: list[float] = []
        self.lock = threading.Lock()

    def add(self, ok: bool, ms: float) -> None:
        with self.lock:
            self.calls += 1
            if not ok:
                self.errors += 1
            self.latencies_ms.append(ms)
            if len(self.latencies_ms) > MAX_SAMPLES:
                del self.latencies_ms[: len(self.latencies_ms) - MAX_SAMPLES]


@final
class ABTest:
    """Split traffic by a sticky key between weighted variants and measure them.

    :param group: the bucketing group (a test name); part of the hashed string.
    :param variants: two or more; weights sum to 100 or 1000.
    :param manager: runs the variants' micro-plugins in :meth:`call`.
    :param seed: murmur3 seed (0 as in Unleash's gradual rollout).
    :raises UsageError: bad weights or names (the field is named).
    """

    def __init__(
        self,
        group: str,
        variants: Sequence[Variant],
        manager: MicroManager | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(group, str) or not group:
            raise UsageError("an A/B test needs a group name", key="group")
        if len(variants) < 2:
            raise UsageError(f"A/B test {group}: needs at least two variants, got "
                             f"{len(variants)}", key="variants")
        seen: set[str] = set()
        for i, v in enumerate(variants):
            if type(v.weight) is not int or v.weight < 0:
                raise UsageError(f"A/B test {group}: variants[{i}].weight must be a "
                                 f"non-negative integer, got {v.weight!r}",
                                 key=f"variants[{i}].weight")
            if not v.name or v.name in seen:
                raise UsageError(f"A/B test {group}: variants[{i}].name must be a unique "
                                 f"non-empty name, got {v.name!r}", key=f"variants[{i}].name")
            seen.add(v.name)
        total = sum(v.weight for v in variants)
        if total not in (100, 1000):
            raise UsageError(
                f"A/B test {group}: variant weights must sum to 100 (percent) or 1000 "
                f"(Unleash weights), got {total} ("
                + " + ".join(f"{v.name}={v.weight}" for v in variants) + ")",
                key="variants", total=total,
            )
        self.group: Final = group
        self.variants: Final = tuple(variants)
        self.normalizer: Final = total
        self.seed: Final = seed
        self._manager = manager
        self._clock = clock
        bounds = []
        acc = 0
        for v in variants:
            acc += v.weight
            bounds.append(acc)
        self._bounds: Final = tuple(bounds)
        self._stats: Final = {v.name: _Stats() for v in variants}

    def bucket(self, key: str) -> int:
        """The key's bucket, ``1..normalizer``."""
        return normalized_hash(key, self.group, self.normalizer, self.seed)

    def assign(self, key: str) -> Variant:
        """The variant a key gets (always the same one for the same key and weights)."""
        b = self.bucket(key)
        for v, bound in zip(self.variants, self._bounds, strict=True):
            if b <= bound:
                return v
        return self.variants[-1]  # unreachable: the last bound is the normalizer

    def record(self, variant: str, *, ok: bool, ms: float) -> None:
        """Record one call's outcome for ``variant`` (when calls run elsewhere)."""
        stats = self._stats.get(variant)
        if stats is None:
            raise UsageError(f"A/B test {self.group}: no variant {variant!r}", key="variant")
        stats.add(ok, ms)

    def call(self, key: str, input: Any = None) -> Any:
        """Run the key's variant's micro-plugin on ``input``; its outcome is recorded.

        :raises UsageError: no manager, or the variant has no micro id.
        """
        v = self.assign(key)
        if self._manager is None or v.micro is None:
            raise UsageError(f"A/B test {self.group}: variant {v.name} has nothing to run "
                             "(give a manager and a micro id)")
        start = self._clock()
        try:
            out = self._manager.execute(v.micro, input)
        except Exception:
            self._stats[v.name].add(False, (self._clock() - start) * 1000)
            raise
        self._stats[v.name].add(True, (self._clock() - start) * 1000)
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per variant: calls, errors, error rate, latency p50/p95/p99 (ms)."""
        out: dict[str, dict[str, Any]] = {}
        for v in self.variants:
            s = self._stats[v.name]
            with s.lock:
                lat = sorted(s.latencies_ms)
                calls, errors = s.calls, s.errors
            out[v.name] = {
                "weight": v.weight, "micro": v.micro, "calls": calls, "errors": errors,
                "error_rate": errors / calls if calls else 0.0,
                "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
                "p99_ms": percentile(lat, 99),
            }
        return out

    def report(self, alpha: float = 0.05) -> dict[str, Any]:
        """Compare every variant with the control (the first); say what is significant."""
        stats = self.stats()
        control = self.variants[0].name
        with self._stats[control].lock:
            base = list(self._stats[control].latencies_ms)
        comparisons = []
        for v in self.variants[1:]:
            s = self._stats[v.name]
            with s.lock:
                lat = list(s.latencies_ms)
            z, p_err = two_proportion_z(stats[control]["errors"], stats[control]["calls"],
                                        stats[v.name]["errors"], stats[v.name]["calls"])
            u, p_lat = mann_whitney_u(base, lat)
            err_sig, lat_sig = p_err < alpha, p_lat < alpha
            parts = []
            if err_sig:
                worse = stats[v.name]["error_rate"] > stats[control]["error_rate"]
                parts.append(f"error rate significantly {'higher' if worse else 'lower'}")
            if lat_sig:
                slower = u > len(base) * len(lat) / 2
                parts.append(f"latency significantly {'higher' if slower else 'lower'}")
            comparisons.append({
                "variant": v.name, "against": control,
                "error_rate": {"z": z, "p": p_err, "significant": err_sig},
                "latency": {"u": u, "p": p_lat, "significant": lat_sig},
                "summary": f"{v.name} vs {control}: " + (
                    "; ".join(parts) if parts else f"no significant difference at {alpha:g}"),
            })
        return {"group": self.group, "alpha": alpha, "variants": stats,
                "comparisons": comparisons}
