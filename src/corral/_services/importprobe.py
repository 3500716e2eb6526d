"""Import a plugin's modules where it would run, to refuse one that cannot even be imported.

In the plugin's own sandboxed worker (through the supervisor), or in a
``python -I`` subprocess for an ``isolation = "none"`` plugin: never in the
host process.  ``Host.register`` (``corral add``) and the PDK's validator share it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, cast

from corral._disk.targets import targets_of
from corral._errors import CorralError, InvalidPluginError, PluginError, PluginTimeout
from corral._services.context import plugin_paths

if TYPE_CHECKING:
    from collections.abc import Callable

    from corral._model.manifest import Manifest
    from corral._runtime.activation import Context
    from corral._sandbox.spec import SandboxSpec
    from corral._sandbox.supervisor import Supervisor

__all__ = ["PROBE_TARGET", "check_imports", "modules_of", "probe_sandboxed", "probe_subprocess"]

#: What the worker runs: named, not imported, so that the host loads no sandbox code for it.
PROBE_TARGET: Final = "corral._sandbox.worker.imports:probe_imports"


def modules_of(manifest: Manifest) -> list[str]:
    """The modules a plugin's exports, entry and micro handlers live in, each once."""
    out: list[str] = []
    for _, target in targets_of(manifest):
        module = target.partition(":")[0]
        if module not in out:
            out.append(module)
    return out


def probe_sandboxed(supervisor: Supervisor, spec: SandboxSpec,
                    modules: list[str]) -> dict[str, Any]:
    """Run the import probe in the worker of ``spec`` (:mod:`corral._sandbox.worker.imports`)."""
    result: dict[str, Any] = supervisor.call(spec, PROBE_TARGET, modules, config={})
    return result


def probe_subprocess(plugin_dir: Path, manifest: Manifest) -> dict[str, Any]:
    """``isolation = "none"``: import in ``python -I`` with a timeout, never in this process."""
    code = (
        "import json, sys\n"
        "from corral._sandbox.worker.imports import probe_imports\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "r = probe_imports(sys.argv[2:], None)\n"
        "sys.stdout.write('\\n' + json.dumps(r))\n"
    )
    timeout = manifest.sandbox.timeout_ms / 1000 + 5.0
    corral_root = str(Path(__file__).resolve().parents[2])  # -I drops PYTHONPATH: this corral
    try:
        proc = subprocess.run(  # our interpreter, no shell
            [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {corral_root!r})\n"
             + code, str(plugin_dir), *modules_of(manifest)],
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


def check_imports(manifest: Manifest, plugin_dir: Path, *, workspace: Path,
                  supervisor: Callable[[], Supervisor], include_none: bool) -> None:
    """Refuse (``invalid``) a plugin whose modules cannot be imported where it would run.

    A sandboxed plugin is probed in a worker at its isolation, with scratch
    ``{data}``/``{cache}``/``{tmp}`` folders, stopped afterwards; a plugin this
    machine cannot sandbox is not probed (enabling it says why).  An
    ``isolation = "none"`` plugin is probed in a subprocess only with ``include_none``.
    """
    modules = modules_of(manifest)
    if not modules:
        return
    isolation = manifest.sandbox.isolation
    try:
        if isolation == "none":
            if not include_none:
                return
            probe = probe_subprocess(plugin_dir, manifest)
        else:
            # Deferred: the sandbox's services pull msgspec, which `import corral` must not.
            from corral._services.sandboxed import sandbox_problem

            if sandbox_problem(isolation) is not None:
                return
            probe = _probe_scratch(manifest, plugin_dir, workspace, supervisor(), modules)
    except (PluginError, PluginTimeout) as exc:
        raise InvalidPluginError(f"{manifest.id}: importing its modules failed: {exc.message}",
                                 plugin_id=manifest.id, **_plain(exc)) from exc
    except CorralError as exc:
        if exc.exit_code != 5:  # a limit or a crash is the plugin's; the host's own errors pass
            raise
        raise InvalidPluginError(f"{manifest.id}: importing its modules failed: {exc.message}",
                                 plugin_id=manifest.id, **_plain(exc)) from exc
    failed = probe.get("failed")
    if failed:
        raise InvalidPluginError(
            f"{manifest.id}: importing {failed['module']} raised {failed['error']}",
            plugin_id=manifest.id, module=failed["module"],
            exception=str(failed["error"]).split(":", 1)[0],
            traceback=failed["traceback"],
        )


def _plain(exc: CorralError) -> dict[str, Any]:
    return {k: v for k, v in exc.details.items() if k in ("traceback", "limit", "measured")}


def _probe_scratch(manifest: Manifest, plugin_dir: Path, workspace: Path,
                   supervisor: Supervisor, modules: list[str]) -> dict[str, Any]:
    # Deferred: the sandbox's services pull msgspec, which `import corral` must not.
    from corral._services.sandboxed import spec_for

    with tempfile.TemporaryDirectory(prefix="corral-probe-") as tmp:
        paths = plugin_paths(Path(tmp), workspace, manifest.id, plugin_dir)
        for key in ("data", "cache", "tmp"):
            Path(paths[key]).mkdir(parents=True, exist_ok=True)
        spec = spec_for(manifest, cast("Context", SimpleNamespace(paths=paths)))
        try:
            return probe_sandboxed(supervisor, spec, modules)
        finally:
            supervisor.stop(manifest.id)
