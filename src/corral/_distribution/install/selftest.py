"""An update's ``self-test`` export, run in a throwaway host and always in a sandbox.

It runs before the switch, so a version that fails it never becomes current.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from corral._disk.layout import MANIFEST_NAME
from corral._disk.tree import copy_plugin_dir
from corral._distribution.install.checks import closure
from corral._errors import CorralError, PluginError
from corral._host import Host
from corral._model.manifest import Manifest
from corral._services.sandboxed import sandbox_problem

__all__ = ["run_self_test"]


def run_self_test(plugin_id: str, manifests: Mapping[str, Manifest],
                  trees: Mapping[str, Path]) -> str | None:
    """Run the ``self-test`` export of a new version in a throwaway host; raise if it fails.

    ``manifests`` and ``trees`` hold the planned set (the plugin and its
    dependencies).  It never runs in this process: a plugin (or a dependency)
    of isolation ``none`` is run at ``strict`` for the test (``limited`` where
    ``strict`` cannot be enforced), under its own permissions.  Where neither
    can, the test is not run and the returned note says so.

    Raises:
        PluginError: the self-test failed or returned a failure.
    """
    manifest = manifests[plugin_id]
    if "self-test" not in manifest.exports:
        return None
    needed = sorted(closure([plugin_id], manifests))
    lifted = [p for p in needed if manifests[p].sandbox.isolation == "none"]
    level = next((x for x in ("strict", "limited") if not sandbox_problem(x)), None)
    if lifted and level is None:
        return (f"{plugin_id} {manifest.version}: self-test not run: it would run "
                f"{', '.join(lifted)} (isolation none) in this process, and this machine "
                f"cannot sandbox it ({sandbox_problem('limited')})")
    with tempfile.TemporaryDirectory(prefix="corral-selftest-") as tmp:
        paths = [trees[p] if p not in lifted
                 else _sandboxed_copy(trees[p], Path(tmp) / "lifted" / p, str(level))
                 for p in needed]
        try:
            with Host(home=Path(tmp) / "home", workspace=tmp) as throwaway:
                throwaway.register(*paths)
                throwaway.enable(plugin_id)
                result = throwaway.call(plugin_id, "self-test", None)
        except CorralError as exc:
            how = (f" (run at isolation {level!r} for the test, where "
                   f"{', '.join(lifted)} asks for 'none')" if lifted else "")
            raise PluginError(
                f"{plugin_id} {manifest.version}: self-test failed, the update was not "
                f"applied{how}: {exc.message}", plugin_id=plugin_id, cause=exc.to_dict(),
            ) from exc
        if result is False or (isinstance(result, dict) and result.get("ok") is False):
            raise PluginError(
                f"{plugin_id} {manifest.version}: self-test returned {result!r}, the "
                "update was not applied", plugin_id=plugin_id,
            )
    return None


def _sandboxed_copy(tree: Path, dest: Path, level: str) -> Path:
    """A copy of ``tree`` whose manifest asks for ``level`` instead of isolation ``none``."""
    import tomlkit  # deferred: only a lifted plugin needs it, and the install verb starts faster

    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_plugin_dir(tree, dest)
    doc = tomlkit.parse((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
    if "sandbox" not in doc:
        doc["sandbox"] = tomlkit.table()
    doc["sandbox"]["isolation"] = level
    (dest / MANIFEST_NAME).write_text(tomlkit.dumps(doc), encoding="utf-8")
    return dest
