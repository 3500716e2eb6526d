"""``corral keys``, ``corral sign`` and ``corral verify-signature``, run as real subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral._disk.archive import pack_directory


@dataclass
class Result:
    code: int
    out: str
    err: str
    json: Any


Run = Callable[..., Result]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if k not in ("CORRAL_HOME", "XDG_DATA_HOME", "CORRAL_KEY_PASSPHRASE")}
    out["CORRAL_HOME"] = str(tmp_path / "home")
    out["CORRAL_KEYS_DIR"] = str(tmp_path / "keys")
    return out


@pytest.fixture
def run(tmp_path: Path, env: dict[str, str]) -> Run:
    def call(*args: str, extra_env: dict[str, str] | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "corral", *args], capture_output=True, text=True,
            cwd=tmp_path, env={**env, **(extra_env or {})}, timeout=60, check=False,
        )
        doc = json.loads(proc.stdout) if "--json" in args else None
        return Result(proc.returncode, proc.stdout, proc.stderr, doc)

    return call


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    root = tmp_path / "plugin"
    (root / "pkg").mkdir(parents=True)
    (root / "corral.toml").write_text(
        '[plugin]\nid = "acme.cli"\nname = "Cli"\nversion = "0.1.0"\n'
    )
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    return root


def test_generate_list_export(run: Run, tmp_path: Path) -> None:
    res = run("keys", "generate", "alice", "--json")
    assert res.code == 0, res.err
    gen = res.json["generated"]
    assert gen["name"] == "alice"
    assert len(gen["keyid"]) == 64
    assert gen["trusted"] is False
    assert stat.S_IMODE((tmp_path / "keys" / "alice.pem").stat().st_mode) == 0o600

    again = run("keys", "generate", "alice", "--json")
    assert again.code == 2
    assert again.json["error"]["code"] == "usage"
    assert "already exists" in again.json["error"]["message"]

    listed = run("keys", "list", "--json")
    assert listed.code == 0
    assert [k["keyid"] for k in listed.json["keys"]] == [gen["keyid"]]
    assert listed.json["trust"] == []

    exported = run("keys", "export")
    assert exported.code == 0
    assert exported.out.strip() == gen["public_key"]
    missing = run("keys", "export", "nobody", "--json")
    assert missing.code == 1
    assert missing.json["error"]["code"] == "not_found"

    text = run("keys", "list")
    assert "alice" in text.out
    assert gen["keyid"][:16] in text.out


def test_generate_with_trust_and_keys_dir(run: Run, tmp_path: Path) -> None:
    res = run("keys", "generate", "ci", "--trust", "--keys-dir", str(tmp_path / "other"),
              "--json")
    assert res.code == 0, res.err
    assert res.json["generated"]["trusted"] is True
    assert (tmp_path / "other" / "ci.pem").is_file()
    trust = json.loads((tmp_path / "home" / "keys" / "trust.json").read_text())
    assert [k["keyid"] for k in trust["keys"]] == [res.json["generated"]["keyid"]]


def test_trust_and_revoke(run: Run, tmp_path: Path) -> None:
    gen = run("keys", "generate", "bob", "--json").json["generated"]
    res = run("keys", "trust", str(tmp_path / "keys" / "bob.pub"), "--name", "Bob", "--json")
    assert res.code == 0, res.err
    assert res.json["trusted"]["keyid"] == gen["keyid"]
    assert res.json["trusted"]["state"] == "trusted"

    bad = run("keys", "trust", "garbage", "--name", "x", "--json")
    assert bad.code == 2
    assert "neither a public key" in bad.json["error"]["message"]
    no_name = run("keys", "trust", gen["public_key"], "--json")
    assert no_name.code == 2
    assert no_name.json["error"]["code"] == "usage"

    rev = run("keys", "revoke", gen["keyid"], "--reason", "laptop stolen", "--json")
    assert rev.code == 0
    assert rev.json == {"revoked": {"keyid": gen["keyid"], "reason": "laptop stolen"}}
    listed = run("keys", "list", "--json").json
    assert [(t["keyid"], t["state"], t["reason"]) for t in listed["trust"]] == [
        (gen["keyid"], "revoked", "laptop stolen")
    ]
    again = run("keys", "trust", gen["public_key"], "--name", "Bob", "--json")
    assert again.code == 2
    assert "was revoked" in again.json["error"]["message"]
    bad_id = run("keys", "revoke", "1234", "--json")
    assert bad_id.code == 2
    assert "64 hex digits" in bad_id.json["error"]["message"]


def test_keys_without_action_is_a_usage_error(run: Run) -> None:
    res = run("keys", "--json")
    assert res.code == 2
    assert res.json["error"]["code"] == "usage"


def test_sign_and_verify_directory_and_archive(run: Run, plugin: Path, tmp_path: Path) -> None:
    none = run("sign", str(plugin), "--json")
    assert none.code == 2
    assert "corral keys generate" in none.json["error"]["message"]

    unsigned = run("verify-signature", str(plugin), "--json")
    assert unsigned.code == 4
    assert unsigned.json["signature"]["state"] == "unsigned"

    gen = run("keys", "generate", "alice", "--json").json["generated"]
    signed = run("sign", str(plugin), "--json")
    assert signed.code == 0, signed.err
    assert signed.json["signature"]["state"] == "signed"
    assert signed.json["signature"]["keyid"] == gen["keyid"]
    assert (plugin / "corral.sig").is_file()

    ok = run("verify-signature", str(plugin), "--json")
    assert ok.code == 0
    assert ok.json["signature"]["signer"] == "alice"
    assert ok.json["trust"] == "unknown"
    run("keys", "trust", gen["public_key"], "--name", "Alice")
    assert run("verify-signature", str(plugin), "--json").json["trust"] == "trusted"
    text = run("verify-signature", str(plugin))
    assert f"signed by alice (key {gen['keyid']}, trusted)" in text.out

    archive = pack_directory(plugin, tmp_path / "p.corral")
    packed = run("verify-signature", str(archive), "--json")
    assert packed.code == 0
    assert packed.json["signature"]["state"] == "signed"

    (plugin / "pkg" / "mod.py").write_text("X = 2\n")
    changed = run("verify-signature", str(plugin), "--json")
    assert changed.code == 4
    assert changed.json["signature"]["state"] == "modified"
    assert changed.json["signature"]["problems"] == ["changed: pkg/mod.py"]
    text = run("verify-signature", str(plugin))
    assert text.code == 4
    assert "modified" in text.out
    assert "changed: pkg/mod.py" in text.out

    data = archive.read_bytes()
    archive.write_bytes(data[:-10])
    broken = run("verify-signature", str(archive), "--json")
    assert broken.code == 4
    assert broken.json["signature"]["state"] == "invalid"

    gone = run("verify-signature", str(tmp_path / "nope"), "--json")
    assert gone.code == 1
    assert gone.json["error"]["code"] == "not_found"


def test_sign_picks_the_named_key(run: Run, plugin: Path) -> None:
    run("keys", "generate", "one")
    two = run("keys", "generate", "two", "--json").json["generated"]
    several = run("sign", str(plugin), "--json")
    assert several.code == 2
    assert "several keys" in several.json["error"]["message"]
    res = run("sign", str(plugin), "--key", "two", "--json")
    assert res.code == 0
    assert res.json["signature"]["keyid"] == two["keyid"]
    missing = run("sign", str(plugin), "--key", "three", "--json")
    assert missing.code == 1
    assert missing.json["error"]["code"] == "not_found"


def test_encrypted_key_needs_the_passphrase(run: Run, plugin: Path, tmp_path: Path) -> None:
    secret = {"CORRAL_KEY_PASSPHRASE": "s3cret"}
    assert run("keys", "generate", "enc", extra_env=secret).code == 0
    assert b"ENCRYPTED" in (tmp_path / "keys" / "enc.pem").read_bytes()
    listed = run("keys", "list", "--json")  # the public part needs no passphrase
    assert listed.json["keys"][0]["encrypted"] is True
    denied = run("sign", str(plugin), "--json")
    assert denied.code == 2
    assert "CORRAL_KEY_PASSPHRASE" in denied.json["error"]["message"]
    assert not (plugin / "corral.sig").exists()
    assert run("sign", str(plugin), "--json", extra_env=secret).code == 0
