"""Quarantine and closing reach TUF-based installs: the signed index drops the version."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral._distribution.registry_source import RegistrySource, cache_dir, trust_registry
from corral._errors import NotFoundError

from ..tuf_fixtures import TufApi, tuf_api_fixture  # noqa: F401


def _source(api: TufApi, home: Path) -> RegistrySource:
    if not cache_dir(home, api.url).exists():
        trust_registry(home, api.url, (api.repo.metadata_dir / "1.root.json").read_bytes())
    return RegistrySource(api.url, home, timeout=5)


def _signed(api: TufApi, path: str) -> set[str]:
    """The targets signed in the bin that ``path`` belongs to."""
    targets = api.repo.targets_role("targets").signed
    assert targets.delegations is not None
    assert targets.delegations.succinct_roles is not None
    role = targets.delegations.succinct_roles.get_role_for_target(path)
    return set(api.repo.targets_role(role).signed.targets)


def _act(api: TufApi, admin: str, body: dict[str, str]) -> dict[str, object]:
    r = api.http.post("/v1/moderation/actions", json=body,
                      headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 201, r.text
    doc: dict[str, object] = r.json()
    return doc


def test_quarantined_versions_leave_the_signed_index_and_come_back(
        tuf_api: TufApi, tmp_path: Path) -> None:
    tuf_api.publish("acme.alpha", "1.0.0")
    tuf_api.publish("acme.alpha", "1.1.0")
    admin = tuf_api.registry.create_token("acme", scopes=("admin",))
    with _source(tuf_api, tmp_path / "home") as src:
        assert {r.version for r in src.releases("acme.alpha")} == {"1.0.0", "1.1.0"}
    q = _act(tuf_api, admin, {"action": "quarantine", "target_kind": "version",
                              "target": "acme.alpha@1.1.0", "reason": "malware report"})
    with _source(tuf_api, tmp_path / "home") as src:
        assert {r.version for r in src.releases("acme.alpha")} == {"1.0.0"}
    gone, kept = ("plugins/acme.alpha/acme.alpha-1.1.0.corral",
                  "plugins/acme.alpha/acme.alpha-1.0.0.corral")
    assert gone not in _signed(tuf_api, gone)
    assert kept in _signed(tuf_api, kept)
    # the archive is kept: releasing the quarantine signs it again
    r = tuf_api.http.post(f"/v1/moderation/actions/{q['action_id']}/reverse",
                          headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 201
    with _source(tuf_api, tmp_path / "home") as src:
        assert {r.version for r in src.releases("acme.alpha")} == {"1.0.0", "1.1.0"}


def test_a_closed_plugin_cannot_be_installed_through_tuf(tuf_api: TufApi, tmp_path: Path) -> None:
    tuf_api.publish("acme.beta", "1.0.0")
    admin = tuf_api.registry.create_token("acme", scopes=("admin",))
    _act(tuf_api, admin, {"action": "close", "target_kind": "plugin", "target": "acme.beta"})
    with _source(tuf_api, tmp_path / "home") as src, pytest.raises(NotFoundError):
        src.releases("acme.beta")
    _act(tuf_api, admin, {"action": "reopen", "target_kind": "plugin", "target": "acme.beta"})
    with _source(tuf_api, tmp_path / "home") as src:
        assert [r.version for r in src.releases("acme.beta")] == ["1.0.0"]
