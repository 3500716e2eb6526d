"""``corral suggest``: every rule fires on data from real plugin calls, none on clean data."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import CliResult
from helpers.monitored import enabled, write_plugin

from corral import Host
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(sandbox_problem("strict") is not None,
                                reason=f"no strict sandbox: {sandbox_problem('strict')}")

CODE = '''
import time


def quick(value, ctx):
    return value


def chatty(value, ctx):
    for i in range(15):
        ctx.state.get("notes.k")
    return value


def sleepy(value, ctx):
    time.sleep(0.02)
    return value


def burn(value, ctx):
    s = 0
    for i in range(300_000):
        s += i * i
    return s


def hungry(value, ctx):
    block = bytearray(value * 1024 * 1024)
    return len(block)
'''
EXPORTS = {name: name for name in ("quick", "chatty", "sleepy", "burn", "hungry")}
#: Limits a clean run of ``quick`` leaves alone (checked below by suggesting them first).
SNUG = {"memory-mb": 64, "cpu-seconds": 1}


def _rules(found: list[dict[str, Any]], export: str | None = None) -> set[str]:
    return {s["rule"] for s in found if export is None or s.get("export") == export}


def _by(found: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    (one,) = [s for s in found if s["rule"] == rule]
    return one


def _host_with(tmp_path: Path, code: str = CODE, **kw: Any) -> tuple[Host, str]:
    folder = write_plugin(tmp_path / "src", "acme.sugg", code, EXPORTS, **kw)
    host = Host(home=tmp_path / "home")
    return host, enabled(host, folder)


def test_clean_calls_suggest_nothing(tmp_path: Path) -> None:
    host, pid = _host_with(tmp_path, sandbox=SNUG)
    with host:
        for i in range(30):
            assert host.call(pid, "quick", i) == i  # distinct inputs, no broker, fast
        found = host.suggest(pid)
    assert found == [], found


def test_repeated_inputs_suggest_caching(tmp_path: Path) -> None:
    host, pid = _host_with(tmp_path, sandbox=SNUG)
    with host:
        for i in range(30):
            host.call(pid, "quick", {"same": True} if i % 10 else {"n": i})
        found = host.suggest(pid)
    s = _by(found, "repeated_inputs")
    assert s["export"] == "quick"
    assert s["figures"]["calls"] == 30
    assert s["figures"]["distinct_inputs"] == 4
    assert s["figures"]["repeat_share"] == pytest.approx(1 - 4 / 30, abs=1e-3)
    assert "cache quick" in s["advice"]


def test_many_small_broker_calls_suggest_batching(tmp_path: Path) -> None:
    host, pid = _host_with(tmp_path, sandbox=SNUG)
    with host:
        for i in range(6):
            host.call(pid, "chatty", i)
        found = host.suggest(pid)
    s = _by(found, "many_broker_calls")
    assert s["export"] == "chatty"
    assert s["figures"]["broker_calls_per_call"] == 15.0
    assert s["figures"]["broker_ms_per_call"] > 0
    assert "batch" in s["advice"]


def test_a_waiting_export_is_told_apart_from_a_cpu_bound_one(tmp_path: Path) -> None:
    host, pid = _host_with(tmp_path)
    with host:
        busy = _machine_busy()
        for i in range(6):
            host.call(pid, "sleepy", i)
            host.call(pid, "burn", i)
        busy = busy or _machine_busy()
        found = host.suggest(pid)
    waiting = {s["export"]: s for s in found if s["rule"] == "waiting"}
    assert waiting["sleepy"]["figures"]["cpu_wall_ratio"] <= 0.25
    assert "I/O or sleeping" in waiting["sleepy"]["advice"]
    assert "cpu_bound" not in _rules(found, "sleepy")
    if busy:  # a CPU-bound call gets its CPU only on a machine not overloaded
        pytest.skip("this machine gives a busy loop under 85% of a CPU: cannot judge burn")
    assert _by(found, "cpu_bound")["export"] == "burn"
    assert "burn" not in waiting


def _machine_busy() -> bool:
    """Whether this process itself gets under 85% of a CPU while it computes."""
    w, c = time.perf_counter(), time.process_time()
    sum(i * i for i in range(2_000_000))
    return (time.process_time() - c) / (time.perf_counter() - w) < 0.85


def test_memory_close_to_the_limit(tmp_path: Path) -> None:
    host, pid = _host_with(tmp_path, sandbox={"memory-mb": 160})
    with host:
        for _ in range(3):
            host.call(pid, "hungry", 120)
        found = host.suggest(pid)
    s = _by(found, "memory_near_limit")
    assert s["figures"]["memory_mb"] == 160
    assert 128 <= s["figures"]["peak_mb"] <= 160
    assert s["figures"]["share"] >= 0.8


def test_a_slower_version_is_found_by_the_test_not_one_call(tmp_path: Path) -> None:
    fast = CODE.replace("time.sleep(0.02)", "time.sleep(0)")
    slow = CODE.replace("time.sleep(0.02)", "time.sleep(0.15)")  # far apart on a busy machine
    folder = write_plugin(tmp_path / "src", "acme.sugg", fast, EXPORTS, version="1.0.0")
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        for i in range(12):
            host.call(pid, "sleepy", i)
        assert "slower_version" not in _rules(host.suggest(pid))
        write_plugin(tmp_path / "src", "acme.sugg", slow, EXPORTS, version="1.1.0")
        host.register(folder)  # an upgrade in place: the recorded calls stay
        for i in range(12):
            host.call(pid, "sleepy", i)
        found = host.suggest(pid)
    s = _by(found, "slower_version")
    f = s["figures"]
    assert (f["old_version"], f["new_version"]) == ("1.0.0", "1.1.0")
    assert (f["old_calls"], f["new_calls"]) == (12, 12)
    assert f["test"] == "asymptotic"
    assert f["p_value"] < 0.01
    assert f["probability_slower"] >= 0.8  # a worker's first call may be slow in either
    assert f["rank_biserial"] == pytest.approx(2 * f["probability_slower"] - 1, abs=2e-3)
    assert f["new_median_ms"] > f["old_median_ms"]


def test_limits_are_sized_from_use_and_the_suggestion_is_a_fixed_point(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "src", "acme.sugg", CODE, EXPORTS)  # default limits
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        for i in range(20):
            host.call(pid, "quick", i)
        s = _by(host.suggest(pid), "limits")
        f = s["figures"]
        assert f["calls"] == 20
        assert f["margin"] == pytest.approx(1.15 * 2.0)
        assert "-memory-mb = 256" in s["diff"]
        assert "-cpu-seconds = 10" in s["diff"]
        new = {line[1:].split(" = ")[0]: int(line.split(" = ")[1])
               for line in s["diff"].splitlines() if line.startswith("+") and " = " in line}
        assert 16 <= new["memory-mb"] <= 128
        assert new["cpu-seconds"] == 1
        write_plugin(tmp_path / "src", "acme.sugg", CODE, EXPORTS, version="1.0.1",
                     sandbox=new)
        host.register(folder)
        for i in range(20):
            host.call(pid, "quick", i)
        assert "limits" not in _rules(host.suggest(pid))


def test_a_slow_import_names_the_module(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "src", "acme.sugg",
                          "from acme_sugg import heavy\n" + CODE, EXPORTS)
    (folder / "acme_sugg" / "heavy.py").write_text("import time\ntime.sleep(0.12)\n")
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        host.call(pid, "quick", 1)
        found = host.suggest(pid)
    s = _by(found, "slow_import")
    top = s["figures"]["modules"][0]
    assert top["module"] == "acme_sugg.heavy"
    assert top["self_ms"] >= 120
    assert s["figures"]["import_ms"] >= top["total_ms"]
    assert "acme_sugg.heavy" in s["advice"]


def test_the_verb_prints_the_figures_and_json(tmp_path: Path,
                                               run_cli: Callable[..., CliResult]) -> None:
    host, pid = _host_with(tmp_path, sandbox=SNUG)
    with host:
        for _ in range(6):
            host.call(pid, "chatty", 1)
    out = run_cli("suggest", pid, "--json")
    assert out.code == 0, out
    assert out.json["plugin"] == pid
    assert "many_broker_calls" in _rules(out.json["suggestions"])
    text = run_cli("suggest", pid)
    assert "[many_broker_calls]" in text.out
    assert "broker_calls_per_call: 15.0" in text.out
    missing = run_cli("suggest", "acme.nope", "--json")
    assert missing.code != 0
    assert missing.json["error"]["code"] == "not_found"


def test_the_profile_verb_writes_a_flame_graph(tmp_path: Path,
                                               run_cli: Callable[..., CliResult]) -> None:
    host, pid = _host_with(tmp_path, sandbox=SNUG)
    host.close()
    out = run_cli("profile", pid, "burn", "--seconds", "0.5", "-o", str(tmp_path / "b.svg"),
                  "--json")
    assert out.code == 0, out.err
    assert out.json["export"] == "burn"
    assert out.json["calls"] >= 1
    assert out.json["format"] == "svg"
    assert out.json["functions"][0]["function"] == "burn"
    assert (tmp_path / "b.svg").read_text().count("burn") >= 1
    bad = run_cli("profile", pid, "--seconds", "1", "--json")  # five exports: name one
    assert bad.code != 0
    assert bad.json["error"]["code"] == "usage"
    assert "chatty" in bad.json["error"]["message"]
    run_cli("daemon", "stop")
