"""``corral pack``: validate, sign when a key is configured, and pack reproducibly."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers.hosts import close_quietly, snapshot

from corral._cli.main import main
from corral._host import Host
from corral._pdk.new import create_plugin


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty keys directory: no key is configured unless a test makes one."""
    folder = tmp_path / "keys"
    folder.mkdir()
    monkeypatch.setenv("CORRAL_KEYS_DIR", str(folder))
    monkeypatch.delenv("CORRAL_KEY_PASSPHRASE", raising=False)
    return folder


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    return create_plugin("acme.packme", directory=tmp_path / "packme", isolation="none").path


def pack(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["pack", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_same_sources_give_the_same_bytes(
    keys: Path, plugin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, first = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "a.corral"))
    assert code == 0
    assert first["signed"] is False
    data = (tmp_path / "a.corral").read_bytes()
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["size"] == len(data)
    # Touch every file and leave bytecode behind: the archive does not change.
    for path in plugin_dir.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    (plugin_dir / "acme_packme" / "__pycache__").mkdir()
    (plugin_dir / "acme_packme" / "__pycache__" / "commands.cpython-311.pyc").write_bytes(b"x")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, second = pack(capsys, str(plugin_dir), "-o", str(out_dir))
    assert code == 0
    assert Path(second["path"]) == out_dir / "acme.packme-0.1.0.corral"
    assert Path(second["path"]).read_bytes() == data
    # A changed source changes the bytes.
    (plugin_dir / "README.md").write_text("changed\n")
    code, third = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "c.corral"))
    assert third["sha256"] != first["sha256"]


def test_default_output_and_install_then_call(
    keys: Path, plugin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(plugin_dir)  # inside the plugin: the archive goes next to it
    code, result = pack(capsys)
    assert code == 0
    archive = tmp_path / "acme.packme-0.1.0.corral"
    assert Path(result["path"]) == archive
    host = Host(home=tmp_path / "home", workspace=tmp_path)
    try:
        host.register(archive)
        host.enable("acme.packme")
        assert host.call("acme.packme", "greet", {"name": "Ada"}) == {"greeting": "Hello, Ada!"}
    finally:
        close_quietly(host)
    code = main(["pack", str(plugin_dir), "-o", str(plugin_dir / "in.corral")])
    assert code == 2
    assert not (plugin_dir / "in.corral").exists()


def test_refuses_an_invalid_plugin_and_writes_nothing(
    keys: Path, plugin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = plugin_dir / "corral.toml"
    toml.write_text(toml.read_text().replace("acme_packme.commands:greet",
                                             "acme_packme.nowhere:greet"))
    before = snapshot(tmp_path)
    code, doc = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "bad.corral"))
    assert code == 3
    assert doc["error"]["code"] == "invalid"
    assert "refusing to pack" in doc["error"]["message"]
    assert doc["error"]["errors"]
    assert snapshot(tmp_path) == before
    toml.write_text("[plugin]\nid = 'Not Valid'\n")
    code, doc = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "bad.corral"))
    assert code == 3
    assert "plugin.id" in json.dumps(doc)
    assert snapshot(tmp_path) == before


def test_signed_with_the_configured_key(
    keys: Path, plugin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from corral._distribution.signing import generate_key, verify_archive

    key = generate_key("dev", keys)
    code, first = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "s1.corral"))
    assert code == 0
    assert first["signed"] is True
    assert first["signer"] == "dev"
    assert first["keyid"] == key.keyid
    status = verify_archive(tmp_path / "s1.corral")
    assert status.state == "signed"
    assert status.keyid == key.keyid
    # Ed25519 is deterministic: signed archives are reproducible too.
    code, second = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "s2.corral"), "--key",
                        "dev")
    assert second["sha256"] == first["sha256"]
    code, unsigned = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "u.corral"),
                          "--no-sign")
    assert unsigned["signed"] is False
    assert verify_archive(tmp_path / "u.corral").state != "signed"
    code, missing = pack(capsys, str(plugin_dir), "-o", str(tmp_path / "m.corral"), "--key",
                         "nope")
    assert code != 0
    assert "nope" in missing["error"]["message"]
    assert not (tmp_path / "m.corral").exists()
