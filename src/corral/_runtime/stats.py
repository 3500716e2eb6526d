"""What ``corral top`` and the metrics export show: per-plugin figures from the host database.

Everything is read from what hosts recorded in the home (their calls and usage samples,
flushed about once a second), so a host running in another process is seen too.
Figures from rusage or the thread clock keep their ``approximate`` mark.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from corral._model.exposition import Family, fold_labels
from corral._runtime.database import HostDatabase
from corral._runtime.usage import USAGE_COLUMNS

__all__ = [
    "LATENCY_BOUNDS_MS",
    "SORT_KEYS",
    "WINDOW_SECONDS",
    "CacheRate",
    "host_families",
    "no_cache_rate",
    "plugin_rows",
    "queued_events",
    "sort_rows",
]

#: The window that rates, percentiles and CPU % are taken over.
WINDOW_SECONDS: Final = 10.0
#: The latency histogram's bucket bounds, in milliseconds.
LATENCY_BOUNDS_MS: Final = (0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0)

#: ``plugin id -> hit rate in [0, 1]``, or ``None`` when nothing is known (no cache yet).
CacheRate = Callable[[str], float | None]

#: ``--sort`` key -> the row field, highest first.
SORT_KEYS: Final = {
    "cpu": "cpu_percent",
    "mem": "mem_bytes",
    "calls": "calls_per_s",
    "p95": "p95_ms",
    "errors": "errors",
}


def no_cache_rate(plugin_id: str) -> float | None:
    """No cache statistics are recorded: every plugin's hit rate is unknown."""
    del plugin_id
    return None


def queued_events(home: Path) -> dict[str, int]:
    """Per plugin, durable events after its consumers' committed offsets (from
    ``events.db``; an upper bound, as a consumer's pattern may skip some).
    """
    path = home / "events.db"
    if not path.exists():
        return {}
    out: dict[str, int] = {}
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            last = conn.execute('SELECT MAX("offset") FROM events').fetchone()[0] or 0
            for name, offset in conn.execute('SELECT name, "offset" FROM consumers'):
                plugin_id = str(name).partition(":")[0]
                out[plugin_id] = out.get(plugin_id, 0) + max(0, int(last) - int(offset))
        finally:
            conn.close()
    return out


def _pct(ordered: list[tuple[float, int]], q: float) -> float:
    """The ``q`` quantile of weighted values sorted by value."""
    total = sum(w for _v, w in ordered)
    rank = min(total - 1, int(q * total))
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen > rank:
            return round(value, 3)
    return round(ordered[-1][0], 3)


def plugin_rows(
    db: HostDatabase,
    *,
    window: float = WINDOW_SECONDS,
    now: float | None = None,
    cache_rate: CacheRate = no_cache_rate,
    queued: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per plugin (registered or seen in the window), the shape of ``top --json``."""
    now = time.time() if now is None else now
    since = now - window
    registered = {row.id: row for row in db.all()}
    walls: dict[str, list[tuple[float, int]]] = {}
    errors: dict[str, int] = {}
    for plugin_id, outcome, wall_ms, _at, weight in db.calls_since(since):
        walls.setdefault(plugin_id, []).append((wall_ms, weight))
        if outcome != "ok":
            errors[plugin_id] = errors.get(plugin_id, 0) + weight
    usage: dict[str, list[dict[str, Any]]] = {}
    for raw in db.usage_since(since):
        u = dict(zip(USAGE_COLUMNS, raw, strict=True))
        usage.setdefault(u["plugin_id"], []).append(u)
    queued = queued or {}
    rows = []
    for plugin_id in sorted(set(registered) | set(walls) | set(usage)):
        reg = registered.get(plugin_id)
        samples = usage.get(plugin_id, [])
        last = samples[-1] if samples else None
        ordered = sorted(walls.get(plugin_id, []))
        cpu = [u["cpu_ms"] for u in samples if u["cpu_ms"] is not None]
        peaks = [u["mem_peak_bytes"] for u in samples if u["mem_peak_bytes"] is not None]
        mem = last["mem_current_bytes"] if last is not None else None
        if mem is None and peaks:
            mem = max(peaks)
        limit = last["mem_limit_bytes"] if last is not None else None
        if limit is None and reg is not None:
            sandbox = reg.manifest.get("sandbox", {})
            if isinstance(sandbox, dict) and isinstance(sandbox.get("memory-mb"), int):
                limit = sandbox["memory-mb"] * 1024 * 1024
        isolation = last["isolation"] if last is not None else None
        if isolation is None and reg is not None:
            sandbox = reg.manifest.get("sandbox", {})
            isolation = sandbox.get("isolation", "none") if isinstance(sandbox, dict) else None
        rows.append({
            "plugin": plugin_id,
            "version": (last["version"] if last is not None and last["version"] else
                        reg.version if reg is not None else None),
            "state": reg.state if reg is not None else None,
            "isolation": isolation,
            "calls_per_s": round(sum(w for _v, w in ordered) / window, 3),
            "p50_ms": _pct(ordered, 0.5) if ordered else None,
            "p95_ms": _pct(ordered, 0.95) if ordered else None,
            "errors": errors.get(plugin_id, 0),
            "cpu_percent": round(sum(cpu) / (window * 1000.0) * 100.0, 2) if cpu else None,
            "mem_bytes": mem,
            "mem_peak_bytes": max(peaks) if peaks else None,
            "mem_limit_bytes": limit,
            "mem_percent": (round(mem / limit * 100.0, 1) if mem is not None and limit
                            else None),
            "queued": queued.get(plugin_id),
            "cache_hit_rate": cache_rate(plugin_id),
            "source": last["source"] if last is not None else None,
            "approximate": bool(last["approximate"]) if last is not None else None,
        })
    return rows


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``rows`` highest first by a :data:`SORT_KEYS` key (unknown figures last)."""
    field = SORT_KEYS[key]
    return sorted(rows, key=lambda r: (r[field] is None, -(r[field] or 0), r["plugin"]))


def host_families(db: HostDatabase, *, max_plugins: int = 50) -> list[Family]:
    """The host's metrics over every recorded call and usage sample, with at most
    ``max_plugins`` values of the ``plugin`` label (the busiest; the rest are folded
    into ``plugin="other"``).
    """
    histograms = db.call_histograms(LATENCY_BOUNDS_MS)
    totals = db.usage_totals()
    activity: dict[str, float] = {}
    for plugin_id, _outcome, n_calls, _wall, _buckets in histograms:
        activity[plugin_id] = activity.get(plugin_id, 0.0) + n_calls
    for plugin_id, *_rest in totals:
        activity.setdefault(plugin_id, 0.0)
    label = fold_labels(activity, max_plugins)

    calls = Family("corral_plugin_calls_total", "counter", "Calls finished, by outcome.")
    errors = Family("corral_plugin_errors_total", "counter", "Calls that did not end ok.")
    latency = Family("corral_plugin_call_duration_seconds", "histogram",
                     "Wall-clock time of calls.")
    cpu = Family("corral_plugin_cpu_seconds_total", "counter",
                 "CPU time: exact (cgroup) for sandboxed workers, else approximate.")
    peak = Family("corral_plugin_memory_peak_bytes", "gauge", "Highest memory use seen.")
    io_read = Family("corral_plugin_io_read_bytes_total", "counter", "Block-device bytes read.")
    io_write = Family("corral_plugin_io_write_bytes_total", "counter",
                      "Block-device bytes written.")
    ooms = Family("corral_plugin_oom_kills_total", "counter", "Kills by the kernel's OOM killer.")
    approx = Family("corral_plugin_accounting_approximate", "gauge",
                    "1 where the figures are approximate (rusage or thread clock).")

    per_outcome: dict[tuple[str, str], float] = {}
    failed: dict[str, float] = {}
    hist: dict[str, list[float]] = {}
    for plugin_id, outcome, n, wall_ms, buckets in histograms:
        name = label[plugin_id]
        per_outcome[(name, outcome)] = per_outcome.get((name, outcome), 0.0) + n
        if outcome != "ok":
            failed[name] = failed.get(name, 0.0) + n
        acc = hist.setdefault(name, [0.0, 0.0] + [0.0] * len(buckets))
        acc[0] += n
        acc[1] += wall_ms / 1000.0
        for i, b in enumerate(buckets):
            acc[2 + i] += b
    for (name, outcome), total in sorted(per_outcome.items()):
        calls.add("", {"plugin": name, "outcome": outcome}, total)
    for name in sorted({label[p] for p in activity}):
        errors.add("", {"plugin": name}, failed.get(name, 0.0))
    for name, acc in sorted(hist.items()):
        for bound, count in zip(LATENCY_BOUNDS_MS, acc[2:], strict=True):
            latency.add("_bucket", {"plugin": name, "le": _seconds(bound)}, count)
        latency.add("_bucket", {"plugin": name, "le": "+Inf"}, acc[0])
        latency.add("_sum", {"plugin": name}, acc[1])
        latency.add("_count", {"plugin": name}, acc[0])

    merged: dict[str, list[float]] = {}
    for plugin_id, approximate, cpu_ms, peak_b, read_b, write_b, oom in totals:
        acc = merged.setdefault(label[plugin_id], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        acc[0] += cpu_ms / 1000.0
        acc[1] = max(acc[1], float(peak_b))
        acc[2] += read_b
        acc[3] += write_b
        acc[4] += oom
        acc[5] = max(acc[5], 1.0 if approximate else 0.0)
    for name, acc in sorted(merged.items()):
        labels = {"plugin": name}
        cpu.add("", labels, acc[0])
        peak.add("", labels, acc[1])
        io_read.add("", labels, acc[2])
        io_write.add("", labels, acc[3])
        ooms.add("", labels, acc[4])
        approx.add("", labels, acc[5])
    return [calls, errors, latency, cpu, peak, io_read, io_write, ooms, approx]


def _seconds(bound_ms: float) -> str:
    return repr(bound_ms / 1000.0)

