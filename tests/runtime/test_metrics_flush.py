"""The metrics flush: bounded writes with exact counts, and a schema-2 database upgraded."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from corral._runtime.database import HostDatabase
from corral._runtime.metrics import ROWS_PER_FLUSH, CallMetrics
from corral._runtime.stats import plugin_rows


def test_a_flood_of_calls_is_written_as_a_weighted_sample_with_exact_counts(
    tmp_path: Path,
) -> None:
    db = HostDatabase(tmp_path / "corral.db")
    metrics = CallMetrics(db)
    start = time.perf_counter_ns()
    for i in range(30_000):  # 30 ms each for the errors, 1 ms for the rest
        outcome = "plugin_error" if i % 100 == 0 else "ok"
        wall = 30_000_000 if outcome != "ok" else 1_000_000
        metrics.in_process.append((("acme.hot", "run"), start, start + wall, outcome))
    for _ in range(7):
        metrics.in_process.append((("acme.cold", "run"), start, start + 5_000_000, "ok"))
    metrics.flush()
    conn = sqlite3.connect(tmp_path / "corral.db")
    try:
        written = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        weights = dict(conn.execute(
            "SELECT plugin_id || ' ' || outcome, SUM(weight) FROM calls GROUP BY 1"))
    finally:
        conn.close()
    assert written <= ROWS_PER_FLUSH // 2 + 3  # a sample, at most one extra row per group
    assert weights == {"acme.hot ok": 29_700, "acme.hot plugin_error": 300, "acme.cold ok": 7}
    rows = {r["plugin"]: r for r in plugin_rows(db, window=10.0)}
    assert rows["acme.hot"]["calls_per_s"] == 3000.0
    assert rows["acme.hot"]["errors"] == 300
    assert rows["acme.hot"]["p50_ms"] == 1.0  # the weights keep the percentiles right
    assert rows["acme.hot"]["p95_ms"] == 1.0
    assert rows["acme.cold"]["calls_per_s"] == 0.7
    assert rows["acme.cold"]["p50_ms"] == 5.0
    hist = {(p, o): n for p, o, n, _s, _b in db.call_histograms((10.0,))}
    assert hist[("acme.hot", "ok")] == 29_700
    db.close()


def test_few_calls_are_written_one_row_each(tmp_path: Path) -> None:
    db = HostDatabase(tmp_path / "corral.db")
    metrics = CallMetrics(db)
    now = time.perf_counter_ns()
    for i in range(10):
        metrics.in_process.append((("acme.a", "run"), now, now + i * 1_000_000, "ok"))
    metrics.flush()
    calls = db.calls_since(0.0)
    assert len(calls) == 10
    assert {c[4] for c in calls} == {1}
    assert sorted(c[2] for c in calls) == [float(i) for i in range(10)]
    db.close()


def test_a_schema_2_database_gains_the_usage_table_and_call_weights(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '2');
        CREATE TABLE plugins (id TEXT PRIMARY KEY, version TEXT NOT NULL, path TEXT NOT NULL,
            source TEXT NOT NULL, state TEXT NOT NULL, error TEXT, manifest TEXT NOT NULL,
            manifest_mtime_ns INTEGER NOT NULL, manifest_size INTEGER NOT NULL,
            registered_at REAL NOT NULL, updated_at REAL NOT NULL,
            origin TEXT NOT NULL DEFAULT '', digest TEXT NOT NULL DEFAULT '',
            linked INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE calls (id INTEGER PRIMARY KEY, plugin_id TEXT NOT NULL,
            export TEXT NOT NULL, isolation TEXT NOT NULL, outcome TEXT NOT NULL,
            wall_ms REAL NOT NULL, cpu_user_ms REAL, cpu_system_ms REAL, peak_rss_kb INTEGER,
            result_bytes INTEGER, at REAL NOT NULL);
        INSERT INTO calls (plugin_id, export, isolation, outcome, wall_ms, at)
            VALUES ('acme.old', 'run', 'none', 'ok', 2.0, 1.0);
    """)
    conn.close()
    db = HostDatabase(path)
    assert db.get_meta("schema") == "3"
    assert db.calls_since(0.0) == [("acme.old", "ok", 2.0, 1.0, 1)]  # old rows weigh 1
    db.record_usage([("acme.old", "1.0", "strict", "cgroup-v1", 0, 5.0, 1.0, 1, 12.5, 1, 2,
                      3, 4, 5, 1, 0, None, None, None)])
    assert db.usage_totals() == [("acme.old", False, 12.5, 2, 4, 5, 0)]
    db.close()
    again = HostDatabase(path)  # opening an upgraded database changes nothing
    assert again.usage_since(0.0)[0][:4] == ("acme.old", "1.0", "strict", "cgroup-v1")
    again.close()
