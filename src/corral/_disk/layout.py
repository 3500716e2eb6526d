"""Names on disk: the manifest file, and the folders and database of a home."""

from __future__ import annotations

from typing import Final

__all__ = ["DB_NAME", "HOME_DIRS", "MANIFEST_NAME"]

#: The manifest at the root of every plugin.
MANIFEST_NAME: Final = "corral.toml"
#: The host database inside a home.
DB_NAME: Final = "corral.db"
#: Folders of a home: plugin copies, and per-plugin data, caches and private tmp.
HOME_DIRS: Final = ("plugins", "data", "cache", "tmp")
