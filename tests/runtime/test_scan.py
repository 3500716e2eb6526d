"""Discovery of plugin folders under the home, with an mtime cache."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from corral._runtime.folders import ScanResult, scan_plugin_dirs

if TYPE_CHECKING:
    from pathlib import Path

MANIFEST = '[plugin]\nid = "acme.p{i}"\nname = "P"\nversion = "1.0.0"\n'


def make_plugins(root: Path, count: int) -> list[Path]:
    dirs = []
    for i in range(count):
        folder = root / f"p{i:03}"
        folder.mkdir(parents=True)
        (folder / "corral.toml").write_text(MANIFEST.format(i=i))
        dirs.append(folder)
    return dirs


def counts(result: ScanResult) -> tuple[int, int, int, int]:
    return len(result.new), len(result.changed), len(result.unchanged), len(result.gone)


def test_three_hundred_plugins(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    dirs = make_plugins(root, 300)

    first = scan_plugin_dirs(root, {})
    assert counts(first) == (300, 0, 0, 0)
    assert first.new == dirs  # sorted, as paths under root
    assert first.dirty
    assert set(first.cache) == {str(d) for d in dirs}

    second = scan_plugin_dirs(root, first.cache)
    assert counts(second) == (0, 0, 300, 0)
    assert not second.dirty
    assert second.cache == first.cache

    manifest = dirs[42] / "corral.toml"
    st = manifest.stat()
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    third = scan_plugin_dirs(root, second.cache)
    assert counts(third) == (0, 1, 299, 0)
    assert third.changed == [dirs[42]]

    shutil.rmtree(dirs[7])
    fourth = scan_plugin_dirs(root, third.cache)
    assert counts(fourth) == (0, 0, 299, 1)
    assert fourth.gone == [dirs[7]]
    assert str(dirs[7]) not in fourth.cache


def test_size_change_with_same_mtime_is_seen(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    (folder,) = make_plugins(root, 1)
    manifest = folder / "corral.toml"
    before = scan_plugin_dirs(root, {})
    st = manifest.stat()
    manifest.write_text(manifest.read_text() + "# edited\n")
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new size
    assert scan_plugin_dirs(root, before.cache).changed == [folder]


def test_cache_passed_in_is_not_modified(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    make_plugins(root, 3)
    cache = {str(root / "old"): (1, 2)}
    result = scan_plugin_dirs(root, cache)
    assert cache == {str(root / "old"): (1, 2)}
    assert result.gone == [root / "old"]
    assert counts(result) == (3, 0, 0, 1)


def test_what_is_not_a_plugin_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    (good,) = make_plugins(root, 1)
    (root / "no-manifest").mkdir()
    (root / "manifest-is-a-dir" / "corral.toml").mkdir(parents=True)
    (root / "stray-file.txt").write_text("x")
    hidden = root / ".demo.abc123.tmp"  # an archive being extracted
    hidden.mkdir()
    (hidden / "corral.toml").write_text(MANIFEST.format(i=9))
    (root / "dangling").mkdir()
    (root / "dangling" / "corral.toml").symlink_to(tmp_path / "missing.toml")

    result = scan_plugin_dirs(root, {})

    assert result.new == [good]
    assert list(result.cache) == [str(good)]


def test_linked_plugin_folder_is_followed(tmp_path: Path) -> None:
    (dev,) = make_plugins(tmp_path / "src", 1)
    root = tmp_path / "plugins"
    root.mkdir()
    (root / "dev").symlink_to(dev)
    assert scan_plugin_dirs(root, {}).new == [root / "dev"]


def test_missing_root_means_everything_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    result = scan_plugin_dirs(root, {str(root / "a"): (1, 1)})
    assert result.gone == [root / "a"]
    assert result.cache == {}
    assert counts(scan_plugin_dirs(root, {})) == (0, 0, 0, 0)


def test_a_rescan_with_the_cache_finds_every_plugin_unchanged(tmp_path: Path) -> None:
    # Its speed (one scandir plus one stat per plugin) is a figure of
    # benchmarks/bench_core.py, not a bound here.
    root = tmp_path / "plugins"
    make_plugins(root, 500)
    cache = scan_plugin_dirs(root, {}).cache
    assert counts(scan_plugin_dirs(root, cache)) == (0, 0, 500, 0)
