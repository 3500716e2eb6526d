"""The Python written in the README and the guides names things that exist.

Most ``python`` blocks of the guides are fragments (``ctx.events.publish(...)`` inside
an export), not programs; what a reader copies from them must still be real:

- every block compiles (top-level ``await`` allowed: fragments of async exports);
- every ``import`` of corral in them imports;
- every ``ctx.NAME`` and ``ctx.NAME.NAME`` they use is an attribute of the real
  ``ctx`` a plugin gets, in process and in a strict worker ("the same at every
  isolation level", as the README says).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from helpers.docs import DOCUMENTS, Block, blocks
from helpers.plugins import make_plugin

from corral._host import Host
from corral._sandbox.landlock import landlock_abi

PYTHON = [b for doc in DOCUMENTS for b in blocks(doc) if b.language == "python"]
_CHAIN = re.compile(r"\bctx((?:\.[a-z_][a-z0-9_]*){1,2})")

#: An export that says which of the dotted names it is given ``ctx`` lacks.
PROBE = '''
def missing(names, ctx):
    out = []
    for name in names:
        obj = ctx
        for part in name.split("."):
            if not hasattr(obj, part):
                out.append(name)
                break
            obj = getattr(obj, part)
    return out
'''


def tree(block: Block) -> ast.Module:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    module: ast.Module = compile(block.text, block.where, "exec", flags=flags)
    return module


def ctx_names() -> dict[str, list[str]]:
    """Each dotted name used on ``ctx`` in the guides, with the blocks that use it."""
    used: dict[str, list[str]] = {}
    for block in PYTHON:
        for m in _CHAIN.finditer(block.text):
            used.setdefault(m.group(1)[1:], []).append(block.where)
    return used


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_block_compiles_and_its_corral_imports_import(block: Block) -> None:
    for node in ast.walk(tree(block)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("corral"):
            module = __import__(node.module or "", fromlist=["*"])
            for alias in node.names:
                assert hasattr(module, alias.name), (
                    f"{block.where}: {node.module} has no {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("corral"):
                    __import__(alias.name)


def test_the_guides_use_ctx() -> None:
    # the control for the test below: the reading finds the names it is to check
    used = ctx_names()
    assert {"events.publish", "state.set", "messages.send"} <= set(used)


@pytest.mark.parametrize("isolation", ["none", "strict"])
def test_every_ctx_name_in_the_guides_exists(tmp_path: Path, isolation: str) -> None:
    if isolation == "strict" and landlock_abi() < 1:
        pytest.skip("a strict worker needs Landlock")
    used = ctx_names()
    src = make_plugin(tmp_path, "acme.probe", {"acme_probe.py": PROBE}, isolation=isolation,
                      exports={"missing": "acme_probe:missing"})
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(src)
        host.enable("acme.probe")
        missing = host.call("acme.probe", "missing", sorted(used))
        # the control: a name no ctx has is reported missing
        assert host.call("acme.probe", "missing", ["events.no_such_thing"]) == [
            "events.no_such_thing"]
    assert missing == [], json.dumps({name: used[name] for name in missing}, indent=1)
