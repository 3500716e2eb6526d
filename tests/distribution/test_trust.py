"""The trust store, the signature policy and check_signature's accept/refuse matrix."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest

from corral._distribution.signing import SignatureStatus, SigningKey, generate_key
from corral._distribution.trust import POLICIES, TrustStore, check_signature, load_policy
from corral._errors import ManifestError, SignatureInvalid, UsageError


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate_key("alice", tmp_path / "keys")


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "home")


def _signed(key: SigningKey) -> SignatureStatus:
    return SignatureStatus("signed", key.keyid, key.name, (), key.public_key_b64)


# -- the store ------------------------------------------------------------------


def test_trust_by_base64_pem_and_pub_file(store: TrustStore, key: SigningKey,
                                          tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    assert store.state(key.keyid) == "unknown"
    entry = store.trust(key.public_key_b64, "Alice")
    assert (entry.keyid, entry.name, entry.state) == (key.keyid, "Alice", "trusted")
    assert store.state(key.keyid) == "trusted"
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert store.trust(pem, "Alice (pem)").keyid == key.keyid
    other = generate_key("bob", tmp_path / "keys")
    assert store.trust(str(tmp_path / "keys" / "bob.pub"), "Bob").keyid == other.keyid
    assert [(k.name, k.state) for k in store.list()] == sorted(
        [("Alice (pem)", "trusted"), ("Bob", "trusted")],
        key=lambda kv: {"Alice (pem)": key.keyid, "Bob": other.keyid}[kv[0]],
    )
    doc = json.loads(store.path.read_text())
    assert doc["version"] == 1
    assert {k["keyid"] for k in doc["keys"]} == {key.keyid, other.keyid}


@pytest.mark.parametrize("bad", ["", "not a key", "QUJD", "-----BEGIN PUBLIC KEY-----\nx\n"])
def test_trust_refuses_garbage(store: TrustStore, bad: str) -> None:
    with pytest.raises(UsageError):
        store.trust(bad, "x")
    assert not store.path.exists()


def test_a_broken_pem_key_is_named_as_pem_not_as_a_missing_file(store: TrustStore) -> None:
    with pytest.raises(UsageError, match=r"^not a PEM public key: "):
        store.trust("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "x")
    assert not store.path.exists()


def test_trust_refuses_a_private_key_file(store: TrustStore, key: SigningKey,
                                          tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"alice\.pem: this is a private key"):
        store.trust(str(tmp_path / "keys" / "alice.pem"), "oops")


def test_revoke_is_sticky_and_works_for_unknown_keys(store: TrustStore, key: SigningKey) -> None:
    store.trust(key.public_key_b64, "Alice")
    store.revoke(key.keyid, "leaked")
    assert store.state(key.keyid) == "revoked"
    (entry,) = store.list()
    assert (entry.reason, entry.name, entry.public_key) == ("leaked", "Alice", key.public_key_b64)
    assert entry.revoked_at is not None
    with pytest.raises(UsageError, match=f"key {key.keyid} was revoked \\(leaked\\)"):
        store.trust(key.public_key_b64, "Alice again")
    assert store.state(key.keyid) == "revoked"
    unknown = "ab" * 32
    store.revoke(unknown.upper())  # block a key before anyone trusts it
    assert store.state(unknown) == "revoked"
    with pytest.raises(UsageError, match="64 hex digits"):
        store.revoke("xyz")


def test_store_file_is_replaced_atomically(store: TrustStore, key: SigningKey) -> None:
    store.trust(key.public_key_b64, "Alice")
    inode = store.path.stat().st_ino
    store.revoke("cd" * 32)
    assert store.path.stat().st_ino != inode  # a new file renamed over the old one
    assert not list(store.path.parent.glob(".trust.*.tmp"))
    assert stat.S_ISREG(store.path.stat().st_mode)


def test_corrupt_store_names_the_file(store: TrustStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    with pytest.raises(ManifestError, match=r"trust\.json"):
        store.list()


def _trust_many(home: str, keys: list[str]) -> None:
    store = TrustStore(Path(home))
    for i, k in enumerate(keys):
        store.trust(k, f"k{i}")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    keys = [generate_key(f"k{i}", tmp_path / "keys") for i in range(16)]
    home = tmp_path / "home"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_trust_many, args=(str(home), [k.public_key_b64 for k in keys[i::4]]))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert {k.keyid for k in TrustStore(home).list()} == {k.keyid for k in keys}


# -- the policy -----------------------------------------------------------------


def test_load_policy(tmp_path: Path) -> None:
    assert load_policy(tmp_path) == "trusted"
    for policy in POLICIES:
        (tmp_path / "settings.toml").write_text(f'[install]\nsignatures = "{policy}"\n')
        assert load_policy(tmp_path) == policy
    (tmp_path / "settings.toml").write_text("[other]\nx = 1\n")
    assert load_policy(tmp_path) == "trusted"


def test_bad_policy_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('[install]\nsignatures = "yolo"\n')
    with pytest.raises(ManifestError) as info:
        load_policy(tmp_path)
    assert str(tmp_path / "settings.toml") in info.value.message
    assert "install.signatures" in info.value.message
    assert "'yolo'" in info.value.message
    assert info.value.key == "install.signatures"
    (tmp_path / "settings.toml").write_text("[install\n")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_policy(tmp_path)
    # `install = "any"` is not the [install] table: refused, not read as a policy
    (tmp_path / "settings.toml").write_text('install = "any"\n')
    with pytest.raises(ManifestError, match="must be a table") as info:
        load_policy(tmp_path)
    assert info.value.key == "install"


# -- check_signature: the matrix -------------------------------------------------

#: (state, trust state, publisher_verified, allow_unsigned, policy) -> accepted?
MATRIX = [
    # signed by a trusted key: accepted by every policy
    *[("signed", "trusted", False, False, p, True) for p in POLICIES],
    # signed by an unknown key: only a verified publisher rescues it under "trusted"
    ("signed", "unknown", False, False, "trusted", False),
    ("signed", "unknown", True, False, "trusted", True),
    ("signed", "unknown", False, False, "signed", True),
    ("signed", "unknown", False, False, "any", True),
    # revoked: refused whatever the policy, flag or publisher
    *[("signed", "revoked", v, True, p, False) for p in POLICIES for v in (False, True)],
    # unsigned: only with the explicit flag, or policy "any"
    ("unsigned", "unknown", False, False, "trusted", False),
    ("unsigned", "unknown", True, False, "trusted", False),
    ("unsigned", "unknown", False, False, "signed", False),
    ("unsigned", "unknown", False, True, "trusted", True),
    ("unsigned", "unknown", False, True, "signed", True),
    ("unsigned", "unknown", False, False, "any", True),
    # modified and invalid: always refused
    *[(s, "trusted", True, True, p, False) for s in ("modified", "invalid") for p in POLICIES],
]


@pytest.mark.parametrize(("state", "trust", "verified", "allow", "policy", "ok"), MATRIX)
def test_check_signature_matrix(store: TrustStore, key: SigningKey, state: str, trust: str,
                                verified: bool, allow: bool, policy: str, ok: bool) -> None:
    if trust == "trusted":
        store.trust(key.public_key_b64, "Alice")
    elif trust == "revoked":
        store.trust(key.public_key_b64, "Alice")
        store.revoke(key.keyid, "leaked")
    if state == "signed":
        status = _signed(key)
    elif state == "unsigned":
        status = SignatureStatus("unsigned")
    elif state == "modified":
        status = SignatureStatus("modified", key.keyid, "alice", ("changed: pkg/mod.py",))
    else:
        status = SignatureStatus("invalid", key.keyid, "alice", ("bad signature",))
    kwargs = {"plugin_id": "acme.x", "version": "1.0.0", "trust": store,
              "publisher_verified": verified, "allow_unsigned": allow, "policy": policy}
    if ok:
        check_signature(status, **kwargs)  # type: ignore[arg-type]
        return
    with pytest.raises(SignatureInvalid) as info:
        check_signature(status, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert err.exit_code == 4
    assert err.code == "signature_invalid"
    assert err.message.startswith("acme.x 1.0.0 ")
    assert err.plugin_id == "acme.x"
    assert err.details["state"] == state
    doc = err.to_dict()
    assert doc["plugin"] == "acme.x"
    assert doc["version"] == "1.0.0"


def test_messages_name_the_file_and_the_key(store: TrustStore, key: SigningKey) -> None:
    base = {"plugin_id": "acme.x", "version": "1.0.0", "trust": store}
    modified = SignatureStatus("modified", key.keyid, "alice",
                               ("changed: pkg/mod.py", "added: evil.py"))
    with pytest.raises(SignatureInvalid) as info:
        check_signature(modified, **base)  # type: ignore[arg-type]
    assert "changed: pkg/mod.py; added: evil.py" in info.value.message
    assert info.value.details["problems"] == ["changed: pkg/mod.py", "added: evil.py"]

    with pytest.raises(SignatureInvalid) as info:
        check_signature(_signed(key), **base)  # type: ignore[arg-type]
    message = info.value.message
    assert key.keyid in message
    assert "does not trust" in message
    assert f"corral keys trust {key.public_key_b64} --name alice" in message
    assert info.value.details["keyid"] == key.keyid

    store.revoke(key.keyid)
    with pytest.raises(SignatureInvalid, match=f"revoked key {key.keyid} \\(alice\\)"):
        check_signature(_signed(key), **base)  # type: ignore[arg-type]

    with pytest.raises(SignatureInvalid, match=r"not signed.*--allow-unsigned"):
        check_signature(SignatureStatus("unsigned"), **base)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="policy"):
        check_signature(SignatureStatus("unsigned"), policy="lax", **base)  # type: ignore[arg-type]


def test_end_to_end_with_a_real_signature(tmp_path: Path, store: TrustStore,
                                          key: SigningKey) -> None:
    from corral._distribution.signing import sign_directory, verify_directory

    root = tmp_path / "p"
    root.mkdir()
    (root / "corral.toml").write_text('[plugin]\nid = "acme.x"\nname = "X"\nversion = "1.0.0"\n')
    status = sign_directory(root, key)
    with pytest.raises(SignatureInvalid):
        check_signature(status, plugin_id="acme.x", version="1.0.0", trust=store)
    store.trust(key.public_key_b64, "Alice")
    check_signature(verify_directory(root), plugin_id="acme.x", version="1.0.0", trust=store)
    (root / "extra.py").write_text("")
    with pytest.raises(SignatureInvalid, match=r"added: extra\.py"):
        check_signature(verify_directory(root), plugin_id="acme.x", version="1.0.0",
                        trust=store)


@pytest.mark.parametrize("status", [SignatureStatus("forged", "ab" * 32, "mallory"),
                                    SignatureStatus("signed", None, "mallory")])
def test_an_unknown_state_or_a_signature_without_key_is_refused_by_every_policy(
    store: TrustStore, status: SignatureStatus
) -> None:
    for policy in POLICIES:
        with pytest.raises(SignatureInvalid, match=r"acme\.x 1\.0\.0: unknown signature state"):
            check_signature(status, plugin_id="acme.x", version="1.0.0", trust=store,
                            publisher_verified=True, allow_unsigned=True, policy=policy)
