"""Reviews: install proof, one per user, edits, replies, the Bayesian sort, hostile bodies."""

from __future__ import annotations

from .conftest import Site, bearer


def _review(site: Site, token: str, plugin: str, stars: int, body: str = "fine"):  # type: ignore[no-untyped-def]
    return site.http.put(f"/v1/plugins/{plugin}/reviews/mine",
                         json={"stars": stars, "body": body}, headers=bearer(token))


def test_a_review_needs_an_install_recorded_against_the_token(site: Site) -> None:
    me = site.person()
    refused = _review(site, me.token, "acme.widget", 5)
    assert refused.status_code == 403
    assert "installed" in refused.json()["error"]["message"]
    # a download without a user token proves nothing
    assert site.http.get("/v1/plugins/acme.widget/download").status_code == 200
    assert _review(site, me.token, "acme.widget", 5).status_code == 403
    # a publisher token proves nothing either
    site.http.get("/v1/plugins/acme.widget/download", headers=bearer(site.acme))
    assert _review(site, me.token, "acme.widget", 5).status_code == 403
    got = site.http.get("/v1/plugins/acme.widget/download", headers=me.auth)
    assert got.status_code == 200
    assert got.headers["X-Corral-Install-Recorded"] == "true"
    ok = _review(site, me.token, "acme.widget", 5, "Works well")
    assert ok.status_code == 201, ok.text
    assert ok.json()["version"] == "1.1.0"
    assert ok.json()["user"] == me.name


def test_explicit_install_then_one_editable_review(site: Site) -> None:
    me = site.person()
    r = site.http.post("/v1/plugins/acme.gadget/installs", json={"version": "2.0.0"},
                       headers=me.auth)
    assert r.status_code == 201
    assert r.json() == {"id": "acme.gadget", "version": "2.0.0",
                                                 "installed": True}
    bad = site.http.post("/v1/plugins/acme.gadget/installs", json={"version": "9.9.9"},
                         headers=me.auth)
    assert bad.status_code == 404
    first = _review(site, me.token, "acme.gadget", 2, "meh")
    assert first.status_code == 201
    second = _review(site, me.token, "acme.gadget", 4, "better after the update")
    assert second.status_code == 200
    assert second.json()["review_id"] == first.json()["review_id"]
    assert second.json()["edited"] is True
    listing = site.http.get("/v1/plugins/acme.gadget/reviews").json()
    mine = [x for x in listing["reviews"] if x["user"] == me.name]
    assert len(mine) == 1
    assert mine[0]["stars"] == 4
    assert listing["distribution"]["4"] >= 1
    assert listing["distribution"]["2"] == 0


def test_another_users_review_is_never_editable(site: Site) -> None:
    alice, mallory = site.person(), site.person()
    for who in (alice, mallory):
        site.http.post("/v1/plugins/acme.widget/installs", headers=who.auth)
    review = _review(site, alice.token, "acme.widget", 5, "alice's words").json()
    rid = review["review_id"]
    assert site.http.delete(f"/v1/reviews/{rid}", headers=mallory.auth).status_code == 404
    # mallory's PUT writes mallory's own review, never alice's
    _review(site, mallory.token, "acme.widget", 1, "mallory's words")
    assert site.http.get(f"/v1/reviews/{rid}").json()["body"] == "alice's words"
    # an id in the body is ignored: the review is chosen by who asks
    sneaky = site.http.put("/v1/plugins/acme.widget/reviews/mine",
                           json={"stars": 1, "body": "x", "review_id": rid, "user": alice.name},
                           headers=mallory.auth)
    assert sneaky.status_code in (200, 400)
    assert site.http.get(f"/v1/reviews/{rid}").json()["stars"] == 5
    assert site.http.delete(f"/v1/reviews/{rid}", headers=alice.auth).status_code == 200
    assert site.http.get(f"/v1/reviews/{rid}").status_code == 404


def test_only_the_publisher_replies(site: Site) -> None:
    fan, outsider, staff = site.person(), site.person(), site.person()
    site.http.post("/v1/plugins/acme.widget/installs", headers=fan.auth)
    rid = _review(site, fan.token, "acme.widget", 3, "needs docs").json()["review_id"]
    denied = site.http.put(f"/v1/reviews/{rid}/reply", json={"body": "we are acme"},
                           headers=outsider.auth)
    assert denied.status_code == 403
    # evil's token does not make anyone speak for acme
    site.http.post("/v1/users/me/publishers", json={"publisher_token": site.evil},
                   headers=outsider.auth)
    assert site.http.put(f"/v1/reviews/{rid}/reply", json={"body": "we are acme"},
                         headers=outsider.auth).status_code == 403
    linked = site.http.post("/v1/users/me/publishers", json={"publisher_token": site.acme},
                            headers=staff.auth)
    assert linked.status_code == 200
    assert linked.json()["publishers"] == ["acme"]
    ok = site.http.put(f"/v1/reviews/{rid}/reply", json={"body": "Docs are up now"},
                       headers=staff.auth)
    assert ok.status_code == 200
    assert ok.json()["reply"]["publisher"] == "acme"
    assert site.http.get(f"/v1/reviews/{rid}").json()["reply"]["body"] == "Docs are up now"


def test_hostile_bodies_are_stored_raw_or_refused(site: Site) -> None:
    me = site.person()
    site.http.post("/v1/plugins/acme.widget/installs", headers=me.auth)
    nasty = ("<script>alert(1)</script> <img src=x onerror=alert(2)> \u202egnp.exe "
             "[x](javascript:alert(3))")
    r = _review(site, me.token, "acme.widget", 4, nasty)
    assert r.status_code in (200, 201)
    assert site.http.get(f"/v1/reviews/{r.json()['review_id']}").json()["body"] == nasty
    assert r.headers["content-type"].startswith("application/json")
    for body in ("nul \x00 byte", "bell \x07", "c1 \x9b control", "x" * 10_001):
        bad = _review(site, me.token, "acme.widget", 4, body)
        assert bad.status_code == 400, body[:20]
    assert site.http.get(f"/v1/reviews/{r.json()['review_id']}").json()["body"] == nasty
    for stars in (0, 6, "5", 4.5, True):
        assert _review(site, me.token, "acme.widget", stars).status_code == 400  # type: ignore[arg-type]


def test_reviews_rate_limit_per_account(site: Site) -> None:
    me = site.person()
    site.http.post("/v1/plugins/acme.gadget/installs", headers=me.auth)
    codes = [_review(site, me.token, "acme.gadget", 1 + i % 5).status_code for i in range(11)]
    assert codes[:10] == [201] + [200] * 9
    assert codes[10] == 429
    other = site.person()  # another account is not held back
    site.http.post("/v1/plugins/acme.gadget/installs", headers=other.auth)
    assert _review(site, other.token, "acme.gadget", 5).status_code == 201


def test_rating_sort_uses_the_bayesian_average(site: Site) -> None:
    site.publish("acme.onehit", "1.0.0", description="One review only")
    site.publish("acme.steady", "1.0.0", description="Many good reviews")
    lone = site.person()
    site.http.post("/v1/plugins/acme.onehit/installs", headers=lone.auth)
    assert _review(site, lone.token, "acme.onehit", 5).status_code == 201
    for stars in (5, 5, 5, 5, 4, 4):  # a mean of 4.67, below the lone review's 5
        p = site.person()
        site.http.post("/v1/plugins/acme.steady/installs", headers=p.auth)
        assert _review(site, p.token, "acme.steady", stars).status_code == 201
    onehit = site.http.get("/v1/plugins/acme.onehit").json()
    steady = site.http.get("/v1/plugins/acme.steady").json()
    assert onehit["review_count"] == 1
    assert steady["review_count"] == 6
    # the plain mean says 5 > 4; the Bayesian average pulls the lone review to the prior
    assert steady["bayes_rating"] > onehit["bayes_rating"]
    found = site.http.get("/v1/search", params={"sort": "rating", "per_page": 50}).json()
    ids = [x["id"] for x in found["results"]]
    assert ids.index("acme.steady") < ids.index("acme.onehit")
    hit = next(x for x in found["results"] if x["id"] == "acme.steady")
    assert hit["bayes_rating"] == steady["bayes_rating"]
    # the publisher ratings endpoint still works and counts as stars too
    rated = site.http.post("/v1/plugins/acme.onehit/rating", json={"stars": 5},
                           headers=bearer(site.evil))
    assert rated.status_code == 200
    assert rated.json()["rating_count"] == 1
    again = site.http.get("/v1/plugins/acme.onehit").json()
    assert again["bayes_rating"] > onehit["bayes_rating"]
