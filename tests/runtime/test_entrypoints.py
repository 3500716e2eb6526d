"""pip-installed plugins: real distributions on ``sys.path``, never imported."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

from corral._runtime.entrypoints import (
    ENTRY_POINT_GROUP,
    EntryPointPlugin,
    discover_entry_points,
    sys_path_fingerprint,
)

if TYPE_CHECKING:
    from pathlib import Path

BOOBY_TRAP = "raise RuntimeError('plugin code was imported during discovery')\n"
MANIFEST = '[plugin]\nid = "acme.stats"\nname = "Stats"\nversion = "1.2.0"\n'
MODULES = (
    "acme_stats",
    "acme_pkg",
    "acme_pkg.sub",
    "acme_pkg.sub.cli",
    "acme_plain",
    "acme_single",
)


def make_dist(site: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution: ``.dist-info`` with METADATA and entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    lines += ["", "[console_scripts]", "acme = acme_stats:main", ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


def make_package(site: Path, dotted: str, *, manifest: bool) -> Path:
    """A package folder whose ``__init__`` (and every parent's) raises if imported."""
    parts = dotted.split(".")
    folder = site.joinpath(*parts)
    folder.mkdir(parents=True)
    for depth in range(1, len(parts) + 1):
        site.joinpath(*parts[:depth], "__init__.py").write_text(BOOBY_TRAP)
    if manifest:
        (folder / "corral.toml").write_text(MANIFEST)
    return folder


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh site-packages folder first on ``sys.path``."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def ours(found: list[EntryPointPlugin]) -> dict[str, EntryPointPlugin]:
    """Only the entry points of the test distributions, by name."""
    return {p.name: p for p in found if p.dist_name.startswith("acme")}


def test_discovers_without_importing(site: Path) -> None:
    stats = make_package(site, "acme_stats", manifest=True)
    sub = make_package(site, "acme_pkg.sub", manifest=True)
    (sub / "cli.py").write_text(BOOBY_TRAP)
    make_package(site, "acme_plain", manifest=False)
    (site / "acme_single.py").write_text(BOOBY_TRAP)
    (site / "corral.toml").write_text(MANIFEST)  # a manifest at the root must not be picked
    make_dist(
        site,
        "acme-stats",
        "1.2.0",
        {
            "acme-stats": "acme_stats:plugin",
            "nested": "acme_pkg.sub",
            "in-module": "acme_pkg.sub.cli:main",
            "missing": "acme_not_installed",
            "no-manifest": "acme_plain",
            "top-module": "acme_single:run",
            "garbage": "not a module!",
        },
    )

    found = ours(discover_entry_points())

    assert not [m for m in MODULES if m in sys.modules]
    good = found["acme-stats"]
    assert good == EntryPointPlugin(
        name="acme-stats",
        dist_name="acme-stats",
        dist_version="1.2.0",
        value="acme_stats:plugin",
        plugin_dir=stats,
    )
    assert good.ok
    assert found["nested"].plugin_dir == sub
    assert found["in-module"].plugin_dir == sub
    for name, reason in [
        ("missing", "not installed"),
        ("no-manifest", "no corral.toml"),
        ("top-module", "top-level module"),
        ("garbage", "does not name a module"),
    ]:
        bad = found[name]
        assert bad.plugin_dir is None, name
        assert bad.error is not None, name
        assert reason in bad.error, (name, bad.error)
        assert not bad.ok
    # other groups of the same distribution are not ours
    assert "acme" not in found


def test_duplicate_entry_point_names_are_reported(site: Path) -> None:
    first = make_package(site, "acme_stats", manifest=True)
    make_package(site, "acme_other", manifest=True)
    make_dist(site, "acme-stats", "1.2.0", {"stats": "acme_stats"})
    make_dist(site, "acme-other", "0.1.0", {"stats": "acme_other"})

    found = [p for p in discover_entry_points() if p.dist_name.startswith("acme")]

    # the first distribution by name wins, deterministically; the other is reported
    winner, loser = found
    assert (winner.dist_name, winner.error) == ("acme-other", None)
    assert winner.plugin_dir == site / "acme_other"
    assert loser.dist_name == "acme-stats"
    assert loser.plugin_dir is None
    assert loser.error == "entry point 'stats' is also declared by 'acme-other'"
    assert first.is_dir()


def test_same_distribution_twice_on_path_counts_once(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_package(site, "acme_stats", manifest=True)
    make_dist(site, "acme-stats", "1.2.0", {"stats": "acme_stats"})
    shadowed = tmp_path / "older"
    make_dist(shadowed, "acme-stats", "1.0.0", {"stats": "acme_stats"})
    monkeypatch.setattr(sys, "path", [*sys.path, str(shadowed)])

    found = [p for p in discover_entry_points() if p.dist_name == "acme-stats"]

    assert [(p.dist_version, p.error) for p in found] == [("1.2.0", None)]


def test_installed_while_running_is_seen(site: Path) -> None:
    assert "stats" not in ours(discover_entry_points())
    os.utime(site, ns=(1, 1))  # an old mtime, so the install below surely changes it
    before = sys_path_fingerprint()
    assert sys_path_fingerprint() == before
    make_package(site, "acme_stats", manifest=True)
    make_dist(site, "acme-stats", "1.2.0", {"stats": "acme_stats"})
    assert sys_path_fingerprint() != before
    assert ours(discover_entry_points())["stats"].ok
    assert "acme_stats" not in sys.modules


def test_malformed_entry_points_file_is_reported_not_raised(site: Path) -> None:
    make_package(site, "acme_stats", manifest=True)
    make_dist(site, "acme-stats", "1.2.0", {"stats": "acme_stats"})
    make_dist(site, "acme-broken", "0.0.1", {})
    info = site / "acme_broken-0.0.1.dist-info" / "entry_points.txt"
    info.write_text(f"[{ENTRY_POINT_GROUP}]\nthis line has no equals sign\n")

    found = [p for p in discover_entry_points() if p.dist_name.startswith("acme")]

    by_dist = {p.dist_name: p for p in found}
    assert by_dist["acme-stats"].ok
    broken = by_dist["acme-broken"]
    assert broken.error is not None
    assert "entry_points.txt" in broken.error
    assert "acme_stats" not in sys.modules
