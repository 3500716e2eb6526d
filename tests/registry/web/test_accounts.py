"""Account and community forms over HTTP: CSRF everywhere, no session fixation, cookies,
tokens that only their owner revokes, brute force slowed, reviews only after an install."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from corral.registry._app import create_app

from .conftest import Site

PASSWORD = "correct horse battery"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the page has no CSRF field"
    return found.group(1)


def visitor(site: Site) -> httpx.Client:
    return httpx.Client(base_url=site.url, timeout=30, follow_redirects=False)


def sign_up(client: httpx.Client, name: str) -> httpx.Response:
    token = csrf_of(client.get("/account/signup").text)
    return client.post("/account/signup", data={"csrf_token": token, "name": name,
                                                "password": PASSWORD, "password2": PASSWORD})


@pytest.fixture
def alice(site: Site) -> Iterator[httpx.Client]:
    with visitor(site) as client:
        if sign_up(client, "alice").status_code != 303:  # made by an earlier test
            token = csrf_of(client.get("/account/signin").text)
            client.post("/account/signin", data={"csrf_token": token, "name": "alice",
                                                 "password": PASSWORD})
        assert "corral_session" in client.cookies
        yield client


def test_sign_up_sets_a_safe_session_cookie_and_signs_in(site: Site) -> None:
    with visitor(site) as client:
        answer = sign_up(client, "carol")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/account"
        cookie = next(h for h in answer.headers.get_list("set-cookie")
                      if h.startswith("corral_session="))
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie.replace("Lax", "lax")
        assert "Secure" not in cookie  # plain http on loopback
        page = client.get("/account")
        assert page.status_code == 200
        assert "<h1>carol</h1>" in page.text
        assert page.headers["cache-control"].startswith("private")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_cookies_are_secure_when_served_over_https(site: Site) -> None:
    app = create_app(site.registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://market.test") as client:
        form = await client.get("/account/signup")
        anon = next(h for h in form.headers.get_list("set-cookie")
                    if h.startswith("corral_csrf="))
        assert "Secure" in anon
        assert "HttpOnly" in anon
        assert "SameSite=strict" in anon
        answer = await client.post("/account/signup", data={
            "csrf_token": csrf_of(form.text), "name": "dave", "password": PASSWORD,
            "password2": PASSWORD})
        assert answer.status_code == 303
        cookie = next(h for h in answer.headers.get_list("set-cookie")
                      if h.startswith("corral_session="))
        assert "Secure" in cookie
        assert "HttpOnly" in cookie


def test_sign_in_always_issues_a_new_session(site: Site, alice: httpx.Client) -> None:
    with visitor(site) as client:
        client.cookies.set("corral_session", "crs_planted-by-an-attacker")  # fixation attempt
        token = csrf_of(client.get("/account/signin").text)
        first = client.post("/account/signin", data={"csrf_token": token, "name": "alice",
                                                     "password": PASSWORD})
        assert first.status_code == 303
        one = first.cookies["corral_session"]
        assert one != "crs_planted-by-an-attacker"
        client.cookies.clear()
        client.cookies.set("corral_session", one)
        token = csrf_of(client.get("/account").text)
        again = client.post("/account/signin", data={"csrf_token": token, "name": "alice",
                                                     "password": PASSWORD})
        two = again.cookies["corral_session"]
        assert two != one
        with visitor(site) as old:
            old.cookies.set("corral_session", one)
            assert old.get("/account").status_code == 303  # the old session ended


def test_every_state_changing_form_refuses_a_missing_or_wrong_csrf_token(
        site: Site, alice: httpx.Client) -> None:
    made = alice.post("/account/tokens", data={"csrf_token": csrf_of(alice.get("/account").text),
                                               "description": "laptop"})
    assert made.status_code == 201
    token_id = re.findall(r"/account/tokens/([^/]+)/revoke", made.text)[0]
    forms = {
        "/account/signout": {},
        "/account/tokens": {"description": "x"},
        f"/account/tokens/{token_id}/revoke": {},
        "/plugins/acme.webby/reviews": {"stars": "5", "body": "great"},
        "/plugins/acme.webby/threads": {"title": "How?", "body": "Tell me"},
        "/threads/1/posts": {"body": "me too"},
        "/threads/1/accept": {"post_id": "1"},
        "/reviews/1/reply": {"body": "thanks"},
        "/reviews/1/delete": {},
        "/flags": {"kind": "plugin", "target": "acme.webby", "reason": "spam"},
        "/moderation/actions": {"action": "hide", "kind": "review", "target": "1",
                                "reason": "x"},
        "/moderation/actions/1/reverse": {"reason": "x"},
    }
    before = alice.get("/account").text
    for path, fields in forms.items():
        for bad in ({}, {"csrf_token": "forged"}, {"csrf_token": csrf_of(before)[:-2] + "xx"}):
            answer = alice.post(path, data={**fields, **bad})
            assert answer.status_code == 403, (path, bad, answer.status_code)
            assert "CSRF" in answer.text
    assert alice.get("/account").status_code == 200  # still signed in: sign-out was refused
    assert f"/account/tokens/{token_id}/revoke" in alice.get("/account").text  # not revoked
    with visitor(site) as anon:
        for path in ("/account/signup", "/account/signin"):
            anon.get(path)  # has a CSRF cookie now, but sends no token
            answer = anon.post(path, data={"name": "mallory", "password": PASSWORD,
                                           "password2": PASSWORD})
            assert answer.status_code == 403, path
        with visitor(site) as other:  # a token from another browser does not match this one
            foreign = csrf_of(other.get("/account/signup").text)
        answer = anon.post("/account/signup", data={"csrf_token": foreign, "name": "mallory",
                                                    "password": PASSWORD,
                                                    "password2": PASSWORD})
        assert answer.status_code == 403
        assert "corral_session" not in anon.cookies


def test_another_users_token_is_never_revocable(site: Site, alice: httpx.Client) -> None:
    made = alice.post("/account/tokens", data={"csrf_token": csrf_of(alice.get("/account").text),
                                               "description": "ci"})
    secret = re.search(r'<code id="new-token">([^<]+)</code>', made.text).group(1)  # type: ignore[union-attr]
    token_id = re.findall(r"/account/tokens/([^/]+)/revoke", made.text)[-1]
    with visitor(site) as bob:
        assert sign_up(bob, "bob").status_code == 303
        answer = bob.post(f"/account/tokens/{token_id}/revoke",
                          data={"csrf_token": csrf_of(bob.get("/account").text)})
        assert answer.status_code in (403, 404)
        assert token_id not in bob.get("/account").text  # bob never sees alice's tokens
    me = site.http.get("/v1/users/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200
    assert me.json()["name"] == "alice"


def test_a_review_needs_an_install_recorded_for_the_account(
        site: Site, alice: httpx.Client) -> None:
    page = alice.get("/plugins/acme.webby")
    assert "Only people who installed this plugin can review it" in page.text
    refused = alice.post("/plugins/acme.webby/reviews", data={
        "csrf_token": csrf_of(page.text), "stars": "4", "body": "Nice *tool*"})
    assert refused.status_code == 403
    assert "Nice" not in alice.get("/plugins/acme.webby").text
    made = alice.post("/account/tokens", data={"csrf_token": csrf_of(alice.get("/account").text),
                                               "description": "install"})
    secret = re.search(r'<code id="new-token">([^<]+)</code>', made.text).group(1)  # type: ignore[union-attr]
    download = site.http.get("/v1/plugins/acme.webby/download",
                             headers={"Authorization": f"Bearer {secret}"})
    assert download.headers.get("x-corral-install-recorded") == "true"
    page = alice.get("/plugins/acme.webby")
    accepted = alice.post("/plugins/acme.webby/reviews", data={
        "csrf_token": csrf_of(page.text), "stars": "4",
        "body": "Nice *tool* <script>window.__pwned=1</script>"})
    assert accepted.status_code == 303
    shown = alice.get("/plugins/acme.webby").text
    assert "Nice <em>tool</em>" in shown
    assert "<script>window" not in shown
    assert "Update your review" in shown
    review_id = re.search(r'id="review-(\d+)"', shown).group(1)  # type: ignore[union-attr]
    with visitor(site) as mallory:  # another account can neither delete nor edit it
        assert sign_up(mallory, "mallory").status_code == 303
        token = csrf_of(mallory.get("/account").text)
        gone = mallory.post(f"/reviews/{review_id}/delete", data={"csrf_token": token})
        assert gone.status_code in (403, 404)
        page = mallory.get("/plugins/acme.webby").text
        assert f'action="/reviews/{review_id}/delete"' not in page
    assert "Nice <em>tool</em>" in alice.get("/plugins/acme.webby").text


def test_repeated_wrong_passwords_are_slowed(site: Site) -> None:
    with visitor(site) as client:
        assert sign_up(client, "erin").status_code == 303
    statuses = []
    with visitor(site) as guesser:
        for n in range(7):
            token = csrf_of(guesser.get("/account/signin").text)
            statuses.append(guesser.post("/account/signin", data={
                "csrf_token": token, "name": "erin", "password": f"guess-{n}-wrong"}).status_code)
        token = csrf_of(guesser.get("/account/signin").text)
        right = guesser.post("/account/signin", data={"csrf_token": token, "name": "erin",
                                                      "password": PASSWORD})
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429, 429]
    assert right.status_code == 429
    assert "Retry-After" in right.headers


def test_non_admins_never_see_the_moderation_queue(site: Site, alice: httpx.Client) -> None:
    assert alice.get("/moderation").status_code == 403
    with visitor(site) as anon:
        assert anon.get("/moderation").status_code == 403
