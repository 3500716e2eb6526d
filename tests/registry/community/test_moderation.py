"""Flags, their scores, auto-hiding, the queue, moderation actions, reversal, quarantine, bans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.registry import registry_main

from ..conftest import make_plugin
from .conftest import Person, Site, bearer


def _reviewed(site: Site, plugin: str = "acme.widget", body: str = "BUY CHEAP PILLS") -> tuple[
        Person, int]:
    author = site.person()
    site.http.post(f"/v1/plugins/{plugin}/installs", headers=author.auth)
    r = site.http.put(f"/v1/plugins/{plugin}/reviews/mine", json={"stars": 5, "body": body},
                      headers=author.auth)
    assert r.status_code in (200, 201), r.text
    return author, int(r.json()["review_id"])


def _flag(site: Site, who: Person, kind: str, target: str, reason: str = "spam"):  # type: ignore[no-untyped-def]
    return site.http.post("/v1/flags", json={"target_kind": kind, "target": target,
                                             "reason": reason, "note": "see body"},
                          headers=who.auth)


def _moderator(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Person:
    mod = site.person()
    data = ["--data", str(site.registry.data_dir)]
    assert registry_main(["admin", "make-moderator", mod.name, "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["is_admin"] is True
    return mod


def _act(site: Site, mod: Person, action: str, kind: str, target: str,
         reason: str = "rule 3"):  # type: ignore[no-untyped-def]
    return site.http.post("/v1/moderation/actions", json={
        "action": action, "target_kind": kind, "target": target, "reason": reason},
        headers=mod.auth)


def test_flags_weigh_trust_and_hide_at_the_threshold(site: Site) -> None:
    author, rid = _reviewed(site)
    flaggers = [site.person() for _ in range(4)]
    scores = []
    for i, who in enumerate(flaggers):
        r = _flag(site, who, "review", str(rid))
        assert r.status_code == 201, r.text
        assert r.json()["weight"] == 0.5  # a new account: (1 + 0) * (0 + 1) / (0 + 2)
        scores.append(r.json()["score"])
        assert r.json()["hidden"] is (i == 3)
    assert scores == [0.5, 1.0, 1.5, 2.0]
    assert site.http.get(f"/v1/reviews/{rid}").status_code == 404
    listing = site.http.get("/v1/plugins/acme.widget/reviews").json()
    assert rid not in [x["review_id"] for x in listing["reviews"]]
    again = _flag(site, flaggers[0], "review", str(rid))
    assert again.status_code == 400
    assert _flag(site, author, "review", str(_reviewed(site)[1])).status_code == 201
    own = _flag(site, author, "review", str(rid))
    assert own.status_code == 400


def test_moderators_only_and_the_queue_sorted_by_score(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, low = _reviewed(site, body="mildly off-topic")
    _, high = _reviewed(site, body="scam link")
    a, b, c = site.person(), site.person(), site.person()
    _flag(site, a, "review", str(low), "other")
    _flag(site, a, "review", str(high))
    _flag(site, b, "review", str(high), "abuse")
    _flag(site, c, "plugin", "acme.gadget", "malware")
    assert site.http.get("/v1/moderation/queue", headers=a.auth).status_code == 403
    assert site.http.get("/v1/moderation/queue", headers=bearer(site.acme)).status_code == 403
    mod = _moderator(site, tmp_path, capsys)
    queue = site.http.get("/v1/moderation/queue", headers=mod.auth).json()["queue"]
    keys = [(q["target_kind"], q["target"]) for q in queue]
    assert keys[0] == ("plugin", "acme.gadget")  # malware reports first, whatever the score
    assert keys.index(("review", str(high))) < keys.index(("review", str(low)))
    top = queue[keys.index(("review", str(high)))]
    assert top["reasons"] == {"spam": 1, "abuse": 1}
    assert top["excerpt"] == "scam link"
    # plugins are never hidden by flags alone: they wait in the queue
    assert site.http.get("/v1/plugins/acme.gadget").status_code == 200
    assert _act(site, a, "hide", "review", str(low)).status_code == 403


def test_actions_are_logged_reversible_and_settle_flaggers_accuracy(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _moderator(site, tmp_path, capsys)
    _, rid = _reviewed(site, body="honest but blunt")
    crier = site.person()
    assert _flag(site, crier, "review", str(rid), "abuse").json()["weight"] == 0.5
    restored = _act(site, mod, "restore", "review", str(rid), "criticism is allowed")
    assert restored.status_code == 201
    # the flag was overruled: the flagger now weighs less, (0 + 1) / (1 + 2)
    _, rid2 = _reviewed(site)
    weight = _flag(site, crier, "review", str(rid2)).json()["weight"]
    assert weight == pytest.approx(0.333, abs=1e-3)
    hidden = _act(site, mod, "hide", "review", str(rid2), "spam")
    assert hidden.status_code == 201
    action = hidden.json()
    assert action["actor"] == f"user:{mod.name}"
    assert action["before"]["hidden"] is False
    assert action["after"]["hidden"] is True
    assert action["reason"] == "spam"
    assert site.http.get(f"/v1/reviews/{rid2}").status_code == 404
    undo = site.http.post(f"/v1/moderation/actions/{action['action_id']}/reverse",
                          json={"reason": "mistake"}, headers=mod.auth)
    assert undo.status_code == 201
    assert undo.json()["reverses"] == action["action_id"]
    assert site.http.get(f"/v1/reviews/{rid2}").status_code == 200
    twice = site.http.post(f"/v1/moderation/actions/{action['action_id']}/reverse",
                           headers=mod.auth)
    assert twice.status_code == 400
    log = site.http.get("/v1/moderation/actions", params={"target_kind": "review",
                                                          "target": str(rid2)},
                        headers=mod.auth).json()["actions"]
    assert [x["action"] for x in log] == ["reverse", "hide"]  # append-only, newest first
    # a later action must be reversed first
    first = _act(site, mod, "hide", "review", str(rid2)).json()
    _act(site, mod, "delete", "review", str(rid2))
    blocked = site.http.post(f"/v1/moderation/actions/{first['action_id']}/reverse",
                             headers=mod.auth)
    assert blocked.status_code == 400
    assert "first" in blocked.json()["error"]["message"]


def test_quarantine_hides_a_version_from_installs_without_deleting_it(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site.publish("acme.quarry", "1.0.0")
    site.publish("acme.quarry", "1.1.0")
    mod = _moderator(site, tmp_path, capsys)
    q = _act(site, mod, "quarantine", "version", "acme.quarry@1.1.0", "malware report")
    assert q.status_code == 201, q.text
    info = site.http.get("/v1/plugins/acme.quarry").json()
    assert info["latest_version"] == "1.0.0"
    assert [v["version"] for v in info["versions"]] == ["1.0.0"]
    assert site.http.get("/v1/plugins/acme.quarry/resolve",
                         params={"spec": "==1.1.0"}).status_code == 404
    assert site.http.get("/v1/plugins/acme.quarry/resolve").json()["version"] == "1.0.0"
    assert site.http.get("/v1/plugins/acme.quarry/versions/1.1.0/download").status_code == 404
    got = site.http.get("/v1/plugins/acme.quarry/download")
    assert got.status_code == 200
    assert got.headers["X-Corral-Version"] == "1.0.0"
    hit = site.http.get("/v1/search", params={"q": "acme.quarry"}).json()["results"]
    assert [x["version"] for x in hit if x["id"] == "acme.quarry"] == ["1.0.0"]
    # kept, not deleted: the same version cannot be published again with other bytes
    pkg = make_plugin(site.tmp, "acme.quarry", "1.1.0", description="Swapped bytes")
    with pkg.open("rb") as fp:
        swap = site.http.post("/v1/publish", files={"archive": fp}, headers=bearer(site.acme))
    assert swap.status_code == 409
    site.http.post(f"/v1/moderation/actions/{q.json()['action_id']}/reverse", headers=mod.auth)
    assert site.http.get("/v1/plugins/acme.quarry/resolve").json()["version"] == "1.1.0"
    assert site.http.get("/v1/plugins/acme.quarry/versions/1.1.0/download").status_code == 200
    released = _act(site, mod, "release", "version", "acme.quarry@1.1.0")
    assert released.status_code == 201


def test_closing_a_plugin_and_reopening_it(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site.publish("acme.shut", "1.0.0", description="Closable thing")
    mod = _moderator(site, tmp_path, capsys)
    assert _act(site, mod, "close", "plugin", "acme.shut", "malware").status_code == 201
    gone = site.http.get("/v1/plugins/acme.shut")
    assert gone.status_code == 404
    assert "closed" in gone.json()["error"]["message"]
    assert site.http.get("/v1/plugins/acme.shut/download").status_code == 404
    results = site.http.get("/v1/search", params={"q": "closable"}).json()["results"]
    assert "acme.shut" not in [x["id"] for x in results]
    pkg = make_plugin(site.tmp, "acme.shut", "2.0.0")
    with pkg.open("rb") as fp:
        refused = site.http.post("/v1/publish", files={"archive": fp}, headers=bearer(site.acme))
    assert refused.status_code == 403
    assert "closed" in refused.json()["error"]["message"]
    assert _act(site, mod, "reopen", "plugin", "acme.shut").status_code == 201
    assert site.http.get("/v1/plugins/acme.shut").json()["latest_version"] == "1.0.0"


def test_a_banned_account_cannot_sign_in_post_or_flag(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _moderator(site, tmp_path, capsys)
    troll = site.person()
    assert site.http.get("/v1/users/me", headers=troll.auth).status_code == 200
    ban = _act(site, mod, "ban", "user", troll.name, "harassment")
    assert ban.status_code == 201
    assert site.http.get("/v1/users/me", headers=troll.auth).status_code == 401
    assert site.http.get("/v1/users/me", headers=bearer(troll.session)).status_code == 401
    r = site.http.post("/v1/sessions", json={"name": troll.name, "password": troll.password})
    assert r.status_code == 403
    assert "banned" in r.json()["error"]["message"]
    posted = site.http.post("/v1/plugins/acme.widget/threads", json={"title": "t", "body": "b"},
                            headers=troll.auth)
    assert posted.status_code == 401
    assert _flag(site, troll, "plugin", "acme.widget").status_code == 401
    # a moderator cannot ban themselves; an admin-scoped publisher token also moderates
    assert _act(site, mod, "ban", "user", mod.name).status_code == 403
    admin = site.registry.create_token("acme", scopes=("admin",))
    unban = site.http.post(f"/v1/moderation/actions/{ban.json()['action_id']}/reverse",
                           json={"reason": "appeal granted"}, headers=bearer(admin))
    assert unban.status_code == 201
    assert unban.json()["actor"].startswith("token:")
    assert site.http.get("/v1/users/me", headers=troll.auth).status_code == 200


def test_editing_never_undoes_a_moderators_removal(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _moderator(site, tmp_path, capsys)
    for action in ("hide", "delete"):
        author, rid = _reviewed(site, "acme.gadget", body="rude words")
        assert _act(site, mod, action, "review", str(rid)).status_code == 201
        edit = site.http.put("/v1/plugins/acme.gadget/reviews/mine",
                             json={"stars": 5, "body": "polite now"}, headers=author.auth)
        assert edit.status_code == 200
        assert site.http.get(f"/v1/reviews/{rid}").status_code == 404, action
    # ids past 32 bits or in other scripts' digits are simply not found
    flagger = site.person()
    for target in ("2147483648", "\u0661\u0662", "-1"):
        assert _flag(site, flagger, "review", target).status_code == 404


def test_moderation_is_granted_by_the_admin_token_only_and_logged(site: Site) -> None:
    admin = site.registry.create_token("acme", scopes=("admin",))
    alice, bob = site.person(), site.person()
    grant = site.http.post("/v1/moderation/actions", json={
        "action": "moderator", "target_kind": "user", "target": alice.name,
        "reason": "trusted"}, headers=bearer(admin))
    assert grant.status_code == 201
    assert grant.json()["after"] == {"banned": False, "is_admin": True}
    assert site.http.get("/v1/users/me", headers=alice.auth).json()["is_admin"] is True
    # a moderator may not make more moderators (nor demote themselves)
    assert _act(site, alice, "moderator", "user", bob.name).status_code == 403
    assert _act(site, alice, "unmoderator", "user", alice.name).status_code == 403
    # the publish scope is not enough
    assert site.http.post("/v1/moderation/actions", json={
        "action": "moderator", "target_kind": "user", "target": bob.name},
        headers=bearer(site.acme)).status_code == 403
    undo = site.http.post(f"/v1/moderation/actions/{grant.json()['action_id']}/reverse",
                          headers=bearer(admin))
    assert undo.status_code == 201
    assert site.http.get("/v1/moderation/queue", headers=alice.auth).status_code == 403
