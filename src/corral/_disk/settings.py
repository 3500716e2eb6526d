"""The host's settings file, ``<home>/settings.toml``: read as TOML, one switch at a time.

A missing file means every default; a malformed one is a :class:`ManifestError`
naming the file and the key, so the user can go straight to the line.  A switch
is written by editing its one line (the rest of the file, comments included, is
kept), checked by reading it back before the file is replaced.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Final

from corral._disk.files import write_atomic
from corral._errors import ManifestError

__all__ = ["SETTINGS_FILE", "read_settings", "setting_flag", "write_setting_flag"]

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


_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def write_setting_flag(home: Path, table: str, key: str, value: bool) -> None:
    """Set ``[table] key = value`` in the settings file, keeping every other line.

    Raises:
        ManifestError: the file is malformed, or ``[table]`` is written in a way this
            line editor does not handle (inline or dotted); the file is left as it was.
    """
    if not (_NAME.match(table) and _NAME.match(key)):
        raise ValueError(f"not a simple setting name: {table}.{key}")
    root = Path(home).expanduser()
    path = root / SETTINGS_FILE
    read_settings(root)  # refuse to edit a malformed file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    line = f"{key} = {'true' if value else 'false'}"
    lines = text.splitlines()
    header = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]\s*(#.*)?$")
    start = next((n for n, ln in enumerate(lines) if header.match(ln)), None)
    if start is None:
        lines += ([""] if lines and lines[-1].strip() else []) + [f"[{table}]", line]
    else:
        end = next((n for n in range(start + 1, len(lines))
                    if lines[n].lstrip().startswith("[")), len(lines))
        own = re.compile(rf"^\s*{re.escape(key)}\s*=")
        at = next((n for n in range(start + 1, end) if own.match(lines[n])), None)
        if at is None:
            lines.insert(start + 1, line)
        else:
            lines[at] = line
    new = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        parsed = {}
    if not isinstance(parsed.get(table), dict) or parsed[table].get(key) is not value:
        raise ManifestError(f"cannot set {table}.{key} here: edit it by hand", file=str(path),
                            key=f"{table}.{key}")
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(path, new.encode("utf-8"))
