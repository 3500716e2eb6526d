"""Signing and verifying plugins: keys, round trips, every kind of tampering, and a fuzz."""

from __future__ import annotations

import json
import random
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc8785

from corral._disk.archive import pack_directory, plugin_files
from corral._distribution.signing import (
    SIGNATURE_FILE,
    SignatureStatus,
    SigningKey,
    file_manifest,
    generate_key,
    keyid_of,
    list_keys,
    load_signing_key,
    sign_directory,
    signature_envelope,
    verify_archive,
    verify_directory,
)
from corral._errors import InvalidPluginError, NotFoundError, UsageError

MANIFEST = """\
[plugin]
id = "acme.signed"
name = "Signed"
version = "1.2.0"
description = "A signed plugin"

[exports]
hello = "pkg.mod:hello"
"""


def make_plugin(root: Path) -> Path:
    """A small plugin with nested folders, binary data and an empty file."""
    root.mkdir(parents=True)
    (root / "corral.toml").write_text(MANIFEST)
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("def hello(input, ctx):\n    return {'hi': input}\n")
    (root / "pkg" / "sub" / "deep.py").write_text("VALUE = 42\n" * 20)
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)
    (root / "README.md").write_text("# signed\n")
    return root


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate_key("alice", tmp_path / "keys")


@pytest.fixture
def signed_dir(tmp_path: Path, key: SigningKey) -> Path:
    root = make_plugin(tmp_path / "plugin")
    assert sign_directory(root, key).state == "signed"
    return root


@pytest.fixture
def signed_archive(tmp_path: Path, signed_dir: Path) -> Path:
    return pack_directory(signed_dir, tmp_path / "signed.corral")


def _rewrite_sig(root: Path, edit: object) -> None:
    """Re-serialise corral.sig canonically after ``edit(envelope)`` (a forger's edit)."""
    path = root / SIGNATURE_FILE
    doc = json.loads(path.read_bytes())
    edit(doc)  # type: ignore[operator]
    path.write_bytes(rfc8785.dumps(doc))


# -- keys ---------------------------------------------------------------------


def test_generate_key_writes_private_0600_and_public(tmp_path: Path) -> None:
    key = generate_key("alice", tmp_path / "keys")
    pem = tmp_path / "keys" / "alice.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "keys" / "alice.pub").read_text().strip() == key.public_key_b64
    assert len(key.keyid) == 64
    import base64

    assert key.keyid == keyid_of(base64.b64decode(key.public_key_b64))


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    first = generate_key("alice", tmp_path)
    before = (tmp_path / "alice.pem").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        generate_key("alice", tmp_path)
    assert (tmp_path / "alice.pem").read_bytes() == before
    loaded = load_signing_key("alice", tmp_path)
    assert loaded is not None
    assert loaded.keyid == first.keyid
    # Either half alone is enough to refuse: a lone .pub (say, a copied public key)
    # must not be overwritten by a new pair's public half.
    (tmp_path / "bob.pub").write_text("someone else's public key\n")
    with pytest.raises(UsageError, match="already exists"):
        generate_key("bob", tmp_path)
    assert (tmp_path / "bob.pub").read_text() == "someone else's public key\n"
    assert not (tmp_path / "bob.pem").exists()


@pytest.mark.parametrize("name", ["", "../x", "a b", ".hidden", "x" * 65])
def test_generate_key_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="key name"):
        generate_key(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_passphrase_encrypts_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_KEY_PASSPHRASE", "correct horse")
    key = generate_key("secret", tmp_path)
    assert b"ENCRYPTED" in (tmp_path / "secret.pem").read_bytes()
    loaded = load_signing_key("secret", tmp_path)
    assert loaded is not None
    assert loaded.keyid == key.keyid
    assert list_keys(tmp_path)[0].encrypted
    monkeypatch.setenv("CORRAL_KEY_PASSPHRASE", "wrong")
    with pytest.raises(UsageError, match=r"secret\.pem.*wrong CORRAL_KEY_PASSPHRASE"):
        load_signing_key("secret", tmp_path)
    monkeypatch.delenv("CORRAL_KEY_PASSPHRASE")
    with pytest.raises(UsageError, match="encrypted; set CORRAL_KEY_PASSPHRASE"):
        load_signing_key("secret", tmp_path)


def test_load_signing_key_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_signing_key(keys_dir=tmp_path / "none") is None
    only = generate_key("only", tmp_path)
    chosen = load_signing_key(keys_dir=tmp_path)
    assert chosen is not None
    assert chosen.keyid == only.keyid
    generate_key("other", tmp_path)
    with pytest.raises(UsageError, match="several keys"):
        load_signing_key(keys_dir=tmp_path)
    default = generate_key("default", tmp_path)
    chosen = load_signing_key(keys_dir=tmp_path)
    assert chosen is not None
    assert chosen.keyid == default.keyid
    with pytest.raises(NotFoundError, match="no signing key named 'nope'"):
        load_signing_key("nope", tmp_path)
    assert [k.name for k in list_keys(tmp_path)] == ["default", "only", "other"]
    monkeypatch.setenv("CORRAL_KEYS_DIR", str(tmp_path))
    env_key = load_signing_key("only")
    assert env_key is not None
    assert env_key.keyid == only.keyid


# -- round trips ----------------------------------------------------------------


def test_unsigned_directory_and_archive(tmp_path: Path) -> None:
    root = make_plugin(tmp_path / "p")
    assert verify_directory(root) == SignatureStatus("unsigned")
    assert verify_archive(pack_directory(root, tmp_path / "p.corral")).state == "unsigned"


def test_sign_and_verify_round_trip(signed_dir: Path, signed_archive: Path,
                                    key: SigningKey) -> None:
    for status in (verify_directory(signed_dir), verify_archive(signed_archive)):
        assert status.state == "signed"
        assert status.keyid == key.keyid
        assert status.signer == "alice"
        assert status.public_key == key.public_key_b64
        assert status.problems == ()
        assert status.to_dict()["state"] == "signed"
    envelope = json.loads((signed_dir / SIGNATURE_FILE).read_bytes())
    signed = envelope["signed"]
    assert signed["_type"] == "corral/file-manifest"
    assert (signed["plugin"], signed["version"]) == ("acme.signed", "1.2.0")
    assert sorted(signed["files"]) == [name for name, _ in plugin_files(signed_dir)]
    assert SIGNATURE_FILE not in signed["files"]
    assert signed["files"]["data.bin"]["size"] == 1024
    # the file on disk is itself RFC 8785 canonical JSON
    assert rfc8785.dumps(envelope) == (signed_dir / SIGNATURE_FILE).read_bytes()


def test_envelope_writes_nothing_and_pack_extra_matches(tmp_path: Path, key: SigningKey) -> None:
    root = make_plugin(tmp_path / "p")
    envelope = signature_envelope(root, key)
    assert not (root / SIGNATURE_FILE).exists()
    a = pack_directory(root, tmp_path / "a.corral", extra={SIGNATURE_FILE: envelope})
    assert verify_archive(a).state == "signed"
    sign_directory(root, key)
    b = pack_directory(root, tmp_path / "b.corral")
    assert a.read_bytes() == b.read_bytes()  # reproducible either way
    # extra replaces a stale corral.sig in the directory
    (root / SIGNATURE_FILE).write_bytes(b"stale")
    c = pack_directory(root, tmp_path / "c.corral", extra={SIGNATURE_FILE: envelope})
    assert c.read_bytes() == a.read_bytes()


def test_pack_extra_rejects_unsafe_names(tmp_path: Path) -> None:
    root = make_plugin(tmp_path / "p")
    for bad in ("../evil", "/abs", "pkg/", "pkg/mod.py/x"):
        with pytest.raises(InvalidPluginError):
            pack_directory(root, tmp_path / "x.corral", extra={bad: b"x"})
        assert not (tmp_path / "x.corral").exists()


def test_signing_refuses_links(tmp_path: Path, key: SigningKey) -> None:
    root = make_plugin(tmp_path / "p")
    (root / "link.py").symlink_to(root / "pkg" / "mod.py")
    with pytest.raises(InvalidPluginError, match="link"):
        sign_directory(root, key)
    assert not (root / SIGNATURE_FILE).exists()


def test_byte_code_is_never_signed_material(signed_dir: Path, tmp_path: Path) -> None:
    """A cache whose header matches its source may hold other code: it is an added file."""
    import py_compile

    mod = signed_dir / "pkg" / "mod.py"
    cache = signed_dir / "pkg" / "__pycache__"
    mode = py_compile.PycInvalidationMode
    (signed_dir / ".git").mkdir()
    (signed_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert verify_directory(signed_dir).state == "signed"  # tool folders are inert
    strict = verify_directory(signed_dir, strict=True)
    assert strict.state == "modified"
    assert "added: .git/HEAD" in strict.problems
    shutil.rmtree(signed_dir / ".git")

    # a timestamp cache whose header matches the signed source, holding other code
    evil = tmp_path / "evil" / "mod.py"
    evil.parent.mkdir()
    evil.write_text("import os\nos.system('id')\n")
    py_compile.compile(str(evil), cfile=str(cache / "mod.cpython-311.pyc"),
                       invalidation_mode=mode.TIMESTAMP)
    pyc = cache / "mod.cpython-311.pyc"
    st = mod.stat()
    head = bytearray(pyc.read_bytes())
    head[8:12] = (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    head[12:16] = (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc.write_bytes(bytes(head))
    py_compile.compile(str(mod), cfile=str(cache / "mod.cpython-312.pyc"),
                       invalidation_mode=mode.CHECKED_HASH)
    (signed_dir / "pkg" / "ghost.pyc").write_bytes(pyc.read_bytes())
    for strict_mode in (False, True):
        status = verify_directory(signed_dir, strict=strict_mode)
        assert status.state == "modified"
        assert set(status.problems) == {
            f"added: pkg/{n} (byte code is never trusted; delete it)"
            for n in ("__pycache__/mod.cpython-311.pyc", "__pycache__/mod.cpython-312.pyc",
                      "ghost.pyc")}
    (signed_dir / "pkg" / "ghost.pyc").unlink()
    shutil.rmtree(cache)
    assert verify_directory(signed_dir).state == "signed"  # positive control

    archive = pack_directory(signed_dir, tmp_path / "clean.corral")
    assert verify_archive(archive).state == "signed"
    out = tmp_path / "smuggled.corral"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("pkg/__pycache__/mod.cpython-311.pyc", bytes(head))
    status = verify_archive(out)
    assert status.state == "modified"
    assert ("added: pkg/__pycache__/mod.cpython-311.pyc (byte code is never trusted; delete it)"
            in status.problems)


# -- each kind of tampering, with the problem it reports ------------------------


def test_changed_missing_added_renamed(signed_dir: Path) -> None:
    (signed_dir / "pkg" / "mod.py").write_text("import os; os.system('evil')\n")
    (signed_dir / "README.md").unlink()
    (signed_dir / "evil.py").write_text("")
    (signed_dir / "pkg" / "sub" / "deep.py").rename(signed_dir / "pkg" / "sub" / "moved.py")
    status = verify_directory(signed_dir)
    assert status.state == "modified"
    assert set(status.problems) == {
        "changed: pkg/mod.py",
        "missing: README.md",
        "missing: pkg/sub/deep.py",
        "added: evil.py",
        "added: pkg/sub/moved.py",
    }
    assert status.keyid is not None


def test_same_size_change_is_caught(signed_dir: Path) -> None:
    data = bytearray((signed_dir / "data.bin").read_bytes())
    data[500] ^= 1
    (signed_dir / "data.bin").write_bytes(bytes(data))
    assert verify_directory(signed_dir).problems == ("changed: data.bin",)


def test_version_bump_after_signing(signed_dir: Path) -> None:
    toml = signed_dir / "corral.toml"
    toml.write_text(toml.read_text().replace('"1.2.0"', '"1.2.1"'))
    status = verify_directory(signed_dir)
    assert status.state == "modified"
    assert status.problems == (
        "changed: corral.toml",
        "manifest says acme.signed 1.2.0, corral.toml says acme.signed 1.2.1",
    )


def test_link_in_signed_directory(signed_dir: Path) -> None:
    (signed_dir / "pkg" / "mod.py").unlink()
    (signed_dir / "pkg" / "mod.py").symlink_to("/etc/passwd")
    status = verify_directory(signed_dir)
    assert status.state == "modified"
    assert "missing: pkg/mod.py" in status.problems


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d["signed"].__setitem__("version", "9.9.9"), "bad signature"),
        (lambda d: d["signed"]["files"].pop("README.md"), "bad signature"),
        (lambda d: d["signed"]["files"]["data.bin"].__setitem__("size", 1), "bad signature"),
        (lambda d: d["signed"].__setitem__("_type", "x"), "malformed corral.sig: signed._type"),
        (lambda d: d["signed"].__setitem__("spec_version", 2), "unsupported spec_version"),
        (lambda d: d["signed"].__setitem__("extra", 1), "unexpected keys ['extra']"),
        (lambda d: d.__setitem__("signatures", []), "exactly one signature"),
        (lambda d: d["signatures"].append(dict(d["signatures"][0])), "exactly one signature"),
        (lambda d: d["signatures"][0].__setitem__("keyid", "0" * 64), "does not match"),
        (lambda d: d["signatures"][0].__setitem__("sig", "AAAA"), "is 3 bytes, expected 64"),
        (lambda d: d["signatures"][0].__setitem__("sig", "not base64!"), "is not base64"),
        (lambda d: d["signatures"][0].pop("sig"), "missing keys ['sig']"),
        (lambda d: d["signed"]["files"]["README.md"].__setitem__("sha256", "A" * 64),
         "not lowercase hex"),
    ],
)
def test_signature_field_edits(signed_dir: Path, edit: object, problem: str) -> None:
    _rewrite_sig(signed_dir, edit)
    status = verify_directory(signed_dir)
    assert status.state == "invalid"
    assert any(problem in p for p in status.problems), status.problems


def test_swapped_public_key(signed_dir: Path, tmp_path: Path) -> None:
    mallory = generate_key("mallory", tmp_path / "mk")

    def swap(doc: dict[str, list[dict[str, str]]]) -> None:
        doc["signatures"][0]["public_key"] = mallory.public_key_b64
        doc["signatures"][0]["keyid"] = mallory.keyid

    _rewrite_sig(signed_dir, swap)
    status = verify_directory(signed_dir)
    assert status == SignatureStatus("invalid", mallory.keyid, "alice", ("bad signature",),
                                     mallory.public_key_b64)


def test_resigned_by_another_key_is_signed_by_that_key(signed_dir: Path, tmp_path: Path) -> None:
    """Re-signing is not tampering: it is a different signer, which trust then judges."""
    (signed_dir / "evil.py").write_text("")
    mallory = generate_key("mallory", tmp_path / "mk")
    status = sign_directory(signed_dir, mallory)
    assert (status.state, status.keyid) == ("signed", mallory.keyid)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "envelope must be an object"),
        (b'{"signed": 1, "signed": 2, "signatures": []}', "duplicate key"),
    ],
)
def test_malformed_signature_file(signed_dir: Path, data: bytes, problem: str) -> None:
    (signed_dir / SIGNATURE_FILE).write_bytes(data)
    status = verify_directory(signed_dir)
    assert status.state == "invalid"
    assert status.problems[0].startswith("malformed corral.sig: ")
    assert problem in status.problems[0]


def test_non_canonical_signature_file_is_invalid(signed_dir: Path) -> None:
    """Same JSON value, other bytes (pretty-printed): refused, so no byte is free."""
    path = signed_dir / SIGNATURE_FILE
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=2))
    status = verify_directory(signed_dir)
    assert status.state == "invalid"
    assert "canonical" in status.problems[0]


def test_non_canonical_base64_is_invalid(signed_dir: Path) -> None:
    """The spare bits of the last base64 digit must be zero (one key, one spelling)."""
    import base64

    def bump(doc: dict[str, list[dict[str, str]]]) -> None:
        text = doc["signatures"][0]["public_key"]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = alphabet[alphabet.index(text[-2]) ^ 1]
        doc["signatures"][0]["public_key"] = text[:-2] + last + "="
        assert base64.b64decode(doc["signatures"][0]["public_key"]) == base64.b64decode(text)

    _rewrite_sig(signed_dir, bump)
    status = verify_directory(signed_dir)
    assert status.state == "invalid"
    assert "not canonical base64" in status.problems[0]


def test_signature_file_that_is_a_folder(signed_dir: Path) -> None:
    (signed_dir / SIGNATURE_FILE).unlink()
    (signed_dir / SIGNATURE_FILE).mkdir()
    assert verify_directory(signed_dir).state == "invalid"


def test_broken_and_missing_archives(tmp_path: Path, signed_archive: Path) -> None:
    data = signed_archive.read_bytes()
    (tmp_path / "cut.corral").write_bytes(data[: len(data) // 2])
    status = verify_archive(tmp_path / "cut.corral")
    assert status.state == "invalid"
    assert "cut.corral" in status.problems[0]
    missing = verify_archive(tmp_path / "nope.corral")
    assert missing.state == "invalid"
    assert "no such archive" in missing.problems[0]
    assert verify_directory(tmp_path / "nope").state == "invalid"


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda b: b + b"\x00", "end record"),
        (lambda b: b"JUNK" + b, "does not match the central directory"),
        (lambda b: b[:-2] + b"\x03\x00" + b"abc", "end record"),
    ],
)
def test_archive_extension_and_prefix(tmp_path: Path, signed_archive: Path, mutate: object,
                                      problem: str) -> None:
    bad = tmp_path / "bad.corral"
    bad.write_bytes(mutate(signed_archive.read_bytes()))  # type: ignore[operator]
    status = verify_archive(bad)
    assert status.state in ("modified", "invalid")
    if status.state == "modified":
        assert any(problem in p for p in status.problems), status.problems


def test_archive_from_another_zip_tool_is_modified(tmp_path: Path, signed_dir: Path) -> None:
    """Same files, zipped with other metadata: a signed archive must be corral pack's own."""
    out = tmp_path / "other.corral"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(signed_dir.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(signed_dir).as_posix())
    status = verify_archive(out)
    assert status.state == "modified"
    assert status.problems[-1].startswith("archive layout: ")


# -- the fuzz: thousands of mutations, none accepted ----------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _mutate_dir(rng: random.Random, root: Path) -> str:
    """Apply one random tampering to the plugin directory ``root``; return its kind."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    target = rng.choice(files)
    data = target.read_bytes()
    kind = rng.choice(["flip", "truncate", "extend", "add", "remove", "rename", "sigfield"])
    if kind == "flip" and data:
        buf = bytearray(data)
        at = rng.randrange(len(buf))
        buf[at] ^= rng.randrange(1, 256)
        target.write_bytes(bytes(buf))
    elif kind == "truncate" and data:
        target.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "add":
        folder = rng.choice([root, root / "pkg", root / "pkg" / "sub", root / "new"])
        folder.mkdir(exist_ok=True)
        name = rng.choice(["evil.py", ".hidden", "x.pth", "corral.sig.bak", "mod.py"])
        path = folder / name
        path.write_bytes(path.read_bytes() + b"#" if path.exists() else b"")
    elif kind == "remove":
        target.unlink()
    elif kind == "rename":
        target.rename(target.with_name("renamed_" + target.name))
    elif kind == "sigfield":
        _rewrite_sig(root, lambda d: _edit_field(rng, d))
    else:  # extend (and flip/truncate of an empty file)
        kind = "extend"
        target.write_bytes(data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))))
    return kind


def _edit_field(rng: random.Random, doc: dict[str, object]) -> None:
    signed = doc["signed"]
    sig = doc["signatures"][0]  # type: ignore[index]
    assert isinstance(signed, dict)
    name = rng.choice(sorted(signed["files"]))
    choice = rng.randrange(9)
    if choice == 0:
        signed["plugin"] = "acme.other"
    elif choice == 1:
        signed["version"] = "1.2.1"
    elif choice == 2:
        signed["files"][name]["sha256"] = "0" * 64
    elif choice == 3:
        signed["files"][name]["size"] += 1
    elif choice == 4:
        signed["files"]["evil.py"] = {"sha256": "0" * 64, "size": 0}
    elif choice == 5:
        del signed["files"][name]
    elif choice == 6:
        sig["keyid"] = "f" * 64
    elif choice == 7:
        raw = bytearray(__import__("base64").b64decode(sig["sig"]))
        raw[rng.randrange(64)] ^= 1 << rng.randrange(8)
        sig["sig"] = __import__("base64").b64encode(bytes(raw)).decode()
    else:
        raw = bytearray(__import__("base64").b64decode(sig["public_key"]))
        raw[rng.randrange(32)] ^= 1 << rng.randrange(8)
        sig["public_key"] = __import__("base64").b64encode(bytes(raw)).decode()


def _signer_label_only(root: Path, original: dict[str, bytes]) -> bool:
    """True if the only change is the ``signer`` label, which the signature does not cover."""
    now = _files(root)
    if set(now) != set(original):
        return False
    for name in now:
        if name == SIGNATURE_FILE:
            a, b = json.loads(now[name]), json.loads(original[name])
            a["signatures"][0].pop("signer")
            b["signatures"][0].pop("signer")
            if a != b:
                return False
        elif now[name] != original[name]:
            return False
    return True


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder in memory when the machine has one (the fuzz copies thousands of trees)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path / "scratch"
    folder.mkdir(exist_ok=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_fuzz_signed_directory(signed_dir: Path, scratch: Path, key: SigningKey) -> None:
    rng = random.Random(20261125)
    original = _files(signed_dir)
    kinds: dict[str, int] = {}
    label_only = 0
    for i in range(2100):
        work = scratch / f"w{i}"
        shutil.copytree(signed_dir, work)
        kind = _mutate_dir(rng, work)
        kinds[kind] = kinds.get(kind, 0) + 1
        status = verify_directory(work)
        if status.state == "signed":
            # Only a byte flip inside the free-text signer label can keep a valid
            # signature; the key, and so the trust decision, cannot change.
            assert _signer_label_only(work, original), (i, kind)
            assert status.keyid == key.keyid
            label_only += 1
        shutil.rmtree(work)
    assert min(kinds.values()) > 200, kinds
    assert sum(kinds.values()) >= 2000
    assert label_only < 10


def _mutate_archive(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "flip", "flip", "truncate", "extend", "insert", "delete"])
    buf = bytearray(data)
    if kind == "flip":
        buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)):]
    elif kind == "extend":
        buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "insert":
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    else:
        at = rng.randrange(len(buf))
        del buf[at : at + rng.randint(1, 4)]
    return kind, bytes(buf)


def _member_mutation(rng: random.Random, src: Path, out: Path) -> str:
    """Add, remove or rename an entry, or edit one's content, then repack it like corral pack."""
    with zipfile.ZipFile(src) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    names = sorted(entries)
    kind = rng.choice(["add", "remove", "rename", "content", "sig"])
    name = rng.choice(names)
    if kind == "add":
        entries[rng.choice(["evil.py", "pkg/evil.py", "pkg/__pycache__/m.pyc"])] = b"x"
    elif kind == "remove":
        del entries[name]
    elif kind == "rename":
        entries["moved/" + name] = entries.pop(name)
    elif kind == "content":
        entries[name] = entries[name] + b"\n"
    else:
        doc = json.loads(entries[SIGNATURE_FILE])
        doc["signed"]["files"].pop(rng.choice(sorted(doc["signed"]["files"])))
        entries[SIGNATURE_FILE] = rfc8785.dumps(doc)
    folder = out.parent / f"{out.stem}-src"
    shutil.rmtree(folder, ignore_errors=True)
    for entry, content in entries.items():
        path = folder / entry
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if not (folder / "corral.toml").exists():
        return "skip"
    # pack_directory skips byte code, so an added .pyc goes in through extra=
    extra = {k: v for k, v in entries.items() if k.endswith(".pyc")}
    pack_directory(folder, out, extra=extra)
    return kind


def fixed_key() -> SigningKey:
    """A key from fixed bytes: Ed25519 signs deterministically, so its archives never vary."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey("fixed", keyid_of(raw), private, base64.b64encode(raw).decode())


def test_fuzz_signed_archive(tmp_path: Path, scratch: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Verification's own temporary folders go to a private place, to be counted at the end.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    # The same archive every run, so the seeded mutations are the same every run.
    # (With a fresh key each run, one in many runs a byte flip inside a deflate
    # stream re-encoded a file's identical content -- a back-reference to the same
    # repeated text at another distance -- which verifies: file contents are what
    # is signed, and deflate output is not compared byte for byte across zlibs.)
    root = make_plugin(tmp_path / "plugin")
    assert sign_directory(root, fixed_key()).state == "signed"
    signed_archive = pack_directory(root, tmp_path / "signed.corral")
    rng = random.Random(1125)
    data = signed_archive.read_bytes()
    target = scratch / "mutant.corral"
    kinds: dict[str, int] = {}
    for i in range(2200):
        if i % 10 == 9:
            kind = _member_mutation(rng, signed_archive, target)
            if kind == "skip":
                continue
        else:
            kind, mutant = _mutate_archive(rng, data)
            if mutant == data:
                continue
            target.write_bytes(mutant)
        kinds[kind] = kinds.get(kind, 0) + 1
        status = verify_archive(target)
        assert status.state != "signed", (i, kind)
    assert sum(kinds.values()) >= 2000, kinds
    assert not list(private_tmp.iterdir())  # every extraction was cleaned up


def test_file_manifest_needs_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    with pytest.raises(InvalidPluginError, match=r"corral\.toml"):
        file_manifest(tmp_path / "p")
    with pytest.raises(NotFoundError):
        file_manifest(tmp_path / "missing")


# -- what is refused before signing ------------------------------------------------------


def test_a_key_of_another_kind_is_refused_by_name(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "ecdsa.pem").write_bytes(pem)
    with pytest.raises(UsageError, match=r"ecdsa\.pem: not an Ed25519 key") as err:
        load_signing_key("ecdsa", tmp_path)
    assert err.value.details["file"] == str(tmp_path / "ecdsa.pem")


@pytest.mark.parametrize("plugin", [
    'id = 7\nversion = "1.0.0"',
    'id = "acme.x"\nversion = 1.0',
    'id = ["acme.x"]\nversion = ["1.0.0"]',
])
def test_a_manifest_whose_id_or_version_is_not_a_string_is_not_signed(
    tmp_path: Path, key: SigningKey, plugin: str
) -> None:
    root = make_plugin(tmp_path / "p")
    (root / "corral.toml").write_text(f"[plugin]\n{plugin}\n")
    with pytest.raises(InvalidPluginError, match="id and version must be strings"):
        file_manifest(root)
    with pytest.raises(InvalidPluginError, match="id and version must be strings"):
        sign_directory(root, key)
    assert not (root / SIGNATURE_FILE).exists()
