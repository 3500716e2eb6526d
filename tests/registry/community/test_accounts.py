"""Accounts, sessions, CSRF, brute-force limits and user tokens, over real HTTP."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from corral.registry import registry_main
from corral.registry._community.service import Community
from corral.registry._db import users
from corral.registry._errors import RateLimited, Unauthenticated

from .conftest import Site, bearer


def test_signup_signin_and_whoami(site: Site) -> None:
    me = site.person("alice-1", "s3cret passphrase")
    r = site.http.get("/v1/users/me", headers=bearer(me.session))
    assert r.status_code == 200
    assert r.json()["name"] == "alice-1"
    assert r.json()["is_admin"] is False
    assert site.http.get("/v1/users/me", headers=me.auth).json()["name"] == "alice-1"
    with site.registry.read() as conn:
        stored = conn.execute(sa.select(users.c.password_hash)
                              .where(users.c.name == "alice-1")).scalar_one()
    assert stored.startswith("scrypt$")
    assert "s3cret" not in stored
    again = site.http.post("/v1/users", json={"name": "alice-1", "password": "another one"})
    assert again.status_code == 400
    assert "taken" in again.json()["error"]["message"]


def test_wrong_password_and_unknown_name_read_the_same(site: Site) -> None:
    site.person("bob-1")
    wrong = site.http.post("/v1/sessions", json={"name": "bob-1", "password": "not it at all"})
    nobody = site.http.post("/v1/sessions", json={"name": "nobody-9", "password": "whatever1"})
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json()["error"]["message"] == nobody.json()["error"]["message"]


def test_brute_force_is_limited_per_account_then_429(site: Site) -> None:
    victim = site.person("victim-1", "the real password")
    for _ in range(5):
        r = site.http.post("/v1/sessions", json={"name": "victim-1", "password": "guess 1234"})
        assert r.status_code == 401
    # the sixth try, even with the right password, waits
    r = site.http.post("/v1/sessions", json={"name": "victim-1", "password": victim.password})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert r.json()["error"]["reason"] == "rate_limited"
    # the session opened before the attack still works
    assert site.http.get("/v1/users/me", headers=bearer(victim.session)).status_code == 200


def test_brute_force_is_limited_per_address_across_accounts(site: Site) -> None:
    community = Community(site.registry)
    for i in range(3):
        community.signup(f"spray-{i}", "password one", client="203.0.113.9")
    for i in range(20):  # under 5 per account: only the address limit stops this
        with pytest.raises(Unauthenticated):
            community.sign_in(f"spray-{i % 3}-{i // 3}", "wrong guess",
                              client="203.0.113.9")
    with pytest.raises(RateLimited):
        community.sign_in("spray-2", "password one", client="203.0.113.9")
    # another address is not held back by this one's failures
    assert community.sign_in("spray-2", "password one", client="198.51.100.1").id


def test_sign_in_rotates_the_session_no_fixation(site: Site) -> None:
    me = site.person("fix-1")
    planted = me.session
    r = site.http.post("/v1/sessions", json={"name": "fix-1", "password": me.password},
                       headers=bearer(planted))
    assert r.status_code == 201
    fresh = r.json()["session"]
    assert fresh != planted
    assert site.http.get("/v1/users/me", headers=bearer(planted)).status_code == 401
    assert site.http.get("/v1/users/me", headers=bearer(fresh)).status_code == 200
    out = site.http.delete("/v1/sessions/current", headers=bearer(fresh))
    assert out.status_code == 200
    assert site.http.get("/v1/users/me", headers=bearer(fresh)).status_code == 401


def test_csrf_token_belongs_to_one_session(site: Site) -> None:
    community = Community(site.registry)
    a, b = site.person("csrf-a"), site.person("csrf-b")
    assert community.check_csrf(a.session, a.csrf)
    assert community.csrf_token(a.session) == a.csrf
    assert not community.check_csrf(b.session, a.csrf)  # across sessions: refused
    assert not community.check_csrf(a.session, "")
    wrong = a.csrf[:-1] + ("1" if a.csrf.endswith("0") else "0")
    assert not community.check_csrf(a.session, wrong)
    rotated = community.rotate(a.session)
    assert not community.check_csrf(rotated.id, a.csrf)  # a new session, a new token
    assert community.check_csrf(rotated.id, rotated.csrf_token)
    assert not community.check_csrf(a.session, a.csrf)  # the old session is gone


def test_user_tokens_are_private_to_their_owner(site: Site) -> None:
    alice, mallory = site.person("tok-alice"), site.person("tok-mallory")
    listing = site.http.get("/v1/users/me/tokens", headers=alice.auth).json()["tokens"]
    assert len(listing) == 1
    assert "token" not in listing[0]
    token_id = listing[0]["token_id"]
    assert token_id not in str(site.http.get("/v1/users/me/tokens", headers=mallory.auth)
                               .json())
    stolen = site.http.delete(f"/v1/users/me/tokens/{token_id}", headers=mallory.auth)
    assert stolen.status_code == 404
    assert site.http.get("/v1/users/me", headers=alice.auth).status_code == 200
    mine = site.http.delete(f"/v1/users/me/tokens/{token_id}", headers=alice.auth)
    assert mine.status_code == 200
    gone = site.http.get("/v1/users/me", headers=alice.auth)
    assert gone.status_code == 401
    assert "revoked" in gone.json()["error"]["message"]


def test_publisher_tokens_are_not_user_credentials(site: Site) -> None:
    r = site.http.get("/v1/users/me", headers=bearer(site.acme))
    assert r.status_code == 401
    assert "publisher token" in r.json()["error"]["message"]
    assert site.http.get("/v1/users/me").status_code == 401
    forged = site.http.get("/v1/users/me", headers=bearer("cru_000000000000_" + "A" * 43))
    assert forged.status_code == 401


def test_hostile_names_and_passwords_are_refused(site: Site) -> None:
    for body in ({"name": "Admin", "password": "password1"},
                 {"name": "a\u202egnp", "password": "password1"},
                 {"name": "ok-name", "password": "short"},
                 {"name": "ok-name", "password": "nul\x00byte-pass"}):
        r = site.http.post("/v1/users", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == "usage"


def test_create_session_after_signup_ends_the_old_one(site: Site) -> None:
    community = Community(site.registry)
    user = community.signup("fresh-1", "a good password", client="192.0.2.7")
    first = community.create_session(user)
    assert community.session_user(first.id).name == "fresh-1"
    second = community.create_session(user, old_session=first.id)
    with pytest.raises(Unauthenticated):
        community.session_user(first.id)
    assert community.check_csrf(second.id, second.csrf_token)
    with pytest.raises(Unauthenticated):
        community.session_user("crs_" + "A" * 43)


def test_admin_cli_links_a_user_to_a_publisher(site: Site,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    me = site.person()
    data = ["--data", str(site.registry.data_dir)]
    assert registry_main(["admin", "link-user", me.name, "acme", "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["publishers"] == "acme"
    assert site.http.get("/v1/users/me", headers=me.auth).json()["publishers"] == ["acme"]
    assert registry_main(["admin", "link-user", me.name, "nobody", *data]) != 0
    assert registry_main(["admin", "make-moderator", "no-such-user", *data]) != 0
