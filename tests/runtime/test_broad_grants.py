"""Grants refused by default at ``corral add``: writing ``/``, the home, plugins' folders,
reading the home's database and keys; ``[policy] allow-broad-grants`` lets them through."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult
from helpers.plugins import make_plugin

from corral import Host, PolicyDenied
from corral._model.grants import broad_grants
from corral._model.permissions import Permissions


def test_add_with_fs_write_root_is_policy_denied(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    src = make_plugin(tmp_path, "acme.wide", permissions={"fs-write": ["/"]})
    res = run_cli("add", str(src), "--json")
    assert res.code == 4, res.err
    error = res.json["error"]
    assert error["code"] == "policy_denied"
    assert "fs-write:/ " in error["message"]
    assert error["grants"] == ["fs-write:/"]
    assert error["keys"] == ["permissions.fs-write[0]"]
    assert "allow-broad-grants" in error["message"]
    assert "acme.wide" not in run_cli("list").out


def test_add_with_the_setting_is_accepted(
    tmp_path: Path, home: Path, run_cli: Callable[..., CliResult]
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text("[policy]\nallow-broad-grants = true\n")
    src = make_plugin(tmp_path, "acme.wide", permissions={"fs-write": ["/"]})
    res = run_cli("add", str(src), "--json")
    assert res.code == 0, res.err
    assert [p["id"] for p in res.json["registered"]] == ["acme.wide"]


def test_a_malformed_setting_is_named(
    tmp_path: Path, home: Path, run_cli: Callable[..., CliResult]
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text('[policy]\nallow-broad-grants = "yes"\n')
    res = run_cli("add", str(make_plugin(tmp_path, "acme.fine")), "--json")
    assert res.code == 3
    assert "policy.allow-broad-grants" in res.json["error"]["message"]


@pytest.mark.parametrize(("kind", "entry", "why"), [
    ("fs-read", "{home}/corral.db", "corral.db"),
    ("fs-read", "{home}/keys", "keys"),
    ("fs-read", "{home}/secrets.json", "secrets.json"),
    ("fs-read", "{home}", "corral.db"),
    ("fs-write", "{home}", "corral home"),
    ("fs-write", "{home}/plugins/acme.other", "inside the corral home"),
    ("fs-write", "{home}/data/acme.other", "inside the corral home"),
])
def test_literal_paths_into_the_home_are_refused(
    host: Host, tmp_path: Path, kind: str, entry: str, why: str
) -> None:
    # There is no {home} placeholder: a literal absolute path into the home is what reaches it.
    grant = entry.replace("{home}", str(host.home))
    src = make_plugin(tmp_path, "acme.nosy", permissions={kind: [grant]})
    with pytest.raises(PolicyDenied, match=why) as info:
        host.register(src)
    assert info.value.details["grants"] == [f"{kind}:{grant}"]
    assert "acme.nosy" not in {i.id for i in host.list()}


def test_own_folders_and_ordinary_paths_stay_allowed(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, "acme.tidy", permissions={
        "fs-read": ["{plugin}", "{data}", "/usr/share", "/etc/ssl"],
        "fs-write": ["{data}", "{cache}/x", "{tmp}", "{workspace}", "/srv/out"]})
    assert [i.id for i in host.register(src)] == ["acme.tidy"]


def test_writing_the_users_home_or_a_parent_of_the_corral_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h" / "corral"
    user = tmp_path / "user"
    perms = Permissions(fs_write=(str(tmp_path / "h"), str(user), str(user / "projects")),
                        fs_read=("/",))
    found = broad_grants(perms, homes=[home], user_home=user)
    assert [key for key, _, _ in found] == [
        "permissions.fs-write[0]", "permissions.fs-write[1]", "permissions.fs-read[0]"]


def test_requires_corral_errors_name_the_manifest_key(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    src = make_plugin(tmp_path, "acme.future", plugin={"requires-corral": ">=99"})
    res = run_cli("add", str(src), "--json")
    assert res.code == 3
    assert "plugin.requires-corral" in res.json["error"]["message"]
    assert res.json["error"]["key"] == "plugin.requires-corral"
    assert "requires corral" not in res.json["error"]["message"]


def test_a_micro_handler_that_is_not_callable_names_its_manifest_key(
    host: Host, tmp_path: Path
) -> None:
    from corral import InvalidPluginError

    src = make_plugin(tmp_path, "acme.odd", files={"cp_acme_odd.py": "semver = 3\n"}, exports={},
                      micro=[{"id": "acme.odd.semver", "type": "validator",
                              "handler": "cp_acme_odd:semver"}])
    host.register(src)
    with pytest.raises(InvalidPluginError, match=r"micro\[0\]\.handler") as info:
        host.enable("acme.odd")
    assert info.value.details["key"] == "micro[0].handler"
