"""``validate``: check a plugin directory or archive without registering it.

The report (what ``corral validate --json`` prints and :mod:`corral._pdk.sarif` maps)::

    {"ok", "plugin", "version", "path",
     "errors", "warnings", "security", "performance", "suggestions",
     "metrics": {"files", "bytes", "import_ms"}}

Every issue carries ``rule`` (see the table in :mod:`corral._pdk.lint`), ``level``
(``error``, ``warning`` or ``note``), ``message``, ``file`` (relative to the
plugin), ``line``, ``column`` and, when a grant is missing, ``permission``.
Errors also keep the :class:`~corral.CorralError` fields (``code``...) and
warnings a ``key``.  ``ok`` is false if there is any error, a security issue of
level ``error`` included; then ``errors`` is never empty (a security error adds
one entry pointing at ``security``, so that callers that only read ``errors``
still see why).

The static checks never import plugin code.  Only ``sandbox=True`` imports it:
inside a throwaway :class:`~corral.Host` on a temporary home, in a worker at the
plugin's own isolation level (``limited``/``strict``), or in an isolated
subprocess (``python -I``) for ``isolation = "none"`` plugins.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from corral._errors import CorralError, InvalidPluginError, NotFoundError

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._pdk.lint import Issue

__all__ = ["IMPORT_MS_LIMIT", "SIZE_LIMIT", "probe_imports", "validate_plugin"]

IMPORT_MS_LIMIT: Final = 200.0  #: importing for longer than this is a performance issue
SIZE_LIMIT: Final = 5 * 1024 * 1024  #: a plugin larger than this (bytes) is one
FILES_LIMIT: Final = 1000  #: and so is one with more files than this
SECTIONS: Final = ("errors", "warnings", "security", "performance", "suggestions")
PROBE_TARGET: Final = "corral._pdk.validate:probe_imports"


def _warnings(manifest: Manifest, known: Mapping[str, Manifest]) -> list[dict[str, Any]]:
    out = []

    def warn(key: str, message: str) -> None:
        out.append({"rule": "CORRAL-W001", "level": "warning", "key": key, "message": message,
                    "file": "corral.toml", "line": None, "column": None})

    if manifest.sandbox.isolation == "none":
        warn(
            "sandbox.isolation",
            "'none' runs the plugin inside the host process with all of the host's rights; "
            "use 'strict' unless the plugin is fully trusted",
        )
    perms = manifest.permissions
    for kind, grants in (("fs-read", perms.fs_read), ("fs-write", perms.fs_write)):
        for i, grant in enumerate(grants):
            if grant.rstrip("/") in ("", "/home", "/root", "/etc", "/usr") or grant == "/":
                warn(f"permissions.{kind}[{i}]", f"{grant!r} is a very broad grant: narrow it "
                     "to what the plugin reads, e.g. '{workspace}' or '{data}'")
    if not manifest.description:
        warn("plugin.description", "no description: users will not know what it does")
    if manifest.license is None:
        warn("plugin.license", "no license")
    if not manifest.authors:
        warn("plugin.authors", "no authors")
    for dep_id in manifest.dependencies:
        if dep_id not in known:
            warn(f"dependencies.{dep_id}", f"{dep_id} is not registered with this host")
    return out


def _suggestions(plugin_dir: Path, manifest: Manifest) -> list[dict[str, Any]]:
    out = []

    def suggest(key: str, message: str) -> None:
        out.append({"rule": "CORRAL-N001", "level": "note", "key": key, "message": message,
                    "file": "corral.toml", "line": None, "column": None})

    if not manifest.tags:
        suggest("plugin.tags", "add tags so that users can find the plugin")
    if manifest.category is None:
        suggest("plugin.category", "add a category")
    if not any((plugin_dir / n).is_file() for n in ("README.md", "README.rst", "README.txt",
                                                    "README")):
        suggest("README.md", "add a README.md: what the plugin does and how to configure it")
    if not ({"self-test", "self_test"} & set(manifest.exports)):
        suggest("exports.self-test", "add a 'self-test' export that checks the plugin works "
                "where it is installed (corral call ID self-test)")
    reasons = manifest.permission_reasons
    for kind, grants in manifest.permissions.to_dict().items():
        for grant in grants:
            if kind not in reasons and f"{kind}:{grant}" not in reasons:
                suggest(f"permissions.reasons.{kind}",
                        f"say why the plugin needs {kind} {grant!r} in [permissions.reasons] "
                        "(users see it before they install)")
    return out


def _issue_dict(issue: Issue, **extra: Any) -> dict[str, Any]:
    return {**extra, **issue.to_dict()}


def _error_dict(exc: CorralError, plugin_dir: Path | None) -> dict[str, Any]:
    """A :class:`CorralError` as an error issue (rule CORRAL-E001, file relative)."""
    out = exc.to_dict()
    file = out.get("file")
    if isinstance(file, str) and plugin_dir is not None:
        with contextlib.suppress(ValueError):  # outside the plugin: keep it absolute
            file = Path(file).resolve().relative_to(plugin_dir.resolve()).as_posix()
    out.update(rule="CORRAL-E001", level="error", file=file or "corral.toml",
               line=out.get("line"), column=out.get("column"))
    return out


def _metrics(plugin_dir: Path) -> dict[str, Any]:
    files = size = 0
    for path in plugin_dir.rglob("*"):
        rel = path.relative_to(plugin_dir).parts
        if any(p == "__pycache__" for p in rel) or path.is_symlink() or not path.is_file():
            continue
        files += 1
        size += path.stat().st_size
    return {"files": files, "bytes": size, "import_ms": None}


def validate_plugin(
    path: Path,
    *,
    host_version: str,
    known: Mapping[str, Manifest],
    static: bool = True,
    sandbox: bool = False,
) -> dict[str, Any]:
    """Return the report described in the module docstring.

    Args:
        path: a plugin directory or ``.corral`` archive.
        host_version: the corral version ``requires-corral`` is checked against.
        known: registered manifests (a dependency missing from them is a warning).
        static: run the AST checks (security rules, export signatures).
        sandbox: also import the plugin in its sandbox and time it (runs plugin code).

    Raises:
        NotFoundError: ``path`` does not exist.
    """
    from corral._model.deps import check_requires_corral
    from corral._model.manifest import load_manifest
    from corral._runtime.loader import check_targets

    path = path.expanduser().absolute()
    report: dict[str, Any] = {
        "ok": False,
        "plugin": None,
        "version": None,
        "path": str(path),
        **{section: [] for section in SECTIONS},
        "metrics": {"files": 0, "bytes": 0, "import_ms": None},
    }
    if not path.exists():
        raise NotFoundError(f"{path}: no such file or directory", path=str(path))
    tmp: Path | None = None
    plugin_dir: Path | None = None
    try:
        plugin_dir = path
        if path.is_file():
            from corral._disk.archive import extract_archive

            tmp = Path(tempfile.mkdtemp(prefix="corral-validate-"))
            plugin_dir = tmp / "plugin"
            extract_archive(path, plugin_dir)
        elif not path.is_dir():
            raise InvalidPluginError(f"{path}: not a directory or a .corral archive")
        manifest = load_manifest(plugin_dir)
        report["plugin"] = manifest.id
        report["version"] = manifest.version
        report["warnings"] = _warnings(manifest, known)
        report["metrics"] = _metrics(plugin_dir)
        check_requires_corral(manifest, host_version)
        check_targets(plugin_dir, manifest)
    except CorralError as exc:
        report["errors"].append(_error_dict(exc, plugin_dir))
    try:
        if plugin_dir is not None and report["plugin"] is not None:
            manifest = load_manifest(plugin_dir)
            if static:
                _static(plugin_dir, manifest, report)
            if sandbox and not report["errors"] and not _security_errors(report):
                _sandbox_checks(plugin_dir, manifest, report)
            report["suggestions"] = _suggestions(plugin_dir, manifest)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _performance(report)
    bad = _security_errors(report)
    if bad and not report["errors"]:
        first = bad[0]
        report["errors"].append({
            "code": "permission_denied",
            "message": f"{len(bad)} security error(s); the first: {first['message']}",
            "see": "security",
            **{k: first[k] for k in ("rule", "level", "file", "line", "column")},
            **({"permission": first["permission"]} if "permission" in first else {}),
        })
    report["ok"] = not report["errors"]
    return report


def _security_errors(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [i for i in report["security"] if i["level"] == "error"]


def _static(plugin_dir: Path, manifest: Manifest, report: dict[str, Any]) -> None:
    from corral._pdk.lint import RULES, check_signatures, lint_plugin

    for issue in [*lint_plugin(plugin_dir, manifest), *check_signatures(plugin_dir, manifest)]:
        section = RULES[issue.rule].section
        if section == "errors":
            report["errors"].append(_issue_dict(issue, code="invalid", plugin=manifest.id))
        elif section == "warnings":
            report["warnings"].append(_issue_dict(issue, key=issue.file or "plugin"))
        else:
            report[section].append(_issue_dict(issue))


def _performance(report: dict[str, Any]) -> None:
    from corral._pdk.lint import Issue

    metrics = report["metrics"]
    found = []
    if metrics["import_ms"] is not None and metrics["import_ms"] > IMPORT_MS_LIMIT:
        found.append(Issue("CORRAL-P001", f"importing the plugin took {metrics['import_ms']:.0f}"
                           f" ms (over {IMPORT_MS_LIMIT:.0f} ms): import heavy modules inside "
                           "the functions that need them"))
    if metrics["bytes"] > SIZE_LIMIT:
        found.append(Issue("CORRAL-P002", f"the plugin is {metrics['bytes'] / 1048576:.1f} MB "
                           f"(over {SIZE_LIMIT // 1048576} MB): leave data and build output out"))
    if metrics["files"] > FILES_LIMIT:
        found.append(Issue("CORRAL-P003", f"the plugin has {metrics['files']} files (over "
                           f"{FILES_LIMIT}): every install copies and scans them"))
    report["performance"].extend(i.to_dict() for i in found)


# -- importing the plugin, sandboxed ---------------------------------------------------


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
    from corral._runtime.loader import targets_of

    out: list[str] = []
    for _, target in targets_of(manifest):
        module = target.partition(":")[0]
        if module not in out:
            out.append(module)
    return out


def _sandbox_checks(plugin_dir: Path, manifest: Manifest, report: dict[str, Any]) -> None:
    """Import the plugin where it would run; record ``import_ms`` or CORRAL-E004/W002."""
    from corral._pdk.lint import Issue

    isolation = manifest.sandbox.isolation
    try:
        if isolation == "none":
            probe = _probe_subprocess(plugin_dir, manifest)
        else:
            from corral._services.sandboxed import sandbox_problem

            problem = sandbox_problem(isolation)
            if problem:
                report["warnings"].append(_issue_dict(Issue(
                    "CORRAL-W002", f"not imported: this machine cannot enforce isolation "
                    f"{isolation!r} ({problem})"), key="sandbox.isolation"))
                return
            probe = _probe_sandboxed(plugin_dir, manifest)
    except CorralError as exc:
        report["errors"].append(_issue_dict(Issue(
            "CORRAL-E004", f"importing {manifest.id} in its sandbox failed: {exc.message}"),
            code=exc.code, plugin=manifest.id))
        return
    report["metrics"]["import_ms"] = round(sum(probe["ms"].values()), 3)
    if probe.get("hooks_failed"):
        report["errors"].append(_issue_dict(Issue(
            "CORRAL-E004", f"enabling {manifest.id} in its sandbox ran its on_load/on_enable "
            f"hooks, which failed: {probe['hooks_failed']}"), code="plugin_error",
            plugin=manifest.id))
    failed = probe["failed"]
    if failed:
        from corral._runtime.loader import module_file

        found = module_file(plugin_dir, failed["module"])
        rel = found.relative_to(plugin_dir).as_posix() if found else None
        line = _last_line_in(failed["traceback"], found)
        report["errors"].append(_issue_dict(Issue(
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

    from corral._host import Host
    from corral._services.context import PluginContext, plugin_paths
    from corral._services.sandboxed import spec_for

    with tempfile.TemporaryDirectory(prefix="corral-validate-") as tmp:
        home, workspace = Path(tmp) / "home", Path(tmp) / "workspace"
        workspace.mkdir()
        with Host(home=home, workspace=workspace) as host:
            (info,) = host.register(plugin_dir)
            paths = plugin_paths(home, workspace, manifest.id, Path(host.info(info.id)["path"]))
            for key in ("data", "cache", "tmp"):
                Path(paths[key]).mkdir(parents=True, exist_ok=True)
            spec = spec_for(manifest, cast("PluginContext", SimpleNamespace(paths=paths)))
            probe: dict[str, Any] = host._supervisor_for().call(
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
        "from corral._pdk.validate import probe_imports\n"
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
