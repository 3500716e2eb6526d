"""The HTTP API against a real server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from .conftest import Api, make_plugin


def err(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return dict(body["error"])


def artifacts(api: Api) -> list[Path]:
    root = api.data / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_health_and_openapi(api: Api) -> None:
    assert api.http.get("/v1/health").json()["database"] == api.backend
    spec = api.http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path in ("/v1/search", "/v1/plugins/{plugin_id}", "/v1/publish",
                 "/v1/plugins/{plugin_id}/versions/{version}/yank",
                 "/v1/plugins/{plugin_id}/download"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/v1/publish"]["post"]["requestBody"]["content"]


def test_publish_info_download(api: Api, tmp_path: Path) -> None:
    archive = make_plugin(tmp_path, "acme.git-stats", "1.4.0", description="Commit statistics")
    r = api.publish(archive)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"] == "acme.git-stats"
    assert body["version"] == "1.4.0"
    assert body["signature"] == "unsigned"
    assert len(body["sha256"]) == 64
    assert body["permissions"] == {"fs-read": ["{workspace}"]}

    info = api.http.get("/v1/plugins/acme.git-stats").json()
    assert info["version"] == "1.4.0"
    assert info["publisher"] == "acme"
    assert info["versions"][0]["manifest"]["plugin"]["id"] == "acme.git-stats"
    assert info["downloads"] == 0

    d = api.http.get("/v1/plugins/acme.git-stats/download")
    assert d.status_code == 200
    assert d.content == archive.read_bytes()
    assert d.headers["x-corral-sha256"] == body["sha256"]
    with zipfile.ZipFile(io.BytesIO(d.content)) as zf:
        assert "corral.toml" in zf.namelist()
    api.http.get("/v1/plugins/acme.git-stats/versions/1.4.0/download").raise_for_status()
    info = api.http.get("/v1/plugins/acme.git-stats").json()
    assert info["downloads"] == 2
    assert info["versions"][0]["downloads"] == 2

    found = api.http.get("/v1/search", params={"q": "git stats"}).json()
    assert found["results"][0]["id"] == "acme.git-stats"


def test_duplicate_version_is_409_and_leaves_nothing(api: Api, tmp_path: Path) -> None:
    first = make_plugin(tmp_path, "acme.dup", "1.0.0")
    assert api.publish(first).status_code == 201
    before = artifacts(api)
    again = make_plugin(tmp_path, "acme.dup", "1.0", description="different bytes")
    e = err(api.publish(again), 409, "usage")
    assert e["reason"] == "version_exists"
    assert artifacts(api) == before
    versions = api.http.get("/v1/plugins/acme.dup").json()["versions"]
    assert [v["version"] for v in versions] == ["1.0.0"]


def test_wrong_namespace_and_tokens(api: Api, tmp_path: Path) -> None:
    archive = make_plugin(tmp_path, "acme.stolen")
    before = artifacts(api)
    e = err(api.publish(archive, api.other_token), 403, "permission_denied")
    assert e["permission"] == "namespace:acme"
    err(api.publish(archive, "crl_000000000000_" + "A" * 43), 401, "permission_denied")
    err(api.publish(archive, "nonsense"), 401, "permission_denied")
    with archive.open("rb") as fp:
        err(api.http.post("/v1/publish", files={"archive": fp}), 401, "permission_denied")
    # expired and revoked tokens
    import datetime as dt

    expired = api.registry.create_token("acme", expires_in=dt.timedelta(seconds=-1))
    assert "expired" in str(err(api.publish(archive, expired), 401, "permission_denied")["message"])
    revoked = api.registry.create_token("acme")
    api.registry.revoke_token(revoked.split("_")[1])
    assert "revoked" in str(err(api.publish(archive, revoked), 401, "permission_denied")["message"])
    # a token without the publish scope
    yank_only = api.registry.create_token("acme", scopes=("yank",))
    assert err(api.publish(archive, yank_only), 403, "permission_denied")["permission"] == (
        "scope:publish")
    assert artifacts(api) == before
    err(api.http.get("/v1/plugins/acme.stolen"), 404, "not_found")


def test_invalid_and_hostile_archives(api: Api, tmp_path: Path) -> None:
    before = artifacts(api)
    bad_manifest = tmp_path / "bad.corral"
    with zipfile.ZipFile(bad_manifest, "w") as zf:
        zf.writestr("corral.toml", '[plugin]\nid = "acme.bad"\nname = "x"\nversion = "nope"\n')
    e = err(api.publish(bad_manifest), 422, "invalid")
    assert "version" in str(e["message"])
    traversal = tmp_path / "evil.corral"
    with zipfile.ZipFile(traversal, "w") as zf:
        zf.writestr("corral.toml", '[plugin]\nid = "acme.t"\nname = "t"\nversion = "1.0"\n')
        zf.writestr("../../etc/passwd", "root")
    assert "escapes" in str(err(api.publish(traversal), 422, "invalid")["message"])
    bomb = tmp_path / "bomb.corral"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("corral.toml", '[plugin]\nid = "acme.b"\nname = "b"\nversion = "1.0"\n')
        zf.writestr("zeros.bin", b"\0" * (20 * 1024 * 1024))
    assert "ratio" in str(err(api.publish(bomb), 422, "invalid")["message"])
    garbage = tmp_path / "garbage.corral"
    garbage.write_bytes(b"this is not a zip")
    err(api.publish(garbage), 422, "invalid")
    missing_target = make_plugin(tmp_path, "acme.broken", extra='x = "nowhere:func"')
    err(api.publish(missing_target), 422, "invalid")
    assert artifacts(api) == before
    for pid in ("acme.bad", "acme.t", "acme.b", "acme.broken"):
        err(api.http.get(f"/v1/plugins/{pid}"), 404, "not_found")


def test_oversized_upload_is_413(api: Api, tmp_path: Path) -> None:
    big = make_plugin(tmp_path, "acme.big", payload=__import__("os").urandom(3 * 1024 * 1024))
    before = artifacts(api)
    e = err(api.publish(big), 413, "invalid")
    assert e["reason"] == "too_large"
    assert artifacts(api) == before
    err(api.http.post("/v1/publish", headers=api.auth(), files={"other": b"x"}), 400, "usage")
    err(api.http.post("/v1/publish", headers={**api.auth(), "content-type": "multipart/form-data"},
                      content=b"garbage"), 400, "usage")

    def chunks() -> Iterator[bytes]:  # chunked, no Content-Type: not a multipart form
        yield b"x" * 1024

    e = err(api.http.post("/v1/publish", headers=api.auth(), content=chunks()), 400, "usage")
    assert e["field"] == "content-type"
    # a namespace nobody registered
    e = err(api.publish(make_plugin(tmp_path, "nowhere.thing")), 403, "permission_denied")
    assert "not registered" in str(e["message"])
    assert artifacts(api) == before


def test_yank_semantics(api: Api, tmp_path: Path) -> None:
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        assert api.publish(make_plugin(tmp_path, "acme.yanky", v)).status_code == 201
    r = api.http.post("/v1/plugins/acme.yanky/versions/2.0.0/yank", json={"reason": "broken"},
                      headers=api.auth())
    assert r.status_code == 200, r.text
    assert r.json()["yanked"] is True
    info = api.http.get("/v1/plugins/acme.yanky").json()
    assert info["version"] == "1.1.0"
    assert info["versions"][0]["yanked_reason"] == "broken"
    assert api.http.get("/v1/plugins/acme.yanky/resolve").json()["version"] == "1.1.0"
    assert api.http.get("/v1/plugins/acme.yanky/resolve",
                        params={"spec": ">=2"}).status_code == 404
    pinned = api.http.get("/v1/plugins/acme.yanky/resolve", params={"spec": "==2.0.0"})
    assert pinned.json()["version"] == "2.0.0"
    assert pinned.json()["yanked"] is True
    d = api.http.get("/v1/plugins/acme.yanky/download")
    assert d.headers["x-corral-version"] == "1.1.0"
    assert api.http.get("/v1/plugins/acme.yanky/versions/2.0.0/download").status_code == 200
    # only members may yank
    err(api.http.post("/v1/plugins/acme.yanky/versions/1.1.0/yank",
                      headers=api.auth(api.other_token)), 403, "permission_denied")
    err(api.http.post("/v1/plugins/acme.yanky/versions/9.9/yank", headers=api.auth()),
        404, "not_found")
    api.http.delete("/v1/plugins/acme.yanky/versions/2.0.0/yank",
                    headers=api.auth()).raise_for_status()
    assert api.http.get("/v1/plugins/acme.yanky").json()["version"] == "2.0.0"
    # yank everything: hidden from search and "latest", still there when pinned
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        api.http.post(f"/v1/plugins/acme.yanky/versions/{v}/yank",
                      headers=api.auth()).raise_for_status()
    assert api.http.get("/v1/plugins/acme.yanky").json()["version"] is None
    ids = [x["id"] for x in api.http.get("/v1/search", params={"q": "yanky"}).json()["results"]]
    assert "acme.yanky" not in ids
    err(api.http.get("/v1/plugins/acme.yanky/download"), 404, "not_found")


def test_confusable_names(api: Api, tmp_path: Path) -> None:
    assert api.publish(make_plugin(tmp_path, "acme.logger")).status_code == 201
    # same publisher: flagged, not refused
    r = api.publish(make_plugin(tmp_path, "acme.l0gger"))
    assert r.status_code == 201, r.text
    assert r.json()["confusable_with"] == ["acme.logger"]
    assert api.http.get("/v1/plugins/acme.l0gger").json()["confusable_with"] == ["acme.logger"]
    # another publisher's look-alike namespace is refused at namespace creation
    import pytest

    from corral._errors import UsageError

    with pytest.raises(UsageError, match="reads like"):
        api.registry.create_namespace("acrne", "evil")
    # another publisher publishing a name that reads like acme's: flagged
    r = api.publish(make_plugin(tmp_path, "evil.logqer"), api.other_token)
    assert r.status_code == 201, r.text
    assert "acme.logger" in r.json()["confusable_with"]


def test_cross_publisher_lookalike_id_refused(api: Api, tmp_path: Path) -> None:
    assert api.publish(make_plugin(tmp_path, "acme.tool-x")).status_code == 201
    # same publisher, same skeleton: published and flagged
    r = api.publish(make_plugin(tmp_path, "acme.toolx"))
    assert r.status_code == 201
    assert r.json()["confusable_with"] == ["acme.tool-x"]
    # another publisher: "acmet.ool-x" reads as "acme.tool-x" once separators go
    api.registry.create_namespace("acmet", "evil")
    before = artifacts(api)
    e = err(api.publish(make_plugin(tmp_path, "acmet.ool-x"), api.other_token), 403,
            "policy_denied")
    assert e["confusable_with"] in ("acme.tool-x", "acme.toolx")
    assert artifacts(api) == before
    err(api.http.get("/v1/plugins/acmet.ool-x"), 404, "not_found")


def test_bad_queries_and_unknown_ids(api: Api, tmp_path: Path) -> None:
    err(api.http.get("/v1/search", params={"sort": "sideways"}), 400, "usage")
    err(api.http.get("/v1/search", params={"page": "zero"}), 400, "usage")
    err(api.http.get("/v1/search", params={"page": 0}), 400, "usage")
    err(api.http.get("/v1/search", params={"per_page": 1000}), 400, "usage")
    err(api.http.get("/v1/search", params={"q": "x" * 500}), 400, "usage")
    err(api.http.get("/v1/search", params={"min_rating": 9}), 400, "usage")
    ok = api.http.get("/v1/search", params={"q": '"; DROP TABLE plugins; -- OR * NEAR('})
    assert ok.status_code == 200
    assert api.http.get("/v1/search", params={"q": "***"}).status_code == 200
    err(api.http.get("/v1/plugins/nobody.nothing"), 404, "not_found")
    assert api.publish(make_plugin(tmp_path, "acme.hint-me")).status_code == 201
    hint = err(api.http.get("/v1/plugins/hint_me"), 404, "not_found")
    assert hint["did_you_mean"] == ["acme.hint-me"]
    err(api.http.get("/v1/plugins/nobody.nothing/download"), 404, "not_found")
    err(api.http.get("/v1/plugins/nobody.nothing/resolve", params={"spec": "~~~"}), 400, "usage")
    err(api.http.get("/v1/no/such/route"), 404, "not_found")
    err(api.http.post("/v1/plugins/x.y/rating", json={"stars": 3}), 401, "permission_denied")


def test_search_filters_sort_and_rating(api: Api, tmp_path: Path) -> None:
    for pid, desc in (("acme.alpha-fmt", "formats alpha code"),
                      ("acme.beta-fmt", "formats beta code")):
        assert api.publish(make_plugin(tmp_path, pid, description=desc)).status_code == 201
    api.http.post("/v1/plugins/acme.beta-fmt/rating", json={"stars": 5},
                  headers=api.auth()).raise_for_status()
    r = api.http.post("/v1/plugins/acme.alpha-fmt/rating", json={"stars": 2},
                      headers=api.auth(api.other_token))
    assert r.json()["rating"] == 2
    err(api.http.post("/v1/plugins/acme.alpha-fmt/rating", json={"stars": 7},
                      headers=api.auth()), 400, "usage")
    res = api.http.get("/v1/search", params={"q": "formats code", "sort": "rating"}).json()
    ids = [x["id"] for x in res["results"]]
    assert ids.index("acme.beta-fmt") < ids.index("acme.alpha-fmt")
    res = api.http.get("/v1/search", params={"q": "formats", "min_rating": 4}).json()
    assert [x["id"] for x in res["results"]] == ["acme.beta-fmt"]
    res = api.http.get("/v1/search", params={"tag": "demo", "per_page": 100}).json()
    assert {"acme.alpha-fmt", "acme.beta-fmt"} <= {x["id"] for x in res["results"]}
    assert res["total"] >= 2
    res = api.http.get("/v1/search", params={"category": "testing", "author": "test author",
                                             "q": "fmt"}).json()
    assert {x["id"] for x in res["results"]} >= {"acme.alpha-fmt", "acme.beta-fmt"}
    assert api.http.get("/v1/search", params={"verified": "true", "q": "fmt"}).json()["total"] == 0
    api.registry.verify_publisher("acme")
    res = api.http.get("/v1/search", params={"verified": "true", "q": "fmt"}).json()
    assert {x["id"] for x in res["results"]} >= {"acme.alpha-fmt", "acme.beta-fmt"}
    assert res["results"]  # all() below must not pass on nothing
    assert all(x["verified"] for x in res["results"])
    page1 = api.http.get("/v1/search", params={"q": "fmt", "per_page": 1}).json()
    page2 = api.http.get("/v1/search", params={"q": "fmt", "per_page": 1, "page": 2}).json()
    assert page1["results"][0]["id"] != page2["results"][0]["id"]
    res = api.http.get("/v1/search", params={"sort": "updated", "per_page": 3}).json()
    stamps = [x["updated"] for x in res["results"]]
    assert stamps == sorted(stamps, reverse=True)


def test_two_server_processes_share_one_database(api: Api, tmp_path: Path) -> None:
    """A second server over the same database and artifact volume sees every write."""
    import threading

    from corral.registry._app import open_server
    from corral.registry._service import Registry

    url = api.registry.engine.url.render_as_string(hide_password=False)
    with Registry.open(api.data, url) as second, open_server(second) as url2, \
            httpx.Client(base_url=url2) as http2:
        archive = make_plugin(tmp_path, "acme.shared-thing", "1.0.0")
        assert api.publish(archive).status_code == 201
        assert http2.get("/v1/plugins/acme.shared-thing").json()["version"] == "1.0.0"
        found = http2.get("/v1/search", params={"q": "shared-thnig"}).json()["results"]
        assert found[0]["id"] == "acme.shared-thing"  # its name index caught up
        assert http2.get("/v1/plugins/acme.shared-thing/download").content == (
            archive.read_bytes())
        # the same new version published through both at once: one wins; the other gets
        # 409 with other bytes, 200 (an idempotent retry) with the same bytes
        codes: list[int] = []

        def push(client: httpx.Client, race: Path) -> None:
            with race.open("rb") as fp:
                codes.append(client.post("/v1/publish", files={"archive": fp},
                                          headers=api.auth()).status_code)

        same = make_plugin(tmp_path, "acme.shared-thing", "2.0.0")
        other = make_plugin(tmp_path, "acme.shared-thing", "3.0.0")
        other2 = make_plugin(tmp_path, "acme.shared-thing", "3.0.0", description="other")
        for pair, want in (((same, same), [200, 201]), ((other, other2), [201, 409])):
            codes.clear()
            threads = [threading.Thread(target=push, args=(c, a))
                       for c, a in zip((api.http, http2), pair, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(codes) == want
        versions = http2.get("/v1/plugins/acme.shared-thing").json()["versions"]
        assert [v["version"] for v in versions] == ["3.0.0", "2.0.0", "1.0.0"]
