"""The installer's concurrent fetch phase: all or nothing, progress serialised, order-free."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.install import publish, snapshot

from corral._distribution.install import DirectorySource, Installer
from corral._errors import TransferError
from corral._model.release import Release


class _Parallel:
    """A folder source that allows concurrent fetches; ``fail`` ids drop after a delay."""

    def __init__(self, repo: Path, fail: set[str] | None = None, workers: int = 4) -> None:
        self.inner = DirectorySource(repo)
        self.location = self.inner.location
        self.max_parallel_fetches = workers
        self.fail = fail or set()
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.started: list[str] = []

    def releases(self, plugin_id: str) -> Any:
        return self.inner.releases(plugin_id)

    def fetch(self, release: Release, dest_dir: Path,
              progress: Callable[[int, int], None] | None = None) -> Path:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.started.append(release.id)
        try:
            if release.id in self.fail:
                time.sleep(0.01)
                (dest_dir / "partial.corral").write_bytes(b"PK\x03\x04 half")
                raise TransferError(f"{release.id}: connection reset", plugin_id=release.id)
            time.sleep(0.2)  # long enough for the others to be in flight
            return self.inner.fetch(release, dest_dir, progress)
        finally:
            with self.lock:
                self.active -= 1


def _graph(tmp_path: Path, repo: Path, n: int = 6) -> None:
    for i in range(n):
        publish(tmp_path, repo, f"acme.x{i}", "1.0.0")
    publish(tmp_path, repo, "acme.top", "1.0.0", {f"acme.x{i}": ">=1" for i in range(n)})


def test_one_failed_fetch_among_many_leaves_nothing(tmp_path: Path, home: Path) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.a", "1.0.0")
    Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.a"])
    _graph(tmp_path, repo)
    before = snapshot(home)
    src = _Parallel(repo, fail={"acme.x1", "acme.x2"})
    with pytest.raises(TransferError, match=r"acme\.x1: connection reset") as err:
        Installer(home, src, allow_unsigned=True).install(["acme.top"])
    assert err.value.plugin_id == "acme.x1"  # the first failure in install order
    assert src.peak > 1  # they really ran at once
    # downloads still queued when the failure came in never start (x0 and x3 hold two
    # of the four workers for 200 ms, so acme.top, seventh in line, is still queued)
    assert "acme.top" not in src.started
    assert snapshot(home) == before
    assert not list((home / "store").glob(".tmp-*"))
    # a retry with a working source installs everything
    ok = Installer(home, _Parallel(repo), allow_unsigned=True).install(["acme.top"])
    assert ok.changed
    assert len(Installer(home).current().plugins) == 8  # type: ignore[union-attr]


def test_parallel_install_matches_sequential(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _graph(tmp_path, repo)
    one, many = tmp_path / "one", tmp_path / "many"
    Installer(one, DirectorySource(repo), allow_unsigned=True).install(["acme.top"])
    src = _Parallel(repo)
    Installer(many, src, allow_unsigned=True).install(["acme.top"])
    assert src.peak > 1
    a, b = Installer(one).current(), Installer(many).current()
    assert a is not None
    assert b is not None
    strip = {"source"}
    assert {k: {f: v for f, v in e.items() if f not in strip} for k, e in a.plugins.items()} == \
        {k: {f: v for f, v in e.items() if f not in strip} for k, e in b.plugins.items()}
    assert sorted(p.name for p in (one / "store").iterdir()) == \
        sorted(p.name for p in (many / "store").iterdir())


def test_progress_calls_never_overlap(tmp_path: Path, home: Path) -> None:
    repo = tmp_path / "repo"
    _graph(tmp_path, repo)
    calls: list[tuple[str, int, int]] = []
    inside = threading.Lock()
    overlaps = []

    def progress(label: str, done: int, total: int) -> None:
        if not inside.acquire(blocking=False):
            overlaps.append(label)
            return
        try:
            calls.append((label, done, total))
            time.sleep(0.002)  # a slow terminal
        finally:
            inside.release()

    src = _Parallel(repo)
    Installer(home, src, allow_unsigned=True, progress=progress).install(["acme.top"])
    assert src.peak > 1
    assert overlaps == []
    downloads = {label for label, _, _ in calls if label.startswith("download ")}
    assert downloads == {f"download acme.x{i} 1.0.0" for i in range(6)} | {
        "download acme.top 1.0.0"}
    for label in downloads:  # each download ends at its own total
        last = [c for c in calls if c[0] == label][-1]
        assert last[1] == last[2] > 0
    steps = [(d, t) for label, d, t in calls if label == "install"]
    assert steps == [(i + 1, 7) for i in range(7)]
