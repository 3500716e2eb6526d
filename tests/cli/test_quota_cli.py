"""``quota show|set``, ``remove --purge`` and ``gc [--dry-run]`` through the real command line,
judged by the files and databases of the home before and after.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from helpers.cli import CliResult
from helpers.hosts import snapshot
from helpers.plugins import make_plugin, module_name

Run = Callable[..., CliResult]

CODE = '''
from pathlib import Path


def write(value, ctx):
    """``value`` files of 3000 bytes in {data}, one in {cache}, and two shared-state keys."""
    for i in range(value):
        Path(ctx.data_dir, f"f{i}.bin").write_bytes(b"x" * 3000)
    Path(ctx.data_dir, "sub").mkdir(exist_ok=True)
    Path(ctx.data_dir, "sub", "deep.txt").write_text("deep")
    Path(ctx.cache_dir, "c.bin").write_bytes(b"c" * 100)
    ctx.state.set("notes.a", "alpha")
    ctx.state.set("notes.b", "beta" * 10)
    return value


def echo(value, ctx):
    return value
'''


def plugin(root: Path, plugin_id: str, **quotas: int) -> Path:
    mod = module_name(plugin_id)
    return make_plugin(root, plugin_id, {f"{mod}.py": CODE}, isolation="none",
                       exports={"write": f"{mod}:write", "echo": f"{mod}:echo"},
                       permissions={"host-api": ["state.read:notes.>", "state.write:notes.>"]},
                       quotas=quotas or None)


def added(run_cli: Run, tmp_path: Path, plugin_id: str, **quotas: int) -> None:
    assert run_cli("add", str(plugin(tmp_path, plugin_id, **quotas))).code == 0
    assert run_cli("enable", plugin_id).code == 0


def rows(db: Path, sql: str, *args: object) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def content(home: Path) -> set[str]:
    """Every path under ``home`` but SQLite's own side files (a reader may make them)."""
    return {p for p in snapshot(home) if not p.endswith(("-wal", "-shm"))}


def files_under(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if not p.is_dir()) if path.exists() else 0


# -- quota show / set ---------------------------------------------------------------------


def test_quota_show_and_set(run_cli: Run, tmp_path: Path, home: Path) -> None:
    added(run_cli, tmp_path, "acme.qs", **{"calls-per-minute": 100})
    assert run_cli("call", "acme.qs", "echo", "--input", "1").code == 0
    shown = run_cli("quota", "show", "acme.qs", "--json").json
    assert shown["plugin"] == "acme.qs"
    q = shown["quotas"]["calls-per-minute"]
    assert (q["limit"], q["window"], q["unit"], q["source"], q["used"]) == (
        100, 60, "calls", "manifest", 1)
    assert shown["quotas"]["cpu-seconds-per-day"] == {
        "limit": None, "window": 86400, "unit": "cpu-seconds", "used": 0.0, "source": "default"}
    assert shown["quotas"]["cpu-weight"]["limit"] == 100
    out = run_cli("quota", "set", "acme.qs", "calls-per-minute", "7", "--json")
    assert out.code == 0
    assert out.json["limit"] == 7
    assert out.json["source"] == "settings"
    assert '[quotas."acme.qs"]' in (home / "settings.toml").read_text()
    assert run_cli("quota", "show", "acme.qs", "--json").json["quotas"][
        "calls-per-minute"]["source"] == "settings"
    every = run_cli("quota", "show", "--json").json
    assert [p["plugin"] for p in every["plugins"]] == ["acme.qs"]
    text = run_cli("quota", "show", "acme.qs")
    assert "calls-per-minute" in text.out
    assert "settings" in text.out
    # refused, and the file left as it was
    before = (home / "settings.toml").read_text()
    assert run_cli("quota", "set", "acme.qs", "calls-per-minute", "lots").code == 2
    assert run_cli("quota", "set", "acme.qs", "nope", "3").code == 2
    bad = run_cli("quota", "set", "acme.qs", "calls-per-minute", "0", "--json")
    assert bad.code == 3
    assert bad.json["error"]["code"] == "invalid"
    assert run_cli("quota", "set", "../../etc", "calls-per-minute", "3").code == 2
    assert (home / "settings.toml").read_text() == before
    assert run_cli("quota", "set", "acme.qs", "calls-per-minute", "unset").code == 0
    assert run_cli("quota", "show", "acme.qs", "--json").json["quotas"][
        "calls-per-minute"]["source"] == "manifest"


def test_a_call_over_its_quota_exits_5_with_the_quota_named(
    run_cli: Run, tmp_path: Path
) -> None:
    added(run_cli, tmp_path, "acme.few", **{"cpu-seconds-per-day": 1})
    assert run_cli("quota", "set", "acme.few", "calls-per-minute", "1").code == 0
    assert run_cli("call", "acme.few", "echo", "--input", "1").code == 0
    # a new process starts from the calls recorded in the host database
    over = run_cli("call", "acme.few", "echo", "--input", "2", "--json")
    err = over.json["error"]
    assert over.code == 5
    assert err["code"] == "resource_limit"
    assert err["limit"] == "calls-per-minute"
    assert err["window"] == 60


# -- remove --purge ------------------------------------------------------------------------


def test_remove_purge_reports_exactly_what_was_on_disk(
    run_cli: Run, tmp_path: Path, home: Path
) -> None:
    added(run_cli, tmp_path, "acme.gone", **{"cpu-seconds-per-day": 100})
    added(run_cli, tmp_path, "acme.stay")
    assert run_cli("call", "acme.gone", "write", "--input", "3").code == 0
    assert run_cli("call", "acme.stay", "write", "--input", "2").code == 0
    db, state_db = home / "corral.db", home / "state.db"
    conn = sqlite3.connect(home / "events.db")  # a durable consumer of each plugin
    conn.execute('CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, "offset" '
                 "INTEGER NOT NULL, updated_at REAL NOT NULL)")
    conn.executemany("INSERT INTO consumers VALUES (?, 0, 0)",
                     [("acme.gone:c1",), ("acme.gone:c2",), ("acme.stay:c1",)])
    conn.commit()
    conn.close()
    # what is there before, counted independently of corral
    data_files = files_under(home / "data" / "acme.gone")
    cache_files = files_under(home / "cache" / "acme.gone")
    metrics = rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.gone'")
    usage = rows(db, "SELECT count(*) FROM quota_usage WHERE plugin_id = 'acme.gone'")
    keys = rows(state_db, "SELECT count(*) FROM state WHERE updated_by = 'acme.gone'")
    assert (data_files, cache_files, keys) == (4, 1, 0)  # acme.stay wrote the keys last
    assert metrics >= 1
    assert usage >= 1
    stay_before = snapshot(home / "data" / "acme.stay")
    out = run_cli("remove", "--purge", "acme.gone", "--json")
    assert out.code == 0, out.err
    report = out.json["purged"]
    removed = report["removed"]
    assert out.json["removed"] == ["acme.gone"]
    assert removed["data"]["files"] == data_files
    assert removed["data"]["bytes"] >= 3 * 3000
    assert removed["cache"]["files"] == cache_files
    assert removed["metrics"] == {"rows": metrics}
    assert removed["quota_usage"] == {"rows": usage}
    assert removed["subscriptions"] == {"consumers": 2}
    assert removed["state"]["keys"] == keys
    assert report["files"] == data_files + cache_files
    # after: gone from the disk and the databases; the neighbour untouched
    assert not (home / "data" / "acme.gone").exists()
    assert not (home / "cache" / "acme.gone").exists()
    assert rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.gone'") == 0
    assert rows(db, "SELECT count(*) FROM quota_usage WHERE plugin_id = 'acme.gone'") == 0
    assert rows(home / "events.db", "SELECT count(*) FROM consumers") == 1
    assert snapshot(home / "data" / "acme.stay") == stay_before
    assert rows(state_db, "SELECT count(*) FROM state WHERE updated_by = 'acme.stay'") == 2
    text = run_cli("remove", "--purge", "acme.stay")
    assert "purged acme.stay" in text.out
    assert "state" in text.out


def test_purge_takes_the_keys_a_plugin_wrote_last(run_cli: Run, tmp_path: Path,
                                                  home: Path) -> None:
    added(run_cli, tmp_path, "acme.keys")
    assert run_cli("call", "acme.keys", "write", "--input", "0").code == 0
    state_db = home / "state.db"
    before = rows(state_db, "SELECT count(*) FROM state WHERE updated_by = 'acme.keys'")
    out = run_cli("remove", "--purge", "acme.keys", "--json")
    assert out.json["purged"]["removed"]["state"]["keys"] == before == 2
    assert rows(state_db, "SELECT count(*) FROM state") == 0
    assert rows(state_db, "SELECT count(*) FROM changes WHERE updated_by = 'acme.keys'") == 0


# -- gc: orphans ---------------------------------------------------------------------------


def _orphans(run_cli: Run, tmp_path: Path, home: Path) -> Path:
    """A home with a registered plugin and what two plugins no longer registered left."""
    added(run_cli, tmp_path, "acme.live")
    added(run_cli, tmp_path, "acme.left")
    assert run_cli("call", "acme.live", "echo", "--input", "1").code == 0
    assert run_cli("call", "acme.left", "write", "--input", "2").code == 0
    assert run_cli("disable", "acme.left").code == 0
    assert run_cli("remove", "acme.left").code == 0  # no --purge: its data stays behind
    (home / "cache" / "old.thing").mkdir(parents=True)
    (home / "cache" / "old.thing" / "x").write_text("x" * 10)
    conn = sqlite3.connect(home / "corral.db")  # metrics of a plugin removed long ago
    conn.executemany("INSERT INTO calls (plugin_id, export, isolation, outcome, wall_ms, at) "
                     "VALUES ('acme.older', 'e', 'none', 'ok', 1.0, ?)",
                     [(time.time(),)] * 3)
    conn.commit()
    conn.close()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    os.symlink(victim, home / "data" / "evil.link")  # a link must go, never be followed
    (home / "settings.toml").write_text('[quotas."../../victim"]\ncalls-per-minute = 1\n')
    return victim


def test_gc_dry_run_lists_exactly_the_orphans_and_removes_nothing(
    run_cli: Run, tmp_path: Path, home: Path
) -> None:
    victim = _orphans(run_cli, tmp_path, home)
    before = content(home)
    calls_before = rows(home / "corral.db", "SELECT count(*) FROM calls")
    out = run_cli("gc", "--dry-run", "--json")
    assert out.code == 0, out.err
    found = out.json["orphans"]
    assert out.json["removed"] == []
    assert out.json["pruned"] == []
    listed = {(d["dir"], d["name"]) for d in found["dirs"]}
    assert listed == {("data", "acme.left"), ("cache", "acme.left"), ("tmp", "acme.left"),
                      ("cache", "old.thing"), ("data", "evil.link")}  # its scratch, emptied
    assert found["rows"] == {"acme.older": {"metrics": 3}}
    assert found["state"] == {"acme.left": {"keys": 2, "bytes": found["state"]["acme.left"][
        "bytes"]}}
    assert content(home) == before  # nothing removed
    assert rows(home / "corral.db", "SELECT count(*) FROM calls") == calls_before
    assert (victim / "precious").read_text() == "keep me"
    text = run_cli("gc", "--dry-run")
    assert "would remove" in text.out
    assert "data/acme.left" in text.out


def test_gc_removes_the_orphans_and_never_a_registered_plugins_data(
    run_cli: Run, tmp_path: Path, home: Path
) -> None:
    victim = _orphans(run_cli, tmp_path, home)
    live = snapshot(home / "data" / "acme.live")
    live_calls = rows(home / "corral.db",
                      "SELECT count(*) FROM calls WHERE plugin_id = 'acme.live'")
    out = run_cli("gc", "--json")
    assert out.code == 0, out.err
    assert {"removed", "pruned", "orphans"} <= set(out.json)
    assert len(out.json["orphans"]["dirs"]) == 5
    assert not (home / "data" / "acme.left").exists()
    assert not (home / "cache" / "old.thing").exists()
    assert not os.path.lexists(home / "data" / "evil.link")
    assert sorted(os.listdir(victim)) == ["precious"]  # the link was not followed
    assert (victim / "precious").read_text() == "keep me"
    assert snapshot(home / "data" / "acme.live") == live
    assert (home / "data" / "acme.live").is_dir()
    db = home / "corral.db"
    assert rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.older'") == 0
    assert rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.live'") == live_calls
    assert rows(home / "state.db", "SELECT count(*) FROM state") == 0
    again = run_cli("gc", "--dry-run", "--json").json["orphans"]
    assert (again["dirs"], again["rows"], again["state"]) == ([], {}, {})
    assert json.loads(run_cli("list", "--json").out)
    # the hostile settings id names nothing a purge touches either
    assert run_cli("remove", "--purge", "acme.live").code == 0
    assert sorted(os.listdir(victim)) == ["precious"]
    assert sorted(os.listdir(home / "data")) == []


# -- retention -----------------------------------------------------------------------------


def test_metrics_past_their_retention_are_pruned(run_cli: Run, tmp_path: Path,
                                                 home: Path) -> None:
    added(run_cli, tmp_path, "acme.old")
    (home / "settings.toml").write_text("[retention]\nmetrics-days = 5\n")
    conn = sqlite3.connect(home / "corral.db")
    now = time.time()
    conn.executemany("INSERT INTO calls (plugin_id, export, isolation, outcome, wall_ms, at) "
                     "VALUES ('acme.old', 'e', 'none', 'ok', 1.0, ?)",
                     [(now - 6 * 86400,), (now - 6 * 86400,), (now - 4 * 86400,)])
    conn.execute("DELETE FROM meta WHERE key = 'retention.metrics_pruned_at'")
    conn.commit()
    conn.close()
    assert run_cli("list").code == 0  # a host starting prunes at most once a day
    db = home / "corral.db"
    assert rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.old'") == 1
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO calls (plugin_id, export, isolation, outcome, wall_ms, at) "
                 "VALUES ('acme.old', 'e', 'none', 'ok', 1.0, ?)", (now - 9 * 86400,))
    conn.commit()
    conn.close()
    assert run_cli("list").code == 0  # not again the same day
    assert rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.old'") == 2
    out = run_cli("gc", "--json")  # gc prunes whenever it runs
    assert out.json["metrics_pruned"]["metrics"] == 1
    assert rows(db, "SELECT count(*) FROM calls WHERE plugin_id = 'acme.old'") == 1
