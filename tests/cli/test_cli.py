"""The ``corral`` command line, run as real subprocesses: verbs, exit codes, JSON errors."""

from __future__ import annotations

import re
import sqlite3
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import CliResult
from helpers.hosts import snapshot
from helpers.plugins import make_plugin, module_name

import corral
from corral import Host
from corral._services.sandboxed import sandbox_problem

Run = Callable[..., CliResult]

ERROR_CODES = {
    "usage", "invalid", "permission_denied", "policy_denied", "signature_invalid",
    "plugin_error", "timeout", "resource_limit", "crashed", "not_found", "error",
}


def assert_error(res: CliResult, exit_code: int, code: str) -> dict[str, Any]:
    assert res.code == exit_code, (res.out, res.err)
    assert isinstance(res.json, dict)
    assert set(res.json) == {"error"}
    error = res.json["error"]
    assert error["code"] == code
    assert code in ERROR_CODES
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def rows(home: Path) -> dict[str, str]:
    if not (home / "corral.db").exists():
        return {}
    conn = sqlite3.connect(home / "corral.db")
    try:
        return dict(conn.execute("SELECT id, state FROM plugins").fetchall())
    finally:
        conn.close()


def register(home: Path, workspace: Path, *dirs: Path, enable: tuple[str, ...] = ()) -> None:
    with Host(home=home, workspace=workspace) as h:
        h.register(*dirs)
        for pid in enable:
            h.enable(pid)


# -- the happy path, verb by verb --------------------------------------------------------


def test_version(run_cli: Run) -> None:
    res = run_cli("--version")
    assert res.code == 0
    assert res.out.strip() == f"corral {corral.__version__}"


def test_full_flow_json(run_cli: Run, tmp_path: Path, home: Path) -> None:
    src = make_plugin(tmp_path, "acme.demo", plugin={"category": "demo", "tags": ["x"]},
                      permissions={"fs-read": ["{workspace}"]})
    res = run_cli("add", str(src), "--json")
    assert res.code == 0, res.err
    assert [p["id"] for p in res.json["registered"]] == ["acme.demo"]
    assert res.json["registered"][0]["state"] == "registered"

    res = run_cli("list", "--json")
    assert res.code == 0
    [plugin] = res.json["plugins"]
    assert plugin["id"] == "acme.demo"
    assert plugin["state"] == "registered"
    assert plugin["category"] == "demo"
    assert "export:echo" in plugin["capabilities"]

    res = run_cli("info", "acme.demo", "--json")
    assert res.code == 0
    assert res.json["permissions"] == {"fs-read": ["{workspace}"]}
    assert res.json["exports"]["echo"] == f"{module_name('acme.demo')}:echo"
    assert res.json["sandbox"]["isolation"] == "none"

    res = run_cli("enable", "acme.demo", "--json")
    assert res.code == 0
    assert res.json == {"enabled": ["acme.demo"]}

    res = run_cli("call", "acme.demo", "echo", "--input", '{"a": [1, 2.5, null]}', "--json")
    assert res.code == 0, res.err
    assert res.json == {"result": {"a": [1, 2.5, None]}}

    res = run_cli("list", "--state", "enabled", "--json")
    assert [p["id"] for p in res.json["plugins"]] == ["acme.demo"]
    assert run_cli("list", "--state", "disabled", "--json").json == {"plugins": []}

    res = run_cli("remove", "acme.demo", "--json")
    assert res.code == 0, res.err
    assert res.json == {"removed": ["acme.demo"]}
    assert run_cli("list", "--json").json == {"plugins": []}
    assert not (home / "plugins" / "acme.demo").exists()


def test_disable_verb(run_cli: Run, tmp_path: Path, home: Path, workspace: Path) -> None:
    register(home, workspace, make_plugin(tmp_path, "acme.demo"))
    assert run_cli("enable", "acme.demo").code == 0
    res = run_cli("disable", "acme.demo", "--json")
    assert res.code == 0, res.out
    assert res.json == {"disabled": ["acme.demo"]}
    assert rows(home) == {"acme.demo": "disabled"}


def test_disable_cascade_verb(run_cli: Run, tmp_path: Path, home: Path, workspace: Path) -> None:
    register(home, workspace, make_plugin(tmp_path, "d.lib"),
             make_plugin(tmp_path, "d.app", dependencies={"d.lib": ""}), enable=("d.app",))
    res = run_cli("disable", "d.lib", "--json")
    error = assert_error(res, 2, "usage")
    assert "d.app" in error["message"]
    assert rows(home) == {"d.lib": "enabled", "d.app": "enabled"}
    res = run_cli("disable", "d.lib", "--cascade", "--json")
    assert res.code == 0, res.out
    assert res.json == {"disabled": ["d.app", "d.lib"]}


def test_human_output(run_cli: Run, tmp_path: Path, home: Path, workspace: Path) -> None:
    assert run_cli("list").out.strip() == "no plugins"
    res = run_cli("add", str(make_plugin(tmp_path, "acme.a")),
                  str(make_plugin(tmp_path, "acme.much-longer-id",
                                  plugin={"description": "Does things", "category": "tools"})))
    assert res.code == 0
    assert "registered acme.a 1.0.0" in res.out
    run_cli("enable", "acme.a")
    res = run_cli("list")
    assert res.code == 0
    lines = res.out.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["ID", "VERSION", "STATE", "ISOLATION", "CATEGORY", "DESCRIPTION"]
    # Aligned: every column starts at the same offset on every line.
    for header in ("VERSION", "STATE", "ISOLATION", "CATEGORY"):
        col = lines[0].index(header)
        for line in lines[1:]:
            assert line[col - 2 : col] == "  ", (header, line)
            assert line[col] != " ", (header, line)
    assert lines[1].startswith("acme.a ")
    assert re.search(r"enabled\s+none\s+-", lines[1])
    assert re.match(r"^acme\.much-longer-id  1\.0\.0\s+registered  none\s+tools", lines[2])
    assert lines[2].endswith("Does things")

    res = run_cli("info", "acme.much-longer-id")
    assert res.code == 0
    assert res.out.startswith("acme.much-longer-id 1.0.0  (registered)")
    assert "exports" in res.out
    res = run_cli("call", "acme.a", "echo", "--input", '"plain text"')
    assert res.out == "plain text\n"


def test_add_archive(run_cli: Run, tmp_path: Path, home: Path) -> None:
    from corral._disk.archive import pack_directory

    archive = pack_directory(make_plugin(tmp_path, "acme.zip"), tmp_path / "acme.zip.corral")
    res = run_cli("add", str(archive), "--json")
    assert res.code == 0, res.out
    assert res.json["registered"][0]["source"] == "archive"
    assert rows(home) == {"acme.zip": "registered"}
    assert (home / "plugins" / "acme.zip" / "corral.toml").is_file()


def test_list_and_info_never_import_plugin_code(
    run_cli: Run, tmp_path: Path, home: Path, workspace: Path
) -> None:
    marker = tmp_path / "imported.txt"
    mod = module_name("acme.sneaky")
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
    code += "def echo(v, ctx):\n    return v\n"
    src = make_plugin(tmp_path, "acme.sneaky", files={f"{mod}.py": code},
                      exports={"echo": f"{mod}:echo"})
    assert run_cli("add", str(src)).code == 0
    assert run_cli("list", "--json").code == 0
    assert run_cli("info", "acme.sneaky", "--json").code == 0
    assert not marker.exists()
    assert run_cli("enable", "acme.sneaky").code == 0
    assert marker.exists()


def test_validate_verb(run_cli: Run, tmp_path: Path, home: Path) -> None:
    res = run_cli("validate", str(make_plugin(tmp_path, "acme.ok")), "--json")
    assert res.code == 0
    assert res.json["ok"] is True
    assert res.json["plugin"] == "acme.ok"
    bad = make_plugin(tmp_path, "acme.bad", exports={"x": "nowhere:x"})
    res = run_cli("validate", str(bad), "--json")
    assert res.code == 3
    assert res.json["ok"] is False
    assert "exports.x" in res.json["errors"][0]["message"]
    res = run_cli("validate", str(bad))
    assert res.code == 3
    assert "invalid" in res.out
    assert rows(home) == {}


def test_doctor_verb(run_cli: Run) -> None:
    res = run_cli("doctor", "--json")
    assert res.code == 0
    assert set(res.json["isolation"]) == {"none", "limited", "strict"}
    assert res.json["isolation"]["none"] == "ok"


# -- exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--json",),
        ("frobnicate", "--json"),
        ("info", "--json"),
        ("call", "acme.demo", "--json"),
        ("list", "--bogus", "--json"),
    ],
)
def test_usage_errors_exit_2(run_cli: Run, args: tuple[str, ...]) -> None:
    assert_error(run_cli(*args), 2, "usage")


def test_usage_error_human(run_cli: Run) -> None:
    res = run_cli()
    assert res.code == 2
    assert res.out == ""
    assert res.err.startswith("corral: error:")
    assert "Traceback" not in res.err


def test_not_found_exit_1(run_cli: Run) -> None:
    error = assert_error(run_cli("info", "no.such", "--json"), 1, "not_found")
    assert "no.such" in error["message"]
    assert_error(run_cli("enable", "no.such", "--json"), 1, "not_found")
    assert_error(run_cli("call", "no.such", "x", "--json"), 1, "not_found")
    assert_error(run_cli("add", "/definitely/not/here", "--json"), 1, "not_found")


def test_call_errors(run_cli: Run, tmp_path: Path, home: Path, workspace: Path) -> None:
    micro = [{"id": "acme.demo.same", "type": "transformer",
              "handler": f"{module_name('acme.demo')}:echo"}]
    register(home, workspace, make_plugin(tmp_path, "acme.demo", micro=micro),
             enable=("acme.demo",))
    res = run_cli("call", "acme.demo", "acme.demo.same", "--input", '{"m": 1}', "--json")
    assert res.json == {"result": {"m": 1}}
    error = assert_error(run_cli("call", "acme.demo", "echo", "--input", "{bad", "--json"), 2,
                         "usage")
    assert "--input" in error["message"]
    error = assert_error(run_cli("call", "acme.demo", "echo", "--input", "NaN", "--json"), 2,
                         "usage")
    assert "finite" in error["message"]
    error = assert_error(run_cli("call", "acme.demo", "nope", "--json"), 1, "not_found")
    assert "echo" in error["message"]

    error = assert_error(run_cli("call", "acme.demo", "boom", "--json"), 5, "plugin_error")
    assert error["plugin"] == "acme.demo"
    assert "ZeroDivisionError" in error["message"]
    assert "Traceback" in error["traceback"]
    res = run_cli("call", "acme.demo", "boom")
    assert res.code == 5
    assert "ZeroDivisionError" in res.err
    assert "Traceback" in res.err

    assert_error(run_cli("call", "acme.demo", "nan", "--json"), 5, "plugin_error")
    res = run_cli("call", "acme.demo", "aecho", "--input", "[1]", "--json")
    assert res.json == {"result": {"async": [1]}}


def test_hook_failure_exit_5_and_host_keeps_working(
    run_cli: Run, tmp_path: Path, home: Path, workspace: Path
) -> None:
    mod = module_name("acme.bad")
    code = "class Plugin:\n    def on_enable(self, ctx):\n        raise OSError('disk on fire')\n"
    register(home, workspace,
             make_plugin(tmp_path, "acme.bad", files={f"{mod}.py": code}, exports={},
                         plugin={"entry": f"{mod}:Plugin"}),
             make_plugin(tmp_path, "acme.good"))
    error = assert_error(run_cli("enable", "acme.bad", "--json"), 5, "plugin_error")
    assert "disk on fire" in error["message"]
    assert run_cli("enable", "acme.good").code == 0
    assert run_cli("call", "acme.good", "echo", "--input", "3", "--json").json == {"result": 3}
    res = run_cli("info", "acme.bad", "--json")
    assert res.json["state"] == "failed"
    assert "disk on fire" in res.json["error"]["message"]


def test_denied_exit_4(run_cli: Run, tmp_path: Path, home: Path, workspace: Path) -> None:
    mod = module_name("acme.sec")
    src = make_plugin(tmp_path, "acme.sec", isolation="strict",
                      files={f"{mod}.py": "def leak(v, ctx):\n"
                                          "    return ctx.secrets.get('github-token')\n"},
                      exports={"leak": f"{mod}:leak"})
    assert run_cli("add", str(src)).code == 0
    res = run_cli("enable", "acme.sec", "--json")
    if sandbox_problem("strict") is not None:
        assert_error(res, 4, "policy_denied")
        return
    assert res.code == 0, res.out
    error = assert_error(run_cli("call", "acme.sec", "leak", "--json"), 4, "permission_denied")
    assert error["permission"] == "host-api:secrets:github-token"


def test_remove_needed_plugin_exit_2(
    run_cli: Run, tmp_path: Path, home: Path, workspace: Path
) -> None:
    register(home, workspace, make_plugin(tmp_path, "d.lib"),
             make_plugin(tmp_path, "d.app", dependencies={"d.lib": ""}))
    error = assert_error(run_cli("remove", "d.lib", "--json"), 2, "usage")
    assert "d.app" in error["message"]
    assert set(rows(home)) == {"d.lib", "d.app"}


# -- bad input: exit 3, the field or file named, nothing registered or written -------------------


def zip_with(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


MANIFEST = b'[plugin]\nid = "acme.arch"\nname = "A"\nversion = "1.0.0"\n'


def link_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def _symlinked(tmp_path: Path) -> list[Path]:
    outside = tmp_path / "outside.py"
    outside.write_text("def run(v, ctx):\n    return v\n")
    src = make_plugin(tmp_path, "acme.bad", files={}, exports={"run": "linked:run"})
    (src / "linked.py").symlink_to(outside)
    return [src]


BAD: dict[str, tuple[Callable[[Path], list[Path]], tuple[str, ...]]] = {
    "malformed-toml": (lambda t: [make_plugin(t, "acme.bad", toml='[plugin]\nid = "a\n')],
                       ("corral.toml", "line 2")),
    "missing-key": (lambda t: [make_plugin(
        t, "acme.bad", toml='[plugin]\nid = "acme.bad"\nname = "B"\n')], ("plugin.version",)),
    "unknown-key": (lambda t: [make_plugin(t, "acme.bad", plugin={"nmae": "x"})],
                    ("plugin.nmae", "did you mean 'name'")),
    "bad-id": (lambda t: [make_plugin(t, "acme.bad", plugin={"id": "Acme.Bad"})],
               ("plugin.id",)),
    "lookalike-id": (lambda t: [make_plugin(t, "acme.bad", plugin={"id": "\u0430cme.bad"})],
                     ("plugin.id", "U+0430")),
    "bad-version": (lambda t: [make_plugin(t, "acme.bad", version="one")], ("plugin.version",)),
    "bad-specifier": (lambda t: [make_plugin(t, "acme.bad",
                                             plugin={"requires-corral": "=>1"})],
                      ("plugin.requires-corral",)),
    "absurd-limit": (lambda t: [make_plugin(t, "acme.bad", sandbox={"memory-mb": 10**9})],
                     ("sandbox.memory-mb",)),
    "negative-limit": (lambda t: [make_plugin(t, "acme.bad", sandbox={"timeout-ms": -1})],
                       ("sandbox.timeout-ms", "-1")),
    "unknown-permission": (lambda t: [make_plugin(t, "acme.bad",
                                                  permissions={"network": ["a:1"]})],
                           ("permissions.network",)),
    "missing-module": (lambda t: [make_plugin(t, "acme.bad", exports={"run": "nowhere:run"})],
                       ("exports.run", "nowhere")),
    "missing-function": (lambda t: [make_plugin(t, "acme.bad",
                                                exports={"run": "cp_acme_bad:nothing"})],
                         ("exports.run", "nothing")),
    "outside-dir": (_symlinked, ("linked.py",)),
    "syntax-error": (lambda t: [make_plugin(t, "acme.bad", files={"cp_acme_bad.py": "def (:\n"},
                                            exports={"run": "cp_acme_bad:run"})],
                     ("cp_acme_bad.py", "exports.run")),
    "duplicate-id": (lambda t: [make_plugin(t / "dup", "acme.good")], ("acme.good",)),
    "cycle": (lambda t: [make_plugin(t, "cyc.a", dependencies={"cyc.b": ""}),
                         make_plugin(t, "cyc.b", dependencies={"cyc.a": ""})],
              ("cyc.a", "cyc.b", "cycle")),
    "missing-dependency": (lambda t: [make_plugin(t, "acme.bad",
                                                  dependencies={"acme.absent": ">=1,<2"})],
                           ("acme.absent", ">=1,<2")),
    "incompatible-host": (lambda t: [make_plugin(t, "acme.bad",
                                                 plugin={"requires-corral": ">=99"})],
                          (">=99",)),
    "archive-traversal": (lambda t: [zip_with(t / "trav.corral", [
        ("corral.toml", MANIFEST), ("../evil.py", b"x = 1\n")])], ("trav.corral", "evil.py")),
    "archive-absolute": (lambda t: [zip_with(t / "abs.corral", [
        ("corral.toml", MANIFEST), ("/tmp/evil.py", b"x = 1\n")])], ("abs.corral", "evil.py")),
    "archive-link": (lambda t: [zip_with(t / "link.corral", [
        ("corral.toml", MANIFEST), link_entry("evil.py", "/etc/passwd")])],
                     ("link.corral", "evil.py")),
    "archive-bomb": (lambda t: [zip_with(t / "bomb.corral", [
        ("corral.toml", MANIFEST), ("zeros.bin", b"\0" * (4 * 1024 * 1024))])],
                     ("bomb.corral",)),
    "not-a-zip": (lambda t: [t / "plain.corral"], ("plain.corral",)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_3(
    run_cli: Run, tmp_path: Path, home: Path, workspace: Path, case: str
) -> None:
    (tmp_path / "plain.corral").write_text("this is not a zip file\n")
    build, expected = BAD[case]
    sources = build(tmp_path)
    register(home, workspace, make_plugin(tmp_path / "good", "acme.good"), enable=("acme.good",))
    before_rows = rows(home)
    before_plugins = snapshot(home / "plugins")
    outside = {p for p in snapshot(tmp_path) if not p.startswith("home")}

    res = run_cli("add", *map(str, sources), "--json")

    error = assert_error(res, 3, "invalid")
    for needle in expected:
        assert needle in error["message"], (needle, error)
    assert rows(home) == before_rows
    assert snapshot(home / "plugins") == before_plugins
    assert {p for p in snapshot(tmp_path) if not p.startswith("home")} == outside
    # The host keeps working.
    with Host(home=home, workspace=workspace) as h:
        assert h.call("acme.good", "echo", 1) == 1


def test_bad_input_human_message(run_cli: Run, tmp_path: Path) -> None:
    res = run_cli("add", str(make_plugin(tmp_path, "acme.bad", sandbox={"memory-mb": -5})))
    assert res.code == 3
    assert res.out == ""
    assert "sandbox.memory-mb: must be 16..65536, got -5" in res.err
    assert "corral.toml" in res.err


def test_validate_hostile_archive_leaves_no_temp_files(run_cli: Run, tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "trav.corral",
                       [("corral.toml", MANIFEST), ("../evil.py", b"x = 1\n")])
    res = run_cli("validate", str(archive), "--json")
    assert res.code == 3
    assert res.json["ok"] is False
    assert "evil.py" in res.json["errors"][0]["message"]
    good = tmp_path / "good.corral"
    from corral._disk.archive import pack_directory

    pack_directory(make_plugin(tmp_path, "acme.packed"), good)
    res = run_cli("validate", str(good), "--json")
    assert res.code == 0, res.out
    assert res.json["plugin"] == "acme.packed"
    assert list((tmp_path / "systmp").iterdir()) == []
    assert not (tmp_path / "evil.py").exists()
