"""The registry's TUF repository: layout, keys, targets, re-signing, rotation, CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
from pathlib import Path

import httpx
import pytest
from tuf.api.metadata import Metadata
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType

from corral._errors import NotFoundError, SignatureInvalid, UsageError
from corral.registry import registry_main
from corral.registry._app import open_server
from corral.registry._service import Registry
from corral.registry._tuf import TufRepository, load_key

from .conftest import _accounts, make_plugin
from .tuf_fixtures import TufApi, tuf_api_fixture  # noqa: F401


def _bin(api: TufApi, path: str) -> str:
    targets = api.repo.targets_role("targets").signed
    assert targets.delegations is not None
    assert targets.delegations.succinct_roles is not None
    return targets.delegations.succinct_roles.get_role_for_target(path)


def _days_left(signed_expires: dt.datetime) -> float:
    return (signed_expires - dt.datetime.now(dt.UTC)).total_seconds() / 86400


def test_init_layout_roles_keys_and_expiry(tuf_api: TufApi) -> None:
    repo = tuf_api.repo
    names = {p.name for p in repo.metadata_dir.iterdir()}
    assert {"1.root.json", "root.json", "1.targets.json", "1.snapshot.json",
            "timestamp.json"} <= names
    assert {f"1.bin-{i:x}.json" for i in range(16)} <= names
    for role in ("snapshot", "timestamp", "bins"):
        mode = stat.S_IMODE((repo.keys_dir / f"{role}.pem").stat().st_mode)
        assert mode == 0o600
    assert sorted(p.name for p in tuf_api.offline.iterdir()) == ["root-1.pem", "targets.pem"]
    assert not list(repo.keys_dir.glob("root*"))
    assert not list(repo.keys_dir.glob("targets*"))
    root = repo.root().signed
    assert root.consistent_snapshot is True
    assert root.roles["root"].threshold == 1
    offline_root = load_key(tuf_api.offline / "root-1.pem").public_key.keyid
    assert root.roles["root"].keyids == [offline_root]
    ts_key = load_key(repo.keys_dir / "timestamp.pem").public_key.keyid
    assert root.roles["timestamp"].keyids == [ts_key]
    assert 364 < _days_left(root.expires) <= 365
    assert 0.9 < _days_left(repo.timestamp().signed.expires) <= 1
    assert 6.9 < _days_left(repo.snapshot().signed.expires) <= 7
    assert 29.9 < _days_left(repo.targets_role("bin-0").signed.expires) <= 30
    targets = repo.targets_role("targets").signed
    assert targets.delegations is not None
    succinct = targets.delegations.succinct_roles
    assert succinct is not None
    assert succinct.number_of_bins == 16
    assert succinct.name_prefix == "bin"
    bins_key = load_key(repo.keys_dir / "bins.pem").public_key.keyid
    assert succinct.keyids == [bins_key]
    # a client bootstrapped from 1.root.json accepts the whole chain
    t = TrustedMetadataSet((repo.metadata_dir / "1.root.json").read_bytes(),
                           EnvelopeType.METADATA)
    t.update_timestamp((repo.metadata_dir / "timestamp.json").read_bytes())
    t.update_snapshot((repo.metadata_dir / "1.snapshot.json").read_bytes())
    t.update_targets((repo.metadata_dir / "1.targets.json").read_bytes())


def test_publish_and_yank_update_bins_snapshot_timestamp(tuf_api: TufApi) -> None:
    repo = tuf_api.repo
    ts0 = repo.timestamp().signed.version
    pub = tuf_api.publish("acme.alpha", "1.0.0")
    assert repo.timestamp().signed.version == ts0 + 1
    arch = "plugins/acme.alpha/acme.alpha-1.0.0.corral"
    tf = repo.targets_role(_bin(tuf_api, arch)).signed.targets[arch]
    assert tf.length == pub["size"]
    assert tf.hashes == {"sha256": pub["sha256"]}
    idx = repo.targets_role(_bin(tuf_api, "index/acme.alpha.json")).signed.targets[
        "index/acme.alpha.json"]
    body = (repo.targets_dir / "index" / f"{idx.hashes['sha256']}.acme.alpha.json").read_bytes()
    assert hashlib.sha256(body).hexdigest() == idx.hashes["sha256"]
    assert len(body) == idx.length
    doc = json.loads(body)
    assert doc["id"] == "acme.alpha"
    assert doc["releases"][0]["version"] == "1.0.0"
    assert doc["releases"][0]["sha256"] == pub["sha256"]
    assert doc["releases"][0]["publisher"] == "acme"
    assert doc["releases"][0]["yanked"] is False
    r = tuf_api.http.post("/v1/plugins/acme.alpha/versions/1.0.0/yank", json={"reason": "x"},
                          headers={"Authorization": f"Bearer {tuf_api.token}"})
    assert r.status_code == 200
    assert repo.timestamp().signed.version == ts0 + 2
    idx2 = repo.targets_role(_bin(tuf_api, "index/acme.alpha.json")).signed.targets[
        "index/acme.alpha.json"]
    assert idx2.hashes != idx.hashes
    body2 = (repo.targets_dir / "index" / f"{idx2.hashes['sha256']}.acme.alpha.json")
    assert json.loads(body2.read_bytes())["releases"][0]["yanked"] is True
    # syncing again changes nothing: no new versions are signed
    assert repo.sync(tuf_api.registry) == []
    assert repo.timestamp().signed.version == ts0 + 2


def test_http_serving(tuf_api: TufApi) -> None:
    pub = tuf_api.publish("acme.alpha", "1.0.0")
    r = tuf_api.http.get("/tuf/metadata/1.root.json")
    assert r.status_code == 200
    assert r.content == (tuf_api.repo.metadata_dir / "1.root.json").read_bytes()
    assert tuf_api.http.get("/tuf/metadata/2.root.json").status_code == 404
    for bad in ("../keys/timestamp.pem", "keys.json", "0.root.json", "1.root.json.bak"):
        r = tuf_api.http.get(f"/tuf/metadata/{bad}")
        assert r.status_code == 404, bad
        assert "timestamp.pem" not in r.text or "BEGIN" not in r.text
    r = tuf_api.http.get(f"/tuf/targets/plugins/acme.alpha/{pub['sha256']}."
                         "acme.alpha-1.0.0.corral")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == pub["sha256"]
    wrong = "0" * 64
    assert tuf_api.http.get(f"/tuf/targets/plugins/acme.alpha/{wrong}."
                            "acme.alpha-1.0.0.corral").status_code == 404
    assert tuf_api.http.get("/tuf/targets/plugins/acme.alpha/acme.alpha-1.0.0.corral"
                            ).status_code == 404


def test_registry_without_tuf_answers_404(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "data")
    with open_server(reg) as url:
        r = httpx.get(f"{url}/tuf/metadata/timestamp.json")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        assert "corral registry tuf init" in r.json()["error"]["message"]
    reg.close()
    with pytest.raises(NotFoundError, match="tuf init"):
        TufRepository.open(tmp_path / "data")


def test_init_refuses_bad_input_and_reinit(tuf_api: TufApi, tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "other")
    for kw in ({"bins": 12}, {"bins": 1}, {"root_keys": 1, "root_threshold": 2}):
        with pytest.raises(UsageError):
            TufRepository.initialise(reg, tmp_path / "other", tmp_path / "k", **kw)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="expiry"):
        TufRepository.initialise(reg, tmp_path / "other", tmp_path / "k",
                                 expiry={"timestamp": 0})
    assert not (tmp_path / "other" / "tuf" / "metadata").exists()
    reg.close()
    with pytest.raises(UsageError, match="already initialised"):
        TufRepository.initialise(tuf_api.registry, tuf_api.data, tmp_path / "k2")


def test_refresh_resigns_only_past_half_life(tuf_api: TufApi) -> None:
    repo = tuf_api.repo
    assert repo.refresh() == {}
    ts = repo.timestamp()
    ts.signed.version += 1
    ts.signed.expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=6)
    ts.signatures.clear()
    ts.sign(load_key(repo.keys_dir / "timestamp.pem"))
    (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())
    # the request path re-signs it too; call refresh directly here
    out = repo.refresh()
    assert out == {"timestamp": ts.signed.version + 1}
    assert _days_left(repo.timestamp().signed.expires) > 0.9
    assert repo.refresh() == {}
    forced = repo.refresh(force=True)
    assert set(forced) == {*(f"bin-{i:x}" for i in range(16)), "snapshot", "timestamp"}


def test_timestamp_request_resigns_when_stale(tuf_api: TufApi) -> None:
    repo = tuf_api.repo
    ts = repo.timestamp()
    ts.signed.version += 1
    ts.signed.expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    ts.signatures.clear()
    ts.sign(load_key(repo.keys_dir / "timestamp.pem"))
    (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())
    served = Metadata.from_bytes(tuf_api.http.get("/tuf/metadata/timestamp.json").content)
    assert served.signed.version == ts.signed.version + 1
    assert _days_left(served.signed.expires) > 0.9


def test_rotate_root_signed_by_old_and_new(tuf_api: TufApi, tmp_path: Path) -> None:
    repo = tuf_api.repo
    (tmp_path / "nokeys").mkdir()
    with pytest.raises(NotFoundError, match="no root key"):
        repo.rotate_root(tmp_path / "nokeys", tmp_path / "n0")
    from corral.registry._tuf import generate_key

    generate_key(tmp_path / "stranger" / "root-1.pem")
    with pytest.raises(SignatureInvalid, match="threshold"):
        repo.rotate_root(tmp_path / "stranger", tmp_path / "n0")
    assert not (tmp_path / "n0").exists()
    assert not (repo.metadata_dir / "2.root.json").exists()
    assert repo.rotate_root(tuf_api.offline, tmp_path / "newroot") == 2
    data2 = (repo.metadata_dir / "2.root.json").read_bytes()
    assert (repo.metadata_dir / "root.json").read_bytes() == data2
    t = TrustedMetadataSet((repo.metadata_dir / "1.root.json").read_bytes(),
                           EnvelopeType.METADATA)
    t.update_root(data2)
    md = Metadata.from_bytes(data2)
    old = load_key(tuf_api.offline / "root-1.pem").public_key.keyid
    new = load_key(tmp_path / "newroot" / "root-1.pem").public_key.keyid
    assert set(md.signatures) == {old, new}
    assert md.signed.roles["root"].keyids == [new]  # type: ignore[attr-defined]
    # the old key alone can no longer rotate
    with pytest.raises(SignatureInvalid):
        repo.rotate_root(tuf_api.offline, tmp_path / "again")


def test_cli_init_refresh_and_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    reg = Registry.open(data)
    token, _ = _accounts(reg)
    reg.close()
    assert registry_main(["tuf", "init", "--data", str(data), "--offline-keys",
                          str(tmp_path / "off"), "--bins", "4", "--expiry", "timestamp=2",
                          "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["root"] == 1
    assert doc["bins"] == 4
    repo = TufRepository.open(data)
    assert 1.9 < _days_left(repo.timestamp().signed.expires) <= 2
    assert registry_main(["tuf", "init", "--data", str(data), "--offline-keys",
                          str(tmp_path / "off2"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "usage"
    assert registry_main(["tuf", "refresh", "--data", str(data), "--force", "--json"]) == 0
    assert "timestamp" in json.loads(capsys.readouterr().out)["resigned"]
    assert registry_main(["tuf", "rotate-root", "--data", str(data), "--offline-keys",
                          str(tmp_path / "off"), "--new-keys", str(tmp_path / "new"),
                          "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"root": 2}
    home = tmp_path / "home"
    assert registry_main(["trust", "http://127.0.0.1:9", "--root",
                          str(data / "tuf" / "metadata" / "1.root.json"), "--home", str(home),
                          "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["root_version"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert registry_main(["trust", "http://127.0.0.1:9", "--root", str(bad), "--home",
                          str(home), "--json"]) == 4
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "signature_invalid"
    # publishing through the service after a CLI init updates targets
    with Registry.open(data) as reg2:
        archive = make_plugin(tmp_path, "acme.beta")
        reg2.publish(archive, reg2.authenticate(token))
    assert "index/acme.beta.json" in json.dumps(
        [TufRepository(data).targets_role(f"bin-{i}").signed.to_dict() for i in range(4)])
