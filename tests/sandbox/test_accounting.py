"""Exact per-plugin accounting, judged against the kernel's own cgroup counters."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import close_quietly
from helpers.plugins import make_plugin, module_name

from corral import Host
from corral._runtime.usage import USAGE_COLUMNS
from corral._sandbox.cgroups import detect_accounting
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None or detect_accounting()[0] is None,
    reason=f"no strict sandbox or no cgroup accounting: {sandbox_problem('strict')}, "
    f"{detect_accounting()[1]}",
)

CODE = """
import time

def noop(value, ctx):
    return value

def burn(ms, ctx):
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    return ms

def alloc(mib, ctx):
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    return len(block)
"""
MIB = 1024 * 1024


def _plugin(root: Path, plugin_id: str, isolation: str = "strict") -> Path:
    mod = module_name(plugin_id)
    return make_plugin(
        root, plugin_id, {f"{mod}.py": CODE}, isolation=isolation,
        exports={n: f"{mod}:{n}" for n in ("noop", "burn", "alloc")},
        sandbox={"memory-mb": 512, "timeout-ms": 20000},
    )


def _kernel_cpu_ns(path: str) -> int:
    with open(os.path.join(path, "cpuacct.usage")) as f:
        return int(f.read())


def _usage(home: Path, plugin_id: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(home / "corral.db")
    try:
        cols = ", ".join(USAGE_COLUMNS)
        rows = conn.execute(
            f"SELECT {cols} FROM usage WHERE plugin_id = ? ORDER BY at",
            (plugin_id,),
        ).fetchall()
    finally:
        conn.close()
    return [dict(zip(USAGE_COLUMNS, r, strict=True)) for r in rows]


def _cpu_ms(rows: list[dict[str, Any]]) -> float:
    return sum(float(r["cpu_ms"] or 0) for r in rows)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(home=tmp_path / "home", workspace=tmp_path)
    yield h
    close_quietly(h)


def test_a_200_ms_burn_is_reported_within_5_percent_and_as_the_kernel_counts_it(
    host: Host, tmp_path: Path
) -> None:
    host.register(_plugin(tmp_path, "acme.burner"))
    host.enable("acme.burner")
    host.call("acme.burner", "noop", 1)  # the worker is up, its import paid for
    host.flush_metrics()
    recorded_before = _cpu_ms(_usage(host.home, "acme.burner"))
    account = host.attachments.supervisor().account("acme.burner")
    assert account is not None
    assert account.exact
    cpuacct = account.cgroup_path("cpuacct")
    assert cpuacct is not None
    assert "corral-" in cpuacct
    kernel_before, ours_before = _kernel_cpu_ns(cpuacct), account.cpu_ns()
    assert host.call("acme.burner", "burn", 200) == 200
    kernel_after, ours_after = _kernel_cpu_ns(cpuacct), account.cpu_ns()
    assert ours_before is not None
    assert ours_after is not None
    reported_ms = (ours_after - ours_before) / 1e6
    kernel_ms = (kernel_after - kernel_before) / 1e6
    assert 190.0 <= reported_ms <= 210.0, reported_ms
    assert abs(reported_ms - kernel_ms) <= 0.01 * kernel_ms, (reported_ms, kernel_ms)

    host.flush_metrics()
    kernel_total_ms = _kernel_cpu_ns(cpuacct) / 1e6
    rows = _usage(host.home, "acme.burner")
    assert rows
    assert all(r["source"] == "cgroup-v1" and not r["approximate"] for r in rows)
    assert all(r["version"] == "1.0.0" and r["isolation"] == "strict" for r in rows)
    recorded_ms = _cpu_ms(rows) - recorded_before
    # What the worker used between the two flushes: the burn and the little around it.
    assert 190.0 <= recorded_ms <= kernel_total_ms - kernel_before / 1e6 + 1.0, recorded_ms
    usage = host.info("acme.burner")["usage"]
    assert usage["approximate"] is False
    assert usage["cpu_ms"] >= 190.0


def test_a_100_mib_allocation_shows_in_its_own_peak_and_not_in_its_neighbours(
    host: Host, tmp_path: Path
) -> None:
    host.register(_plugin(tmp_path, "acme.hog"))
    host.register(_plugin(tmp_path, "acme.quiet"))
    host.enable("acme.hog")
    host.enable("acme.quiet")
    host.call("acme.quiet", "noop", 1)
    assert host.call("acme.hog", "alloc", 100) == 100 * MIB
    host.call("acme.quiet", "noop", 2)
    sup = host.attachments.supervisor()
    hog, quiet = sup.account("acme.hog"), sup.account("acme.quiet")
    assert hog is not None
    assert quiet is not None
    kernel_peaks = {}
    for name, account in (("hog", hog), ("quiet", quiet)):
        path = account.cgroup_path("memory")
        assert path is not None
        with open(os.path.join(path, "memory.max_usage_in_bytes")) as f:
            kernel_peaks[name] = int(f.read())
    host.flush_metrics()
    # The last row is the running worker's (one started while enabling has its own rows).
    hog_peak = int(_usage(host.home, "acme.hog")[-1]["mem_peak_bytes"])
    quiet_peak = int(_usage(host.home, "acme.quiet")[-1]["mem_peak_bytes"])
    assert hog_peak >= 100 * MIB
    assert hog_peak == kernel_peaks["hog"]
    assert quiet_peak < 30 * MIB, quiet_peak
    assert quiet_peak == kernel_peaks["quiet"]


def test_a_stopped_workers_last_figures_are_recorded_before_its_cgroup_goes(
    host: Host, tmp_path: Path
) -> None:
    host.register(_plugin(tmp_path, "acme.brief", isolation="limited"))
    host.enable("acme.brief")
    host.call("acme.brief", "noop", 1)
    account = host.attachments.supervisor().account("acme.brief")
    assert account is not None
    cpuacct = account.cgroup_path("cpuacct")
    assert cpuacct is not None
    assert os.path.isdir(cpuacct)
    host.call("acme.brief", "burn", 50)
    host.disable("acme.brief")  # the worker stops: a final sample, then the cgroup goes
    assert not os.path.exists(cpuacct)
    host.flush_metrics()
    rows = _usage(host.home, "acme.brief")
    assert rows[-1]["processes"] == 0
    assert _cpu_ms(rows) >= 47.5


def test_without_cgroups_the_worker_is_measured_by_rusage_and_marked_approximate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_FORKSERVER_ACCOUNTING", "0")
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(_plugin(tmp_path, "acme.rough"))
        host.enable("acme.rough")
        host.call("acme.rough", "burn", 100)
        account = host.attachments.supervisor().account("acme.rough")
        assert account is not None
        assert not account.exact
        assert account.cpu_ns() is None
        host.flush_metrics()
        rows = _usage(host.home, "acme.rough")
    assert rows
    assert all(r["source"] == "rusage" and r["approximate"] for r in rows)
    assert _cpu_ms(rows) >= 90.0


def test_in_process_plugins_are_measured_only_while_monitoring_is_on(
    host: Host, tmp_path: Path
) -> None:
    host.register(_plugin(tmp_path, "acme.inproc", isolation="none"))
    host.enable("acme.inproc")
    host.call("acme.inproc", "burn", 5)
    host.flush_metrics()
    assert _usage(host.home, "acme.inproc") == []
    host.set_monitoring(True, every=1)
    assert host.monitoring
    for _ in range(4):
        host.call("acme.inproc", "burn", 20)
    host.flush_metrics()
    rows = _usage(host.home, "acme.inproc")
    assert rows
    assert all(r["source"] == "thread" and r["approximate"] for r in rows)
    assert sum(int(r["calls"]) for r in rows) == 4
    assert 76.0 <= _cpu_ms(rows) <= 120.0
    host.set_monitoring(False)
    host.call("acme.inproc", "burn", 5)
    host.flush_metrics()
    assert len(_usage(host.home, "acme.inproc")) == len(rows)
