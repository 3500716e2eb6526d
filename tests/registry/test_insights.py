"""Community analytics and recommendations through a real server on loopback.

A registry seeded with a small catalogue and co-usage sets whose figures are known,
plus published plugins: one yanked, one that needs a future corral.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral._disk.archive import pack_directory
from corral.registry._app import open_server
from corral.registry._insights import charts
from corral.registry._insights.recommendations import seed_cousage
from corral.registry._seed import seed
from corral.registry._service import Registry

from .conftest import _accounts, _fresh_pg_db

CATALOGUE = """\
name\tversion\tmonth\tpopularity_rank\tsummary
pytest-cov\t5.0.0\t2026-10\t50\tPytest plugin for measuring coverage.
pytest-xdist\t3.6.1\t2026-09\t80\tpytest xdist plugin for distributed testing and loop-on-failing
pytest-mock\t3.14.0\t2026-08\t90\tThin-wrapper around the mock package for easier use with pytest
pytest-timeout\t2.3.1\t2026-07\t400\tpytest plugin to abort hanging tests
pytest-asyncio\t0.24.0\t2026-09\t120\tPytest support for asyncio
"""

# pytest-cov: 7 sets; with xdist in 4, with mock in 2, with timeout in 1 (under support)
COUSAGE = ["pytest-cov,pytest-xdist"] * 4 + ["pytest-cov,pytest-mock"] * 2 + [
    "pytest-cov,pytest-timeout", "pytest-asyncio,pytest-mock", "pytest-asyncio,pytest-mock"]
ACME = ["base,good,gone,legacy"] * 3


def _tsv(path: Path, rows: list[str]) -> Path:
    lines = ["repo\tfamily\tsource_path\tplugins"]
    lines += [f"{path.stem}/r{n}\tpytest\tpyproject.toml\t{r}" for n, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _archive(root: Path, plugin_id: str, plugin_extra: str = "") -> Path:
    src = root / f"src-{uuid.uuid4().hex[:8]}"
    src.mkdir(parents=True)
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "{plugin_id}"
        name = "{plugin_id.split('.')[1]}"
        version = "1.0.0"
        description = "A test plugin"
        license = "MIT"
        authors = [{{ name = "Test Author" }}]
        category = "testing"
        {plugin_extra}

        [exports]
        hello = "hello_mod:hello"
        """))
    (src / "hello_mod.py").write_text("def hello(input, ctx):\n    return {'hi': input}\n")
    out = root / f"{plugin_id}.corral"
    pack_directory(src, out)
    return out


@dataclass
class Site:
    url: str
    registry: Registry
    http: httpx.Client
    token: str


def _populate(reg: Registry, tmp: Path, http: httpx.Client, token: str) -> None:
    seed(reg, _catalogue(tmp))
    seed_cousage(reg.engine, _tsv(tmp / "cousage.tsv", COUSAGE))
    auth = {"Authorization": f"Bearer {token}"}
    for name, extra in (("base", ""), ("good", ""), ("gone", ""),
                        ("legacy", 'requires-corral = "<0.2"')):
        archive = _archive(tmp, f"acme.{name}", extra)
        with archive.open("rb") as fp:
            r = http.post("/v1/publish", files={"archive": (archive.name, fp)}, headers=auth)
        assert r.status_code == 201, r.text
    r = http.post("/v1/plugins/acme.gone/versions/1.0.0/yank", headers=auth,
                  json={"reason": "broken"})
    assert r.status_code == 200, r.text
    seed_cousage(reg.engine, _tsv(tmp / "acme.tsv", ACME), namespace="acme")


def _catalogue(tmp: Path) -> Path:
    path = tmp / "catalogue.tsv"
    path.write_text(CATALOGUE)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("insights")
    reg = Registry.open(tmp / "data")
    token, _ = _accounts(reg)
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=60) as http:
        _populate(reg, tmp, http, token)
        yield Site(url, reg, http, token)
    reg.close()


def _recs(http: httpx.Client, **params: object) -> dict[str, dict[str, object]]:
    r = http.get("/v1/recommendations", params=params)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"recommendations"}
    for rec in doc["recommendations"]:
        assert set(rec) == {"id", "score", "reasons"}
        assert rec["reasons"]
    return {rec["id"]: rec for rec in doc["recommendations"]}


def test_used_together_with_the_real_figures_and_no_rare_pair(site: Site) -> None:
    got = _recs(site.http, **{"with": "pypi.pytest-cov"})
    first = next(iter(got))
    assert first == "pypi.pytest-xdist"
    # 4 of the 7 sets with pytest-cov; lift = 4 * 12 sets / (7 * 4)
    lift = 4 * 12 / (7 * 4)
    assert got[first]["reasons"][0] == (
        f"used with pytest-cov in 57% of projects that use it (lift {lift:.1f})")
    assert "pypi.pytest-cov" not in got  # never what the user has
    timeout = got.get("pypi.pytest-timeout", {"reasons": []})
    assert not any("used with" in str(x) for x in timeout["reasons"])  # seen once: hidden


def test_yanked_and_incompatible_plugins_are_never_recommended(site: Site) -> None:
    mine = _recs(site.http, **{"with": "acme.base", "corral": "1.0.0"})
    assert "acme.good" in mine  # positive control: the same sets, installable
    assert "acme.gone" not in mine  # every version yanked
    assert "acme.legacy" not in mine  # requires-corral <0.2, the host has 1.0.0
    assert mine["acme.good"]["reasons"][-1] == "compatible with your corral 1.0.0"
    unknown = _recs(site.http, **{"with": "acme.base"})  # no corral given: not filtered
    assert "acme.legacy" in unknown
    assert "acme.gone" not in unknown


@pytest.mark.parametrize("bad", ["acme.<script>", "../../etc", "a" * 300, "acme.x\u202e"])
def test_hostile_ids_in_with_are_refused(site: Site, bad: str) -> None:
    r = site.http.get("/v1/recommendations", params={"with": bad})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "usage"
    assert "with" in r.json()["error"]["field"]


def test_downloads_per_day_trending_and_publisher_totals(site: Site) -> None:
    for _ in range(5):
        assert site.http.get("/v1/plugins/acme.good/download").status_code == 200
    site.registry.downloads.flush()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    doc = site.http.get("/v1/plugins/acme.good/stats", params={"days": 7}).json()
    assert doc["downloads"]["series"][-1] == {"day": today, "count": 5}
    assert [s["count"] for s in doc["downloads"]["series"][:-1]] == [0] * 6
    assert doc["downloads"]["total"] == doc["downloads"]["in_window"] == 5
    eco = site.http.get("/v1/stats/ecosystem", params={"days": 7}).json()
    assert eco["trending"][0] == {"id": "acme.good", "recent": 5, "previous": 0,
                                  "growth": 5.0}
    assert eco["top"][0]["id"] == "pypi.pytest-cov"
    assert {"category": "testing"}.items() <= eco["categories"][0].items()
    pub = site.http.get("/v1/stats/publishers/acme", params={"days": 7}).json()
    assert pub["plugins"] == 4
    assert pub["downloads"]["in_window"] == 5
    assert site.http.get("/v1/stats/publishers/nobody").status_code == 404
    assert site.http.get("/v1/plugins/acme.nothing/stats").status_code == 404


def test_ratings_trend(site: Site) -> None:
    auth = {"Authorization": f"Bearer {site.token}"}
    assert site.http.post("/v1/plugins/acme.base/rating", json={"stars": 4},
                          headers=auth).status_code == 200
    assert site.http.post("/v1/plugins/acme.base/rating", json={"stars": 2},
                          headers=auth).status_code == 200
    doc = site.http.get("/v1/plugins/acme.base/stats", params={"days": 2}).json()
    assert doc["ratings"]["series"][-1]["count"] == 2
    assert doc["ratings"]["series"][-1]["average"] == 3.0
    assert doc["ratings"]["count"] == 1  # one rater: the latest rating counts


def _report(nonce: str, plugins: list[tuple[str, str]], day: str | None = None) -> dict:
    return {"schema": 1, "day": day or dt.datetime.now(dt.UTC).date().isoformat(),
            "nonce": nonce, "corral_version": "1.0.0",
            "plugins": [{"id": i, "version": v} for i, v in plugins]}


def test_reports_count_active_installs_and_version_adoption(site: Site) -> None:
    one = _report("1" * 32, [("acme.base", "1.0.0"), ("acme.unknown", "9")])
    r = site.http.post("/v1/reports", json=one)
    assert r.status_code == 200
    assert r.json() == {"accepted": True, "duplicate": False,
                                                  "plugins": 1}
    again = site.http.post("/v1/reports", json=one)
    assert again.json()["duplicate"] is True
    site.http.post("/v1/reports", json=_report("2" * 32, [("acme.base", "0.9")]))
    doc = site.http.get("/v1/plugins/acme.base/stats").json()
    assert doc["active_installs"] == 2.0  # two hosts today; the duplicate not counted
    assert {v["version"]: v["share"] for v in doc["versions"]} == {"1.0.0": 0.5, "0.9": 0.5}


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"not json", 400, "report"),
    (json.dumps({"schema": 1}).encode(), 400, "day"),
    (json.dumps(_report("3" * 32, [("acme.<img src=x>", "1")])).encode(), 400,
     "plugins.0.id"),
    (json.dumps(_report("3" * 32, [], day="2020-01-01")).encode(), 400, "day"),
    (json.dumps({**_report("3" * 32, []), "hostname": "me"}).encode(), 400, "hostname"),
    (b"{" + b" " * 70_000 + b"}", 413, None),
])
def test_hostile_reports_are_refused(site: Site, body: bytes, status: int,
                                     field: str | None) -> None:
    r = site.http.post("/v1/reports", content=body,
                       headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    if field:
        assert r.json()["error"]["field"] == field


def test_reports_are_rate_limited(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path)
    try:
        with open_server(reg) as url, httpx.Client(base_url=url) as http:
            codes = [http.post("/v1/reports", json=_report(f"{n:032x}", [])).status_code
                     for n in range(11)]
            assert codes[:10] == [200] * 10
            assert codes[10] == 429
            last = http.post("/v1/reports", json=_report("f" * 32, []))
            assert last.json()["error"]["reason"] == "rate_limited"
            assert int(last.headers["Retry-After"]) > 0
    finally:
        reg.close()


def test_openapi_lists_the_routes_with_the_error_model(site: Site) -> None:
    doc = site.http.get("/openapi.json").json()
    for path in ("/v1/recommendations", "/v1/plugins/{plugin_id}/stats",
                 "/v1/stats/ecosystem", "/v1/stats/publishers/{publisher}", "/v1/reports"):
        op = next(iter(doc["paths"][path].values()))
        assert op["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}, path
    assert "429" in doc["paths"]["/v1/reports"]["post"]["responses"]


def test_charts_are_inert_svg_with_escaped_labels() -> None:
    evil = '<script>alert(1)</script>" onload="x'
    svg = charts.line_chart([(evil, 3), ("2026-12-02", 5)], title=evil)
    root = ET.fromstring(svg)  # well-formed
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    tags = {el.tag.split("}")[1] for el in root.iter()}
    assert "script" not in tags
    assert "foreignObject" not in tags
    assert not any(k.startswith("on") for el in root.iter() for k in el.attrib)
    assert "&lt;script&gt;" in svg
    assert "href" not in svg
    bars = ET.fromstring(charts.bar_chart([(evil, 1.0)], title="versions"))
    assert not any(k.startswith("on") for el in bars.iter() for k in el.attrib)
    assert "no data yet" in charts.line_chart([], title="empty")


def test_the_web_pages_get_charts_from_app_state(site: Site) -> None:
    from corral.registry._app import create_app

    insights = create_app(site.registry).state.insights
    svg = insights.plugin_charts("acme.good", days=7)
    assert set(svg) == {"downloads", "versions", "ratings"}
    assert ET.fromstring(svg["downloads"]).get("role") == "img"


def test_postgresql_counts_reports_and_recommends(
        pg_url: str, tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "data", _fresh_pg_db(pg_url))
    try:
        seed(reg, _catalogue(tmp_path))
        seed_cousage(reg.engine, _tsv(tmp_path / "cousage.tsv", COUSAGE))
        with open_server(reg) as url, httpx.Client(base_url=url, timeout=60) as http:
            got = _recs(http, **{"with": "pypi.pytest-cov"})
            assert next(iter(got)) == "pypi.pytest-xdist"
            for nonce in ("a" * 32, "b" * 32):
                assert http.post("/v1/reports", json=_report(
                    nonce, [("pypi.pytest-cov", "5.0.0")])).json()["accepted"] is True
            doc = http.get("/v1/plugins/pypi.pytest-cov/stats").json()
            assert doc["active_installs"] == 2.0
            pk = reg.info("pypi.pytest-cov")  # the daily upsert, twice on one day
            from corral.registry import _db

            with reg.read() as conn:
                ppk = conn.execute(_db.plugins.select().where(
                    _db.plugins.c.id == pk["id"])).first().pk
            for _ in range(2):
                reg.downloads.add(ppk, 0)
                assert reg.downloads.flush()
            doc = http.get("/v1/plugins/pypi.pytest-cov/stats", params={"days": 1}).json()
            assert doc["downloads"]["series"][-1]["count"] == 2
            token, other = _accounts(reg)
            for tok, stars in ((token, 5), (other, 2)):
                assert http.post("/v1/plugins/pypi.pytest-cov/rating", json={"stars": stars},
                                 headers={"Authorization": f"Bearer {tok}"}).status_code == 200
            day = http.get("/v1/plugins/pypi.pytest-cov/stats", params={"days": 1}).json()
            assert day["ratings"]["series"][-1] == {"day": doc["downloads"]["series"][-1]["day"],
                                                    "count": 2, "average": 3.5}
    finally:
        reg.close()


def test_a_yank_after_the_model_is_built_hides_the_plugin(site: Site) -> None:
    from corral.registry._insights.recommendations import RecommendationModel

    model = RecommendationModel(site.registry.engine)
    assert "acme.good" in [r.id for r in model.recommend(["acme.base"])]
    auth = {"Authorization": f"Bearer {site.token}"}
    url = "/v1/plugins/acme.good/versions/1.0.0/yank"
    assert site.http.post(url, headers=auth, json={}).status_code == 200
    try:
        model.invalidate()
        assert "acme.good" not in [r.id for r in model.recommend(["acme.base"])]
    finally:
        assert site.http.delete(url, headers=auth).status_code == 200
    model.invalidate()
    assert "acme.good" in [r.id for r in model.recommend(["acme.base"])]


def test_reports_teach_used_together_only_once_enough_arrived(tmp_path: Path) -> None:
    from corral.registry._insights.recommendations import MIN_REPORTS, RecommendationModel
    from corral.registry._insights.reports import store_report

    reg = Registry.open(tmp_path / "data")
    try:
        seed(reg, _catalogue(tmp_path))
        model = RecommendationModel(reg.engine)
        pair = [("pypi.pytest-cov", "5.0.0"), ("pypi.pytest-timeout", "2.3.1")]

        def used_with() -> list[str]:
            model.invalidate()
            return [x for r in model.recommend(["pypi.pytest-cov"]) for x in r.reasons
                    if x.startswith("used with")]

        with reg.write() as conn:
            for n in range(MIN_REPORTS - 1):
                store_report(conn, _report(f"{n:032x}", pair))
        assert used_with() == []  # too few reports: nothing learned from them
        with reg.write() as conn:
            for n in range(MIN_REPORTS - 1, 30):
                store_report(conn, _report(f"{n:032x}", pair))
        # 30 hosts' reports weigh 30 * 0.5 / 7 = 2.1 sets: at the minimum support
        assert used_with() == [
            "used with pytest-cov in 100% of projects that use it (lift 1.0)"]
    finally:
        reg.close()
