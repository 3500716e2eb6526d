"""Planning an update: newer versions, which of them are held for review, which are skipped.

A version is held when it widens permissions or brings a plugin new to the
home; a version that failed its self-test or start-up before is skipped.
:meth:`~corral._distribution.install.installer.Installer.update` applies the plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from corral._distribution.install.checks import (
    closure,
    full_grants,
    grant_lists,
    permission_changes,
)
from corral._distribution.install.generations import Plugins
from corral._distribution.install.sources import need_source, open_source
from corral._distribution.resolver import resolve
from corral._errors import ConflictError, UsageError
from corral._model.manifest import Manifest
from corral._model.release import Release, Requirement, Source
from corral._version import __version__

__all__ = [
    "avoid_failed",
    "available_updates",
    "hold_back",
    "pin_held",
    "recorded_source",
    "resolve_plan",
    "skipped_versions",
]

def resolve_plan(requirements: Sequence[Requirement], source: Source, *,
                 locked: Mapping[str, str], upgrade: Sequence[str]) -> dict[str, Release]:
    """Versions for ``requirements`` that this corral can run (see the resolver)."""
    return resolve(requirements, source, host_version=__version__, locked=locked,
                   upgrade=upgrade)


def recorded_source(plugins: Plugins, stack: contextlib.ExitStack, *, lock_path: Path,
                    home: Path) -> Source:
    """The one source ``corral.lock`` records for every plugin (closed with ``stack``).

    Raises:
        UsageError: no source recorded, or the plugins come from several.
    """
    by_source: dict[str, list[str]] = {}
    for pid, e in sorted(plugins.items()):
        by_source.setdefault(str(e.get("source") or ""), []).append(pid)
    by_source.pop("", None)
    if not by_source:
        return need_source(None)
    if len(by_source) > 1:
        named = "; ".join(f"{', '.join(p)} from {loc}" for loc, p in sorted(by_source.items()))
        raise UsageError(
            f"{lock_path} records several sources ({named}); pass --source "
            "DIR_OR_URL or set CORRAL_REGISTRY", sources=sorted(by_source),
        )
    source = open_source(next(iter(by_source)), home)
    close = getattr(source, "close", None)
    if close is not None:
        stack.callback(close)
    return source


def skipped_versions(releases: Mapping[str, Release], old: Plugins,
                     failed: Mapping[tuple[str, str], str]) -> list[dict[str, str]]:
    """The planned versions that failed before (and are not the installed ones)."""
    return [{"id": p, "version": r.version, "reason": failed[(p, r.version)]}
            for p, r in sorted(releases.items()) if (p, r.version) in failed
            and old.get(p, {}).get("version") != r.version]


def avoid_failed(
    failed: Mapping[tuple[str, str], str], old: Plugins,
    reqs: list[Requirement], source: Source, locked: dict[str, str], upgrade: list[str],
) -> tuple[dict[str, Release], list[Requirement]]:
    """Resolve again without the failed versions (else keep those plugins where they are)."""
    out: dict[str, list[str]] = {}
    for pid, version in sorted(failed):
        if pid in old and old[pid]["version"] != version:
            out.setdefault(pid, []).append(f"!={version}")
    more = [*reqs, *(Requirement(p, ",".join(v)) for p, v in out.items())]
    try:
        return resolve_plan(more, source, locked=locked, upgrade=upgrade), more
    except ConflictError:
        pins = [*reqs, *(Requirement(p, f"=={old[p]['version']}") for p in out)]
        return resolve_plan(pins, source, locked=locked, upgrade=upgrade), pins


def available_updates(releases: Mapping[str, Release], old: Plugins,
                      old_manifests: Mapping[str, Manifest]) -> list[dict[str, Any]]:
    """A row for each planned release that differs from what is installed."""
    available: list[dict[str, Any]] = []
    for pid, rel in sorted(releases.items()):
        if pid in old and old[pid]["sha256"] == rel.sha256:
            continue
        om = old_manifests.get(pid)
        available.append({
            "id": pid, "installed": old[pid]["version"] if pid in old else None,
            "available": rel.version,
            "permissions": permission_changes(
                om.permissions.to_dict() if om else {}, grant_lists(rel.permissions),
                om.sandbox.isolation if om else None, rel.isolation),
        })
    return available


def hold_back(
    available: list[dict[str, Any]], old: Plugins, old_manifests: Mapping[str, Manifest],
    wanted: dict[str, dict[str, Any]], *, accept_permissions: bool,
    manifests: Callable[[Plugins], dict[str, Manifest]],
    replan: Callable[[list[dict[str, Any]]], dict[str, dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The plan without what must be reviewed first, and the held rows.

    ``manifests`` reads a plan's manifests; ``replan(held)`` plans again with
    the held plugins pinned (:func:`pin_held`).  Each round holds at least one
    more plugin, or ends.  When no plan can leave a held plugin out, nothing
    is updated.  Every row of ``available`` gets its ``permissions`` (also
    with ``accept_permissions``, which holds nothing).
    """
    held: list[dict[str, Any]] = []
    while True:
        review = _review(available, old, old_manifests, wanted, manifests(wanted))
        fresh = [] if accept_permissions else [
            r for r in review if r["id"] not in {h["id"] for h in held}]
        if not fresh:
            break
        held += fresh
        wanted = replan(held)
    if any(h["id"] in wanted and old.get(h["id"], {}).get("sha256")
           != wanted[h["id"]]["sha256"] for h in held):
        wanted = {p: dict(e) for p, e in old.items()}  # no plan leaves them out
    return wanted, held


def pin_held(
    held: list[dict[str, Any]], reqs: list[Requirement], locked: dict[str, str],
    upgrade: list[str], source: Source, old: Plugins,
    materialise: Callable[[Mapping[str, Release]], dict[str, dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """The update plan with ``held`` plugins pinned to their installed versions.

    ``materialise`` puts the plan's releases in the store and returns its
    entries.  A held plugin new to the home has no version to pin: the plan
    must do without it (:func:`hold_back` checks).
    """
    pins = [Requirement(r["id"], f"=={r['installed']}") for r in held if r["installed"]]
    rest = [p for p in upgrade if p not in {r["id"] for r in held}]
    try:
        releases = resolve_plan([*reqs, *pins], source, locked=locked, upgrade=rest)
    except ConflictError:
        return {p: dict(e) for p, e in old.items()}
    return materialise(releases)


def _review(
    available: list[dict[str, Any]], old: Plugins,
    old_manifests: Mapping[str, Manifest], wanted: Plugins,
    manifests: Mapping[str, Manifest],
) -> list[dict[str, Any]]:
    """The rows of ``available`` a plan would need reviewed: wider permissions, new plugins.

    Sets each row's ``permissions`` (a new plugin: all it asks for, with its
    isolation); an update that brings a new plugin is listed with it.  A new
    plugin missing from ``available`` (another plan found it) gets a row.
    ``manifests`` are those of ``wanted``.
    """
    rows = {r["id"]: r for r in available}
    changed = [p for p in sorted(wanted)
               if old.get(p, {}).get("sha256") != wanted[p]["sha256"]]
    out: list[dict[str, Any]] = []
    for pid in changed:
        om, nm = old_manifests.get(pid), manifests[pid]
        row = rows.get(pid)
        if row is None:
            row = {"id": pid, "installed": old[pid]["version"] if pid in old else None,
                   "available": str(wanted[pid]["version"])}
            available.append(row)
            rows[pid] = row
        if om is None:
            row["permissions"] = full_grants(nm)
            row["new"] = True
            row["required_by"] = sorted(p for p in changed if p in old
                                        and pid in closure([p], manifests))
            out.append(row)
            continue
        row["permissions"] = permission_changes(
            om.permissions.to_dict(), nm.permissions.to_dict(),
            om.sandbox.isolation, nm.sandbox.isolation)
        brings = sorted(p for p in closure([pid], manifests) if p not in old)
        if brings:
            row["new_dependencies"] = brings
        if row["permissions"] or brings:
            out.append(row)
    return out
