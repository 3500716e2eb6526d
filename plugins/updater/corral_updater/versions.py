"""Choosing the latest version and naming the kind of update: pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from packaging.version import InvalidVersion, Version

__all__ = ["compare", "latest_of", "update_kind"]


def _parse_all(versions: Iterable[str], plugin_id: str) -> list[Version]:
    out = []
    for v in versions:
        try:
            out.append(Version(v))
        except InvalidVersion:
            raise ValueError(f"{plugin_id}: {v!r} in the source is not a PEP 440 version") from None
    return out


def latest_of(current: Version, available: Iterable[Version],
              yanked: Iterable[Version] = ()) -> Version | None:
    """The highest available version, ``None`` if there is none.

    Pre-releases count only when ``current`` is itself a pre-release (as pip
    does), and yanked versions never count.
    """
    gone = set(yanked)
    pool = [v for v in available
            if v not in gone and (current.is_prerelease or not v.is_prerelease)]
    return max(pool, default=None)


def update_kind(current: Version, latest: Version) -> str:
    """``major``, ``minor`` or ``patch`` by the first release number that grew.

    ``none`` when ``latest`` is not newer; ``pre-release``/``post-release``
    when only the suffix grew (``1.0rc1`` to ``1.0``, ``1.0`` to ``1.0.post1``).
    """
    if latest <= current:
        return "none"
    a = (*current.release, 0, 0, 0)[:3]
    b = (*latest.release, 0, 0, 0)[:3]
    if b[0] != a[0]:
        return "major"
    if b[1] != a[1]:
        return "minor"
    if b[2] != a[2] or latest.release != current.release:
        return "patch"
    return "post-release" if latest.post is not None else "pre-release"


def compare(plugin_id: str, installed: str, available: Iterable[str],
            yanked: Iterable[str] = ()) -> dict[str, Any]:
    """One plugin's verdict: ``current``, ``latest``, ``update`` kind and ``newer`` versions."""
    try:
        current = Version(installed)
    except InvalidVersion:
        return {"id": plugin_id, "current": installed, "latest": None, "update": "unknown",
                "newer": [], "error": f"installed version {installed!r} is not PEP 440"}
    versions = _parse_all(available, plugin_id)
    gone = _parse_all(yanked, plugin_id)
    latest = latest_of(current, versions, gone)
    newer = sorted({v for v in versions if v > current and v not in gone
                    and (current.is_prerelease or not v.is_prerelease)})
    row: dict[str, Any] = {
        "id": plugin_id,
        "current": installed,
        "latest": str(latest) if latest is not None else None,
        "update": update_kind(current, latest) if latest is not None else "unknown",
        "newer": [str(v) for v in newer],
    }
    if Version(installed) in gone:
        row["yanked"] = True
    return row
