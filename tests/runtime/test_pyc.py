"""Byte code a plugin ships never runs: the source (what a signature covers) does.

Python runs ``__pycache__/m.cpython-3X.pyc`` whenever its header (the source's
mtime and size) matches, whatever code it holds, and a sourceless ``m.pyc``
outright.  Each plugin here ships both, planted by an attacker, and runs for
real in process (``none``) and in real sandboxed workers (``limited``, ``strict``).
"""

from __future__ import annotations

import importlib.util
import marshal
import sys
from pathlib import Path

import pytest
from helpers.hosts import close_quietly
from helpers.plugins import manifest_dict, to_toml

from corral._distribution.signing import generate_key, sign_directory, verify_directory
from corral._host import Host
from corral._services.sandboxed import sandbox_problem

SOURCE = "def version(value, ctx):\n    return 'source'\n"
EVIL = "def version(value, ctx):\n    return 'planted byte code'\n"
GHOST_USER = """
def ghost(value, ctx):
    try:
        from . import ghost
    except ImportError:
        return "no ghost"
    return ghost.X
"""


def planted_pyc(source: Path, evil: str) -> bytes:
    """A timestamp pyc of ``evil`` whose header matches ``source`` (mtime and size)."""
    st = source.stat()
    code = compile(evil, str(source), "exec")
    return (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
            + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
            + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code))


def hostile_plugin(home: Path, plugin_id: str, isolation: str) -> tuple[Path, str]:
    """A plugin directory in ``home/plugins`` (registered in place) with planted byte code."""
    mod = "cp_pyc_" + isolation
    root = home / "plugins" / plugin_id
    pkg = root / mod
    pkg.mkdir(parents=True)
    (root / f"{mod}_top.py").write_text(SOURCE)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub.py").write_text(SOURCE + GHOST_USER)
    exports = {"top": f"{mod}_top:version", "sub": f"{mod}.sub:version",
               "ghost": f"{mod}.sub:ghost"}
    (root / "corral.toml").write_text(to_toml(manifest_dict(
        plugin_id, isolation=isolation, exports=exports)))
    tag = sys.implementation.cache_tag
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / f"{mod}_top.{tag}.pyc").write_bytes(
        planted_pyc(root / f"{mod}_top.py", EVIL))
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / f"sub.{tag}.pyc").write_bytes(
        planted_pyc(pkg / "sub.py", EVIL + GHOST_USER))
    (pkg / "ghost.pyc").write_bytes(planted_pyc(pkg / "sub.py", "X = 'sourceless ran'\n"))
    return root, mod


@pytest.mark.parametrize("isolation", ["none", "limited", "strict"])
def test_planted_matching_pyc_never_runs(home: Path, tmp_path: Path, isolation: str) -> None:
    problem = sandbox_problem(isolation) if isolation != "none" else None
    if problem:
        pytest.skip(problem)
    plugin_id = f"acme.pyc-{isolation}"
    root, mod = hostile_plugin(home, plugin_id, isolation)
    # the attack is real: Python's own loader would pick the planted cache
    spec = importlib.util.spec_from_file_location(f"{mod}_probe", root / f"{mod}_top.py")
    assert spec is not None
    assert spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.version(None, None) == "planted byte code"

    planted = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pyc"))
    host = Host(home=home, workspace=tmp_path)
    try:
        host.register(root)
        host.enable(plugin_id)
        assert host.call(plugin_id, "top", None) == "source"
        assert host.call(plugin_id, "sub", None) == "source"
        assert host.call(plugin_id, "ghost", None) == "no ghost"
    finally:
        close_quietly(host)
    # nothing was written next to the plugin's code either
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.pyc")) == planted


def test_signed_directory_with_planted_pyc_is_not_signed(home: Path, tmp_path: Path) -> None:
    root, mod = hostile_plugin(home, "acme.pyc-signed", "none")
    caches = sorted(p for p in root.rglob("*") if p.suffix == ".pyc")
    held = {p: p.read_bytes() for p in caches}
    for p in caches:
        p.unlink()
    key = generate_key("k", tmp_path / "keys")
    sign_directory(root, key)
    assert verify_directory(root).state == "signed"  # positive control
    for p, data in held.items():
        p.write_bytes(data)
    status = verify_directory(root)
    assert status.state == "modified"
    assert f"added: __pycache__/{mod}_top.{sys.implementation.cache_tag}.pyc " \
        "(byte code is never trusted; delete it)" in status.problems
    assert f"added: {mod}/ghost.pyc (byte code is never trusted; delete it)" in status.problems
