"""``corral top``, ``corral metrics`` and doctor's accounting line, run as real processes
against a home that a host in this process writes to.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import ENV_DROP, CliResult
from helpers.plugins import make_plugin
from prometheus_client.parser import text_string_to_metric_families

from corral import Host, PluginError
from corral._runtime.database import HostDatabase

Run = Callable[..., CliResult]

#: The keys of one ``top --json`` row, the shape docs/contract.md promises.
ROW_KEYS = {
    "plugin", "version", "state", "isolation", "calls_per_s", "p50_ms", "p95_ms", "errors",
    "cpu_percent", "mem_bytes", "mem_peak_bytes", "mem_limit_bytes", "mem_percent", "queued",
    "cache_hit_rate", "source", "approximate",
}


def _families(text: str) -> dict[str, Any]:
    """Parse exposition text strictly (prometheus_client's parser) into families by name."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_top_json_sees_calls_a_host_in_another_process_made(
    host: Host, workspace: Path, run_cli: Run
) -> None:
    host.register(make_plugin(workspace, "acme.busy"))
    host.register(make_plugin(workspace, "acme.idle"))
    host.enable("acme.busy")
    for i in range(20):
        host.call("acme.busy", "echo", i)
    with pytest.raises(PluginError):
        host.call("acme.busy", "boom", None)
    # No explicit flush: the host's background flush must bring them to the database.
    deadline = time.monotonic() + 15
    while True:
        r = run_cli("top", "--once", "--json", "--sort", "calls")
        assert r.code == 0, r.err
        rows = {row["plugin"]: row for row in r.json["plugins"]}
        if rows["acme.busy"]["calls_per_s"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.json["window_seconds"] == 10.0
    assert r.json["sort"] == "calls"
    assert [row["plugin"] for row in r.json["plugins"]] == ["acme.busy", "acme.idle"]
    busy = rows["acme.busy"]
    assert set(busy) == ROW_KEYS
    assert busy["calls_per_s"] == pytest.approx(21 / 10.0)
    assert busy["errors"] == 1
    assert busy["p50_ms"] is not None
    assert busy["p95_ms"] >= busy["p50_ms"]
    assert busy["state"] == "enabled"
    assert busy["version"] == "1.0.0"
    assert busy["cache_hit_rate"] is None  # no cache statistics exist yet
    idle = rows["acme.idle"]
    assert idle["calls_per_s"] == 0
    assert idle["p95_ms"] is None
    assert idle["errors"] == 0


def test_top_sorts_by_errors_and_prints_a_table(host: Host, workspace: Path,
                                                run_cli: Run) -> None:
    host.register(make_plugin(workspace, "acme.good"))
    host.register(make_plugin(workspace, "acme.bad"))
    host.enable("acme.good")
    host.enable("acme.bad")
    for _ in range(5):
        host.call("acme.good", "echo", 1)
    for _ in range(3):
        with pytest.raises(PluginError):
            host.call("acme.bad", "boom", None)
    host.flush_metrics()
    r = run_cli("top", "--once", "--json", "--sort", "errors")
    assert [row["plugin"] for row in r.json["plugins"]] == ["acme.bad", "acme.good"]
    r = run_cli("top", "--once", "--json", "--sort", "calls")
    assert [row["plugin"] for row in r.json["plugins"]] == ["acme.good", "acme.bad"]
    text = run_cli("top", "--once")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split()[:2] == ["PLUGIN", "CALLS/S"]
    assert "CACHE HIT" in lines[0]
    assert lines[1].split()[0] == "acme.bad"  # the default sort is CPU; none measured: names
    bad = run_cli("top", "--once", "--sort", "bogus")
    assert bad.code != 0
    assert "bogus" in bad.err


def test_top_with_a_strict_plugin_shows_exact_cpu_and_memory_against_its_limit(
    host: Host, workspace: Path, run_cli: Run
) -> None:
    from corral._services.sandboxed import sandbox_problem

    if sandbox_problem("strict") is not None:
        pytest.skip("no strict sandbox")
    host.register(make_plugin(workspace, "acme.boxed", isolation="strict",
                              sandbox={"memory-mb": 128}))
    host.enable("acme.boxed")
    host.call("acme.boxed", "echo", 1)
    host.flush_metrics()
    row = next(r for r in run_cli("top", "--once", "--json").json["plugins"]
               if r["plugin"] == "acme.boxed")
    assert row["isolation"] == "strict"
    assert row["mem_limit_bytes"] == 128 * 1024 * 1024
    if row["source"] is not None:  # cgroup accounting on this machine
        assert row["source"].startswith("cgroup-v")
        assert row["approximate"] is False
        assert row["cpu_percent"] is not None
        assert row["mem_bytes"] > 0


def test_metrics_parse_as_prometheus_text_with_counters_and_histograms(
    host: Host, workspace: Path, run_cli: Run
) -> None:
    host.register(make_plugin(workspace, "acme.meter"))
    host.enable("acme.meter")
    for i in range(7):
        host.call("acme.meter", "echo", i)
    with pytest.raises(PluginError):
        host.call("acme.meter", "boom", None)
    host.flush_metrics()
    r = run_cli("metrics")
    assert r.code == 0, r.err
    fams = _families(r.out)
    calls = {(s.labels["plugin"], s.labels["outcome"]): s.value
             for s in fams["corral_plugin_calls"].samples}
    assert calls == {("acme.meter", "ok"): 7, ("acme.meter", "plugin_error"): 1}
    assert fams["corral_plugin_calls"].type == "counter"
    errors = {s.labels["plugin"]: s.value for s in fams["corral_plugin_errors"].samples}
    assert errors == {"acme.meter": 1}
    hist = fams["corral_plugin_call_duration_seconds"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert [float(s.labels["le"]) for s in buckets] == sorted(float(s.labels["le"])
                                                              for s in buckets)
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1].labels["le"] == "+Inf"
    assert counts[-1] == 8
    count = next(s for s in hist.samples if s.name.endswith("_count"))
    assert count.value == 8
    as_json = run_cli("metrics", "--json").json
    names = [f["name"] for f in as_json["families"]]
    assert "corral_plugin_calls_total" in names


def test_the_plugin_label_is_capped_and_the_rest_folded_into_other(
    home: Path, run_cli: Run
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    db = HostDatabase(home / "corral.db")
    now = time.time()
    rows = []
    for i in range(6):  # acme.p0 has 1 call ... acme.p5 has 6
        rows.extend((f"acme.p{i}", "run", "none", "ok", 1.0, None, None, None, None, now)
                    for _ in range(i + 1))
    db.record_calls(rows)
    db.record_usage([(f"acme.p{i}", "1.0", "strict", "cgroup-v1", 0, now, 1.0, i + 1,
                      100.0, 1, 10 * (i + 1), None, 0, 0, 1, 0, None, None, None)
                     for i in range(6)])
    db.close()
    r = run_cli("metrics", "--max-plugins", "2")
    fams = _families(r.out)
    calls = {s.labels["plugin"]: s.value for s in fams["corral_plugin_calls"].samples}
    assert calls == {"acme.p5": 6, "acme.p4": 5, "other": 1 + 2 + 3 + 4}
    for fam in fams.values():
        assert {s.labels["plugin"] for s in fam.samples} <= {"acme.p5", "acme.p4", "other"}
    cpu = {s.labels["plugin"]: s.value for s in fams["corral_plugin_cpu_seconds"].samples}
    assert cpu["other"] == pytest.approx(0.4)
    peak = {s.labels["plugin"]: s.value
            for s in fams["corral_plugin_memory_peak_bytes"].samples}
    assert peak == {"acme.p5": 60, "acme.p4": 50, "other": 40}  # the highest folded, not summed
    assert run_cli("metrics", "--max-plugins", "0").code != 0


def _env(home: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["CORRAL_HOME"] = str(home)
    env["TMPDIR"] = str(tmp_path)
    return env


def test_metrics_serve_answers_scrapes_on_metrics_only(
    host: Host, workspace: Path, home: Path, tmp_path: Path
) -> None:
    host.register(make_plugin(workspace, "acme.scraped"))
    host.enable("acme.scraped")
    host.call("acme.scraped", "echo", 1)
    host.flush_metrics()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "metrics", "--serve", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home, tmp_path),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = m.group(0)
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            fams = _families(resp.read().decode())
        assert {s.labels["plugin"] for s in fams["corral_plugin_calls"].samples} == {
            "acme.scraped"}
        host.call("acme.scraped", "echo", 2)
        host.flush_metrics()
        with urllib.request.urlopen(url, timeout=10) as resp:  # every scrape reads afresh
            again = _families(resp.read().decode())
        assert sum(s.value for s in again["corral_plugin_calls"].samples) == 2
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url.replace("/metrics", "/admin"), timeout=10)
        assert info.value.code == 404
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_metrics_serve_refuses_a_malformed_address(run_cli: Run) -> None:
    r = run_cli("metrics", "--serve", "localhost", "--json")
    assert r.code == 2
    assert r.json["error"]["code"] == "usage"
    assert "HOST:PORT" in r.json["error"]["message"]


def test_doctor_says_how_workers_are_measured(run_cli: Run) -> None:
    from corral._sandbox.cgroups import detect_accounting

    found, _why = detect_accounting()
    doc = run_cli("doctor", "--json").json["accounting"]
    assert doc["exact"] is (found is not None)
    if found is not None:
        assert doc["version"] == found.version
        assert "cpuacct" in doc["controllers"] or doc["version"] == 2
        assert f"cgroup v{found.version}" in doc["detail"]
    else:
        assert "approximate" in doc["detail"]
    text = run_cli("doctor").out
    assert re.search(r"^cgroup accounting\s+(yes|NO)\s+", text, re.M)
