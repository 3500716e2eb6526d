"""The sandboxed half of ``validate``: import a plugin where it would run, and time it.

Inside a throwaway :class:`~corral.Host` on a temporary home, in a worker at the
plugin's own isolation level (``limited``/``strict``), or in an isolated
subprocess (``python -I``) for ``isolation = "none"`` plugins.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from corral._disk.targets import module_file, targets_of
from corral._errors import CorralError
from corral._host import Host
from corral._pdk.checks import issue_dict
from corral._pdk.lint import Issue
from corral._services.context import PluginContext, plugin_paths
from corral._services.sandboxed import sandbox_problem, spec_for

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["PROBE_TARGET", "probe_imports", "sandbox_checks"]

PROBE_TARGET: Final = "corral._pdk.probe:probe_imports"


def probe_imports(modules: list[str], ctx: object) -> dict[str, Any]:
    """Import each module and time it; runs *inside* the plugin's sandbox (or subprocess).

    Returns ``{"ms": {module: milliseconds}, "failed": None | {"module", "error",
    "traceback"}}``; it stops at the first module that fails.
    """
    import importlib
    import time
    import traceback

    times: dict[str, float] = {}
    for module in modules:
        start = time.perf_counter()
        try:
            importlib.import_module(module)
        except BaseException as exc:  # SystemExit counts too
            return {"ms": times, "failed": {
                "module": module, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-8)}}
        times[module] = round((time.perf_counter() - start) * 1000, 3)
    return {"ms": times, "failed": None}


def _modules(manifest: Manifest) -> list[str]:
    out: list[str] = []
    for _, target in targets_of(manifest):
        module = target.partition(":")[0]
        if module not in out:
            out.append(module)
    return out


def sandbox_checks(plugin_dir: Path, manifest: Manifest, report: dict[str, Any]) -> None:
    """Import the plugin where it would run; record ``import_ms`` or CORRAL-E004/W002."""

    isolation = manifest.sandbox.isolation
    try:
        if isolation == "none":
            probe = _probe_subprocess(plugin_dir, manifest)
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
            (info,) = host.register(plugin_dir)
            paths = plugin_paths(home, workspace, manifest.id, Path(host.info(info.id)["path"]))
            for key in ("data", "cache", "tmp"):
                Path(paths[key]).mkdir(parents=True, exist_ok=True)
            spec = spec_for(manifest, cast("PluginContext", SimpleNamespace(paths=paths)))
            probe: dict[str, Any] = host.attachments.supervisor().call(
                spec, PROBE_TARGET, _modules(manifest), config={}
            )
            if probe["failed"] is None and manifest.entry and not manifest.dependencies:
                try:
                    host.enable(info.id)
                except CorralError as exc:
                    probe["hooks_failed"] = exc.message
    return probe


def _probe_subprocess(plugin_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """``isolation = "none"``: import in ``python -I`` with a timeout, never in this process."""
    import json
    import subprocess
    import sys

    from corral._errors import PluginError, PluginTimeout

    code = (
        "import json, sys\n"
        "from corral._pdk.probe import probe_imports\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "r = probe_imports(sys.argv[2:], None)\n"
        "sys.stdout.write('\\n' + json.dumps(r))\n"
    )
    timeout = manifest.sandbox.timeout_ms / 1000 + 5.0
    try:
        proc = subprocess.run(  # our interpreter, no shell
            [sys.executable, "-I", "-c", code, str(plugin_dir), *_modules(manifest)],
            capture_output=True, text=True, timeout=timeout, cwd=plugin_dir, check=False,
        )
    except subprocess.TimeoutExpired:
        raise PluginTimeout(f"the import did not finish in {timeout:.0f} s",
                            plugin_id=manifest.id) from None
    try:
        result: dict[str, Any] = json.loads(proc.stdout.rsplit("\n", 1)[-1])
    except (json.JSONDecodeError, IndexError):
        raise PluginError(f"the import process exited with {proc.returncode}: "
                          f"{proc.stderr.strip()[-500:]}", plugin_id=manifest.id) from None
    return result
