"""The installer under real failure: kill -9 at random points, a full disk, concurrency.

After each failure the previous generation must be exactly as it was (lock,
generation files, store trees, host database) and a retry must succeed.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.install import publish, rows, snapshot

from corral._distribution.install import DirectorySource, Installer

CLI = [sys.executable, "-m", "corral"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOME", "CORRAL_REGISTRY")}
    env["TMPDIR"] = str(tmp_path)
    return env


def _consistent(home: Path) -> dict[str, object]:
    """Check lock, generation file, store and database agree (after a repairing verify)."""
    lock = json.loads((home / "corral.lock").read_text())
    gen = json.loads((home / "generations" / f"{lock['generation']}.json").read_text())
    assert {k: v for k, v in lock.items() if k != "lock-version"} == gen
    results = Installer(home).verify()  # also repairs the database
    assert results  # all() below must not pass on nothing
    assert all(r["state"] == "ok" for r in results), results
    registered = rows(home)
    assert set(registered) == set(lock["plugins"])
    for pid, entry in lock["plugins"].items():
        assert registered[pid][1] == str(home / "store" / entry["sha256"])
        assert registered[pid][0] == entry["version"]
    plugins: dict[str, object] = lock["plugins"]
    return plugins


def _install_lock_held(home: Path) -> bool:
    """Whether another process holds the installer's lock (checked without waiting)."""
    import fcntl

    try:
        fd = os.open(home / "install.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock just taken
    return False


def test_kill_9_at_random_points_leaves_a_consistent_generation(
    tmp_path: Path, home: Path
) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.base", "1.0.0")
    for i in range(11):
        publish(tmp_path, repo, f"acme.d{i}", "1.0.0")
    publish(tmp_path, repo, "acme.top", "1.0.0", {f"acme.d{i}": ">=1" for i in range(11)})
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.base"])
    args = [*CLI, "--home", str(home), "install", "acme.top", "--source", str(repo),
            "--allow-unsigned", "--json"]
    rng = random.Random(4)

    def started() -> subprocess.Popen[bytes]:
        """The installer, once it holds the install lock (its operation has begun)."""
        proc = subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # a hang guard, far above any install here
        while not _install_lock_held(home):
            assert proc.poll() is None, "the installer exited before taking its lock"
            assert time.monotonic() < deadline, "the installer never took its lock"
            time.sleep(0.002)
        return proc

    # How long an install runs once it holds the lock, on this machine now: the kills
    # are spread over that span, so that they land mid-install on a fast machine too.
    spans = []
    for _ in range(3):  # the shortest of three: the first one also fills caches
        t0 = time.monotonic()
        assert started().wait() == 0
        spans.append(time.monotonic() - t0)
        inst.uninstall(["acme.top"])
    span = min(spans)
    outcomes = {"before": 0, "after": 0, "killed": 0}
    for _ in range(20):
        before = _consistent(home)
        proc = started()  # the kill must land while the installer runs
        time.sleep(rng.uniform(0, 0.5 * span))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        # Only a death by the signal counts as a kill that landed mid-install; an
        # installer that finished first (a fast machine) is still checked below.
        code = proc.wait()
        if code == -signal.SIGKILL:
            outcomes["killed"] += 1
        else:
            assert code == 0
        after = _consistent(home)
        if "acme.top" in after:
            outcomes["after"] += 1
            assert set(after) == set(before) | {"acme.top", *(f"acme.d{i}" for i in range(11))}
            inst.uninstall(["acme.top"])
        else:
            outcomes["before"] += 1
            assert after == before
    print(outcomes)
    # A quarter at least were kills that landed mid-install (12-13 of 20 here): a round
    # after a kill reuses the trees that one stored, so it may finish before its kill.
    assert outcomes["killed"] >= 5
    assert outcomes["before"] > 0  # some of them before the switch
    assert inst.install(["acme.top"]).changed  # a retry succeeds
    _consistent(home)


def test_concurrent_installs_are_serialised(tmp_path: Path, home: Path) -> None:
    repo = tmp_path / "repo"
    for side in ("l", "r"):
        for i in range(5):
            publish(tmp_path, repo, f"acme.{side}{i}", "1.0.0")
        publish(tmp_path, repo, f"acme.{side}", "1.0.0",
                {f"acme.{side}{i}": ">=1" for i in range(5)})
    procs = [
        subprocess.Popen([*CLI, "--home", str(home), "install", f"acme.{side}", "--source",
                          str(repo), "--allow-unsigned", "--json"],
                         env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
        for side in ("l", "r")
    ]
    docs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs), docs
    assert sorted(d["generation"] for d in docs) == [1, 2]
    plugins = _consistent(home)
    assert len(plugins) == 12
    second = json.loads((home / "generations" / "2.json").read_text())
    assert second["parent"] == 1


_FULL_DISK = """
import hashlib, json, sqlite3, stat
from pathlib import Path
from typing import Any
from corral._errors import CorralError
from corral._distribution.install import DirectorySource, Installer
{snapshot}
home, repo = Path({home!r}), Path({repo!r})
inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
inst.install(["acme.small"])
before = snapshot(home)
try:
    inst.install(["acme.big"])
    out = {{"error": None}}
except CorralError as exc:
    out = {{"error": exc.to_dict()}}
out["same"] = snapshot(home) == before
out["verify"] = [r["state"] for r in inst.verify()]
out["tmp"] = [p.name for p in (home / "store").glob(".tmp-*")]
print(json.dumps(out))
"""


def test_full_disk_changes_nothing(tmp_path: Path, home: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user+mount namespaces are not permitted here: {probe.stderr!r}")
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.small", "1.0.0")
    publish(tmp_path, repo, "acme.big", "1.0.0",
            code="BLOB = " + repr(os.urandom(1_500_000).hex()) + "\n", exports={})
    home.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(textwrap.dedent(_FULL_DISK).format(
        snapshot=inspect.getsource(snapshot), home=str(home), repo=str(repo)))
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=1m tmpfs {home} && exec {sys.executable} {script}"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"] is not None, out
    assert out["error"]["reason"] == "no_space", out
    assert "acme.big" in out["error"]["message"]
    assert out["same"] is True
    assert out["verify"] == ["ok"]
    assert out["tmp"] == []
    assert not snapshot(home)["files"]  # the tmpfs is gone: the test did not leak files here
