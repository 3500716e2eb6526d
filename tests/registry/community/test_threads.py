"""Discussions: threads, posts, the publisher's answers marked, accepted answers, closing."""

from __future__ import annotations

from .conftest import Site


def test_a_question_answered_by_the_publisher(site: Site) -> None:
    asker, staff, passer = site.person(), site.person(), site.person()
    site.http.post("/v1/users/me/publishers", json={"publisher_token": site.acme},
                   headers=staff.auth)
    t = site.http.post("/v1/plugins/acme.widget/threads",
                       json={"title": "How do I configure it?", "body": "Is there a *file*?"},
                       headers=asker.auth)
    assert t.status_code == 201, t.text
    tid = t.json()["thread_id"]
    # "is_publisher" is the server's to say: a client claiming it is ignored
    fake = site.http.post(f"/v1/threads/{tid}/posts",
                          json={"body": "I am the publisher", "is_publisher": True},
                          headers=passer.auth)
    assert fake.status_code in (201, 400)
    real = site.http.post(f"/v1/threads/{tid}/posts", json={"body": "Use corral.toml"},
                          headers=staff.auth)
    assert real.status_code == 201
    assert real.json()["is_publisher"] is True
    thread = site.http.get(f"/v1/threads/{tid}").json()
    marks = {p["user"]: p["is_publisher"] for p in thread["posts"]}
    assert marks[staff.name] is True
    assert marks.get(passer.name, False) is False
    listing = site.http.get("/v1/plugins/acme.widget/threads").json()
    assert any(x["thread_id"] == tid and x["replies"] == len(thread["posts"])
               for x in listing["threads"])


def test_accepting_and_closing_belong_to_the_author_or_publisher(site: Site) -> None:
    asker, helper, stranger = site.person(), site.person(), site.person()
    tid = site.http.post("/v1/plugins/acme.gadget/threads",
                         json={"title": "Crash on start", "body": "Traceback..."},
                         headers=asker.auth).json()["thread_id"]
    pid = site.http.post(f"/v1/threads/{tid}/posts", json={"body": "Upgrade to 2.0"},
                         headers=helper.auth).json()["post_id"]
    assert site.http.post(f"/v1/threads/{tid}/accept", json={"post_id": pid},
                          headers=stranger.auth).status_code == 403
    ok = site.http.post(f"/v1/threads/{tid}/accept", json={"post_id": pid}, headers=asker.auth)
    assert ok.status_code == 200
    assert ok.json()["accepted_post_id"] == pid
    assert [p["accepted"] for p in ok.json()["posts"]] == [True]
    other = site.http.post("/v1/plugins/acme.widget/threads",
                           json={"title": "Other", "body": "x"}, headers=helper.auth).json()
    assert site.http.post(f"/v1/threads/{other['thread_id']}/accept", json={"post_id": pid},
                          headers=helper.auth).status_code == 404  # not a post of that thread
    assert site.http.post(f"/v1/threads/{tid}/close", json={"closed": True},
                          headers=stranger.auth).status_code == 403
    closed = site.http.post(f"/v1/threads/{tid}/close", headers=asker.auth)
    assert closed.status_code == 200
    assert closed.json()["closed"] is True
    late = site.http.post(f"/v1/threads/{tid}/posts", json={"body": "me too"},
                          headers=stranger.auth)
    assert late.status_code == 400
    assert "closed" in late.json()["error"]["message"]


def test_hostile_threads(site: Site) -> None:
    me = site.person()
    for title in ("\u202eevil title", "tab\tin title", "", "   ", "x" * 201):
        r = site.http.post("/v1/plugins/acme.widget/threads", json={"title": title, "body": "b"},
                           headers=me.auth)
        assert r.status_code == 400, title
    body = "<script>document.cookie</script>\u202e\u2066 <style>*{display:none}</style>"
    t = site.http.post("/v1/plugins/acme.widget/threads", json={"title": "Hello", "body": body},
                       headers=me.auth)
    assert t.status_code == 201
    assert site.http.get(f"/v1/threads/{t.json()['thread_id']}").json()["body"] == body
    assert site.http.post("/v1/plugins/acme.nothing/threads", json={"title": "a", "body": "b"},
                          headers=me.auth).status_code == 404
    assert site.http.post("/v1/plugins/acme.widget/threads", json={"title": "a", "body": "b"}
                          ).status_code == 401
    assert site.http.get("/v1/threads/999999").status_code == 404
    assert site.http.get("/v1/threads/99999999999999").status_code == 400
