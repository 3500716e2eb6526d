"""``corral quota set``: one ``[quotas."ID"]`` key written to the home's ``settings.toml``.

Edited in place (comments and layout kept), checked before anything is written,
and replaced atomically, so a bad value or a bad id leaves the file as it was.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from corral._disk.files import write_atomic
from corral._disk.settings import SETTINGS_FILE
from corral._errors import CorralError, ManifestError, UsageError
from corral._model.config import ConfigError
from corral._model.manifest import check_id
from corral._model.quotas import SETTABLE, check_quota_table
from corral._runtime.quotas import BYTE_BOUNDS, settings_quotas
from corral._services.config import edit_toml

__all__ = ["write_quota"]


def write_quota(home: Path, plugin_id: str, key: str, value: int | None) -> bool:
    """Set (``None``: remove) ``[quotas."plugin_id"] key``; whether the file changed.

    The caller holds the home's lock.

    Raises:
        UsageError: not a plugin id, or not a quota key.
        ManifestError: a value out of bounds, or a settings file that is not valid.
    """
    try:
        check_id(plugin_id)
    except CorralError:
        raise UsageError(f"{plugin_id!r} is not a plugin id", plugin_id=plugin_id) from None
    if key not in SETTABLE:
        raise UsageError(f"no quota {key!r}; the quotas are: {', '.join(SETTABLE)}", key=key)
    path = Path(home) / SETTINGS_FILE
    where = f'quotas."{plugin_id}"'
    if value is not None:
        check_quota_table({key: value}, where, file=str(path), bounds=BYTE_BOUNDS)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    try:
        new, changed = edit_toml(text, ["quotas", plugin_id], [key], value,
                                 remove=value is None, where=f"{where}.{key}", source=str(path))
    except ConfigError as exc:
        raise ManifestError(exc.message, file=str(path)) from None
    if not changed:
        return False
    settings_quotas(tomllib.loads(new), str(path))  # the whole table still reads
    write_atomic(path, new.encode("utf-8"))
    return True
