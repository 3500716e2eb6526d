"""Names on disk: where the home is, the manifest file, and the folders and database of a home."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["DB_NAME", "HOME_DIRS", "MANIFEST_NAME", "default_home"]

#: The manifest at the root of every plugin.
MANIFEST_NAME: Final = "corral.toml"
#: The host database inside a home.
DB_NAME: Final = "corral.db"
#: Folders of a home: plugin copies, and per-plugin data, caches and private tmp.
HOME_DIRS: Final = ("plugins", "data", "cache", "tmp")


def default_home() -> Path:
    """``$CORRAL_HOME``, else ``$XDG_DATA_HOME/corral``, else ``~/.local/share/corral``."""
    env = os.environ.get("CORRAL_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg or Path.home() / ".local" / "share") / "corral"
