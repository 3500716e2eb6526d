"""Automatic cleanup in a running host: idle workers stopped after ``[cleanup]
idle-worker-seconds`` even when no call comes; the cleanup settings checked; a purge through
``Host.unregister`` and orphans through ``Host.orphans`` never leave the home.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers.hosts import close_quietly
from helpers.plugins import make_plugin

from corral import Host
from corral._errors import ManifestError
from corral._runtime.cleanup import cleanup_settings, remove_dir
from corral._services.sandboxed import sandbox_problem

needs_limited = pytest.mark.skipif(sandbox_problem("limited") is not None,
                                   reason=f"no limited sandbox: {sandbox_problem('limited')}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(check: object, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@needs_limited
def test_an_idle_worker_is_stopped_without_another_call(tmp_path: Path) -> None:
    quick, slow = tmp_path / "quick", tmp_path / "slow"
    quick.mkdir()
    (quick / "settings.toml").write_text("[cleanup]\nidle-worker-seconds = 0.3\n")
    d = make_plugin(tmp_path, "acme.idle", isolation="limited")
    hosts = [Host(home=quick, workspace=tmp_path), Host(home=slow, workspace=tmp_path)]
    try:
        pids = []
        for h in hosts:
            h.enable(h.register(d)[0].id)
            assert h.call("acme.idle", "echo", 1) == 1
            pid = h.attachments.supervisor().worker_pid("acme.idle")
            assert pid is not None
            assert _alive(pid)
            pids.append(pid)
        assert _wait_for(lambda: not _alive(pids[0]))  # no call came: the sweep stopped it
        assert hosts[0].attachments.supervisor().worker_pid("acme.idle") is None
        assert _alive(pids[1])  # the control: the default idle time is 300 s
        assert hosts[0].call("acme.idle", "echo", 2) == 2  # and the next call starts one
    finally:
        for h in hosts:
            close_quietly(h)


def test_cleanup_settings_are_checked(tmp_path: Path) -> None:
    assert cleanup_settings(tmp_path).metrics_days == 30
    assert cleanup_settings(tmp_path).idle_worker_seconds == 300.0
    for text, key in (("[retention]\nmetrics-days = 0\n", "retention.metrics-days"),
                      ("[retention]\nmetrics-days = 1.5\n", "retention.metrics-days"),
                      ('[cleanup]\nidle-worker-seconds = "soon"\n',
                       "cleanup.idle-worker-seconds"),
                      ("retention = 3\n", "retention")):
        (tmp_path / "settings.toml").write_text(text)
        with pytest.raises(ManifestError) as caught:
            cleanup_settings(tmp_path)
        assert caught.value.details["key"] == key


def test_remove_dir_refuses_anything_but_a_plugin_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "data" / "acme.x").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("f", "g", "h"):
        (outside / name).write_text("keep")
    for sub, name in (("data", ".."), ("data", "../../outside"), ("plugins", "acme.x"),
                      ("..", "outside"), ("data", "")):
        with pytest.raises(Exception, match="refusing"):
            remove_dir(home, sub, name)
    os.symlink(outside, home / "data" / "acme.link")
    assert remove_dir(home, "data", "acme.link")["files"] == 1  # the link, not its 3 files
    assert sorted(os.listdir(outside)) == ["f", "g", "h"]
    assert remove_dir(home, "data", "acme.x")["files"] == 0
    assert sorted(os.listdir(home / "data")) == []


def test_unregister_with_purge_returns_the_report(tmp_path: Path) -> None:
    h = Host(home=tmp_path / "home", workspace=tmp_path)
    try:
        d = make_plugin(tmp_path, "acme.rep")
        h.enable(h.register(d)[0].id)
        (h.home / "data" / "acme.rep" / "a.txt").write_text("a" * 5000)
        h.call("acme.rep", "echo", 1)
        report = h.unregister("acme.rep", purge_data=True)
        assert report is not None
        assert report["plugin"] == "acme.rep"
        assert report["removed"]["data"]["files"] == 1
        assert report["removed"]["data"]["bytes"] >= 5000
        assert report["removed"]["metrics"]["rows"] == 1
        assert not (h.home / "data" / "acme.rep").exists()
        h.register(d)
        assert h.unregister("acme.rep") is None  # without purge: no report, data kept
        assert (h.home / "data").is_dir()
    finally:
        close_quietly(h)
