"""The TUF-verified registry Source against a real registry (and a tampering proxy) on loopback."""

from __future__ import annotations

import datetime as dt
import json
import random
import socket
import time
from pathlib import Path

import pytest
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType

from corral._distribution.registry_source import RegistrySource, cache_dir, trust_registry
from corral._errors import NotFoundError, SignatureInvalid, TransferError
from corral.registry._tuf import generate_key

from .tuf_fixtures import Proxy, TufApi, proxy_fixture, tuf_api_fixture  # noqa: F401

ROOT = "/tuf/metadata"


def _trusted(api: TufApi, home: Path, url: str | None = None) -> RegistrySource:
    """Trust the registry's first root (as an operator would, out of band) and open it."""
    url = url or api.url
    if not cache_dir(home, url).exists():
        trust_registry(home, url, (api.repo.metadata_dir / "1.root.json").read_bytes())
    return RegistrySource(url, home, timeout=5)


def _cached(home: Path, url: str) -> dict[str, bytes]:
    d = cache_dir(home, url)
    return {p.name: p.read_bytes() for p in sorted(d.rglob("*.json")) if p.is_file()}


def test_publish_then_releases_and_verified_fetch(tuf_api: TufApi, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    pub = tuf_api.publish("acme.alpha", "1.1.0", payload=random.Random(7).randbytes(200_000))
    with _trusted(tuf_api, tmp_path / "home") as src:
        rels = {r.version: r for r in src.releases("acme.alpha")}
        r = rels["1.1.0"]
        seen: list[tuple[int, int]] = []
        out = src.fetch(r, tmp_path / "dl", lambda d, t: seen.append((d, t)))
    assert set(rels) == {"1.0.0", "1.1.0"}
    assert r.sha256 == pub["sha256"]
    assert r.size == pub["size"]
    assert r.publisher == "acme"
    assert r.permissions == {"fs-read": ["{workspace}"]}
    assert out.name == "acme.alpha-1.1.0.corral"
    assert out.stat().st_size == r.size
    assert seen
    assert seen[-1] == (r.size, r.size)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [out.name]
    # a yank shows up in a fresh source's index
    y = tuf_api.http.post("/v1/plugins/acme.alpha/versions/1.0.0/yank", json={"reason": "bad"},
                          headers={"Authorization": f"Bearer {tuf_api.token}"})
    assert y.status_code == 200
    with _trusted(tuf_api, tmp_path / "home") as src:
        again = {r.version: r for r in src.releases("acme.alpha")}
    assert again["1.0.0"].yanked
    assert not again["1.1.0"].yanked


def test_unknown_plugin_and_untrusted_registry(tuf_api: TufApi, tmp_path: Path) -> None:
    with pytest.raises(SignatureInvalid, match="corral registry trust"):
        RegistrySource(tuf_api.url, tmp_path / "nohome")
    with _trusted(tuf_api, tmp_path / "home") as src, \
            pytest.raises(NotFoundError, match=r"acme\.nope"):
        src.releases("acme.nope")


def test_trust_rejects_what_is_not_a_self_signed_root(tuf_api: TufApi, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(SignatureInvalid, match="not a valid self-signed TUF root"):
        trust_registry(home, tuf_api.url, b"{not json")
    ts = (tuf_api.repo.metadata_dir / "timestamp.json").read_bytes()
    with pytest.raises(SignatureInvalid):
        trust_registry(home, tuf_api.url, ts)
    md = Metadata.from_bytes((tuf_api.repo.metadata_dir / "1.root.json").read_bytes())
    md.signatures.clear()
    md.sign(generate_key(tmp_path / "stranger.pem"))
    with pytest.raises(SignatureInvalid):
        trust_registry(home, tuf_api.url, md.to_bytes())
    assert not cache_dir(home, tuf_api.url).exists()


def _sign_online(api: TufApi, md: Metadata, role: str) -> bytes:  # type: ignore[type-arg]
    from corral.registry._tuf import load_key

    md.signatures.clear()
    md.sign(load_key(api.repo.keys_dir / f"{role}.pem"))
    return md.to_bytes()


def _bin_of(api: TufApi, path: str) -> str:
    targets = api.repo.targets_role("targets").signed
    assert targets.delegations is not None
    assert targets.delegations.succinct_roles is not None
    return targets.delegations.succinct_roles.get_role_for_target(path)


def test_rollback_of_timestamp_and_snapshot_fails(
        tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    old_ts = (tuf_api.repo.metadata_dir / "timestamp.json").read_bytes()
    tuf_api.publish("acme.alpha", "1.1.0")
    home = tmp_path / "home"
    with _trusted(tuf_api, home, proxy.url) as src:
        assert len(src.releases("acme.alpha")) == 2
    before = _cached(home, proxy.url)
    proxy.overrides[f"{ROOT}/timestamp.json"] = old_ts
    with _trusted(tuf_api, home, proxy.url) as src, \
            pytest.raises(SignatureInvalid, match="timestamp") as err:
        src.releases("acme.alpha")
    assert err.value.details["role"] == "timestamp"
    assert "BadVersionNumberError" in err.value.message
    # a timestamp signed with the real online key but naming an older snapshot
    ts = tuf_api.repo.timestamp()
    ts.signed.version += 1
    ts.signed.snapshot_meta = Metadata.from_bytes(old_ts).signed.snapshot_meta  # type: ignore[attr-defined]
    proxy.overrides[f"{ROOT}/timestamp.json"] = _sign_online(tuf_api, ts, "timestamp")
    with _trusted(tuf_api, home, proxy.url) as src, pytest.raises(SignatureInvalid):
        src.releases("acme.alpha")
    assert _cached(home, proxy.url) == before


def test_freeze_expired_timestamp_fails(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    ts = tuf_api.repo.timestamp()
    ts.signed.version += 1
    ts.signed.expires = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    proxy.overrides[f"{ROOT}/timestamp.json"] = _sign_online(tuf_api, ts, "timestamp")
    home = tmp_path / "home"
    with _trusted(tuf_api, home, proxy.url) as src, \
            pytest.raises(SignatureInvalid, match="ExpiredMetadataError") as err:
        src.releases("acme.alpha")
    assert err.value.details["role"] == "timestamp"
    assert "timestamp.json" not in _cached(home, proxy.url)


def test_mix_and_match_bin_version_fails(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    tuf_api.publish("acme.alpha", "1.1.0")
    name = _bin_of(tuf_api, "index/acme.alpha.json")
    current = tuf_api.repo.snapshot().signed.meta[f"{name}.json"].version
    assert current >= 3
    older = (tuf_api.repo.metadata_dir / f"{current - 1}.{name}.json").read_bytes()
    proxy.overrides[f"{ROOT}/{current}.{name}.json"] = older
    with _trusted(tuf_api, tmp_path / "home", proxy.url) as src, \
            pytest.raises(SignatureInvalid, match=name) as err:
        src.releases("acme.alpha")
    assert err.value.details["role"] == name


def test_endless_data_is_cut_off(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    home = tmp_path / "home"
    with _trusted(tuf_api, home, proxy.url) as src:
        rel = src.releases("acme.alpha")[0]
        proxy.endless.add("/tuf/targets/plugins/")
        t0 = time.monotonic()
        with pytest.raises(SignatureInvalid, match="longer than its signed length") as err:
            src.fetch(rel, tmp_path / "dl")
        assert time.monotonic() - t0 < 10  # a hang guard: the endless body never ends
    assert err.value.plugin_id == "acme.alpha"
    time.sleep(0.3)
    assert proxy.sent < 32 * 1024 * 1024  # bounded by socket buffers, not by the server
    assert list((tmp_path / "dl").iterdir()) == []
    proxy.endless = {f"{ROOT}/timestamp.json"}
    with _trusted(tuf_api, home, proxy.url) as src, \
            pytest.raises(SignatureInvalid, match="timestamp"):
        src.releases("acme.alpha")


def test_bad_target_hash_fails(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    pub = tuf_api.publish("acme.alpha", "1.0.0")
    with _trusted(tuf_api, tmp_path / "home", proxy.url) as src:
        rel = src.releases("acme.alpha")[0]
        url = f"/tuf/targets/plugins/acme.alpha/{pub['sha256']}.acme.alpha-1.0.0.corral"
        body = bytearray(httpx_get(tuf_api.url + url))
        body[len(body) // 2] ^= 0xFF
        proxy.overrides[url] = bytes(body)
        with pytest.raises(SignatureInvalid, match="LengthOrHashMismatchError"):
            src.fetch(rel, tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def httpx_get(url: str) -> bytes:
    import httpx

    r = httpx.get(url)
    r.raise_for_status()
    return r.content


def test_root_rotation_followed_and_online_rotation(tuf_api: TufApi, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    home = tmp_path / "home"
    with _trusted(tuf_api, home) as src:
        assert len(src.releases("acme.alpha")) == 1
    assert tuf_api.repo.rotate_root(tuf_api.offline, tmp_path / "newroot") == 2
    with _trusted(tuf_api, home) as src:
        assert len(src.releases("acme.alpha")) == 1
    assert (cache_dir(home, tuf_api.url) / "root_history" / "2.root.json").is_file()
    # online keys: new root (3) signed by the current root key, metadata by both key sets
    old_ts_key = (tuf_api.repo.keys_dir / "timestamp.pem").read_bytes()
    (tmp_path / "newroot" / "targets.pem").write_bytes((tuf_api.offline / "targets.pem")
                                                       .read_bytes())
    assert tuf_api.repo.rotate_online(tmp_path / "newroot") == 3
    assert (tuf_api.repo.keys_dir / "timestamp.pem").read_bytes() != old_ts_key
    tuf_api.publish("acme.alpha", "1.1.0")  # signed with the new online keys only
    with _trusted(tuf_api, home) as src:
        assert {r.version for r in src.releases("acme.alpha")} == {"1.0.0", "1.1.0"}
    fresh = tmp_path / "fresh"  # a client that only ever trusted root 1
    with _trusted(tuf_api, fresh) as src:
        assert len(src.releases("acme.alpha")) == 2


def test_root_signed_only_by_new_keys_rejected(
        tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    md = tuf_api.repo.root()
    root = md.signed
    for keyid in list(root.roles["root"].keyids):
        root.revoke_key(keyid, "root")
    new = generate_key(tmp_path / "evil-root.pem")
    root.add_key(new.public_key, "root")
    root.version += 1
    md.signatures.clear()
    md.sign(new)
    proxy.overrides[f"{ROOT}/2.root.json"] = md.to_bytes()
    home = tmp_path / "home"
    with _trusted(tuf_api, home, proxy.url) as src, \
            pytest.raises(SignatureInvalid, match="UnsignedMetadataError") as err:
        src.releases("acme.alpha")
    assert err.value.details["role"] == "root"
    assert not (cache_dir(home, proxy.url) / "root_history" / "2.root.json").exists()


def test_registry_down_and_slow(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with _trusted(tuf_api, tmp_path / "a", dead) as src, \
            pytest.raises(TransferError, match=dead) as err:
        src.releases("acme.alpha")
    assert err.value.code == "unavailable"
    proxy.delay = 3.0
    trust_registry(tmp_path / "b", proxy.url,
                   (tuf_api.repo.metadata_dir / "1.root.json").read_bytes())
    # ReadTimeout is the proof: waiting out the 3 s delay would have answered.
    with RegistrySource(proxy.url, tmp_path / "b", timeout=0.5) as src, \
            pytest.raises(TransferError, match="ReadTimeout"):
        src.releases("acme.alpha")


def _mutations(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    kind = rng.randrange(8)
    b = bytearray(data)
    i = rng.randrange(len(b))
    if kind == 0:
        b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del b[i: i + rng.randrange(1, 8)]
    elif kind == 2:
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    elif kind == 3:
        b[i] = rng.choice(b"0123456789abcdef\"{}[],:")
    elif kind == 4:
        return bytes(b[: i])
    doc = json.loads(data)
    signed = doc["signed"]
    if kind == 5:  # change a field without re-signing
        key = rng.choice(sorted(signed))
        val = signed[key]
        signed[key] = (val + rng.choice([-1, 1, 1000]) if isinstance(val, int)
                       else "2999-01-01T00:00:00Z" if key == "expires" else val)
        if key == "spec_version" or signed[key] == val:
            signed["version"] = signed["version"] + 1
    elif kind == 6:  # graft another file's signatures
        doc["signatures"] = json.loads(rng.choice(others))["signatures"]
    else:  # duplicate / drop signatures
        sigs = doc["signatures"]
        doc["signatures"] = sigs * 2 if rng.random() < 0.5 else []
    return json.dumps(doc).encode()


def _same(a: bytes, b: bytes) -> bool:
    """Mutations that do not change the document (whitespace, hex case) are not attacks."""
    try:
        x, y = json.loads(a), json.loads(b)
    except (ValueError, UnicodeDecodeError):
        return False
    for d in (x, y):
        if isinstance(d, dict):
            for s in d.get("signatures") or []:
                if isinstance(s, dict) and isinstance(s.get("sig"), str):
                    s["sig"] = s["sig"].lower()
    return bool(x == y)


def test_metadata_fuzz_no_mutation_accepted(tuf_api: TufApi) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    repo = tuf_api.repo
    md = repo.metadata_dir
    root1 = (md / "1.root.json").read_bytes()
    ts = (md / "timestamp.json").read_bytes()
    snap_v = repo.snapshot().signed.version
    snap = (md / f"{snap_v}.snapshot.json").read_bytes()
    tv = repo.snapshot().signed.meta["targets.json"].version
    targets = (md / f"{tv}.targets.json").read_bytes()
    name = _bin_of(tuf_api, "index/acme.alpha.json")
    bv = repo.snapshot().signed.meta[f"{name}.json"].version
    bin_ = (md / f"{bv}.{name}.json").read_bytes()
    repo.rotate_root(tuf_api.offline, tuf_api.tmp / "newroot")
    root2 = (md / "2.root.json").read_bytes()
    others = [root1, ts, snap, targets, bin_, root2]

    def load(upto: str) -> TrustedMetadataSet:
        t = TrustedMetadataSet(root1, EnvelopeType.METADATA)
        if upto == "root":
            return t
        t.update_timestamp(ts)
        if upto == "timestamp":
            return t
        t.update_snapshot(snap)
        if upto == "snapshot":
            return t
        t.update_targets(targets)
        return t

    steps = {
        "root": (root2, lambda t, d: t.update_root(d)),
        "timestamp": (ts, lambda t, d: t.update_timestamp(d)),
        "snapshot": (snap, lambda t, d: t.update_snapshot(d)),
        "targets": (targets, lambda t, d: t.update_targets(d)),
        name: (bin_, lambda t, d: t.update_delegated_targets(d, name, "targets")),
    }
    prior = {"root": "root", "timestamp": "root", "snapshot": "timestamp",
             "targets": "snapshot", name: "targets"}
    rng = random.Random(2024)
    tried = accepted = 0
    for role, (valid, apply) in steps.items():
        apply(load(prior[role]), valid)  # the unmutated file is accepted
        base = load(prior[role])
        done = 0
        while done < 450:
            bad = _mutations(valid, rng, [o for o in others if o != valid])
            if _same(bad, valid):
                continue
            done += 1
            try:
                apply(base, bad)
            except (RepositoryError, ValueError, KeyError, TypeError, AttributeError):
                continue
            accepted += 1
            base = load(prior[role])
        tried += done
    assert tried >= 2000
    assert accepted == 0
