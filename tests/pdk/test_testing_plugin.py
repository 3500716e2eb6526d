"""The ``corral.testing`` pytest plugin, used here as any plugin author would use it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.testing import (
    AssertDenied,
    EventRecorder,
    LoadPlugin,
    PerfBudget,
    StateView,
    find_plugin_dir,
)

CODE = '''
import time


def read(path, ctx):
    return open(path).read()


def publish(value, ctx):
    ctx.events.publish(value["topic"], value.get("data"))
    ctx.state.set("acme.probe.last", value.get("data"))
    return True


def echo(value, ctx):
    return value


def nap(ms, ctx):
    time.sleep(ms / 1000)
    return ms
'''


def probe(root: Path, isolation: str) -> Path:
    """A plugin with no file grants and events/state under acme.probe.*."""
    path = root / f"probe-{isolation}"
    path.mkdir()
    (path / "acme_probe.py").write_text(CODE)
    (path / "corral.toml").write_text(f'''
[plugin]
id = "acme.probe"
name = "Probe"
version = "1.0.0"

[permissions]
host-api = ["events.publish:acme.probe.*", "state.write:acme.probe.*",
            "state.read:acme.probe.*"]

[sandbox]
isolation = "{isolation}"

[exports]
read = "acme_probe:read"
publish = "acme_probe:publish"
echo = "acme_probe:echo"
nap = "acme_probe:nap"
''')
    return path


def test_import_is_light() -> None:
    code = ("import sys, corral.testing; heavy = [m for m in ('corral._host', 'httpx', "
            "'cryptography', 'msgspec', 'corral._sandbox') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_denied_file_read_in_the_strict_sandbox(
    load_plugin: LoadPlugin, assert_denied: AssertDenied, tmp_path: Path
) -> None:
    plugin = load_plugin(probe(tmp_path, "strict"))
    assert plugin.isolation == "strict"
    secret = tmp_path / "secret.txt"
    secret.write_text("mine")
    with assert_denied("fs-read") as denied:
        plugin.call("read", str(secret))
    assert denied.error is not None
    assert denied.error.details["exception"] == "PermissionError"
    # A denial of something else does not count.
    with pytest.raises(pytest.fail.Exception, match="'host-api' to be denied"):  # noqa: SIM117
        with assert_denied("host-api"):
            plugin.call("read", str(secret))


def test_denied_host_api_in_process_and_misses(
    load_plugin: LoadPlugin, assert_denied: AssertDenied, tmp_path: Path
) -> None:
    plugin = load_plugin(probe(tmp_path, "none"))
    with assert_denied("host-api:events.publish") as denied:
        plugin.call("publish", {"topic": "other.topic"})
    assert denied.error is not None
    with pytest.raises(pytest.fail.Exception, match="but the block succeeded"):  # noqa: SIM117
        with assert_denied("host-api"):
            plugin.call("echo", 1)
    with pytest.raises(pytest.fail.Exception, match="got PluginError"):  # noqa: SIM117
        with assert_denied("fs-read"):
            plugin.call("read", str(tmp_path / "missing.txt"))


def test_events_and_state_from_a_sandboxed_plugin(
    load_plugin: LoadPlugin, events: EventRecorder, state: StateView, tmp_path: Path
) -> None:
    plugin = load_plugin(probe(tmp_path, "strict"))
    events.publish("host.hello", {"n": 0})
    assert plugin.call("publish", {"topic": "acme.probe.done", "data": {"n": 1}}) is True
    assert events.data("acme.probe.*") == [{"n": 1}]
    assert [e.topic for e in events.captured()] == ["host.hello", "acme.probe.done"]
    assert events.captured("acme.probe.done")[0].source == "acme.probe"
    assert events.wait_for("acme.probe.done", timeout=0.1)
    with pytest.raises(pytest.fail.Exception, match="saw 0"):
        events.wait_for("never.*", timeout=0.05)
    assert state.get("acme.probe.last") == {"n": 1}
    assert state.writer("acme.probe.last") == "acme.probe"
    assert state.version("acme.probe.last") == 1
    assert state.get("acme.probe.none", "dflt") == "dflt"
    assert state.keys("acme.probe.*") == ["acme.probe.last"]


def test_perf_budget_passes_and_fails_with_the_measured_time(
    load_plugin: LoadPlugin, perf_budget: PerfBudget, tmp_path: Path
) -> None:
    plugin = load_plugin(probe(tmp_path, "none"))
    with perf_budget(ms=1000):
        plugin.call("echo", 1)
    assert perf_budget.last_ms is not None
    assert perf_budget.last_ms < 1000
    over = r"nap took \d+\.\d ms, over its budget of 5 ms"
    with pytest.raises(pytest.fail.Exception, match=over), perf_budget(ms=5, label="nap"):
        plugin.call("nap", 30)
    assert perf_budget.last_ms >= 30
    assert perf_budget.median(lambda: plugin.call("echo", 2), ms=1000) < 1000
    start = time.perf_counter()
    with pytest.raises(pytest.fail.Exception, match="median of 3"):
        perf_budget.median(lambda: plugin.call("nap", 20), ms=5, runs=3)
    assert time.perf_counter() - start >= 0.06


def test_find_plugin_dir(tmp_path: Path) -> None:
    root = probe(tmp_path, "none")
    (root / "tests" / "deep").mkdir(parents=True)
    assert find_plugin_dir(root / "tests" / "deep") == root
    assert find_plugin_dir(tmp_path) is None or find_plugin_dir(tmp_path) != root
