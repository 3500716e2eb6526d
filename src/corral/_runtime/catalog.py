"""Reading what is registered: rows, manifests fresh from disk, dependency plans, listings.

Never imports plugin code; a manifest changed on disk since it was stored is re-read
and stored again.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, final

from corral._disk.layout import MANIFEST_NAME
from corral._errors import CorralError, InvalidPluginError, ManifestError, NotFoundError
from corral._model.deps import dependency_order
from corral._model.info import PluginInfo
from corral._model.lifecycle import State
from corral._runtime.database import HostDatabase, PluginRow

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = ["Catalog"]


@final
class Catalog:
    """The registered plugins of one home, as the host database and their folders say."""

    def __init__(self, db: HostDatabase, home: Path) -> None:
        self.db = db
        self.home = home

    def row(self, plugin_id: str) -> PluginRow:
        """The plugin's row, or :class:`NotFoundError`."""
        row = self.db.get(plugin_id)
        if row is None:
            raise NotFoundError(f"no plugin {plugin_id!r} is registered", plugin_id=plugin_id)
        return row

    def fresh_manifest(self, row: PluginRow) -> Manifest:
        """The row's manifest, re-read from disk if ``corral.toml`` changed since it was stored."""
        from corral._model.manifest import Manifest, load_manifest

        path = Path(row.path) / MANIFEST_NAME
        try:
            st = path.stat()
        except OSError:
            raise InvalidPluginError(
                f"{row.id}: {path} is gone; remove and register the plugin again",
                plugin_id=row.id,
                file=str(path),
            ) from None
        if (st.st_mtime_ns, st.st_size) == (row.manifest_mtime_ns, row.manifest_size):
            return Manifest.from_dict(row.manifest, file=str(path))
        manifest = load_manifest(Path(row.path))
        if manifest.id != row.id:
            raise ManifestError(
                f"id changed from {row.id!r} to {manifest.id!r}; remove and register again",
                file=str(path),
                key="plugin.id",
                plugin_id=row.id,
            )
        self.db.refresh_manifest(
            row.id, manifest.version, manifest.to_dict(), st.st_mtime_ns, st.st_size
        )
        return manifest

    def known(self) -> dict[str, Manifest]:
        """Every registered plugin whose manifest is readable now."""
        return self.read_all()[0]

    def read_all(self) -> tuple[dict[str, Manifest], dict[str, CorralError]]:
        """The readable manifests, and the error of each registered plugin whose is not."""
        known: dict[str, Manifest] = {}
        broken: dict[str, CorralError] = {}
        for row in self.db.all():
            try:
                known[row.id] = self.fresh_manifest(row)
            except CorralError as exc:
                broken[row.id] = exc
        return known, broken

    def plan(self, plugin_id: str) -> tuple[dict[str, Manifest], builtins.list[str]]:
        """The known manifests and ``plugin_id`` with its dependencies, dependencies first.

        A plugin in that chain whose manifest no longer reads raises its own error
        (naming the file and key), not a confusing "not registered".
        """
        known, broken = self.read_all()
        if plugin_id in broken:
            raise broken[plugin_id]
        self.row(plugin_id)
        try:
            return known, dependency_order([plugin_id], known)
        except InvalidPluginError as exc:
            dep = exc.details.get("dependency")
            if isinstance(dep, str) and dep in broken:
                raise broken[dep] from exc
            raise

    def infos(
        self, state_of: Callable[[PluginRow], State]
    ) -> tuple[builtins.list[PluginInfo], set[str]]:
        """A summary of every registered plugin (its manifest re-read if it changed), and
        the folders they are registered from."""
        infos: builtins.list[PluginInfo] = []
        registered: set[str] = set()
        for row in self.db.all():
            registered.add(row.path)
            manifest = row.manifest
            error = row.error
            path = Path(row.path) / MANIFEST_NAME
            try:
                st = path.stat()
                if (st.st_mtime_ns, st.st_size) != (row.manifest_mtime_ns, row.manifest_size):
                    manifest = self.fresh_manifest(row).to_dict()
            except OSError:
                error = {"code": "invalid", "message": f"{path} is gone"}
            except CorralError as exc:
                error = exc.to_dict()
            infos.append(
                PluginInfo.from_manifest_dict(
                    manifest,
                    state=state_of(row).value,
                    source=row.source,
                    path=row.path,
                    error=error,
                    linked=row.linked,
                )
            )
        return infos, registered

    def discovered(self, registered: set[str]) -> builtins.list[PluginInfo]:
        """Plugin folders under the home and pip-installed plugins not among ``registered``."""
        from corral._runtime.discovery import discover

        return discover(self.db, self.home / "plugins", registered)

    def entry_point_dirs(self) -> builtins.list[Path]:
        """The folders of the pip-installed plugins (entry point group ``corral.plugins``)."""
        from corral._runtime.discovery import entry_point_dirs

        return entry_point_dirs(self.db)
