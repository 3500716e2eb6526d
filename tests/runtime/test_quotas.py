"""Quotas over time, judged from outside: the call or publish that passes a quota fails with
``resource_limit`` naming it; the ones below it run; settings override the manifest; CPU
use survives a restart of the host.

Windows are wall-clock windows: tests of counts hold the module's clock still in the middle
of a window (a test must not straddle a minute by chance); CPU tests run on the real clock,
with a real strict plugin burning real CPU.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import close_quietly
from helpers.plugins import make_plugin, module_name

from corral import Host
from corral._errors import ManifestError, QuotaExceeded, ResourceLimitExceeded, UsageError
from corral._model.manifest import parse_manifest
from corral._runtime import quotas as quotas_mod
from corral._services.sandboxed import sandbox_problem

needs_strict = pytest.mark.skipif(sandbox_problem("strict") is not None,
                                  reason=f"no strict sandbox: {sandbox_problem('strict')}")

CODE = '''
import time


def echo(value, ctx):
    return value


def burn(value, ctx):
    """Burn ``value`` seconds of CPU (process time, so a busy machine only makes it slower)."""
    end = time.process_time() + value
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def publish(value, ctx):
    """Publish ``value["n"]`` events on ``value["topic"]``; report how many went."""
    done = 0
    try:
        for i in range(value["n"]):
            ctx.events.publish(value["topic"], i)
            done += 1
    except Exception as exc:
        return {"done": done, "code": getattr(exc, "code", None),
                "details": getattr(exc, "details", {})}
    return {"done": done}


def handle(value, ctx):
    """Publish ``value`` events through a resolved topic handle; report how many went."""
    pub = ctx.events.publisher("flood.h")
    done = 0
    try:
        for i in range(value):
            pub.publish(i)
            done += 1
    except Exception as exc:
        return {"done": done, "code": getattr(exc, "code", None)}
    return {"done": done}
'''
EXPORTS = ("echo", "burn", "publish", "handle")


def plugin(root: Path, plugin_id: str, isolation: str = "none", **quotas: int) -> Path:
    mod = module_name(plugin_id)
    return make_plugin(
        root, plugin_id, {f"{mod}.py": CODE}, isolation=isolation,
        exports={name: f"{mod}:{name}" for name in EXPORTS},
        permissions={"host-api": ["events.publish:flood.>", "events.publish:calm.>"]},
        quotas={k.replace("_", "-"): v for k, v in quotas.items()} or None,
    )


@pytest.fixture
def make_host(home: Path, workspace: Path) -> Iterator[Callable[[], Host]]:
    made: list[Host] = []

    def make() -> Host:
        h = Host(home=home, workspace=workspace, hook_timeout=5.0)
        made.append(h)
        return h

    yield make
    for h in made:
        close_quietly(h)


@pytest.fixture
def still_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The quotas' clock held in the middle of a minute (tests move it by hand)."""
    now = [1_800_000_030.0]  # 30 s into a minute, 0.0 s into a second
    monkeypatch.setattr(quotas_mod, "_clock", lambda: now[0])
    return now


def enabled(h: Host, *dirs: Path) -> Host:
    for d in dirs:
        h.enable(h.register(d)[0].id)
    return h


# -- the manifest --------------------------------------------------------------------------


def test_quotas_are_read_from_the_manifest_and_bad_ones_refused() -> None:
    head = '[plugin]\nid = "acme.q"\nname = "Q"\nversion = "1.0"\n'
    m = parse_manifest(head + "[quotas]\ncalls-per-minute = 600\ncpu-weight = 400\n")
    assert dict(m.quotas) == {"calls-per-minute": 600, "cpu-weight": 400}
    assert parse_manifest(head).quotas == {}
    for bad, needle in (("calls-per-minut = 1", "did you mean 'calls-per-minute'"),
                        ("calls-per-minute = 0", "must be 1.."),
                        ('calls-per-minute = "9"', "must be an integer"),
                        ("state-mb = 4", "unknown key"),  # a budget: its key is in [sandbox]
                        ("cpu-weight = 20000", "must be 1..10000")):
        with pytest.raises(ManifestError, match=needle):
            parse_manifest(head + "[quotas]\n" + bad + "\n")


# -- calls per minute ----------------------------------------------------------------------


def test_in_process_calls_fail_at_calls_per_minute_and_not_below(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.calls", calls_per_minute=3))
    assert [h.call("acme.calls", "echo", i) for i in range(3)] == [0, 1, 2]
    with pytest.raises(QuotaExceeded) as caught:
        h.call("acme.calls", "echo", 3)
    err = caught.value
    assert isinstance(err, ResourceLimitExceeded)
    assert err.code == "resource_limit"
    d = err.to_dict()
    assert (d["limit"], d["quota"], d["measured"], d["window"], d["unit"]) == (
        "calls-per-minute", 3, 3, 60, "calls")
    assert "calls-per-minute" in d["message"]
    assert "1m" in d["message"]
    # a minute and a half later the old calls have slid out of the window
    still_clock[0] += 90
    assert h.call("acme.calls", "echo", 4) == 4


def test_a_plugin_without_quotas_is_never_counted(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.free"))
    fn = h._fast["acme.free"]["echo"][0]
    assert getattr(fn, "__name__", "") == "echo"  # the plugin's own function: no wrapper
    for i in range(1000):
        h.call("acme.free", "echo", i)


def test_the_previous_window_still_counts_in_part(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.slide", calls_per_minute=4))
    for i in range(4):
        h.call("acme.slide", "echo", i)
    still_clock[0] += 45  # 15 s into the next minute: 3/4 of the old one is still in view
    h.call("acme.slide", "echo", 0)  # 4 * 0.75 + 0 = 3 < 4
    with pytest.raises(QuotaExceeded):
        h.call("acme.slide", "echo", 1)  # 3 + 1 = 4


@needs_strict
def test_sandboxed_calls_fail_at_calls_per_minute(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.scalls", "strict", calls_per_minute=2))
    assert h.call("acme.scalls", "echo", "a") == "a"
    assert h.call("acme.scalls", "echo", "b") == "b"
    with pytest.raises(QuotaExceeded) as caught:
        h.call("acme.scalls", "echo", "c")
    assert caught.value.details["limit"] == "calls-per-minute"


# -- settings override the manifest ---------------------------------------------------------


def test_settings_override_the_manifest(
    tmp_path: Path, home: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text('[quotas."acme.over"]\ncalls-per-minute = 4\n')
    h = enabled(make_host(), plugin(tmp_path, "acme.over", calls_per_minute=2))
    for i in range(4):
        h.call("acme.over", "echo", i)
    with pytest.raises(QuotaExceeded) as caught:
        h.call("acme.over", "echo", 9)
    assert caught.value.details["quota"] == 4
    shown = h.quota_usage("acme.over")["calls-per-minute"]
    assert (shown["limit"], shown["source"], shown["used"]) == (4, "settings", 4)
    # set_quota writes the settings and applies at once to a plugin active here
    assert h.set_quota("acme.over", "calls-per-minute", 6)["limit"] == 6
    h.call("acme.over", "echo", 5)
    h.call("acme.over", "echo", 6)
    with pytest.raises(QuotaExceeded):
        h.call("acme.over", "echo", 7)
    # unset: back to the manifest's value
    entry = h.set_quota("acme.over", "calls-per-minute", None)
    assert (entry["limit"], entry["source"]) == (2, "manifest")
    assert "calls-per-minute" not in (home / "settings.toml").read_text()


def test_unquoted_ids_in_settings_are_read_too(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text("[quotas.acme.bare]\ncpu-weight = 300\n")
    h = make_host()
    h.register(plugin(tmp_path, "acme.bare"))
    shown = h.quota_usage("acme.bare")["cpu-weight"]
    assert (shown["limit"], shown["source"]) == (300, "settings")


def test_settings_state_mb_overrides_the_budget(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text('[quotas."acme.small"]\nstate-mb = 1\n')
    mod = module_name("acme.small")
    d = make_plugin(tmp_path, "acme.small", {f"{mod}.py": textwrap.dedent('''
        def fill(value, ctx):
            try:
                for i in range(8):
                    ctx.state.set(f"notes.k{i}", "v" * 300_000)
            except Exception as exc:
                return {"done": i, "limit": exc.details.get("limit")}
            return {"done": 8}
    ''')}, exports={"fill": f"{mod}:fill"},
        permissions={"host-api": ["state.read:notes.>", "state.write:notes.>"]})
    h = enabled(make_host(), d)
    out = h.call("acme.small", "fill", None)
    assert out["limit"] == "state-mb"
    assert out["done"] <= 4
    assert h.quota_usage("acme.small")["state-mb"]["source"] == "settings"


# -- events per second ----------------------------------------------------------------------


def test_a_flooding_publisher_is_refused_while_its_neighbour_flows(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.flood", events_per_second=5),
                plugin(tmp_path, "acme.calm"))
    got: dict[str, int] = {"flood": 0, "calm": 0}

    def count(ev: Any) -> None:
        got[ev.topic.split(".")[0]] += 1

    h.bus.subscribe("flood.>", count)
    h.bus.subscribe("calm.>", count)
    flood = h.call("acme.flood", "publish", {"topic": "flood.x", "n": 50})
    assert flood["done"] == 5
    assert flood["code"] == "resource_limit"
    assert flood["details"]["limit"] == "events-per-second"
    assert flood["details"]["window"] == 1
    calm = h.call("acme.calm", "publish", {"topic": "calm.x", "n": 50})
    assert calm == {"done": 50}
    assert got == {"flood": 5, "calm": 50}
    still_clock[0] += 1.5  # half of the last second in view: 2.5, then 3.5, 4.5 < 5
    assert h.call("acme.flood", "publish", {"topic": "flood.x", "n": 9})["done"] == 3


def test_a_topic_handle_counts_against_events_per_second(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.handle", events_per_second=4))
    got: list[Any] = []
    h.bus.subscribe("flood.>", got.append)
    assert h.call("acme.handle", "handle", 10) == {"done": 4, "code": "resource_limit"}
    assert len(got) == 4


@needs_strict
def test_a_sandboxed_flooder_is_refused_through_the_broker(
    tmp_path: Path, make_host: Callable[[], Host], still_clock: list[float]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.sflood", "strict", events_per_second=3))
    got: list[Any] = []
    h.bus.subscribe("flood.>", got.append)
    out = h.call("acme.sflood", "publish", {"topic": "flood.y", "n": 20})
    assert out["done"] == 3
    assert out["code"] == "resource_limit"
    assert len(got) == 3


# -- CPU seconds ----------------------------------------------------------------------------


@needs_strict
def test_cpu_seconds_per_hour_judged_with_a_real_strict_plugin_and_kept_across_restart(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    d = plugin(tmp_path, "acme.burn", "strict", cpu_seconds_per_hour=1)
    h = enabled(make_host(), d)
    h.call("acme.burn", "burn", 0.6)  # 0.6 of 1.0: below, runs
    h.call("acme.burn", "burn", 0.6)  # starts at 0.6 (below), ends at ~1.2
    with pytest.raises(QuotaExceeded) as caught:
        h.call("acme.burn", "burn", 0.1)
    details = caught.value.details
    assert details["limit"] == "cpu-seconds-per-hour"
    assert details["window"] == 3600
    assert details["measured"] >= 1.0
    close_quietly(h)
    # the use is in the host database: a new host starts from it
    conn = sqlite3.connect(home / "corral.db")
    stored = conn.execute("SELECT sum(used) FROM quota_usage WHERE plugin_id = 'acme.burn' "
                          "AND quota = 'cpu-seconds-per-hour'").fetchone()[0]
    conn.close()
    assert stored >= 1.0
    h2 = make_host()
    h2.enable("acme.burn")
    with pytest.raises(QuotaExceeded):
        h2.call("acme.burn", "burn", 0.1)
    assert h2.quota_usage("acme.burn")["cpu-seconds-per-hour"]["used"] >= 1.0


def test_in_process_cpu_quota_counts_the_calling_thread(
    tmp_path: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host(), plugin(tmp_path, "acme.local", cpu_seconds_per_hour=1))
    h.call("acme.local", "burn", 0.6)
    h.call("acme.local", "burn", 0.6)
    with pytest.raises(QuotaExceeded) as caught:
        h.call("acme.local", "echo", 1)
    assert caught.value.details["limit"] == "cpu-seconds-per-hour"


# -- hostile input --------------------------------------------------------------------------


def test_an_id_with_path_characters_in_settings_is_refused(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = make_host()
    h.register(plugin(tmp_path, "acme.ok"))
    for bad in ('[quotas."../../etc"]\ncalls-per-minute = 1\n',
                '[quotas."acme.ok/../../x"]\ncalls-per-minute = 1\n',
                "[quotas]\ncalls-per-minute = 1\n"):
        (home / "settings.toml").write_text(bad)
        with pytest.raises(ManifestError) as caught:
            h.quota_usage("acme.ok")
        assert "settings.toml" in str(caught.value)
    (home / "settings.toml").write_text("")
    for bad_id in ("../../victim", "acme.ok/..", "/etc/passwd"):
        with pytest.raises(UsageError):
            h.set_quota(bad_id, "calls-per-minute", 5)
    with pytest.raises(UsageError, match="no quota"):
        h.set_quota("acme.ok", "disk-mb", 5)
    with pytest.raises(ManifestError, match="must be 1"):
        h.set_quota("acme.ok", "calls-per-minute", 0)
    assert (home / "settings.toml").read_text() == ""  # nothing half-written


@pytest.mark.skipif(sandbox_problem("limited") is not None, reason="no limited sandbox")
def test_settings_cache_mb_overrides_the_budget(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text('[quotas."acme.cachy"]\ncache-mb = 1\n')
    mod = module_name("acme.cachy")
    d = make_plugin(tmp_path, "acme.cachy", {f"{mod}.py": textwrap.dedent('''
        from pathlib import Path


        def fill(value, ctx):
            Path(ctx.cache_dir, "blob").write_bytes(b"c" * value)
            return value
    ''')}, isolation="limited", exports={"fill": f"{mod}:fill"})
    h = enabled(make_host(), d)
    assert h.call("acme.cachy", "fill", 100_000) == 100_000  # under 1 MiB: fine
    with pytest.raises(ResourceLimitExceeded) as caught:
        h.call("acme.cachy", "fill", 2 * 1024 * 1024)  # under the default 100, over 1
    assert caught.value.details["limit"] == "cache-mb"
    assert caught.value.details["budget"] == 1024 * 1024
