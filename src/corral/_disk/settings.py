"""The host's settings file, ``<home>/settings.toml``: read as TOML, one switch at a time.

A missing file means every default; a malformed one is a :class:`ManifestError`
naming the file and the key, so the user can go straight to the line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from corral._errors import ManifestError

__all__ = ["SETTINGS_FILE", "read_settings", "setting_flag"]

#: The settings file at the root of a home.
SETTINGS_FILE: Final = "settings.toml"


def read_settings(home: Path) -> dict[str, Any]:
    """The whole settings document (empty when there is no file)."""
    path = Path(home).expanduser() / SETTINGS_FILE
    try:
        with path.open("rb") as fp:
            return tomllib.load(fp)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}", file=str(path)) from None


def setting_flag(home: Path, table: str, key: str, *, default: bool = False) -> bool:
    """``[table] key`` as a boolean, ``default`` when unset.

    Raises:
        ManifestError: the table is not a table or the value not ``true``/``false``.
    """
    path = str(Path(home).expanduser() / SETTINGS_FILE)
    section = read_settings(home).get(table, {})
    if not isinstance(section, dict):
        raise ManifestError("must be a table", file=path, key=table)
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ManifestError(f"expected true or false, got {value!r}", file=path,
                            key=f"{table}.{key}")
    return value
