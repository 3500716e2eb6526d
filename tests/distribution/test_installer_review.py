"""The installer after review: signatures re-checked, tampered trees repaired, failed
updates remembered, generations pruned, the lock's source reused, ``pack -o`` folders.

Everything runs for real: folder sources of real archives, real hosts and
sandboxes, the real command line in-process (``corral._cli.main``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import close_quietly
from helpers.install import publish, rows, versioned
from helpers.plugins import module_name

from corral._cli.main import main
from corral._distribution.install import DirectorySource, Installer
from corral._errors import PluginError, SignatureInvalid, UsageError
from corral._host import Host

BROKEN_START = """
class Plugin:
    def on_enable(self, ctx):
        raise RuntimeError("cannot start")
"""


def cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, Any, str]:
    """Run a verb in-process: exit code, the JSON document (if ``--json``), stderr."""
    code = main(["--home", str(home), *args])
    out = capsys.readouterr()
    doc = json.loads(out.out) if "--json" in args and out.out else out.out
    return code, doc, out.err


def tamper(home: Path, plugin_id: str) -> Path:
    """Change one file of ``plugin_id``'s current store tree; return that file."""
    lock = json.loads((home / "corral.lock").read_text())
    tree = home / "store" / lock["plugins"][plugin_id]["sha256"]
    target = tree / f"{module_name(plugin_id)}.py"
    target.chmod(0o644)
    target.write_text("import os  # planted\n")
    return target


# -- 1. signatures are checked again whenever a version enters a generation --------------


def test_revoked_key_refuses_rollback_reinstall_and_verify(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from corral._distribution.signing import generate_key
    from corral._distribution.trust import TrustStore

    repo = tmp_path / "repo"
    old_key = generate_key("old", tmp_path / "keys")
    new_key = generate_key("new", tmp_path / "keys")
    publish(tmp_path, repo, "acme.s", "1.0.0", key=old_key)
    publish(tmp_path, repo, "acme.s", "1.1.0", key=new_key)
    trust = TrustStore(home)
    trust.trust(old_key.public_key_b64, "old")
    trust.trust(new_key.public_key_b64, "new")
    inst = Installer(home, DirectorySource(repo))
    inst.install(["acme.s@1.0.0"])  # 1
    inst.install(["acme.s@1.1.0"], allow_source_change=True)  # 2: a new key, said so
    trust.revoke(old_key.keyid, "leaked")

    with pytest.raises(SignatureInvalid, match=rf"cannot roll back to generation 1: "
                       rf"acme\.s 1\.0\.0 is signed by revoked key {old_key.keyid}") as info:
        inst.rollback()
    assert info.value.plugin_id == "acme.s"
    assert info.value.details["keyid"] == old_key.keyid
    with pytest.raises(SignatureInvalid, match="revoked"):
        inst.install(["acme.s@1.0.0"])  # its tree is still in the store: checked anyway
    current = inst.current()
    assert current is not None
    assert current.number == 2

    assert [r["state"] for r in inst.verify()] == ["ok"]
    trust.revoke(new_key.keyid, "leaked too")
    (result,) = inst.verify()
    assert result["state"] == "revoked"
    assert f"signature: key {new_key.keyid} (new) is revoked" in result["problems"]
    code, doc, _ = cli(capsys, home, "verify", "--json")
    assert code == 4
    assert doc["plugins"][0]["state"] == "revoked"
    assert doc["ok"] is False


def test_rollback_checks_again_a_plugin_unchanged_between_the_generations(
    tmp_path: Path, home: Path
) -> None:
    # acme.keep is the same tree in generations 1 and 2; its key is revoked after.
    # rollback promises every plugin of the target is checked again, not only
    # the ones that differ from the current generation.
    from corral._distribution.signing import generate_key
    from corral._distribution.trust import TrustStore

    repo = tmp_path / "repo"
    old_key = generate_key("old", tmp_path / "keys")
    new_key = generate_key("new", tmp_path / "keys")
    publish(tmp_path, repo, "acme.keep", "1.0.0", key=old_key)
    publish(tmp_path, repo, "acme.moves", "1.0.0", key=new_key)
    publish(tmp_path, repo, "acme.moves", "1.1.0", key=new_key)
    trust = TrustStore(home)
    trust.trust(old_key.public_key_b64, "old")
    trust.trust(new_key.public_key_b64, "new")
    inst = Installer(home, DirectorySource(repo))
    inst.install(["acme.keep", "acme.moves@1.0.0"])  # 1
    inst.install(["acme.moves@1.1.0"])  # 2: acme.keep carried over unchanged
    gen1, gen2 = inst.generation(1).plugins, inst.generation(2).plugins
    assert gen1["acme.keep"]["sha256"] == gen2["acme.keep"]["sha256"]
    trust.revoke(old_key.keyid, "leaked")

    with pytest.raises(SignatureInvalid, match=rf"cannot roll back to generation 1: "
                       rf"acme\.keep 1\.0\.0 is signed by revoked key {old_key.keyid}"):
        Installer(home, DirectorySource(repo)).rollback()
    current = inst.current()
    assert current is not None
    assert current.number == 2


def test_stricter_policy_applies_to_a_version_already_in_the_store(
    tmp_path: Path, home: Path
) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.u", "1.0.0")
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "settings.toml"
    settings.write_text('[install]\nsignatures = "any"\n')
    inst = Installer(home, DirectorySource(repo))
    inst.install(["acme.u"])
    inst.uninstall(["acme.u"])
    settings.write_text('[install]\nsignatures = "trusted"\n')
    with pytest.raises(SignatureInvalid, match=r"acme\.u 1\.0\.0 is not signed"):
        inst.install(["acme.u"])
    with pytest.raises(SignatureInvalid, match=r"generation 1: acme\.u 1\.0\.0 is not signed"):
        inst.rollback(to=1)
    assert rows(home) == {}
    # the explicit flag still lets it in, for one command
    assert Installer(home, allow_unsigned=True).rollback(to=1).changed


# -- 2. a store tree that no longer matches its record is re-fetched ------------------------


def test_install_repairs_a_tampered_store_tree(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.a", "1.0.0", code=versioned("1"))
    publish(tmp_path, repo, "acme.b", "1.0.0")
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.a"])
    target = tamper(home, "acme.a")
    assert inst.verify()[0]["state"] == "modified"

    change = inst.install(["acme.a"])  # same version: nothing to switch, but repaired
    assert not change.changed
    assert change.to_dict()["repaired"] == [{"id": "acme.a", "version": "1.0.0"}]
    assert target.read_bytes() != b"import os  # planted\n"
    assert [r["state"] for r in inst.verify()] == ["ok"]
    assert not list((home / "store").glob(".tmp-*"))  # the old tree was deleted

    # install --from the lock repairs too, through the command line
    tamper(home, "acme.a")
    code, doc, _ = cli(capsys, home, "install", "--from", str(home / "corral.lock"),
                       "--source", str(repo), "--allow-unsigned", "--json")
    assert code == 0
    assert doc["repaired"] == [{"id": "acme.a", "version": "1.0.0"}]
    assert [r["state"] for r in inst.verify()] == ["ok"]
    with Host(home=home) as host:
        host.enable("acme.a")
        assert host.call("acme.a", "version") == "1"

    # a carried-over plugin is repaired as a side effect of installing another
    tamper(home, "acme.a")
    change = inst.install(["acme.b"])
    assert change.changed
    assert change.to_dict()["repaired"] == [{"id": "acme.a", "version": "1.0.0"}]
    assert [r["state"] for r in inst.verify()] == ["ok", "ok"]


def test_rollback_refuses_a_tampered_tree(tmp_path: Path, home: Path) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.a", "1.0.0")
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.a"])  # 1
    tamper(home, "acme.a")
    inst.uninstall(["acme.a"])  # 2
    with pytest.raises(SignatureInvalid, match=r"acme\.a 1\.0\.0: the files of .* no longer "
                       r"match its record"):
        inst.rollback()
    current = inst.current()
    assert current is not None
    assert current.number == 2


# -- 3 and 4. failed generations and failed versions are remembered --------------------------


def test_failed_update_is_marked_skipped_by_rollback_and_by_update(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    mod = module_name("acme.v")
    publish(tmp_path, repo, "acme.v", "1.0.0", code=versioned("1"))
    host = Host(home=home)
    try:
        inst = Installer(home, DirectorySource(repo), allow_unsigned=True, host=host)
        inst.install(["acme.v"])  # 1
        host.enable("acme.v")
        publish(tmp_path, repo, "acme.v", "1.1.0", code=versioned("1.1"))
        inst.update()  # 2
        publish(tmp_path, repo, "acme.v", "2.0.0", code=versioned("2", BROKEN_START),
                plugin={"entry": f"{mod}:Plugin"})
        with pytest.raises(PluginError, match="rolled back to generation 2"):
            inst.update()  # 3 fails, 4 = 2
        gen3 = inst.generation(3)
        assert gen3.failed is not None
        assert "cannot start" in gen3.failed
        assert [(x["id"], x["version"]) for x in gen3.failed_updates] == [("acme.v", "2.0.0")]
        hist = {h["generation"]: h for h in inst.history()}
        assert hist[3]["failed"] == gen3.failed
        assert hist[4]["failed"] is None

        # 4: the next run does not try 2.0.0 again (no new generation), unless asked
        result = inst.update()
        assert result.change is None
        assert result.available == []
        assert [(x["id"], x["version"]) for x in result.skipped] == [("acme.v", "2.0.0")]
        assert "cannot start" in result.skipped[0]["reason"]
        current = inst.current()
        assert current is not None
        assert current.number == 4
        with pytest.raises(PluginError, match="rolled back"):
            inst.update(retry_failed=True)  # 5 fails again, 6
        current = inst.current()
        assert current is not None
        assert current.number == 6

        # a fixed version after the failed one is taken
        publish(tmp_path, repo, "acme.v", "2.0.1", code=versioned("2.0.1"))
        checked = inst.update(check=True)
        assert [a["available"] for a in checked.available] == ["2.0.1"]
        assert checked.skipped == []

        # 3: plain rollback skips the failed generation and the identical one
        back = inst.rollback()
        assert back.action == "rollback to 1 (skipped failed generation 5, 3)"
        assert host.call("acme.v", "version") == "1"
    finally:
        close_quietly(host)
    code, text, _ = cli(capsys, home, "history")
    assert code == 0
    assert "FAILED: " in text
    assert "cannot start" in text


def test_failed_self_test_is_not_retried(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    mod = module_name("acme.st")
    ex = {"version": f"{mod}:version", "self-test": f"{mod}:self_test"}
    ok = "def self_test(value, ctx):\n    return True\n"
    bad = "def self_test(value, ctx):\n    return {'ok': False}\n"
    publish(tmp_path, repo, "acme.st", "1.0.0", code=versioned("1", ok), exports=ex)
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.st"])
    publish(tmp_path, repo, "acme.st", "2.0.0", code=versioned("2", bad), exports=ex)
    with pytest.raises(PluginError, match="self-test returned"):
        inst.update()
    code, doc, err = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned")
    assert code == 0
    assert "skipped: acme.st 2.0.0 failed before" in err
    assert "--retry-failed" in err
    code, doc, _ = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned",
                       "--retry-failed", "--json")
    assert code == 5
    assert doc["error"]["code"] == "plugin_error"
    assert rows(home)["acme.st"][0] == "1.0.0"


# -- 5. gc --keep prunes old generations, then their trees ---------------------------------


def test_gc_keep_prunes_generations_then_trees(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    shas = []
    for n, v in enumerate(["1.0.0", "1.1.0", "1.2.0", "1.3.0"]):
        publish(tmp_path, repo, "acme.g", v)
        if n == 0:
            inst.install(["acme.g"])
        else:
            inst.update()
        lock = json.loads((home / "corral.lock").read_text())
        shas.append(lock["plugins"]["acme.g"]["sha256"])
    inst.rollback(to=2)  # 5 = 2: the current one is not the newest tree
    with pytest.raises(UsageError, match="--keep must be 0 or more"):
        inst.prune(-1)
    code, doc, _ = cli(capsys, home, "gc", "--keep", "1", "--json")
    assert code == 0
    assert doc["pruned"] == [1, 2, 3]
    assert sorted(doc["removed"]) == sorted([shas[0], shas[2]])
    assert sorted(p.name for p in (home / "generations").glob("*.json")) == ["4.json", "5.json"]
    assert (home / "store" / shas[1]).is_dir()  # current
    assert (home / "store" / shas[3]).is_dir()  # generation 4
    assert not (home / "store" / f"{shas[0]}.json").exists()
    assert [h["generation"] for h in inst.history()] == [5, 4]
    assert inst.rollback(to=4).changed  # what was kept still rolls back without the network
    code, doc, _ = cli(capsys, home, "gc", "--keep", "0", "--json")
    assert doc["pruned"] == [4, 5]
    assert doc["removed"] == [shas[1]]
    assert [r["state"] for r in inst.verify()] == ["ok"]


# -- 6. update without a source uses the one corral.lock records ---------------------------


def test_update_uses_the_source_recorded_in_the_lock(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CORRAL_REGISTRY", raising=False)
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.a", "1.0.0")
    Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.a"])
    publish(tmp_path, repo, "acme.a", "1.1.0")
    code, doc, _ = cli(capsys, home, "update", "--allow-unsigned", "--json")
    assert code == 0
    assert doc["applied"]["upgraded"] == [{"id": "acme.a", "from": "1.0.0", "to": "1.1.0"}]

    other = tmp_path / "other"
    publish(tmp_path, other, "acme.b", "1.0.0")
    archive = repo / "acme.a-1.1.0.corral"  # the same bytes: acme.a keeps its recorded source
    (other / archive.name).write_bytes(archive.read_bytes())
    Installer(home, DirectorySource(other), allow_unsigned=True).install(["acme.b"])
    with pytest.raises(UsageError, match=rf"several sources \(acme\.b from {other}; "
                       rf"acme\.a from {repo}\)"):
        Installer(home, allow_unsigned=True).update()
    code, doc, _ = cli(capsys, home, "update", "--allow-unsigned", "--json")
    assert code == 2
    assert doc["error"]["sources"] == sorted([str(repo), str(other)])


# -- 7. grammar --------------------------------------------------------------------------


def test_held_message_agrees_with_its_subject(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    for pid in ("acme.p", "acme.q"):
        publish(tmp_path, repo, pid, "1.0.0")
    Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.p", "acme.q"])
    publish(tmp_path, repo, "acme.p", "1.1.0", permissions={"env": ["LANG"]})
    code, _, err = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned")
    assert code == 4
    assert "held: acme.p asks for more permissions" in err
    publish(tmp_path, repo, "acme.q", "1.1.0", permissions={"env": ["HOME"]})
    code, _, err = cli(capsys, home, "update", "--source", str(repo), "--allow-unsigned")
    assert code == 4
    assert "held: acme.p, acme.q ask for more permissions" in err


# -- 8. pack -o ----------------------------------------------------------------------------


def test_pack_output_folder_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from corral._pdk.new import create_plugin

    monkeypatch.setenv("CORRAL_KEYS_DIR", str(tmp_path / "keys"))
    src = create_plugin("acme.packme", directory=tmp_path / "w", isolation="none").path
    home = tmp_path / "h"

    code, doc, _ = cli(capsys, home, "pack", str(src), "-o", str(tmp_path / "repo12"), "--json")
    assert code == 2
    assert "repo12" in doc["error"]["message"]
    assert "end it with '/'" in doc["error"]["message"]
    assert not (tmp_path / "repo12").exists()

    code, doc, _ = cli(capsys, home, "pack", str(src), "-o", f"{tmp_path / 'repo12'}/", "--json")
    assert code == 0
    assert doc["path"] == str(tmp_path / "repo12" / "acme.packme-0.1.0.corral")
    assert Path(doc["path"]).is_file()

    code, doc, _ = cli(capsys, home, "pack", str(src), "-o", str(tmp_path / "repo12"), "--json")
    assert code == 0  # an existing folder: into it
    assert Path(doc["path"]).parent == tmp_path / "repo12"

    code, doc, _ = cli(capsys, home, "pack", str(src), "-o",
                       str(tmp_path / "nowhere" / "x.corral"), "--json")
    assert code == 2
    assert f"folder {tmp_path / 'nowhere'} does not exist" in doc["error"]["message"]
    assert not (tmp_path / "nowhere").exists()

    code, doc, _ = cli(capsys, home, "pack", str(src), "-o", str(tmp_path / "x.corral"),
                       "--json")
    assert code == 0
    assert doc["path"] == str(tmp_path / "x.corral")


# -- install --enable ---------------------------------------------------------------------


def test_install_enable_starts_what_was_asked_and_undoes_a_failed_start(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.good", "1.0.0", code=versioned("1"))
    publish(tmp_path, repo, "acme.bad", "1.0.0", code=versioned("1", BROKEN_START),
            plugin={"entry": f"{module_name('acme.bad')}:Plugin"})

    code, doc, _ = cli(capsys, home, "install", "acme.good", "--enable", "--source", str(repo),
                       "--allow-unsigned", "--json")
    assert code == 0, doc
    code, info, _ = cli(capsys, home, "info", "acme.good", "--json")
    assert info["state"] == "enabled"

    code, doc, _ = cli(capsys, home, "install", "acme.bad", "--enable", "--source", str(repo),
                       "--allow-unsigned", "--json")
    assert code == 5
    assert "rolled back to generation 1" in doc["error"]["message"]
    lock = json.loads((home / "corral.lock").read_text())
    assert sorted(lock["plugins"]) == ["acme.good"]  # the failed install is undone
    code, info, _ = cli(capsys, home, "info", "acme.good", "--json")
    assert info["state"] == "enabled"  # and the rest is as it was
    code, hist, _ = cli(capsys, home, "history", "--json")
    failed = [h for h in hist["generations"] if h.get("failed")]
    assert len(failed) == 1
    assert "cannot start" in failed[0]["failed"]


def test_install_enable_into_an_empty_home_rolls_back_to_nothing(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.bad", "1.0.0", code=versioned("1", BROKEN_START),
            plugin={"entry": f"{module_name('acme.bad')}:Plugin"})
    code, doc, _ = cli(capsys, home, "install", "acme.bad", "--enable", "--source", str(repo),
                       "--allow-unsigned", "--json")
    assert code == 5
    assert "rolled back to generation 0" in doc["error"]["message"]
    lock = json.loads((home / "corral.lock").read_text())
    assert lock["plugins"] == {}
    code, listed, _ = cli(capsys, home, "list", "--json")
    assert [p["id"] for p in listed["plugins"] if p.get("state") != "discovered"] == []


def test_grant_lists_keep_only_real_grants_of_a_release_table() -> None:
    from corral._distribution.install.checks import grant_lists

    table = {
        "fs-read": ["{workspace}"],
        "host-api": ("state.read:notes.>",),
        "net-connect": [],  # asks for nothing
        "reasons": {"fs-read": "reads the project"},  # explains, grants nothing
        "spawn": "git",  # not a list: a malformed table grants nothing
    }
    assert grant_lists(table) == {"fs-read": ["{workspace}"], "host-api": ["state.read:notes.>"]}


def test_verify_reports_a_signature_stripped_from_the_store(
    tmp_path: Path, home: Path
) -> None:
    from corral._distribution.signing import generate_key
    from corral._distribution.trust import TrustStore

    repo = tmp_path / "repo"
    key = generate_key("k", tmp_path / "keys")
    publish(tmp_path, repo, "acme.s", "1.0.0", key=key)
    TrustStore(home).trust(key.public_key_b64, "k")
    inst = Installer(home, DirectorySource(repo))
    inst.install(["acme.s"])
    lock = json.loads((home / "corral.lock").read_text())
    sig = home / "store" / lock["plugins"]["acme.s"]["sha256"] / "corral.sig"
    sig.parent.chmod(0o755)
    sig.unlink()  # an attacker strips the signature: the files alone still match
    (result,) = inst.verify()
    assert result["state"] == "modified"
    assert result["signature"]["state"] == "unsigned"
    assert "signature: unsigned (was signed)" in result["problems"]


def test_update_with_a_lock_that_records_no_source_asks_for_one(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORRAL_REGISTRY", raising=False)
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.a", "1.0.0")
    Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.a"])
    lock_path = home / "corral.lock"
    lock = json.loads(lock_path.read_text())
    for entry in lock["plugins"].values():
        entry["source"] = ""  # written by hand, or by a tool that did not know the source
    lock_path.write_text(json.dumps(lock))
    with pytest.raises(UsageError, match="no source: pass --source DIR_OR_URL"):
        Installer(home, allow_unsigned=True).update()


def test_closure_follows_dependencies_through_a_cycle_and_past_unknown_ones() -> None:
    from corral._distribution.install.checks import closure
    from corral._model.manifest import parse_manifest

    def manifest(pid: str, *deps: str) -> Any:
        table = "".join(f'"{d}" = ">=1"\n' for d in deps)
        return parse_manifest(f'[plugin]\nid = "{pid}"\nname = "{pid}"\nversion = "1.0.0"\n'
                              f"[dependencies]\n{table}")

    manifests = {"acme.a": manifest("acme.a", "acme.b"),
                 "acme.b": manifest("acme.b", "acme.a", "acme.hand"),  # a cycle back to a
                 "acme.c": manifest("acme.c")}
    # acme.hand is not among the manifests (registered by hand): named, not followed
    assert closure(["acme.a"], manifests) == {"acme.a", "acme.b"}
    assert closure(["acme.c", "acme.c"], manifests) == {"acme.c"}
    assert closure(["acme.hand"], manifests) == set()
