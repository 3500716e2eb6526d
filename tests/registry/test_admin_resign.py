"""Admin commands that change what clients see re-sign the TUF metadata themselves.

``corral registry admin verify-publisher``, ``add-key`` and ``revoke-key`` (and
the key routes of the HTTP API) change a version's ``publisher_verified``; a
TUF client opened right after the command must see the change, with no
``corral registry tuf sync`` in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral._distribution.registry_source import RegistrySource, cache_dir, trust_registry
from corral._distribution.signing import generate_key
from corral._model.release import Release
from corral.registry import registry_main

from .test_signed_publish import signed_plugin
from .tuf_fixtures import TufApi, tuf_api_fixture  # noqa: F401


def _releases(api: TufApi, home: Path, plugin_id: str) -> dict[str, Release]:
    """What a TUF client on ``home`` sees of ``plugin_id`` now (a fresh source each time)."""
    if not cache_dir(home, api.url).exists():
        trust_registry(home, api.url, (api.repo.metadata_dir / "1.root.json").read_bytes())
    with RegistrySource(api.url, home, timeout=5) as src:
        return {r.version: r for r in src.releases(plugin_id)}


def _admin(api: TufApi, *argv: str) -> None:
    assert registry_main(["admin", *argv, "--data", str(api.data)]) == 0


@pytest.mark.timeout(60)
def test_admin_changes_reach_tuf_clients_at_once(tuf_api: TufApi, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    key = generate_key("acme", tmp_path / "keys")
    archive = signed_plugin(tmp_path, "acme.resign", key)
    with archive.open("rb") as fp:
        r = tuf_api.http.post("/v1/publish",
                              files={"archive": (archive.name, fp, "application/zip")},
                              headers={"Authorization": f"Bearer {tuf_api.token}"})
    assert r.status_code == 201, r.text
    home = tmp_path / "home"
    before = _releases(tuf_api, home, "acme.resign")["1.0.0"]
    assert before.signer == key.keyid
    assert before.publisher_verified is False  # neither the key nor the publisher vouched for

    _admin(tuf_api, "verify-publisher", "acme")
    assert _releases(tuf_api, home, "acme.resign")["1.0.0"].publisher_verified is False  # no key

    _admin(tuf_api, "add-key", "acme", str(tmp_path / "keys" / "acme.pub"))
    assert _releases(tuf_api, home, "acme.resign")["1.0.0"].publisher_verified is True

    _admin(tuf_api, "verify-publisher", "acme", "--unverify")
    assert _releases(tuf_api, home, "acme.resign")["1.0.0"].publisher_verified is False
    _admin(tuf_api, "verify-publisher", "acme")
    assert _releases(tuf_api, home, "acme.resign")["1.0.0"].publisher_verified is True

    _admin(tuf_api, "revoke-key", "acme", key.keyid)
    assert _releases(tuf_api, home, "acme.resign")["1.0.0"].publisher_verified is False
    capsys.readouterr()
    # nothing was left for a sync or the repair timer to do
    assert tuf_api.registry.reconcile() == []


def test_key_routes_of_the_api_re_sign_too(tuf_api: TufApi, tmp_path: Path) -> None:
    key = generate_key("acme", tmp_path / "keys")
    tuf_api.registry.verify_publisher("acme")
    archive = signed_plugin(tmp_path, "acme.viahttp", key)
    auth = {"Authorization": f"Bearer {tuf_api.token}"}
    with archive.open("rb") as fp:
        r = tuf_api.http.post("/v1/publish", headers=auth,
                              files={"archive": (archive.name, fp, "application/zip")})
    assert r.status_code == 201, r.text
    home = tmp_path / "home"
    assert _releases(tuf_api, home, "acme.viahttp")["1.0.0"].publisher_verified is False
    added = tuf_api.http.post("/v1/publishers/acme/keys", headers=auth,
                              json={"public_key": key.public_key_b64})
    assert added.status_code == 201, added.text
    assert _releases(tuf_api, home, "acme.viahttp")["1.0.0"].publisher_verified is True
    gone = tuf_api.http.delete(f"/v1/publishers/acme/keys/{key.keyid}", headers=auth)
    assert gone.status_code == 200, gone.text
    assert _releases(tuf_api, home, "acme.viahttp")["1.0.0"].publisher_verified is False
