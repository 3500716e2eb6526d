"""Bottlenecks and limit suggestions from a plugin's recorded calls (``corral suggest``).

Each rule reads the host database's ``call_profile`` and ``import_profile`` rows and,
when its figures cross its threshold, says what it saw and what to do. Pure: the
rows are handed in, nothing is read or written here.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from corral._services.monitor.stats import DecayingHistogram, mann_whitney

__all__ = ["RULES", "suggest"]

#: A module whose own import takes this long (ms) is named.
SLOW_IMPORT_MS: Final = 50.0
#: Repeated inputs: at least this many calls, this share repeating an earlier input.
REPEAT_MIN_CALLS: Final = 20
REPEAT_SHARE: Final = 0.5
#: Broker calls per call (mean) that suggest batching.
BROKER_CALLS: Final = 10.0
#: Peak memory at this share of ``memory-mb``.
MEMORY_SHARE: Final = 0.8
#: CPU/wall at or above: CPU-bound; at or below: mostly waiting (median wall at least 5 ms).
CPU_BOUND: Final = 0.8
WAITING: Final = 0.25
MIN_WALL_MS: Final = 5.0
#: A version slower than the previous: p below this, the new one slower in at least this
#: share of pairs, at least this many calls of each.
SLOWER_P: Final = 0.01
SLOWER_SUPERIORITY: Final = 0.6
SLOWER_MIN_CALLS: Final = 8
#: Limits: calls needed, VPA's safety margin, the widening cap for a short history.
LIMIT_MIN_CALLS: Final = 10
SAFETY_MARGIN: Final = 0.15
MAX_WIDENING: Final = 2.0
#: A memory or CPU limit this many times what the use suggests is called too loose.
LOOSE: Final = 4

RULES: Final = ("slow_import", "repeated_inputs", "many_broker_calls", "memory_near_limit",
                "cpu_bound", "waiting", "slower_version", "limits")


def _by_export(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        out[str(r["export"])].append(r)
    return out


def _ok(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["outcome"] == "ok"]


def _slow_imports(imports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    slow = [m for m in imports if float(m["self_ms"]) >= SLOW_IMPORT_MS]
    if not slow:
        return []
    top = sorted(slow, key=lambda m: -float(m["self_ms"]))[:5]
    whole = max(float(m["total_ms"]) for m in imports)
    first = top[0]["module"]
    return [{
        "rule": "slow_import",
        "title": f"importing the plugin takes {whole:.0f} ms; {first} alone "
                 f"{float(top[0]['self_ms']):.0f} ms",
        "figures": {"import_ms": round(whole, 1), "version": top[0]["version"],
                    "modules": [{"module": m["module"], "self_ms": round(float(m["self_ms"]), 1),
                                 "total_ms": round(float(m["total_ms"]), 1)} for m in top]},
        "advice": f"import {first} inside the function that needs it (or find a lighter "
                  "module): every new worker pays this before its first call",
    }]


def _repeated(export: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    hashed = [r for r in _ok(rows) if r["input_hash"]]
    if len(hashed) < REPEAT_MIN_CALLS:
        return []
    distinct = len({r["input_hash"] for r in hashed})
    share = 1.0 - distinct / len(hashed)
    if share < REPEAT_SHARE:
        return []
    wall = statistics.fmean(float(r["wall_ms"]) for r in hashed)
    return [{
        "rule": "repeated_inputs", "export": export,
        "title": f"{export}: {100 * share:.0f}% of its calls repeat an earlier input",
        "figures": {"calls": len(hashed), "distinct_inputs": distinct,
                    "repeat_share": round(share, 3), "mean_wall_ms": round(wall, 3),
                    "saved_ms": round(wall * (len(hashed) - distinct), 1)},
        "advice": f"cache {export}: if its result depends on its input only, memoise it "
                  "(keyed by the input, the plugin's version and its configuration)",
    }]


def _broker(export: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    ok = _ok(rows)
    if len(ok) < 5:
        return []
    per_call = statistics.fmean(int(r["broker_calls"]) for r in ok)
    if per_call < BROKER_CALLS:
        return []
    broker_ms = statistics.fmean(float(r["broker_ms"]) for r in ok)
    wall = statistics.fmean(float(r["wall_ms"]) for r in ok)
    return [{
        "rule": "many_broker_calls", "export": export,
        "title": f"{export}: {per_call:.0f} host-service requests per call",
        "figures": {"calls": len(ok), "broker_calls_per_call": round(per_call, 1),
                    "broker_ms_per_call": round(broker_ms, 3),
                    "broker_share_of_wall": round(broker_ms / wall, 3) if wall else None,
                    "ms_per_request": round(broker_ms / per_call, 4)},
        "advice": "batch them: each request is a round trip to the host; read or write "
                  "many keys in one value, keep what the call already read, publish in bulk",
    }]


def _memory(rows: Sequence[Mapping[str, Any]], limit_mb: int) -> list[dict[str, Any]]:
    peaks = [int(r["peak_rss_kb"]) for r in rows if r["peak_rss_kb"]]
    if not peaks or limit_mb <= 0:
        return []
    peak_mb = max(peaks) / 1024.0
    if peak_mb < MEMORY_SHARE * limit_mb:
        return []
    return [{
        "rule": "memory_near_limit",
        "title": f"its worker's memory peaked at {peak_mb:.0f} MB of its {limit_mb} MB",
        "figures": {"peak_mb": round(peak_mb, 1), "memory_mb": limit_mb,
                    "share": round(peak_mb / limit_mb, 3), "calls": len(peaks)},
        "advice": "raise [sandbox] memory-mb (see the limits suggestion) or hold less at "
                  "once (stream the input, free large values between steps)",
    }]


def _cpu_share(export: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    ok = [r for r in _ok(rows) if r["cpu_ms"] is not None]
    if len(ok) < 5:
        return []
    walls = [float(r["wall_ms"]) for r in ok]
    if statistics.median(walls) < MIN_WALL_MS:
        return []
    cpu = sum(float(r["cpu_ms"]) for r in ok)
    wall = sum(walls)
    ratio = cpu / wall
    broker = sum(float(r["broker_ms"]) for r in ok) / wall
    figures = {"calls": len(ok), "cpu_ms": round(cpu, 1), "wall_ms": round(wall, 1),
               "cpu_wall_ratio": round(ratio, 3), "broker_share": round(broker, 3)}
    if ratio >= CPU_BOUND:
        return [{"rule": "cpu_bound", "export": export,
                 "title": f"{export} is CPU-bound: {100 * ratio:.0f}% of its wall time on CPU",
                 "figures": figures,
                 "advice": f"speed up its code: `corral profile ID {export}` names the hot "
                           "functions; waiting less will not help"}]
    if ratio <= WAITING:
        on = "host services" if broker >= 0.5 * (1 - ratio) else "I/O or sleeping"
        return [{"rule": "waiting", "export": export,
                 "title": f"{export} mostly waits: {100 * ratio:.0f}% of its wall time on CPU",
                 "figures": figures,
                 "advice": f"it waits on {on}: overlap or batch the waits (async I/O, fewer "
                           "requests); faster code would not help"}]
    return []


def _slower(export: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    versions: dict[str, list[float]] = {}
    for r in _ok(rows):  # in the order they were first called, oldest first
        versions.setdefault(str(r["version"]), []).append(float(r["wall_ms"]))
    enough = [v for v, walls in versions.items() if len(walls) >= SLOWER_MIN_CALLS]
    if len(enough) < 2:
        return []
    old, new = enough[-2], enough[-1]
    test = mann_whitney(versions[new], versions[old])
    if test.p >= SLOWER_P or test.superiority < SLOWER_SUPERIORITY:
        return []
    m_old, m_new = statistics.median(versions[old]), statistics.median(versions[new])
    return [{
        "rule": "slower_version", "export": export,
        "title": f"{export}: version {new} is slower than {old} "
                 f"(median {m_new:.2f} ms against {m_old:.2f} ms)",
        "figures": {"old_version": old, "new_version": new,
                    "old_calls": len(versions[old]), "new_calls": len(versions[new]),
                    "old_median_ms": round(m_old, 3), "new_median_ms": round(m_new, 3),
                    "median_ratio": round(m_new / m_old, 3) if m_old else None,
                    "mann_whitney_u": test.u, "p_value": float(f"{test.p:.3g}"),
                    "probability_slower": round(test.superiority, 3),
                    "rank_biserial": round(test.effect, 3), "test": test.method},
        "advice": f"compare what changed between {old} and {new}: profile both "
                  f"(`corral profile ID {export}`) and look at the functions that grew",
    }]


def _limits(rows: Sequence[Mapping[str, Any]], sandbox: Mapping[str, Any],
            now: float) -> list[dict[str, Any]]:
    ok = [r for r in _ok(rows) if r["cpu_ms"] is not None and r["peak_rss_kb"]]
    if len(ok) < LIMIT_MIN_CALLS:
        return []
    cpu = DecayingHistogram(0.1, now=now)  # ms of CPU per call
    mem = DecayingHistogram(1.0, now=now)  # MB peak
    wall = DecayingHistogram(0.1, now=now)  # ms per call
    for r in ok:
        cpu.add(float(r["cpu_ms"]), float(r["at"]))
        mem.add(int(r["peak_rss_kb"]) / 1024.0, float(r["at"]))
        wall.add(float(r["wall_ms"]), float(r["at"]))
    span_days = max(0.0, (max(float(r["at"]) for r in ok) - min(float(r["at"]) for r in ok))
                    ) / 86_400.0
    # VPA's confidence: days of history, or the samples as if one per minute, the smaller.
    confidence = min(span_days, len(ok) / 1440.0)
    widening = min(MAX_WIDENING, 1.0 + 1.0 / confidence) if confidence > 0 else MAX_WIDENING
    margin = (1.0 + SAFETY_MARGIN) * widening
    # What the calls needed (p99 and the safety margin) and what to set (widened as well).
    need = {"memory-mb": mem.percentile(0.99) * (1.0 + SAFETY_MARGIN),
            "cpu-seconds": cpu.percentile(0.99) / 1000.0 * (1.0 + SAFETY_MARGIN),
            "timeout-ms": wall.percentile(0.99) * (1.0 + SAFETY_MARGIN)}
    wanted = {
        "memory-mb": max(16, 16 * math.ceil(need["memory-mb"] * widening / 16)),
        "cpu-seconds": max(1, math.ceil(need["cpu-seconds"] * widening)),
        "timeout-ms": max(100, 100 * math.ceil(need["timeout-ms"] * widening / 100)),
    }
    changes = {}
    for key, value in wanted.items():
        current = int(sandbox.get(key, 0) or 0)
        # Too tight: below what the calls needed. Too loose: LOOSE times what to set
        # (a timeout above use only matters once a call hangs: never too loose).
        loose = key != "timeout-ms" and current > LOOSE * value
        if current and (current < need[key] or loose):
            changes[key] = (current, value)
    if not changes:
        return []
    diff = ["--- corral.toml", "+++ corral.toml (suggested)", "@@ [sandbox] @@"]
    for key, (current, value) in changes.items():
        diff += [f"-{key} = {current}", f"+{key} = {value}"]
    return [{
        "rule": "limits",
        "title": "limits sized from its use: " + ", ".join(
            f"{k} {c} → {v}" for k, (c, v) in changes.items()),
        "figures": {"calls": len(ok), "history_days": round(span_days, 4),
                    "confidence": round(confidence, 5), "margin": round(margin, 3),
                    "cpu_ms_p90": round(cpu.percentile(0.9), 2),
                    "cpu_ms_p99": round(cpu.percentile(0.99), 2),
                    "memory_mb_peak": round(max(int(r["peak_rss_kb"]) for r in ok) / 1024, 1),
                    "memory_mb_p99": round(mem.percentile(0.99), 1),
                    "wall_ms_p99": round(wall.percentile(0.99), 2)},
        "advice": "set these [sandbox] limits: a limit well above use widens what a "
                  "runaway call can take; one below it fails calls (the margin is "
                  f"{100 * SAFETY_MARGIN:.0f}%, widened while the history is short)",
        "diff": "\n".join(diff) + "\n",
    }]


def suggest(version: str, sandbox: Mapping[str, Any], profiles: Sequence[Mapping[str, Any]],
            imports: Sequence[Mapping[str, Any]], *, now: float) -> list[dict[str, Any]]:
    """Every suggestion the recorded calls (``call_profile`` rows, oldest first) and import
    times of a plugin support, each with its figures; ``version`` is the one registered,
    ``sandbox`` its manifest's ``[sandbox]`` table."""
    out = _slow_imports(imports)
    for export, rows in sorted(_by_export(profiles).items()):
        out += _repeated(export, rows)
        out += _broker(export, rows)
        out += _cpu_share(export, rows)
        out += _slower(export, rows)
    if sandbox.get("isolation", "strict") != "none":
        current = [r for r in profiles if r["version"] == version]
        out += _memory(current, int(sandbox.get("memory-mb", 0) or 0))
        out += _limits(current, sandbox, now)
    return out
