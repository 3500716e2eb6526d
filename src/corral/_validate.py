"""``validate``: check a plugin directory or archive without registering or running it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import CorralError, InvalidPluginError, NotFoundError

if TYPE_CHECKING:
    from ._manifest import Manifest

__all__ = ["validate_plugin"]


def _warnings(manifest: Manifest, known: Mapping[str, Manifest]) -> list[dict[str, str]]:
    out = []

    def warn(key: str, message: str) -> None:
        out.append({"key": key, "message": message})

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
                warn(f"permissions.{kind}[{i}]", f"{grant!r} is a very broad grant")
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


def validate_plugin(
    path: Path, *, host_version: str, known: Mapping[str, Manifest]
) -> dict[str, Any]:
    """Return a report ``{"ok", "plugin", "version", "path", "errors", "warnings"}``.

    Errors are :class:`~corral.CorralError` dictionaries; a plugin with errors
    would be refused by ``register``.
    """
    from ._deps import check_requires_corral
    from ._loader import check_targets
    from ._manifest import load_manifest

    path = path.expanduser().absolute()
    report: dict[str, Any] = {
        "ok": False,
        "plugin": None,
        "version": None,
        "path": str(path),
        "errors": [],
        "warnings": [],
    }
    if not path.exists():
        raise NotFoundError(f"{path}: no such file or directory", path=str(path))
    tmp: Path | None = None
    try:
        plugin_dir = path
        if path.is_file():
            from ._archive import extract_archive

            tmp = Path(tempfile.mkdtemp(prefix="corral-validate-"))
            plugin_dir = tmp / "plugin"
            extract_archive(path, plugin_dir)
        elif not path.is_dir():
            raise InvalidPluginError(f"{path}: not a directory or a .corral archive")
        manifest = load_manifest(plugin_dir)
        report["plugin"] = manifest.id
        report["version"] = manifest.version
        check_requires_corral(manifest, host_version)
        check_targets(plugin_dir, manifest)
        report["warnings"] = _warnings(manifest, known)
    except CorralError as exc:
        report["errors"].append(exc.to_dict())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report["ok"] = not report["errors"]
    return report
