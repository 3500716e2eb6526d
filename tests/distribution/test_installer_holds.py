"""The installer holds what it has not seen: plugins new to the home, other sources, other keys.

An attacker who controls a dependency's name (or a second source) tries to get
code into the home through ``update``/``install`` without anyone seeing its
permissions.  Everything runs for real: folder sources of real archives, real
hosts and sandboxes, the real command line in-process (``corral._cli.main``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers.install import publish, rows
from helpers.plugins import module_name

from corral._cli.main import main
from corral._distribution.install import DirectorySource, Installer
from corral._errors import PolicyDenied
from corral._model.release import Release
from corral._services.sandboxed import sandbox_problem


def cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, Any, str]:
    """Run a verb in-process: exit code, the JSON document (if ``--json``), stderr."""
    code = main(["--home", str(home), *args])
    out = capsys.readouterr()
    doc = json.loads(out.out) if "--json" in args and out.out else out.out
    return code, doc, out.err


def evil_code(marks: Path) -> str:
    """Module code that leaves a mark (named by its pid) on import and in ``on_load``."""
    return f"""
import os
from pathlib import Path

def _mark(what):
    try:
        Path({str(marks)!r}, f"{{what}}-{{os.getpid()}}").write_text("ran")
    except OSError:
        pass

_mark("import")

class Plugin:
    def on_load(self, ctx):
        _mark("on_load")

def version(value, ctx):
    return "evil"
"""


def parent_code(pid: int) -> str:
    """A self-test that fails if it runs in the installing process (``pid``)."""
    return f"""
import os

def version(value, ctx):
    return "2"

def self_test(value, ctx):
    return {{"ok": os.getpid() != {pid}}}
"""


def evil_release(tmp_path: Path, repo: Path, marks: Path) -> None:
    publish(tmp_path, repo, "acme.evil", "1.0.0", code=evil_code(marks), entry=True,
            exports={"version": f"{module_name('acme.evil')}:version"},
            isolation="none", permissions={"fs-write": ["/srv"]})


def parent_release(tmp_path: Path, repo: Path, version: str, **deps: str) -> None:
    mod = module_name("acme.p")
    publish(tmp_path, repo, "acme.p", version, code=parent_code(os.getpid()),
            deps=dict(deps) or None,
            exports={"version": f"{mod}:version", "self-test": f"{mod}:self_test"})


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def test_update_bringing_a_new_plugin_is_held_until_accepted(
    tmp_path: Path, home: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if sandbox_problem("limited"):
        pytest.skip("self-tests need a sandbox")
    repo = tmp_path / "repo"
    parent_release(tmp_path, repo, "1.0.0")
    Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.p"])
    evil_release(tmp_path, repo, marks)
    parent_release(tmp_path, repo, "1.1.0", **{"acme.evil": ">=1"})
    lock_before = (home / "corral.lock").read_bytes()

    code, doc, _ = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned",
                       "--json")
    assert code == 4
    held = {h["id"]: h for h in doc["held"]}
    assert set(held) == {"acme.p", "acme.evil"}
    assert held["acme.evil"]["new"] is True
    assert held["acme.evil"]["required_by"] == ["acme.p"]
    assert held["acme.evil"]["permissions"] == {"fs-write": ["/srv"], "isolation": ["none"]}
    assert held["acme.p"]["new_dependencies"] == ["acme.evil"]
    assert doc["applied"] is None
    assert (home / "corral.lock").read_bytes() == lock_before
    assert "acme.evil" not in rows(home)
    assert rows(home)["acme.p"][0] == "1.0.0"
    assert list(marks.iterdir()) == []  # not imported, no hook, no self-test

    code, _, err = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned")
    assert code == 4
    assert ("held: acme.evil 1.0.0 is new to this home (required by acme.p) and asks for "
            "+fs-write: /srv; +isolation: none; none of its code ran") in err
    assert "asks for more permissions" not in err  # acme.p itself asks for nothing more
    assert list(marks.iterdir()) == []

    code, doc, _ = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned",
                       "--accept-permissions", "--json")
    assert code == 0, doc
    assert doc["held"] == []
    assert doc["notes"] == []  # the self-test ran (sandboxed), it was not skipped
    assert doc["applied"]["added"] == [{"id": "acme.evil", "version": "1.0.0"}]
    assert doc["applied"]["upgraded"] == [{"id": "acme.p", "from": "1.0.0", "to": "1.1.0"}]
    assert rows(home)["acme.p"][0] == "1.1.0"
    assert rows(home)["acme.evil"][0] == "1.0.0"
    # the self-test passed, so it did not run here; neither did acme.evil's code
    assert not [m for m in marks.iterdir() if m.name.endswith(f"-{os.getpid()}")]


def test_update_without_new_plugins_or_wider_permissions_goes_through(
    tmp_path: Path, home: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    evil_release(tmp_path, repo, marks)
    publish(tmp_path, repo, "acme.q", "1.0.0", deps={"acme.evil": ">=1"})
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.q"])  # asked for: the user installs it and what it needs
    publish(tmp_path, repo, "acme.q", "1.1.0", deps={"acme.evil": ">=1"})
    code, doc, err = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned",
                         "--json")
    assert code == 0, err
    assert doc["held"] == []
    assert doc["applied"]["upgraded"] == [{"id": "acme.q", "from": "1.0.0", "to": "1.1.0"}]


def test_install_of_a_new_version_bringing_a_new_plugin_is_held(
    tmp_path: Path, home: Path, marks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.r", "1.0.0")
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.r"])
    evil_release(tmp_path, repo, marks)
    publish(tmp_path, repo, "acme.r", "2.0.0", deps={"acme.evil": ">=1"})
    lock_before = (home / "corral.lock").read_bytes()
    with pytest.raises(PolicyDenied, match=r"acme\.evil 1\.0\.0 \(required by acme\.r: "
                       r"fs-write: /srv; isolation: none\)") as info:
        inst.install(["acme.r@2.0.0"])
    assert info.value.code == "policy_denied"
    assert info.value.details["held"][0]["permissions"] == {
        "fs-write": ["/srv"], "isolation": ["none"]}
    assert (home / "corral.lock").read_bytes() == lock_before
    assert not [p for p in (home / "store").iterdir() if not p.name.startswith(".")
                and p.name.removesuffix(".json") not in lock_before.decode()]
    code, doc, _ = cli(capsys, home, "install", "acme.r@2.0.0", "--source", str(repo),
                       "--allow-unsigned", "--json")
    assert code == 4
    assert doc["error"]["code"] == "policy_denied"
    assert list(marks.iterdir()) == []
    change = inst.install(["acme.r@2.0.0"], accept_permissions=True)
    assert change.changes["added"] == [{"id": "acme.evil", "version": "1.0.0"}]
    assert list(marks.iterdir()) == []  # installing runs no code; enabling would

    # a fresh install of a plugin with dependencies is what the user asked for
    publish(tmp_path, repo, "acme.s", "1.0.0", deps={"acme.t": ">=1"})
    publish(tmp_path, repo, "acme.t", "1.0.0")
    assert inst.install(["acme.s"]).changes["added"] == [
        {"id": "acme.s", "version": "1.0.0"}, {"id": "acme.t", "version": "1.0.0"}]


def test_update_never_switches_source_without_the_flag(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, impostor = tmp_path / "repo", tmp_path / "impostor"
    publish(tmp_path, repo, "acme.a", "1.0.0")
    Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.a"])
    publish(tmp_path, impostor, "acme.a", "9.0.0")  # same name, another source
    lock_before = (home / "corral.lock").read_bytes()
    code, doc, _ = cli(capsys, home, "update", "--source", str(impostor), "--allow-unsigned",
                       "--json")
    assert code == 4
    err = doc["error"]
    assert err["code"] == "policy_denied"
    assert err["plugin"] == "acme.a"
    assert (err["installed_source"], err["offered_source"]) == (str(repo), str(impostor))
    assert f"it was installed from {repo}, version 9.0.0 comes from {impostor}" in err["message"]
    assert "--allow-source-change" in err["message"]
    assert (home / "corral.lock").read_bytes() == lock_before
    assert rows(home)["acme.a"][0] == "1.0.0"
    with pytest.raises(PolicyDenied, match="another source"):
        Installer(home, DirectorySource(impostor), allow_unsigned=True).install(["acme.a@9"])

    # the recorded source itself still updates freely
    publish(tmp_path, repo, "acme.a", "1.1.0")
    code, doc, _ = cli(capsys, home, "update", "--allow-unsigned", "--json")
    assert code == 0
    assert rows(home)["acme.a"][0] == "1.1.0"

    code, doc, _ = cli(capsys, home, "update", "--source", str(impostor), "--allow-unsigned",
                       "--allow-source-change", "--json")
    assert code == 0
    assert doc["applied"]["upgraded"] == [{"id": "acme.a", "from": "1.1.0", "to": "9.0.0"}]
    lock = json.loads((home / "corral.lock").read_text())
    assert lock["plugins"]["acme.a"]["source"] == str(impostor)  # remembered from now on


def test_update_never_switches_signing_key_without_the_flag(tmp_path: Path, home: Path) -> None:
    from corral._distribution.signing import generate_key
    from corral._distribution.trust import TrustStore

    repo = tmp_path / "repo"
    ours = generate_key("ours", tmp_path / "keys")
    theirs = generate_key("theirs", tmp_path / "keys")
    trust = TrustStore(home)
    trust.trust(ours.public_key_b64, "ours")
    trust.trust(theirs.public_key_b64, "theirs")  # trusted, but for other plugins
    publish(tmp_path, repo, "acme.k", "1.0.0", key=ours)
    inst = Installer(home, DirectorySource(repo))
    inst.install(["acme.k"])
    publish(tmp_path, repo, "acme.k", "1.0.1", key=ours)
    assert inst.update().change is not None  # same key: a positive control
    publish(tmp_path, repo, "acme.k", "1.1.0", key=theirs)
    with pytest.raises(PolicyDenied, match=rf"signed by key {ours.keyid} \(ours\), version "
                       rf"1\.1\.0 is signed by key {theirs.keyid} \(theirs\)") as info:
        inst.update()
    assert info.value.details["installed_keyid"] == ours.keyid
    assert rows(home)["acme.k"][0] == "1.0.1"
    result = inst.update(allow_source_change=True)
    assert result.change is not None
    lock = json.loads((home / "corral.lock").read_text())
    assert lock["plugins"]["acme.k"]["signature"]["keyid"] == theirs.keyid


class _Published:
    """A folder source whose index also names the publishing account (as a registry does)."""

    def __init__(self, folder: Path, publisher: str) -> None:
        self.inner = DirectorySource(folder)
        self.location = self.inner.location
        self.publisher = publisher

    def releases(self, plugin_id: str) -> list[Release]:
        return [dataclasses.replace(r, publisher=self.publisher)
                for r in self.inner.releases(plugin_id)]

    def fetch(self, release: Release, dest_dir: Path, progress: Any = None) -> Path:
        return self.inner.fetch(release, dest_dir, progress)


def test_update_never_switches_publisher_without_the_flag(tmp_path: Path, home: Path) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.m", "1.0.0")
    Installer(home, _Published(repo, "acme-corp"), allow_unsigned=True).install(["acme.m"])
    lock = json.loads((home / "corral.lock").read_text())
    assert lock["plugins"]["acme.m"]["publisher"] == "acme-corp"
    publish(tmp_path, repo, "acme.m", "1.1.0")
    assert Installer(home, _Published(repo, "acme-corp"), allow_unsigned=True).update().change
    publish(tmp_path, repo, "acme.m", "1.2.0")
    squatter = Installer(home, _Published(repo, "squatter"), allow_unsigned=True)
    with pytest.raises(PolicyDenied, match=r"it was published by acme-corp, version 1\.2\.0 "
                       r"by squatter") as info:
        squatter.update()
    assert info.value.details["offered_publisher"] == "squatter"
    assert rows(home)["acme.m"][0] == "1.1.0"
    assert squatter.update(allow_source_change=True).change is not None
    lock = json.loads((home / "corral.lock").read_text())
    assert lock["plugins"]["acme.m"]["publisher"] == "squatter"


def test_skipped_versions_name_failed_plans_but_not_the_installed_version() -> None:
    from corral._distribution.install.update import skipped_versions

    releases = {"acme.a": Release("acme.a", "1.1.0"), "acme.b": Release("acme.b", "2.0.0"),
                "acme.c": Release("acme.c", "3.0.0")}
    old = {"acme.a": {"version": "1.0.0"}, "acme.b": {"version": "2.0.0"}}
    failed = {("acme.a", "1.1.0"): "its self-test failed", ("acme.b", "2.0.0"): "crashed once",
              ("acme.c", "2.9.0"): "an older failure"}
    # acme.b 2.0.0 is what runs now: keeping it is not skipping it; acme.c 3.0.0 never failed
    assert skipped_versions(releases, old, failed) == [
        {"id": "acme.a", "version": "1.1.0", "reason": "its self-test failed"}]


def test_avoid_failed_excludes_only_failed_versions_of_installed_plugins(tmp_path: Path) -> None:
    from corral._distribution.install.update import avoid_failed
    from corral._model.release import Requirement

    repo = tmp_path / "repo"
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        publish(tmp_path, repo, "acme.a", version)
    publish(tmp_path, repo, "acme.n", "1.0.0")
    old = {"acme.a": {"version": "1.0.0"}}
    failed = {("acme.a", "1.2.0"): "its self-test failed",
              ("acme.a", "1.0.0"): "failed once, runs now",  # the installed one: kept
              ("acme.n", "1.0.0"): "not installed here"}  # nothing to keep: not excluded
    releases, more = avoid_failed(failed, old, [Requirement("acme.a", "")],
                                  DirectorySource(repo), {"acme.a": "1.0.0"}, ["acme.a"])
    assert releases["acme.a"].version == "1.1.0"
    assert more == [Requirement("acme.a", ""), Requirement("acme.a", "!=1.2.0")]


def test_a_held_update_does_not_hold_back_the_others(tmp_path: Path, home: Path) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.a", "1.0.0")
    publish(tmp_path, repo, "acme.b", "1.0.0")
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.a", "acme.b"])
    publish(tmp_path, repo, "acme.a", "1.1.0", permissions={"fs-write": ["/srv"]})
    publish(tmp_path, repo, "acme.b", "1.1.0")
    result = inst.update()
    assert [h["id"] for h in result.held] == ["acme.a"]
    assert {p: str(e["version"]) for p, e in json.loads(
        (home / "corral.lock").read_text())["plugins"].items()} == {
        "acme.a": "1.0.0", "acme.b": "1.1.0"}
