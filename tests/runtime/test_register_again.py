"""Registering a registered plugin again: a no-op, an upgrade in place, or a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.hosts import close_quietly, read_lines, snapshot
from helpers.plugins import ECHO_CODE, HOOKS_CODE, make_plugin, module_name

from corral import Host, InvalidPluginError, UsageError
from corral._disk.archive import pack_directory
from corral._disk.tree import tree_digest
from corral._runtime.database import HostDatabase

PID = "acme.again"
V2_ECHO = '\n\ndef echo(value, ctx):\n    return {"v2": value}\n'


def hooks(home: Path) -> list[str]:
    return [line.split(":", 1)[1] for line in read_lines(home / "data" / PID / "hooks.log")]


def test_second_start_registers_the_same_plugin_again(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    src = make_plugin(tmp_path, PID, entry=True)
    first = Host(home=home, workspace=workspace, hook_timeout=1.0)
    try:
        [info] = first.register(src)
        first.enable(PID)
        (home / "data" / PID / "kept.txt").write_text("mine")
        before = snapshot(home / "plugins")
        registered_at = HostDatabase(home / "corral.db").get(PID)
    finally:
        close_quietly(first)
    second = Host(home=home, workspace=workspace, hook_timeout=1.0)
    try:
        [again] = second.register(src)  # the README's code, on the app's second start
        assert type(again) is type(info)
        assert again == second.list()[0]
        assert (again.id, again.version, again.path) == (info.id, info.version, info.path)
        assert again.state == "enabled"  # as recorded: nothing was re-registered
        assert snapshot(home / "plugins") == before
        row = HostDatabase(home / "corral.db").get(PID)
        assert row is not None
        assert registered_at is not None
        assert row.registered_at == registered_at.registered_at
        assert (home / "data" / PID / "kept.txt").read_text() == "mine"
        assert second.start() == [PID]
        assert second.call(PID, "echo", 1) == 1
    finally:
        close_quietly(second)


def test_same_archive_again_is_a_no_op(host: Host, tmp_path: Path) -> None:
    archive = pack_directory(make_plugin(tmp_path, PID), tmp_path / "again.corral")
    [a] = host.register(archive)
    [b] = host.register(archive)
    assert a == b


def test_newer_version_upgrades_in_place_with_hooks(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID, entry=True)
    host.register(src)
    host.enable(PID)
    (host.home / "data" / PID / "kept.txt").write_text("mine")
    assert host.call(PID, "echo", 1) == 1
    make_plugin(tmp_path, PID, entry=True, version="1.1.0")
    with open(src / f"{module_name(PID)}.py", "a") as f:
        f.write(V2_ECHO)
    [info] = host.register(src)
    assert info.version == "1.1.0"
    assert info.state == "enabled"
    assert host.info(PID)["version"] == "1.1.0"
    assert host.call(PID, "echo", 1) == {"v2": 1}
    assert hooks(host.home) == [
        "on_load", "on_enable", "on_disable", "on_unload", "on_load", "on_enable"
    ]
    assert (host.home / "data" / PID / "kept.txt").read_text() == "mine"
    assert {p.name for p in (host.home / "plugins").iterdir()} == {PID}
    row = HostDatabase(host.home / "corral.db").get(PID)
    assert row is not None
    assert row.digest == tree_digest(host.home / "plugins" / PID)


def test_upgrade_of_a_plugin_not_active_here_keeps_its_recorded_state(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    src = make_plugin(tmp_path, PID, entry=True)
    h = Host(home=home, workspace=workspace, hook_timeout=1.0)
    try:
        h.register(src)
        h.enable(PID)
    finally:
        close_quietly(h)
    make_plugin(tmp_path, PID, entry=True, version="2.0.0")
    h = Host(home=home, workspace=workspace, hook_timeout=1.0)
    try:
        [info] = h.register(src)
        assert (info.version, info.state) == ("2.0.0", "enabled")
        assert h.start() == [PID]
    finally:
        close_quietly(h)


def test_same_version_with_other_files_is_refused(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID)
    host.register(src)
    (src / "extra.txt").write_text("new")
    before = snapshot(host.home / "plugins")
    with pytest.raises(InvalidPluginError) as err:
        host.register(src)
    msg = err.value.message
    assert "other files" in msg
    assert "bump plugin.version" in msg
    assert f"corral remove {PID}" in msg
    assert snapshot(host.home / "plugins") == before
    assert not any(p.name.startswith(".staging-") for p in (host.home / "plugins").iterdir())


def test_another_source_is_refused(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path / "a", PID))
    other = make_plugin(tmp_path / "b", PID, version="2.0.0")
    with pytest.raises(InvalidPluginError) as err:
        host.register(other)
    msg = err.value.message
    assert str(tmp_path / "a" / "src" / PID) in msg
    assert (
        f"corral remove {PID}` (or Host.unregister('{PID}')) first, then `corral add {other}`"
    ) in msg
    assert host.info(PID)["version"] == "1.0.0"


def test_older_version_is_refused(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID, version="2.0.0")
    host.register(src)
    make_plugin(tmp_path, PID, version="1.0.0")
    with pytest.raises(InvalidPluginError, match=f"older 1.0.0.*corral remove {PID}"):
        host.register(src)
    assert host.info(PID)["version"] == "2.0.0"


def test_linked_then_copied_is_refused(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID)
    host.register(src, link=True)
    with pytest.raises(InvalidPluginError, match=f"linked.*corral remove {PID}"):
        host.register(src)


def test_link_runs_from_the_folder(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID)
    [info] = host.register(src, link=True)
    assert info.linked
    assert Path(info.path) == src
    assert info.to_dict()["linked"] is True
    assert host.info(PID)["linked"] is True
    assert not (host.home / "plugins" / PID).exists()
    host.enable(PID)
    assert host.call(PID, "echo", 1) == 1
    with open(src / f"{module_name(PID)}.py", "a") as f:
        f.write(V2_ECHO)
    assert host.register(src, link=True) == [host.list()[0]]  # linked: always a no-op
    assert host.reload(PID).state == "enabled"
    assert host.call(PID, "echo", 1) == {"v2": 1}
    host.unregister(PID)
    assert (src / "corral.toml").is_file()  # the author's folder is never deleted


def test_link_of_an_archive_is_usage(host: Host, tmp_path: Path) -> None:
    archive = pack_directory(make_plugin(tmp_path, PID), tmp_path / "a.corral")
    with pytest.raises(UsageError, match="only a directory can be linked"):
        host.register(archive, link=True)


def test_errors_name_the_users_archive_not_the_staging_copy(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID, files={f"{module_name(PID)}.py": ECHO_CODE + HOOKS_CODE},
                      exports={"echo": "nowhere:echo"})
    archive = pack_directory(src, tmp_path / "broken.corral")
    for source in (src, archive):
        with pytest.raises(InvalidPluginError) as err:
            host.register(source)
        text = str(err.value) + repr(err.value.to_dict())
        assert ".staging-" not in text
        assert str(source) in text
