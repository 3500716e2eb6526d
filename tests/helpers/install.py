"""Publishing test plugins into a directory repository, and the state of a home around an install.

``snapshot`` here captures files (mode and content hash) and database rows, so a
failed install can be shown to change nothing; ``helpers.hosts.snapshot`` lists paths only.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral._disk.archive import pack_directory
from helpers.plugins import make_plugin, module_name


def publish(
    root: Path, repo: Path, pid: str, version: str, deps: Mapping[str, str] | None = None,
    code: str | None = None, exports: Mapping[str, str] | None = None, key: Any = None,
    **manifest: Any,
) -> Path:
    """Write plugin ``pid`` ``version`` (signed with ``key`` if given) and pack it into ``repo``."""
    mod = module_name(pid)
    files = None
    if code is not None:
        files = {f"{mod}.py": code}
    src = make_plugin(root / "work" / f"{pid}-{version}", pid, files=files, version=version,
                      dependencies=dict(deps) if deps else None,
                      exports=exports if exports is not None else
                      ({"version": f"{mod}:version"} if code else None), **manifest)
    if key is not None:
        from corral._distribution.signing import sign_directory

        sign_directory(src, key)
    repo.mkdir(parents=True, exist_ok=True)
    return pack_directory(src, repo / f"{pid}-{version}.corral")


def versioned(v: str, extra: str = "") -> str:
    """Code for a plugin whose ``version`` export returns ``v`` (then ``extra``)."""
    return f"def version(value, ctx):\n    return {v!r}\n" + extra


def snapshot(home: Path) -> dict[str, Any]:
    """Files (mode + content hash) under ``home`` and the rows of the host database."""
    files: dict[str, Any] = {}
    for p in sorted(home.rglob("*")):
        rel = p.relative_to(home).as_posix()
        if ".db" in p.name or p.name in (".lock", "install.lock"):
            continue
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        files[rel] = (stat.S_IMODE(st.st_mode), digest)
    rows: list[Any] = []
    db = home / "corral.db"
    if db.exists():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = conn.execute(
            "SELECT id, version, path, source, state, manifest FROM plugins ORDER BY id"
        ).fetchall()
        conn.close()
    return {"files": files, "rows": rows}


def rows(home: Path) -> dict[str, tuple[str, str, str, str]]:
    """Each registered plugin's version, path, source and state, by id."""
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in snapshot(home)["rows"]}
