"""Publishers' signing keys and signature checks on publish, against a live server."""

from __future__ import annotations

import json
import shutil
import sqlite3
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from corral._disk.archive import pack_directory
from corral._distribution.signing import SigningKey, generate_key, signature_envelope
from corral._errors import PermissionDenied, SignatureInvalid
from corral.registry import registry_main
from corral.registry._service import Registry
from corral.registry.client import RegistryClient

from .conftest import Api, make_plugin


def signed_plugin(root: Path, plugin_id: str, key: SigningKey, version: str = "1.0.0",
                  *, tamper: bool = False) -> Path:
    """A valid plugin archive signed by ``key`` (with ``tamper``: one file changed after)."""
    src = root / f"src-{uuid.uuid4().hex[:8]}"
    src.mkdir(parents=True)
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "{plugin_id}"
        name = "Signed"
        version = "{version}"
        description = "A signed test plugin"
        license = "MIT"
        authors = [{{ name = "Test Author" }}]

        [exports]
        hello = "hello_mod:hello"
        """))
    (src / "hello_mod.py").write_text("def hello(input, ctx):\n    return input\n")
    envelope = signature_envelope(src, key)
    if tamper:
        (src / "hello_mod.py").write_text("def hello(input, ctx):\n    return 'pwned'\n")
    out = root / f"{plugin_id}-{version}-{uuid.uuid4().hex[:6]}.corral"
    pack_directory(src, out, extra={"corral.sig": envelope})
    shutil.rmtree(src)
    return out


def uid(prefix: str) -> str:
    return f"acme.{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: generate_key(name, folder) for name in ("acme", "stranger", "outsider", "leaked")}


@pytest.fixture(scope="module")
def registered(api: Api, keys: dict[str, SigningKey]) -> Api:
    """``api`` with acme's keys registered over HTTP."""
    for name in ("acme", "leaked"):
        r = api.http.post("/v1/publishers/acme/keys", headers=api.auth(),
                          json={"public_key": keys[name].public_key_b64})
        assert r.status_code == 201, r.text
        assert r.json()["keyid"] == keys[name].keyid
    return api


def test_key_endpoints_and_permissions(registered: Api, keys: dict[str, SigningKey]) -> None:
    api = registered
    listed = api.http.get("/v1/publishers/acme/keys").json()
    by_id = {k["keyid"]: k for k in listed["keys"]}
    assert by_id[keys["acme"].keyid]["public_key"] == keys["acme"].public_key_b64
    assert by_id[keys["acme"].keyid]["revoked"] is False
    # adding the same key again is idempotent
    again = api.http.post("/v1/publishers/acme/keys", headers=api.auth(),
                          json={"public_key": keys["acme"].public_key_b64})
    assert again.status_code == 201
    assert len(api.http.get("/v1/publishers/acme/keys").json()["keys"]) == len(by_id)
    # another publisher's token may not add keys to acme
    r = api.http.post("/v1/publishers/acme/keys", headers=api.auth(api.other_token),
                      json={"public_key": keys["stranger"].public_key_b64})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    r = api.http.post("/v1/publishers/acme/keys",
                      json={"public_key": keys["stranger"].public_key_b64})
    assert r.status_code == 401
    r = api.http.post("/v1/publishers/acme/keys", headers=api.auth(),
                      json={"public_key": "not-a-key"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "usage"
    r = api.http.get("/v1/publishers/nobody/keys")
    assert r.status_code == 404
    # an admin token may manage anyone's keys
    admin = api.registry.create_token("evil", scopes=("admin",))
    r = api.http.post("/v1/publishers/acme/keys", headers=api.auth(admin),
                      json={"public_key": keys["stranger"].public_key_b64})
    assert r.status_code == 201
    r = api.http.delete(f"/v1/publishers/acme/keys/{keys['stranger'].keyid}",
                        headers=api.auth(admin))
    assert r.status_code == 200
    assert r.json()["revoked"] is True


def test_unsigned_publish_is_recorded_unsigned(registered: Api, tmp_path: Path) -> None:
    pid = uid("plain")
    r = registered.publish(make_plugin(tmp_path, pid))
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["signature"], body["signer"], body["publisher_verified"]) == (
        "unsigned", None, False)


def test_signed_by_own_key_then_publisher_verified(registered: Api, keys: dict[str, SigningKey],
                                                  tmp_path: Path) -> None:
    api = registered
    pid = uid("own")
    r = api.publish(signed_plugin(tmp_path, pid, keys["acme"]))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["signature"] == "signed"
    assert body["signer"] == keys["acme"].keyid
    assert body["publisher_verified"] is False  # acme is not a verified publisher yet
    api.registry.verify_publisher("acme")
    try:
        shown = api.http.get(f"/v1/plugins/{pid}").json()
        assert shown["versions"][0]["publisher_verified"] is True
        assert shown["versions"][0]["signer"] == keys["acme"].keyid
        resolved = api.http.get(f"/v1/plugins/{pid}/resolve").json()
        assert resolved["publisher_verified"] is True
    finally:
        api.registry.verify_publisher("acme", False)
    assert api.http.get(f"/v1/plugins/{pid}").json()["versions"][0]["publisher_verified"] is False


def test_signed_by_a_stranger_is_not_publisher_verified(
    registered: Api, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    api = registered
    pid = uid("stranger")
    api.registry.verify_publisher("acme")
    try:
        r = api.publish(signed_plugin(tmp_path, pid, keys["outsider"]))
        assert r.status_code == 201, r.text
        body = r.json()
        assert (body["signature"], body["signer"]) == ("signed", keys["outsider"].keyid)
        assert body["publisher_verified"] is False
    finally:
        api.registry.verify_publisher("acme", False)


def test_modified_signed_archive_is_refused(registered: Api, keys: dict[str, SigningKey],
                                           tmp_path: Path) -> None:
    api = registered
    pid = uid("tampered")
    before = sorted(p.name for p in (api.data / "artifacts").rglob("*") if p.is_file())
    r = api.publish(signed_plugin(tmp_path, pid, keys["acme"], tamper=True))
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "signature_invalid"
    assert pid in error["message"]
    assert "changed: hello_mod.py" in error["message"]
    assert error["state"] == "modified"
    assert error["problems"] == ["changed: hello_mod.py"]
    assert api.http.get(f"/v1/plugins/{pid}").status_code == 404
    after = sorted(p.name for p in (api.data / "artifacts").rglob("*") if p.is_file())
    assert after == before  # nothing stored


def test_corrupt_signature_is_refused(registered: Api, keys: dict[str, SigningKey],
                                      tmp_path: Path) -> None:
    import zipfile

    pid = uid("badsig")
    good = signed_plugin(tmp_path, pid, keys["acme"])
    bad = tmp_path / "bad.corral"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "corral.sig":
                doc = json.loads(data)
                doc["signed"]["version"] = "9.9.9"
                import rfc8785

                data = rfc8785.dumps(doc)
            dst.writestr(info, data)
    r = registered.publish(bad)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "signature_invalid"
    assert error["state"] == "invalid"
    assert "bad signature" in error["message"]


def test_revoked_key_is_refused_and_loses_verification(
    registered: Api, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    api = registered
    pid = uid("leak")
    assert api.publish(signed_plugin(tmp_path, pid, keys["leaked"])).status_code == 201
    api.registry.verify_publisher("acme")
    try:
        assert api.http.get(f"/v1/plugins/{pid}").json()["versions"][0]["publisher_verified"]
        r = api.http.delete(f"/v1/publishers/acme/keys/{keys['leaked'].keyid}",
                            headers=api.auth())
        assert r.status_code == 200, r.text
        version = api.http.get(f"/v1/plugins/{pid}").json()["versions"][0]
        assert version["publisher_verified"] is False
        assert version["signer"] == keys["leaked"].keyid
        r = api.publish(signed_plugin(tmp_path, pid, keys["leaked"], version="1.0.1"))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "signature_invalid"
        assert keys["leaked"].keyid in r.json()["error"]["message"]
        assert "revoked" in r.json()["error"]["message"]
        # a revoked key cannot be added back
        r = api.http.post("/v1/publishers/acme/keys", headers=api.auth(),
                          json={"public_key": keys["leaked"].public_key_b64})
        assert r.status_code == 400
    finally:
        api.registry.verify_publisher("acme", False)


def test_client_key_methods(registered: Api, tmp_path: Path) -> None:
    fresh = generate_key("client", tmp_path / "k")
    with RegistryClient(registered.url, registered.token) as client:
        added = client.add_key("acme", fresh.public_key_b64)
        assert added["keyid"] == fresh.keyid
        assert fresh.keyid in {k["keyid"] for k in client.list_keys("acme")}
        assert client.revoke_key("acme", fresh.keyid)["revoked"] is True
    with RegistryClient(registered.url, registered.other_token) as client, \
            pytest.raises(PermissionDenied):
        client.add_key("acme", fresh.public_key_b64)
    with RegistryClient(registered.url, registered.token) as client:
        archive = signed_plugin(tmp_path, uid("client"), fresh, tamper=True)
        with pytest.raises(SignatureInvalid):
            client.publish(archive)


def test_admin_cli_add_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "reg"
    with Registry.open(data) as reg:
        reg.create_publisher("acme")
    key = generate_key("cli", tmp_path / "k")
    code = registry_main(["admin", "add-key", "acme", str(tmp_path / "k" / "cli.pub"),
                          "--data", str(data), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keyid"] == key.keyid
    assert doc["publisher"] == "acme"
    code = registry_main(["admin", "add-key", "nobody", key.public_key_b64, "--data", str(data),
                          "--json"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"
    code = registry_main(["admin", "revoke-key", "acme", key.keyid, "--data", str(data),
                          "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["revoked"] is True
    with Registry.open(data) as reg:
        assert reg.list_publisher_keys("acme")[0]["revoked"] is True


def test_migration_adds_the_signing_schema(tmp_path: Path) -> None:
    """A registry created before signing existed gains the table and column on open."""
    data = tmp_path / "old"
    Registry.open(data).close()
    db = sqlite3.connect(data / "registry.db")
    db.execute("DROP TABLE publisher_keys")
    db.execute("ALTER TABLE versions DROP COLUMN signer")
    db.execute("DELETE FROM schema_migrations WHERE version = 3")
    db.commit()
    db.close()
    with Registry.open(data) as reg:
        reg.create_publisher("acme")
        key = generate_key("m", tmp_path / "k")
        assert reg.add_publisher_key("acme", key.public_key_b64)["keyid"] == key.keyid
    db = sqlite3.connect(data / "registry.db")
    cols = {row[1] for row in db.execute("PRAGMA table_info(versions)")}
    db.close()
    assert "signer" in cols


def test_http_shapes(registered: Api) -> None:
    spec = registered.http.get("/openapi.json").json()
    assert "/v1/publishers/{publisher}/keys" in spec["paths"]
    assert isinstance(registered.http, httpx.Client)
