"""The static half of ``validate``: check a plugin directory or archive without running it.

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

These checks never import plugin code; a ``probe`` handed in may (the
registry runs none; ``validate --sandbox`` runs :mod:`corral._pdk.probe`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from corral._errors import CorralError, InvalidPluginError, NotFoundError

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._pdk.lint import Issue

__all__ = ["IMPORT_MS_LIMIT", "SIZE_LIMIT", "Probe", "issue_dict", "validate_plugin"]

IMPORT_MS_LIMIT: Final = 200.0  #: importing for longer than this is a performance issue
SIZE_LIMIT: Final = 5 * 1024 * 1024  #: a plugin larger than this (bytes) is one
FILES_LIMIT: Final = 1000  #: and so is one with more files than this
#: Imports the plugin where it would run and adds what it finds to the report.
Probe = Callable[[Path, "Manifest", dict[str, Any]], None]
SECTIONS: Final = ("errors", "warnings", "security", "performance", "suggestions")


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


def issue_dict(issue: Issue, **extra: Any) -> dict[str, Any]:
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
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Return the report described in the module docstring.

    Args:
        path: a plugin directory or ``.corral`` archive.
        host_version: the corral version ``requires-corral`` is checked against.
        known: registered manifests (a dependency missing from them is a warning).
        static: run the AST checks (security rules, export signatures).
        probe: imports the plugin where it would run and adds to the report (runs plugin
            code); skipped when a static check already failed.

    Raises:
        NotFoundError: ``path`` does not exist.
    """
    from corral._disk.targets import check_targets
    from corral._model.deps import check_requires_corral
    from corral._model.manifest import load_manifest

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
            if probe is not None and not report["errors"] and not _security_errors(report):
                probe(plugin_dir, manifest, report)
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
            report["errors"].append(issue_dict(issue, code="invalid", plugin=manifest.id))
        elif section == "warnings":
            report["warnings"].append(issue_dict(issue, key=issue.file or "plugin"))
        else:
            report[section].append(issue_dict(issue))


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
