"""Per-plugin budgets, judged from outside: bytes on disk, the host's memory and stderr, exit codes.

Hostile plugins try to make the host hold more than their ``[sandbox]`` budgets
allow; honest ones, under their budgets, must keep working.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import CliResult
from helpers.hosts import close_quietly
from helpers.plugins import make_plugin, module_name

from corral import Host
from corral._errors import ManifestError, ResourceLimitExceeded
from corral._model.manifest import LIMITS, Manifest, Sandbox
from corral._model.schema import manifest_json_schema
from corral._runtime.budgets import DIR_BUDGETS, DirBudget, DirWatch, RateLimitedLog, tree_bytes
from corral._services.sandboxed import sandbox_problem

Run = Callable[..., CliResult]
MIB = 1024 * 1024

BUDGET_KEYS = ("disk-mb", "tmp-mb", "cache-mb", "state-mb", "state-keys", "events-mb",
               "queue-mb", "log-lines", "log-kb")

#: A plugin that fills what it is told to, and an honest no-op.
HOSTILE = '''
import logging
import os
from pathlib import Path


def fill(inp, ctx):
    """Write ``count`` files of ``mb`` MiB into {data}, {tmp} or {cache}."""
    where = {"data": ctx.data_dir, "tmp": ctx.tmp_dir, "cache": ctx.cache_dir}[inp["dir"]]
    block = b"x" * (1024 * 1024)
    for i in range(inp["count"]):
        with open(Path(where) / f"{inp.get('name', 'f')}{i}", "wb") as f:
            for _ in range(inp["mb"]):
                f.write(block)
    return sorted(os.listdir(where))


def noop(inp, ctx):
    return inp


def keys(inp, ctx):
    """Set ``n`` keys of ``size`` bytes, or one key ``n`` times; report where it stopped."""
    value = "v" * inp["size"]
    done = 0
    try:
        for i in range(inp["n"]):
            ctx.state.set(f"notes.k{0 if inp.get('same') else i}", value)
            done += 1
    except Exception as exc:
        return {"done": done, "error": getattr(exc, "code", type(exc).__name__),
                "limit": getattr(exc, "details", {}).get("limit"), "message": str(exc)}
    return {"done": done}


def publish(inp, ctx):
    """Publish ``n`` global events of ``size`` bytes; report where it stopped."""
    done = 0
    try:
        for i in range(inp["n"]):
            ctx.events.publish("flood.x", "p" * inp["size"], propagation="global")
            done += 1
    except Exception as exc:
        return {"done": done, "error": getattr(exc, "code", type(exc).__name__),
                "limit": getattr(exc, "details", {}).get("limit"), "message": str(exc)}
    return {"done": done}


def subscribe(inp, ctx):
    ctx.events.subscribe("flood.>", max_queue=1_000_000)
    return "subscribed"


def chatter(inp, ctx):
    log = logging.getLogger("chatter")
    for i in range(inp["lines"]):
        ctx.log.warning("line %d %s", i, "y" * inp.get("width", 10))
    return inp["lines"]
'''

EXPORTS = ("fill", "noop", "keys", "publish", "subscribe", "chatter")


def hostile(root: Path, plugin_id: str, isolation: str, **sandbox: Any) -> Path:
    mod = module_name(plugin_id)
    return make_plugin(
        root, plugin_id, {f"{mod}.py": HOSTILE}, isolation=isolation,
        exports={name: f"{mod}:{name}" for name in EXPORTS},
        sandbox=sandbox,
        permissions={"host-api": ["state.read:notes.>", "state.write:notes.>",
                                  "events.publish:flood.>", "events.subscribe:flood.>"]},
    )


needs_limited = pytest.mark.skipif(sandbox_problem("limited") is not None,
                                   reason=f"no limited sandbox: {sandbox_problem('limited')}")


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


def enabled(make_host: Callable[[], Host], *dirs: Path) -> Host:
    h = make_host()
    for d in dirs:
        info = h.register(d)[0]
        h.enable(info.id)
    return h


# -- the manifest ---------------------------------------------------------------------


def test_every_budget_has_a_safe_default_and_bounds() -> None:
    sandbox = Manifest.from_dict({"plugin": {"id": "a.b", "name": "A", "version": "1"}}).sandbox
    table = sandbox.to_dict()
    for key in BUDGET_KEYS:
        low, high, default = LIMITS[key]
        assert low <= default <= high
        assert table[key] == default == sandbox.limit(key)
    schema = manifest_json_schema()["properties"]["sandbox"]["properties"]
    for key in BUDGET_KEYS:
        assert schema[key]["description"]
        assert schema[key]["maximum"] == LIMITS[key][1]


@pytest.mark.parametrize("key", BUDGET_KEYS)
def test_a_budget_out_of_bounds_is_refused_at_parse_time(key: str) -> None:
    low, high, _ = LIMITS[key]
    for bad in (low - 1, high + 1, "10", 1.5):
        with pytest.raises(ManifestError) as err:
            Manifest.from_dict({"plugin": {"id": "a.b", "name": "A", "version": "1"},
                                "sandbox": {key: bad}})
        assert f"sandbox.{key}" in str(err.value)
    ok = Manifest.from_dict({"plugin": {"id": "a.b", "name": "A", "version": "1"},
                             "sandbox": {key: high}})
    assert ok.sandbox.limit(key) == high


# -- {data}, {tmp} and {cache} ------------------------------------------------------


@needs_limited
def test_data_total_over_disk_mb_fails_the_call_then_refuses_calls(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.disk", "limited", **{"disk-mb": 4}),
                hostile(tmp_path, "good.disk", "limited"))
    data = home / "data" / "evil.disk"
    # each file is under disk-mb (the per-file cap), the total is not
    with pytest.raises(ResourceLimitExceeded) as err:
        h.call("evil.disk", "fill", {"dir": "data", "count": 3, "mb": 2})
    assert err.value.details["limit"] == "disk-mb"
    assert "{data} holds 6.0 MiB of 4.0 MiB" in err.value.message
    assert err.value.code == "resource_limit"
    held = tree_bytes(data)
    # refused before it runs: nothing more lands on disk
    for _ in range(3):
        with pytest.raises(ResourceLimitExceeded):
            h.call("evil.disk", "fill", {"dir": "data", "count": 3, "mb": 2, "name": "g"})
    assert tree_bytes(data) == held
    assert not list(data.glob("g*"))
    # another plugin, and the host, carry on
    assert h.call("good.disk", "noop", [1]) == [1]
    # room made from outside: the plugin works again
    for f in data.iterdir():
        f.unlink()
    assert h.call("evil.disk", "fill", {"dir": "data", "count": 1, "mb": 1}) == ["f0"]


@needs_limited
def test_many_fast_small_writes_are_caught_at_the_call_that_crosses(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.drip", "limited", **{"disk-mb": 3}))
    h.call("evil.drip", "noop", 0)  # warm: the next calls are fast
    crossed = None
    for i in range(20):
        try:
            h.call("evil.drip", "fill", {"dir": "data", "count": 1, "mb": 1, "name": f"d{i}-"})
        except ResourceLimitExceeded as exc:
            crossed = (i, exc.details["limit"])
            break
    assert crossed is not None
    assert crossed[0] <= 3, crossed  # never more than one call's write past the budget
    assert crossed[1] == "disk-mb"
    assert tree_bytes(home / "data" / "evil.drip") <= 4.1 * MIB


@needs_limited
def test_an_honest_plugin_under_its_budgets_writes_and_reads(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "good.writer", "limited", **{"disk-mb": 8}))
    for i in range(5):
        assert h.call("good.writer", "fill",
                      {"dir": "data", "count": 1, "mb": 1, "name": f"n{i}-"}) == [
            f"n{j}-0" for j in range(i + 1)]
    assert tree_bytes(home / "data" / "good.writer") >= 5 * MIB
    info = h.info("good.writer")["budgets"]
    assert info["disk-mb"]["limit"] == 8
    assert info["disk-mb"]["cap"] == 8 * MIB
    assert 5 * MIB <= info["disk-mb"]["used"] < 6 * MIB


@needs_limited
@pytest.mark.parametrize(("key", "name"), [("tmp-mb", "tmp"), ("cache-mb", "cache")])
def test_tmp_and_cache_are_bounded(
    tmp_path: Path, make_host: Callable[[], Host], key: str, name: str
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.scratch", "limited", **{key: 2}))
    with pytest.raises(ResourceLimitExceeded) as err:
        h.call("evil.scratch", "fill", {"dir": name, "count": 2, "mb": 2})
    assert err.value.details["limit"] == key
    assert f"{key}: {{{name}}} holds" in err.value.message
    with pytest.raises(ResourceLimitExceeded):
        h.call("evil.scratch", "noop", 1)


@pytest.mark.parametrize("isolation", ["none", pytest.param("limited", marks=needs_limited)])
def test_tmp_and_cache_are_wiped_on_disable_and_unload_data_is_kept(
    tmp_path: Path, home: Path, make_host: Callable[[], Host], isolation: str
) -> None:
    h = enabled(make_host, hostile(tmp_path, "acme.scratch", isolation))

    def fill_all() -> None:
        for name in ("data", "tmp", "cache"):
            h.call("acme.scratch", "fill", {"dir": name, "count": 2, "mb": 1})
        (home / "tmp" / "acme.scratch" / "sub" / "deeper").mkdir(parents=True)

    fill_all()
    h.disable("acme.scratch")
    for name in ("tmp", "cache"):
        assert (home / name / "acme.scratch").is_dir()
        assert list((home / name / "acme.scratch").iterdir()) == []
    assert sorted(p.name for p in (home / "data" / "acme.scratch").iterdir()) == ["f0", "f1"]
    h.enable("acme.scratch")
    fill_all()
    h.disable("acme.scratch")
    h.unload("acme.scratch")
    for name in ("tmp", "cache"):
        assert list((home / name / "acme.scratch").iterdir()) == []


def test_wipe_does_not_follow_a_link_out_of_tmp(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "acme.linker", "none"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (home / "tmp" / "acme.linker" / "out").symlink_to(victim)
    h.disable("acme.linker")
    assert (victim / "keep.txt").read_text() == "precious"
    assert list((home / "tmp" / "acme.linker").iterdir()) == []


def test_in_process_plugin_over_disk_mb_is_stopped_by_the_host(
    tmp_path: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.inproc", "none", **{"disk-mb": 2}))
    h.call("evil.inproc", "fill", {"dir": "data", "count": 3, "mb": 1})
    deadline = time.monotonic() + 20
    refused: ResourceLimitExceeded | None = None
    while refused is None:  # the fast path measures nothing; the host's watcher catches up
        try:
            h.call("evil.inproc", "noop", 1)
        except ResourceLimitExceeded as exc:
            refused = exc
        assert time.monotonic() < deadline, "never refused"
        time.sleep(0.05)
    assert refused.details["limit"] == "disk-mb"
    assert "{data} holds 3.0 MiB of 2.0 MiB" in refused.message


# -- shared state -------------------------------------------------------------------


def test_state_keys_and_bytes_are_bounded_per_plugin(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host,
                hostile(tmp_path, "evil.keys", "none", **{"state-keys": 50}),
                hostile(tmp_path, "evil.bytes", "none", **{"state-mb": 1}),
                hostile(tmp_path, "good.keys", "none"))
    out = h.call("evil.keys", "keys", {"n": 1000, "size": 10})
    assert out["done"] == 50
    assert out["error"] == "resource_limit"
    assert out["limit"] == "state-keys"
    assert "shared state holds 50 keys of 50" in out["message"]
    # rewriting a key it holds is still fine
    assert h.call("evil.keys", "keys", {"n": 5, "size": 10, "same": True}) == {"done": 5}
    assert h.info("evil.keys")["budgets"]["state-keys"]["used"] == 50
    out = h.call("evil.bytes", "keys", {"n": 100, "size": 300_000})
    assert out["limit"] == "state-mb"
    assert out["done"] == 3
    assert "shared state holds 0.9 MiB of 1.0 MiB" in out["message"]
    assert h.info("evil.bytes")["budgets"]["state-mb"]["used"] <= 1 * MIB
    # the host keeps working; another plugin is unaffected
    assert h.call("good.keys", "keys", {"n": 200, "size": 10}) == {"done": 200}
    # keys count for the plugin that wrote them last
    assert h.info("evil.keys")["budgets"]["state-keys"]["used"] == 0
    assert h.info("good.keys")["budgets"]["state-keys"]["used"] == 200


def test_rewriting_one_big_key_does_not_grow_the_state_database(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.churn", "none", **{"state-mb": 2}))
    # 60 rewrites of ~1 MiB: the change log for watchers would keep every one of them
    assert h.call("evil.churn", "keys", {"n": 60, "size": 1_000_000, "same": True}) == {
        "done": 60}
    files = [home / "state.db", home / "state.db-wal"]
    on_disk = sum(f.stat().st_size for f in files if f.exists())
    assert on_disk < 12 * MIB, on_disk


# -- durable events and dead letters ------------------------------------------------


def test_global_events_are_bounded_by_events_mb(
    tmp_path: Path, home: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.events", "none", **{"events-mb": 1}),
                hostile(tmp_path, "good.events", "none"))
    out = h.call("evil.events", "publish", {"n": 100, "size": 100_000})
    assert out["error"] == "resource_limit"
    assert out["limit"] == "events-mb"
    assert 8 <= out["done"] <= 10
    assert "the durable log holds" in out["message"]
    assert h.call("good.events", "publish", {"n": 20, "size": 100_000}) == {"done": 20}
    assert h.info("evil.events")["budgets"]["events-mb"]["used"] <= 1 * MIB


def test_dead_letters_keep_payloads_only_up_to_events_mb(
    tmp_path: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.dead", "none", **{"events-mb": 1}))

    def refuse(ev: Any) -> None:
        raise RuntimeError("no")

    h.bus.subscribe("flood.>", refuse, plugin_id="evil.dead")
    h.bus.subscribe("flood.>", refuse)  # the host's own subscription: not a plugin's budget
    for i in range(30):
        h.bus.publish("flood.x", f"{i:03d}" + "q" * 100_000)
    mine = h.bus.dead_letters("evil.dead")
    assert len(mine) == 30
    kept = [d for d in mine if d.event.data is not None]
    assert 8 <= len(kept) <= 10
    assert [d for d in mine if d.event.data is None]  # all() below must not pass on nothing
    assert all("events-mb" in d.reason for d in mine if d.event.data is None)
    assert all(d.event.data is not None for d in h.bus.dead_letters() if d.subscriber is None)


DEAD_LETTER_SCRIPT = """
import sys
from corral import Host
from corral._model.permissions import Permissions

with Host(home=sys.argv[1]) as h:
    def bad(ev):
        raise RuntimeError("no")
    h.bus.subscribe("noise.>", bad)
    for i in range(3000):
        h.bus.publish("noise.x", i)
    print(h.bus.dead_letter_count)
"""


def test_dead_letters_do_not_flood_stderr(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", DEAD_LETTER_SCRIPT, str(tmp_path / "h")],
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "3000"
    # one line per dead letter would be ~200 kB; a few lines and a summary remain
    assert len(proc.stderr.encode()) < 4000, proc.stderr[:500]
    assert "not delivered" in proc.stderr


def test_rate_limited_log_summarises_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = RateLimitedLog(logging.getLogger("corral.test.rl"), burst=3, window=0.2)
    with caplog.at_level(logging.WARNING, "corral.test.rl"):
        for i in range(50):
            log.warning("letter %d", i)
        time.sleep(0.25)
        log.warning("after")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["letter 0", "letter 1", "letter 2"]
    assert "47 more like this" in messages[3]
    assert messages[4] == "after"
    assert len(messages) == 5


# -- queued bytes: the host's own memory -----------------------------------------------


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@needs_limited
def test_a_flooded_polled_subscription_does_not_balloon_the_host(
    tmp_path: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host, hostile(tmp_path, "evil.sub", "limited",
                                   **{"queue-mb": 4, "events-mb": 4}))
    assert h.call("evil.sub", "subscribe", None) == "subscribed"
    before = _rss_kb()
    for i in range(300):  # ~300 MiB queued if nothing bounded it
        h.bus.publish("flood.big", f"{i:06d}" + "z" * MIB)
    grown_mb = (_rss_kb() - before) / 1024
    assert grown_mb < 60, f"host RSS grew by {grown_mb:.0f} MiB"
    letters = h.bus.dead_letters("evil.sub")
    assert letters
    assert any("queue-mb" in d.reason for d in letters)
    used = h.info("evil.sub")["budgets"]["queue-mb"]["used"]
    assert 0 < used <= 4 * MIB


# -- per-call log ----------------------------------------------------------------------


@needs_limited
def test_log_lines_and_bytes_per_call(
    tmp_path: Path, make_host: Callable[[], Host]
) -> None:
    h = enabled(make_host,
                hostile(tmp_path, "evil.chatty", "limited", **{"log-lines": 100, "log-kb": 8}))
    assert h.call("evil.chatty", "chatter", {"lines": 20}) == 20
    with pytest.raises(ResourceLimitExceeded) as err:
        h.call("evil.chatty", "chatter", {"lines": 5000})
    assert err.value.details["limit"] == "log-lines"
    assert "the call's log holds 101 lines of 100" in err.value.message
    with pytest.raises(ResourceLimitExceeded) as err:
        h.call("evil.chatty", "chatter", {"lines": 50, "width": 1000})
    assert err.value.details["limit"] == "log-kb"
    # the budget is per call: the next honest call works
    assert h.call("evil.chatty", "chatter", {"lines": 20}) == 20


# -- the CLI ------------------------------------------------------------------------------


@needs_limited
def test_cli_call_over_budget_exits_5_and_info_shows_usage(
    run_cli: Run, tmp_path: Path, home: Path, workspace: Path
) -> None:
    with Host(home=home, workspace=workspace) as h:
        h.register(hostile(tmp_path, "evil.cli", "limited", **{"disk-mb": 2}))
        h.enable("evil.cli")
    res = run_cli("call", "evil.cli", "fill", "--input",
                  json.dumps({"dir": "data", "count": 2, "mb": 2}), "--json")
    assert res.code == 5, (res.out, res.err)
    assert res.json["error"]["code"] == "resource_limit"
    assert res.json["error"]["limit"] == "disk-mb"
    assert "{data} holds" in res.json["error"]["message"]
    res = run_cli("call", "evil.cli", "noop", "--input", "1", "--json")
    assert res.code == 5
    assert res.json["error"]["limit"] == "disk-mb"

    res = run_cli("info", "evil.cli", "--json")
    assert res.code == 0, res.err
    budgets = res.json["budgets"]
    assert set(budgets) == set(BUDGET_KEYS)
    assert budgets["disk-mb"]["used"] > budgets["disk-mb"]["cap"] == 2 * MIB
    res = run_cli("info", "evil.cli")
    assert res.code == 0
    text = textwrap.dedent(res.out)
    assert "budgets" in text
    assert "disk-mb" in text
    assert "of 2.0 MiB" in text

    # `corral disable` (another process) wipes {tmp} and {cache}
    (home / "tmp" / "evil.cli" / "left").write_text("x")
    (home / "cache" / "evil.cli" / "left").write_text("x")
    assert run_cli("disable", "evil.cli").code == 0
    assert list((home / "tmp" / "evil.cli").iterdir()) == []
    assert list((home / "cache" / "evil.cli").iterdir()) == []


# -- the inotify watch and the info text --------------------------------------------------


def _owner(plugin_id: str, root: Path) -> DirBudget:
    paths = {name: str(root / name) for _, name in DIR_BUDGETS}
    owner = DirBudget(plugin_id, paths, Sandbox())
    owner.dirty = False
    return owner


def test_dir_watch_marks_only_the_owner_whose_directory_changed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _owner("acme.a", tmp_path / "a"), _owner("acme.b", tmp_path / "b")
    watch = DirWatch()
    try:
        assert watch.add(str(tmp_path / "a"), a) is True
        assert watch.add(str(tmp_path / "b"), b) is True
        watch.poll()
        assert (a.dirty, b.dirty) == (False, False)  # nothing written yet
        (tmp_path / "a" / "new").write_bytes(b"x")
        watch.poll()
        assert (a.dirty, b.dirty) == (True, False)
    finally:
        watch.close()
    watch.close()  # idempotent
    # a closed watch cannot watch: the owner must fall back to measuring by the clock
    assert watch.add(str(tmp_path / "b"), b) is False


def test_dir_watch_without_inotify_says_it_cannot_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctypes

    def no_libc(*args: object, **kwargs: object) -> None:
        raise OSError("no C library here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)  # a platform without a loadable libc
    watch = DirWatch()
    assert watch.fd == -1
    owner = _owner("acme.a", tmp_path)
    assert watch.add(str(tmp_path), owner) is False
    watch.poll()
    watch.close()
    assert owner.dirty is False


def test_dir_watch_works_in_a_host_started_with_stdin_closed(tmp_path: Path) -> None:
    # a daemon may close fd 0; inotify then hands out fd 0, which is a good descriptor
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from corral._model.manifest import Sandbox
        from corral._runtime.budgets import DIR_BUDGETS, DirBudget, DirWatch
        os.close(0)
        root = Path({str(tmp_path)!r})
        owner = DirBudget("acme.a", {{n: str(root / n) for _, n in DIR_BUDGETS}}, Sandbox())
        owner.dirty = False
        watch = DirWatch()
        print(watch.fd, watch.add(str(root), owner))
        (root / "new").write_bytes(b"x")
        watch.poll()
        print(owner.dirty)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True", "True"]


def test_info_shows_per_call_budgets_with_their_own_unit(
    run_cli: Run, tmp_path: Path, home: Path, workspace: Path
) -> None:
    with Host(home=home, workspace=workspace) as h:
        h.register(hostile(tmp_path, "acme.quiet", "limited", **{"log-lines": 100, "log-kb": 8}))
    res = run_cli("info", "acme.quiet")
    assert res.code == 0, res.err
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in res.out.splitlines()
             if line.strip().startswith(("log-lines", "log-kb", "state-keys"))}
    assert lines["log-lines"] == "100 lines per call"
    assert lines["log-kb"] == "8 KiB per call"
    assert re.fullmatch(r"0 of \d+ keys \(0 %\)", lines["state-keys"]), lines
