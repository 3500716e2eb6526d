"""The atomic installer as a library: store, generations, corral.lock, updates, rollback.

Every failure case snapshots the home (files, modes, contents) and the host
database rows before and after, and asserts they are identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import close_quietly
from helpers.install import publish, rows, snapshot, versioned
from helpers.plugins import make_plugin, module_name

from corral._distribution.install import DirectorySource, Installer, permission_changes
from corral._errors import (
    ConflictError,
    InvalidPluginError,
    LifecycleError,
    NotFoundError,
    PluginError,
    SignatureInvalid,
    TransferError,
    UsageError,
)
from corral._host import Host
from corral._model.release import Release


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def inst(home: Path, repo: Path) -> Installer:
    repo.mkdir(parents=True, exist_ok=True)
    return Installer(home, DirectorySource(repo), allow_unsigned=True)


def test_install_resolves_stores_sealed_and_registers(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    for i in range(3):
        publish(tmp_path, repo, f"acme.dep{i}", "1.0.0")
    publish(tmp_path, repo, "acme.dep0", "1.5.0")
    publish(tmp_path, repo, "acme.app", "1.0.0", {f"acme.dep{i}": ">=1,<2" for i in range(3)})
    change = inst.install(["acme.app"])
    assert change.changed
    assert change.generation == 1
    assert [a["id"] for a in change.changes["added"]] == [
        "acme.app", "acme.dep0", "acme.dep1", "acme.dep2"]

    lock = json.loads((home / "corral.lock").read_text())
    assert lock["lock-version"] == 1
    assert lock["generation"] == 1
    assert lock["parent"] is None
    assert list(lock) == sorted(lock)
    assert lock["plugins"]["acme.dep0"]["version"] == "1.5.0"
    assert lock["plugins"]["acme.app"]["requested"] is True
    assert lock["plugins"]["acme.dep1"]["requested"] is False
    assert lock["plugins"]["acme.app"]["source"] == str(repo)
    app_sha = hashlib.sha256((repo / "acme.app-1.0.0.corral").read_bytes()).hexdigest()
    assert lock["plugins"]["acme.app"]["sha256"] == app_sha
    gen1 = json.loads((home / "generations" / "1.json").read_text())
    assert gen1["plugins"] == lock["plugins"]

    tree = home / "store" / app_sha
    assert (tree / "corral.toml").is_file()
    assert stat.S_IMODE(tree.stat().st_mode) == 0o555
    assert stat.S_IMODE((tree / "corral.toml").stat().st_mode) == 0o444
    assert not list((home / "store").glob(".tmp-*"))

    registered = rows(home)
    assert set(registered) == set(lock["plugins"])
    assert registered["acme.app"] == ("1.0.0", str(tree), "installed", "registered")

    again = inst.install(["acme.app"])
    assert not again.changed
    assert again.generation == 1
    assert not (home / "generations" / "2.json").exists()


def test_installed_plugin_runs(tmp_path: Path, home: Path, repo: Path, inst: Installer) -> None:
    publish(tmp_path, repo, "acme.v", "1.0.0", code=versioned("1"))
    inst.install(["acme.v"])
    with Host(home=home) as host:
        host.enable("acme.v")
        assert host.call("acme.v", "version") == "1"


def test_unsigned_needs_allow_unsigned(tmp_path: Path, home: Path, repo: Path) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    with pytest.raises(SignatureInvalid, match=r"acme\.a 1\.0\.0 is not signed"):
        Installer(home, DirectorySource(repo)).install(["acme.a"])
    assert not (home / "corral.lock").exists()
    assert not [p for p in (home / "store").iterdir()]


def test_unknown_plugin_and_conflict(tmp_path: Path, repo: Path, inst: Installer) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0", {"acme.b": ">=2"})
    publish(tmp_path, repo, "acme.b", "1.0.0")
    with pytest.raises(NotFoundError, match=r"acme\.zzz"):
        inst.install(["acme.zzz"])
    with pytest.raises(ConflictError):
        inst.install(["acme.a"])
    assert inst.current() is None


def test_uninstall_drops_unneeded_dependencies(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.lib", "1.0.0")
    publish(tmp_path, repo, "acme.a", "1.0.0", {"acme.lib": ">=1"})
    publish(tmp_path, repo, "acme.b", "1.0.0", {"acme.lib": ">=1"})
    inst.install(["acme.a", "acme.b"])
    with pytest.raises(LifecycleError, match=r"needed by acme\.a, acme\.b"):
        inst.uninstall(["acme.lib"])
    with pytest.raises(NotFoundError):
        inst.uninstall(["acme.nope"])
    inst.uninstall(["acme.a"])
    assert set(rows(home)) == {"acme.b", "acme.lib"}
    change = inst.uninstall(["acme.b"])
    assert {r["id"] for r in change.changes["removed"]} == {"acme.b", "acme.lib"}
    assert rows(home) == {}
    current = inst.current()
    assert current is not None
    assert current.plugins == {}


def test_update_keeps_enabled_plugin_enabled_on_new_version(
    tmp_path: Path, home: Path, repo: Path
) -> None:
    publish(tmp_path, repo, "acme.v", "1.0.0", code=versioned("1"))
    host = Host(home=home)
    try:
        inst = Installer(home, DirectorySource(repo), allow_unsigned=True, host=host)
        inst.install(["acme.v"])
        host.enable("acme.v")
        assert host.call("acme.v", "version") == "1"
        publish(tmp_path, repo, "acme.v", "2.0.0", code=versioned("2"))
        checked = inst.update(check=True)
        assert [(a["id"], a["installed"], a["available"]) for a in checked.available] == [
            ("acme.v", "1.0.0", "2.0.0")]
        assert checked.change is None
        cur = inst.current()
        assert cur is not None
        assert cur.number == 1
        result = inst.update()
        assert result.change is not None
        assert result.change.generation == 2
        assert host.call("acme.v", "version") == "2"
        assert host.info("acme.v")["state"] == "enabled"
        assert rows(home)["acme.v"][0] == "2.0.0"
        inst.rollback()
        assert host.call("acme.v", "version") == "1"
        assert rows(home)["acme.v"][3] == "enabled"
    finally:
        close_quietly(host)


def test_update_widening_permissions_is_held(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.p", "1.0.0")
    inst.install(["acme.p"])
    publish(tmp_path, repo, "acme.p", "1.1.0", permissions={"env": ["LANG"]})
    before = snapshot(home)
    listed = inst.update(check=True)
    assert listed.available[0]["permissions"] == {"env": ["LANG"]}
    assert snapshot(home) == before  # --check downloads nothing
    result = inst.update()
    assert result.change is None
    assert [h["id"] for h in result.held] == ["acme.p"]
    assert result.held[0]["permissions"] == {"env": ["LANG"]}
    assert rows(home)["acme.p"][0] == "1.0.0"
    accepted = inst.update(accept_permissions=True)
    assert accepted.change is not None
    assert not accepted.held
    assert rows(home)["acme.p"][0] == "1.1.0"


def test_permission_changes_sees_weaker_isolation() -> None:
    assert permission_changes({}, {}, "strict", "none") == {"isolation": ["strict -> none"]}
    assert permission_changes({"env": ["A"]}, {"env": ["A", "B"]}, "none", "strict") == {
        "env": ["B"]}


def test_failing_self_test_blocks_update(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    mod = module_name("acme.st")
    ex = {"version": f"{mod}:version", "self-test": f"{mod}:self_test"}
    ok = "def self_test(value, ctx):\n    return True\n"
    bad = "def self_test(value, ctx):\n    raise RuntimeError('health check failed')\n"
    publish(tmp_path, repo, "acme.st", "1.0.0", code=versioned("1", ok), exports=ex)
    inst.install(["acme.st"])
    publish(tmp_path, repo, "acme.st", "2.0.0", code=versioned("2", bad), exports=ex)
    before = snapshot(home)
    with pytest.raises(PluginError, match="self-test failed, the update was not applied"):
        inst.update()
    after = snapshot(home)
    gen1 = "generations/1.json"
    # only the record of generation 1 changed: it remembers the failed version
    assert {k: v for k, v in after["files"].items() if k != gen1} == {
        k: v for k, v in before["files"].items() if k != gen1}
    assert after["rows"] == before["rows"]
    (failed,) = json.loads((home / gen1).read_text())["failed-updates"]
    assert (failed["id"], failed["version"]) == ("acme.st", "2.0.0")
    assert "health check failed" in failed["reason"]
    assert "failed" not in json.loads((home / "corral.lock").read_text())
    publish(tmp_path, repo, "acme.st", "2.0.1", code=versioned("2", ok), exports=ex)
    assert inst.update().change is not None
    assert rows(home)["acme.st"][0] == "2.0.1"


def test_rollback_history_and_to(tmp_path: Path, home: Path, repo: Path, inst: Installer) -> None:
    with pytest.raises(UsageError):
        inst.rollback()
    publish(tmp_path, repo, "acme.a", "1.0.0")
    publish(tmp_path, repo, "acme.b", "1.0.0")
    inst.install(["acme.a"])  # 1
    inst.install(["acme.b"])  # 2
    publish(tmp_path, repo, "acme.a", "1.1.0")
    inst.update()  # 3
    back = inst.rollback()  # 4 = 2
    assert back.generation == 4
    assert back.action == "rollback to 2"
    assert back.changes["downgraded"] == [{"id": "acme.a", "from": "1.1.0", "to": "1.0.0"}]
    inst.rollback(to=1)  # 5 = 1
    assert set(rows(home)) == {"acme.a"}
    inst.rollback(to=0)  # 6: nothing
    assert rows(home) == {}
    hist = inst.history()
    assert [h["generation"] for h in hist] == [6, 5, 4, 3, 2, 1]
    assert hist[0]["current"]
    assert hist[0]["removed"] == [{"id": "acme.a", "version": "1.0.0"}]
    assert hist[3]["upgraded"] == [{"id": "acme.a", "from": "1.0.0", "to": "1.1.0"}]
    assert hist[4]["added"] == [{"id": "acme.b", "version": "1.0.0"}]
    with pytest.raises(NotFoundError):
        inst.rollback(to=42)


def test_tampered_archive_is_refused_and_nothing_changes(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    inst.install(["acme.a"])
    good = publish(tmp_path, repo, "acme.good", "1.0.0")
    archive = publish(tmp_path, repo, "acme.bad", "1.0.0", {"acme.good": ">=1"})
    assert inst.source is not None
    inst.source.releases("acme.bad")  # listed and cached (hash computed) ...
    st = archive.stat()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # ... then tampered: same size, same mtime
    archive.write_bytes(bytes(data))
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = snapshot(home)
    with pytest.raises(SignatureInvalid, match=r"acme\.bad 1\.0\.0: .*acme\.bad-1\.0\.0\.corral"):
        inst.install(["acme.bad"])
    assert snapshot(home) == before
    assert good.exists()


class _CutSource:
    """A source whose connection drops on the ``n``-th fetch."""

    def __init__(self, inner: DirectorySource, n: int) -> None:
        self.inner, self.n, self.location = inner, n, inner.location

    def releases(self, plugin_id: str) -> Any:
        return self.inner.releases(plugin_id)

    def fetch(self, release: Release, dest_dir: Path,
              progress: Callable[[int, int], None] | None = None) -> Path:
        self.n -= 1
        if self.n == 0:
            (dest_dir / "partial.corral").write_bytes(b"PK\x03\x04 half")
            raise TransferError(f"{release.id}: connection reset", plugin_id=release.id)
        return self.inner.fetch(release, dest_dir, progress)


def test_dropped_connection_changes_nothing(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    inst.install(["acme.a"])
    for i in range(4):
        publish(tmp_path, repo, f"acme.x{i}", "1.0.0")
    publish(tmp_path, repo, "acme.top", "1.0.0", {f"acme.x{i}": ">=1" for i in range(4)})
    before = snapshot(home)
    cut = Installer(home, _CutSource(DirectorySource(repo), 3), allow_unsigned=True)
    with pytest.raises(TransferError, match="connection reset"):
        cut.install(["acme.top"])
    assert snapshot(home) == before
    assert inst.install(["acme.top"]).changed  # a retry succeeds


def test_install_from_lock_reproduces_exactly(tmp_path: Path, home: Path, repo: Path,
                                              inst: Installer) -> None:
    publish(tmp_path, repo, "acme.lib", "1.0.0")
    publish(tmp_path, repo, "acme.a", "1.0.0", {"acme.lib": ">=1"})
    inst.install(["acme.a"])
    lock = home / "corral.lock"
    publish(tmp_path, repo, "acme.lib", "1.2.0")  # newer exists, the lock still pins 1.0.0
    other = tmp_path / "other"
    # no --source: each plugin comes from the source the lock names
    Installer(other, allow_unsigned=True).install(from_lock=lock)
    mine = json.loads(lock.read_text())["plugins"]
    theirs = json.loads((other / "corral.lock").read_text())["plugins"]
    assert theirs == mine
    assert {k: v[0] for k, v in rows(other).items()} == {"acme.a": "1.0.0", "acme.lib": "1.0.0"}

    # the same version rebuilt with different bytes: the pinned hash refuses it
    publish(tmp_path, repo, "acme.lib", "1.0.0", code=versioned("evil"))
    third = tmp_path / "third"
    with pytest.raises(SignatureInvalid, match=r"acme\.lib 1\.0\.0: .* pins"):
        Installer(third, DirectorySource(repo), allow_unsigned=True).install(from_lock=lock)
    assert not (third / "corral.lock").exists()


def test_hand_registered_plugins_are_left_alone(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    with Host(home=home) as host:
        host.register(make_plugin(tmp_path / "hand", "acme.hand"))
    publish(tmp_path, repo, "acme.hand", "9.0.0")
    publish(tmp_path, repo, "acme.a", "1.0.0")
    with pytest.raises(InvalidPluginError, match="registered by hand"):
        inst.install(["acme.hand"])
    inst.install(["acme.a"])
    inst.uninstall(["acme.a"])
    assert rows(home)["acme.hand"][2] == "archive" or rows(home)["acme.hand"][2] == "directory"


def test_crash_after_switch_is_repaired_by_next_operation(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    publish(tmp_path, repo, "acme.b", "1.0.0")
    inst.install(["acme.a"])
    saved = {p.name: p.read_bytes() for p in home.glob("corral.db*")}
    inst.install(["acme.b"])
    for p in home.glob("corral.db*"):  # the database as it was before the switch
        p.unlink()
    for name, data in saved.items():
        (home / name).write_bytes(data)
    assert set(rows(home)) == {"acme.a"}
    assert [r["state"] for r in inst.verify()] == ["ok", "ok"]
    assert set(rows(home)) == {"acme.a", "acme.b"}


def test_verify_finds_modified_and_missing_files(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    publish(tmp_path, repo, "acme.b", "1.0.0")
    inst.install(["acme.a", "acme.b"])
    assert [r["state"] for r in inst.verify()] == ["ok", "ok"]
    lock = json.loads((home / "corral.lock").read_text())
    tree = home / "store" / lock["plugins"]["acme.a"]["sha256"]
    target = tree / f"{module_name('acme.a')}.py"
    target.chmod(0o644)
    target.write_text("import os\n")
    results = {r["id"]: r for r in inst.verify()}
    assert results["acme.a"]["state"] == "modified"
    assert f"{target.name}: modified" in results["acme.a"]["problems"]
    assert results["acme.b"]["state"] == "ok"


def test_gc_keeps_every_generation_tree(tmp_path: Path, home: Path, repo: Path,
                                        inst: Installer) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    inst.install(["acme.a"])
    (home / "store" / ("0" * 64)).mkdir()
    assert inst.gc() == ["0" * 64]
    inst.uninstall(["acme.a"])
    assert inst.gc() == []  # generation 1 still refers to it
    assert inst.rollback().changed


BROKEN_START = """
class Plugin:
    def on_enable(self, ctx):
        raise RuntimeError("cannot start")
"""


def test_update_that_fails_to_start_is_rolled_back_automatically(
    tmp_path: Path, home: Path, repo: Path
) -> None:
    mod = module_name("acme.v")
    publish(tmp_path, repo, "acme.v", "1.0.0", code=versioned("1"))
    host = Host(home=home)
    try:
        inst = Installer(home, DirectorySource(repo), allow_unsigned=True, host=host)
        inst.install(["acme.v"])
        host.enable("acme.v")
        publish(tmp_path, repo, "acme.v", "2.0.0", code=versioned("2", BROKEN_START),
                plugin={"entry": f"{mod}:Plugin"})
        with pytest.raises(PluginError, match="rolled back to generation 1") as info:
            inst.update()
        assert "cannot start" in info.value.message
        assert host.call("acme.v", "version") == "1"
        assert host.info("acme.v")["state"] == "enabled"
        hist = inst.history()
        assert hist[0]["action"].startswith("rollback to 1 (automatic:")
        assert [h["generation"] for h in hist] == [3, 2, 1]
        assert rows(home)["acme.v"][:1] == ("1.0.0",)
    finally:
        close_quietly(host)


def test_signatures_are_checked_against_the_trust_store(
    tmp_path: Path, home: Path, repo: Path
) -> None:
    from corral._distribution.signing import generate_key
    from corral._distribution.trust import TrustStore

    key = generate_key("acme", tmp_path / "keys")
    publish(tmp_path, repo, "acme.s", "1.0.0", key=key)
    strict = Installer(home, DirectorySource(repo))
    with pytest.raises(SignatureInvalid, match="does not trust"):
        strict.install(["acme.s"])
    assert strict.current() is None
    TrustStore(home).trust(key.public_key_b64, "acme")
    strict.install(["acme.s"])
    entry = json.loads((home / "corral.lock").read_text())["plugins"]["acme.s"]
    assert entry["signature"] == {"state": "signed", "keyid": key.keyid, "signer": "acme"}
    assert [r["state"] for r in strict.verify()] == ["ok"]
    target = home / "store" / entry["sha256"] / f"{module_name('acme.s')}.py"
    target.chmod(0o644)
    target.write_text("print('changed')\n")
    (result,) = strict.verify()
    assert result["state"] == "modified"
    assert result["signature"]["state"] == "modified"
    assert any(p.startswith("signature:") for p in result["problems"])


def test_verify_reports_a_store_tree_or_record_that_is_gone(
    tmp_path: Path, home: Path, repo: Path, inst: Installer
) -> None:
    publish(tmp_path, repo, "acme.a", "1.0.0")
    publish(tmp_path, repo, "acme.b", "1.0.0")
    inst.install(["acme.a", "acme.b"])
    lock = json.loads((home / "corral.lock").read_text())
    tree_a = home / "store" / lock["plugins"]["acme.a"]["sha256"]
    record_b = home / "store" / f"{lock['plugins']['acme.b']['sha256']}.json"
    for path in tree_a.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tree_a.chmod(0o755)
    shutil.rmtree(tree_a)
    record_b.unlink()
    results = {r["id"]: r for r in inst.verify()}
    assert results["acme.a"]["state"] == "missing"
    assert results["acme.a"]["problems"] == [f"{tree_a} is gone"]
    assert results["acme.b"]["state"] == "missing"
    assert results["acme.b"]["problems"] == [f"{record_b.with_suffix('')} is gone"]
