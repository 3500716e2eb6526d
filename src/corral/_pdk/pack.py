"""``pack``: validate a plugin and write a reproducible, signed ``.corral`` archive of it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from corral._disk.archive import pack_directory
from corral._distribution.signing import load_signing_key, signature_envelope
from corral._errors import InvalidPluginError, UsageError
from corral._pdk.checks import validate_plugin
from corral._version import __version__

__all__ = ["pack_plugin"]


def pack_plugin(
    path: str | Path,
    out: str | Path | None = None,
    *,
    key: str | None = None,
    sign: bool = True,
    host_version: str | None = None,
) -> dict[str, Any]:
    """Validate ``path``, sign it if a key is configured, and pack it; return what was made.

    ``out`` is an existing directory or one ending in ``/`` (created), both
    meaning "into that folder", or a ``*.corral`` file in an existing folder,
    outside the plugin (default: the current directory, or the plugin's
    parent when run inside the plugin); the archive is named
    ``<id>-<version>.corral``.  Any other ``out`` is a usage error.  With ``key``,
    that key must exist; without, the only (or ``default``) key of the keys
    directory is used when there is one.  Nothing is written when the plugin is
    invalid.

    Raises:
        InvalidPluginError: validation found errors (they are in ``details["errors"]``).
        NotFoundError: no such directory, or no key ``key``.
        UsageError: ``out`` names no folder and no ``.corral`` file in an existing one.
    """
    src = Path(path).expanduser().absolute()
    if not src.is_dir():
        raise UsageError(f"{src}: not a plugin directory (pack takes a directory)",
                         path=str(src))
    report = validate_plugin(src, host_version=host_version or __version__, known={})
    if not report["ok"]:
        first = report["errors"][0]
        raise InvalidPluginError(
            f"{src}: refusing to pack an invalid plugin: {first['message']}",
            plugin_id=report["plugin"],
            errors=report["errors"],
        )
    name = f"{report['plugin']}-{report['version']}.corral"
    make_dir: Path | None = None
    if out is not None:
        target = Path(out).expanduser().absolute()
        if target.is_dir():
            target = target / name
        elif str(out).endswith(("/", os.sep)):
            make_dir, target = target, target / name
        elif target.suffix != ".corral":
            raise UsageError(
                f"-o {out}: no such folder, and not a .corral file name; to write into a "
                f"new folder end it with '/' ({out}/), or name the archive *.corral",
                path=str(target))
        elif not target.parent.is_dir():
            raise UsageError(f"-o {out}: folder {target.parent} does not exist",
                             path=str(target))
    else:
        here = Path.cwd().absolute()
        target = (src.parent if here.is_relative_to(src) else here) / name
    if target.is_relative_to(src):
        # It would be signed or packed by the next pack: keep the plugin's tree clean.
        raise UsageError(f"{target}: the archive cannot be written inside the plugin it packs",
                         path=str(target))
    signer: Any = None
    extra: dict[str, bytes] | None = None
    if sign:
        signer = load_signing_key(key)
        if signer is not None:
            extra = {"corral.sig": signature_envelope(src, signer)}
    elif key is not None:
        raise UsageError("--key and --no-sign contradict each other")
    if make_dir is not None:
        try:
            make_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"-o {out}: cannot create the folder ({exc.strerror})",
                             path=str(make_dir)) from None
    pack_directory(src, target, extra=extra)
    data = target.read_bytes()
    return {
        "plugin": report["plugin"],
        "version": report["version"],
        "path": str(target),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "signed": signer is not None,
        "signer": getattr(signer, "name", None),
        "keyid": getattr(signer, "keyid", None),
        "warnings": report["warnings"],
    }
