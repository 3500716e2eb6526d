"""The sandboxed half of ``validate``: import a plugin where it would run, and time it.

Inside a throwaway :class:`~corral.Host` on a temporary home, in a worker at the
plugin's own isolation level (``limited``/``strict``), or in an isolated
subprocess (``python -I``) for ``isolation = "none"`` plugins.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._disk.targets import module_file
from corral._errors import CorralError
from corral._host import Host
from corral._pdk.checks import issue_dict
from corral._pdk.lint import Issue
from corral._sandbox.worker.imports import probe_imports
from corral._services.context import PluginContext, plugin_paths
from corral._services.importprobe import (
    PROBE_TARGET,
    modules_of,
    probe_sandboxed,
    probe_subprocess,
)
from corral._services.sandboxed import sandbox_problem, spec_for

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["PROBE_TARGET", "probe_imports", "sandbox_checks"]


def sandbox_checks(plugin_dir: Path, manifest: Manifest, report: dict[str, Any]) -> None:
    """Import the plugin where it would run; record ``import_ms`` or CORRAL-E004/W002."""

    isolation = manifest.sandbox.isolation
    try:
        if isolation == "none":
            probe = probe_subprocess(plugin_dir, manifest)
        else:
            problem = sandbox_problem(isolation)
            if problem:
                report["warnings"].append(issue_dict(Issue(
                    "CORRAL-W002", f"not imported: this machine cannot enforce isolation "
                    f"{isolation!r} ({problem})"), key="sandbox.isolation"))
                return
            probe = _probe_sandboxed(plugin_dir, manifest)
    except CorralError as exc:
        report["errors"].append(issue_dict(Issue(
            "CORRAL-E004", f"importing {manifest.id} in its sandbox failed: {exc.message}"),
            code=exc.code, plugin=manifest.id))
        return
    report["metrics"]["import_ms"] = round(sum(probe["ms"].values()), 3)
    if probe.get("hooks_failed"):
        report["errors"].append(issue_dict(Issue(
            "CORRAL-E004", f"enabling {manifest.id} in its sandbox ran its on_load/on_enable "
            f"hooks, which failed: {probe['hooks_failed']}"), code="plugin_error",
            plugin=manifest.id))
    failed = probe["failed"]
    if failed:
        found = module_file(plugin_dir, failed["module"])
        rel = found.relative_to(plugin_dir).as_posix() if found else None
        line = _last_line_in(failed["traceback"], found)
        report["errors"].append(issue_dict(Issue(
            "CORRAL-E004", f"importing {failed['module']} raised {failed['error']}",
            rel, line, 1 if line else None), code="plugin_error", plugin=manifest.id,
            traceback=failed["traceback"]))


def _last_line_in(tb: str, file: Path | None) -> int | None:
    """The line of ``file`` deepest in a formatted traceback."""
    import re

    if file is None:
        return None
    line = None
    for match in re.finditer(r'File "([^"]+)", line (\d+)', tb):
        if Path(match.group(1)).name == file.name:
            line = int(match.group(2))
    return line


def _probe_sandboxed(plugin_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """Register in a throwaway host, import the modules in the plugin's worker, then enable.

    Enabling runs the entry's ``on_load``/``on_enable`` hooks in the same sandbox
    (skipped for a plugin with dependencies: they are not registered in the
    throwaway host); nothing is called through :meth:`Host.call`.
    """
    from types import SimpleNamespace
    from typing import cast


    with tempfile.TemporaryDirectory(prefix="corral-validate-") as tmp:
        home, workspace = Path(tmp) / "home", Path(tmp) / "workspace"
        workspace.mkdir()
        with Host(home=home, workspace=workspace) as host:
            (info,) = host.register(plugin_dir, probe=False)  # probed below, with timings
            paths = plugin_paths(home, workspace, manifest.id, Path(host.info(info.id)["path"]))
            for key in ("data", "cache", "tmp"):
                Path(paths[key]).mkdir(parents=True, exist_ok=True)
            spec = spec_for(manifest, cast("PluginContext", SimpleNamespace(paths=paths)))
            probe = probe_sandboxed(host.attachments.supervisor(), spec, modules_of(manifest))
            if probe["failed"] is None and manifest.entry and not manifest.dependencies:
                try:
                    host.enable(info.id)
                except CorralError as exc:
                    probe["hooks_failed"] = exc.message
    return probe
