"""The marketplace over plain HTTP: pages, facets, escaping, security headers, 404s."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from .conftest import HOSTILE_ID, Site


class Dom(HTMLParser):
    """Every element of a page with its attributes (what a browser would build)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def tags(self, name: str) -> list[dict[str, str]]:
        return [attrs for tag, attrs in self.elements if tag == name]


def assert_inert(html: str) -> Dom:
    """No script but the site's own, no handler, style or javascript: URL anywhere."""
    dom = Dom(html)
    for attrs in dom.tags("script"):
        assert attrs.get("src", "").startswith("/assets/site.js"), attrs
    for tag, attrs in dom.elements:
        assert tag not in ("iframe", "img", "style", "object", "embed", "svg") or (
            tag == "svg" and attrs.get("class", "").startswith("chart")), (tag, attrs)
        for key, value in attrs.items():
            assert not key.startswith("on"), (tag, attrs)
            assert key != "style", (tag, attrs)
            if key in ("href", "src", "action"):
                assert not value.strip().lower().startswith(("javascript:", "data:")), attrs
    return dom


def assert_secure_headers(headers: dict[str, str] | object) -> None:
    h = {k.lower(): v for k, v in headers.items()}  # type: ignore[attr-defined]
    csp = h["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"]
    assert h["content-type"].startswith("text/html")


@pytest.mark.parametrize("path", ["/", "/search?q=pytest", f"/plugins/{HOSTILE_ID}",
                                  "/plugins/acme.webby", "/publishers/acme",
                                  "/namespaces/acme", "/plugins/nope.nothing"])
def test_every_page_has_the_security_headers_and_no_foreign_asset(site: Site, path: str) -> None:
    answer = site.http.get(path)
    assert answer.status_code in (200, 404)
    assert_secure_headers(answer.headers)
    dom = assert_inert(answer.text)
    for tag, attr in (("script", "src"), ("link", "href")):
        for attrs in dom.tags(tag):
            assert attrs[attr].startswith("/assets/"), attrs  # served from the package
    assert len(answer.content) < 150_000


def test_home_has_search_categories_and_lists(site: Site) -> None:
    page = site.http.get("/").text
    assert 'action="/search"' in page
    assert 'name="q"' in page
    assert "Categories" in page
    assert "/search?category=testing" in page
    assert "Popular" in page
    assert "Trending" in page
    assert "New and updated" in page
    assert 'href="/plugins/pypi.' in page


def test_search_ranks_and_shares_its_query(site: Site) -> None:
    page = site.http.get("/search", params={"q": "pytest"}).text
    hrefs = re.findall(r'<h3><a href="/plugins/([^"]+)"', page)
    assert hrefs[0] == "pypi.pytest"  # the registry's own ranking: the exact name first
    assert 'value="pytest"' in page  # the query stays in the box: the URL is shareable


def test_search_shows_the_corrected_query(site: Site) -> None:
    page = site.http.get("/search", params={"q": "pytset"}).text
    assert re.search(r"Showing results for <a href=\"/search\?q=pytest\"><strong>pytest<", page)
    plain = site.http.get("/search", params={"q": "pytest"}).text
    assert "Showing results for" not in plain


def test_search_facets_filter(site: Site) -> None:
    verified = site.http.get("/search", params={"q": "webby helper", "verified": "true"}).text
    assert "/plugins/acme.webby" in verified
    assert not re.search(r'href="/plugins/pypi\.', verified)  # pypi is not verified
    cat = site.http.get("/search", params={"category": "testing", "sort": "downloads"}).text
    assert "/plugins/pypi.pytest" in cat
    assert "/plugins/pypi.requests\"" not in cat
    both = site.http.get("/search", params={"q": "helper webby", "tag": "web"}).text
    assert "/plugins/acme.helper" in both
    compatible = site.http.get("/search", params={"q": "helper webby", "tag": "web",
                                                  "corral": "0.0.9"}).text
    assert "/plugins/acme.helper" not in compatible  # it requires corral >=0.1
    assert "/plugins/acme.webby" in compatible
    future = site.http.get("/search", params={"updated_since": "2999-01-01"}).text
    assert "No plugin matches" in future
    rated = site.http.get("/search", params={"q": "pytest", "min_rating": "4"}).text
    assert "No plugin matches" in rated  # nothing is rated yet


def test_search_sorts_and_pages(site: Site) -> None:
    first = site.http.get("/search", params={"q": "flask", "sort": "downloads"}).text
    second = site.http.get("/search", params={"q": "flask", "sort": "downloads",
                                              "page": "2"}).text
    ids1 = re.findall(r'<h3><a href="/plugins/([^"]+)"', first)
    ids2 = re.findall(r'<h3><a href="/plugins/([^"]+)"', second)
    assert len(ids1) == 20
    assert ids2
    assert not set(ids1) & set(ids2)
    listing = site.http.get("/search", params={"sort": "downloads"}).text
    assert "More than 1,000 plugins" in listing  # counted up to a limit, not every row
    assert 'rel="next"' in first
    assert "page=2" in first
    assert 'rel="prev"' in second
    updated = site.http.get("/search", params={"q": "flask", "sort": "updated"}).text
    assert re.findall(r'<h3><a href="/plugins/([^"]+)"', updated) != ids1


def test_bad_search_input_is_a_400_page_naming_the_field(site: Site) -> None:
    for params in ({"updated_since": "yesterday"}, {"sort": "random"}, {"corral": "x.y"},
                   {"min_rating": "9"}, {"q": "bad\x01control"}):
        answer = site.http.get("/search", params=params)
        assert answer.status_code == 400, params
        assert_secure_headers(answer.headers)
        assert 'role="alert"' in answer.text


def test_plugin_page_shows_versions_permissions_and_their_diff(site: Site) -> None:
    page = site.http.get("/plugins/acme.webby").text
    assert "<h1>Webby" in page
    assert "corral install acme.webby --source" in page
    assert 'data-copy-target="install-cmd"' in page
    assert " hidden>" in page
    assert re.search(r"1\.0\.0</a>\s*<span class=\"badge bad\"[^>]*>yanked", page)
    assert "verified publisher" in page
    assert re.search(r'risk-high"><span class="risk">high</span> Run the program git', page)
    assert re.search(r'risk-medium"><span class="risk">medium</span> Read files in your '
                     r"workspace", page)
    assert "<h1>Webby 2</h1>" in page  # the README of the latest version, rendered
    assert re.search(r'<svg[^>]* class="chart"', page)
    assert "Downloads per day" in page
    deps = page.split('id="deps-h"', 1)[1].split("</section>", 1)[0]
    assert 'href="/plugins/acme.helper"' in deps
    helper = site.http.get("/plugins/acme.helper").text
    used_by = helper.split("<h3>Used by</h3>", 1)[1].split("</section>", 1)[0]
    assert 'href="/plugins/acme.webby"' in used_by
    diff = site.http.get("/plugins/acme.webby", params={"from": "1.0.0", "to": "2.0.0"}).text
    added = diff.split("<h4>Added</h4>", 1)[1].split("</ul>", 1)[0]
    assert "net-connect example.org:443" in added
    assert "spawn git" in added
    assert "fs-read {workspace}" not in added
    back = site.http.get("/plugins/acme.webby", params={"from": "2.0.0", "to": "1.0.0"}).text
    assert "<h4>Removed</h4>" in back
    assert "<h4>Added</h4>" not in back
    old = site.http.get("/plugins/acme.webby", params={"version": "1.0.0"}).text
    assert "Permissions of 1.0.0" in old
    assert "Run the program git" not in old


def test_hostile_plugin_is_rendered_inert(site: Site) -> None:
    answer = site.http.get(f"/plugins/{HOSTILE_ID}")
    assert answer.status_code == 200
    dom = assert_inert(answer.text)
    text = "".join(dom.text)
    assert "<script>window.__pwned=1</script>" in text  # shown as text, not run
    assert "\u202e" not in answer.text
    assert "\\u202e" in text
    links = [a["href"] for a in dom.tags("a")]
    assert "https://example.org/docs" in links
    good = next(a for a in dom.tags("a") if a["href"] == "https://example.org/docs")
    assert "nofollow" in good["rel"]
    assert "ugc" in good["rel"]
    listed = site.http.get("/search", params={"q": "hostile"})
    assert_inert(listed.text)
    assert "&lt;script&gt;" in listed.text


def test_unknown_pages_are_html_404s(site: Site) -> None:
    for path in ("/plugins/nope.nothing", "/publishers/nobody", "/namespaces/nowhere",
                 "/plugins/" + quote("<script>")):
        answer = site.http.get(path)
        assert answer.status_code == 404, path
        assert_secure_headers(answer.headers)
        assert_inert(answer.text)
    assert site.http.get("/v1/plugins/nope.nothing").json()["error"]["code"] == "not_found"


def test_publisher_and_namespace_pages(site: Site) -> None:
    pub = site.http.get("/publishers/acme").text
    assert "Acme Tools" in pub
    assert "verified publisher" in pub
    assert "/plugins/acme.webby" in pub
    assert "/namespaces/acme" in pub
    ns = site.http.get("/namespaces/evil").text
    assert f"/plugins/{HOSTILE_ID}" in ns
    assert "/publishers/evil" in ns
    assert_inert(ns)


def test_assets_come_from_the_package_only(site: Site) -> None:
    css = site.http.get("/assets/site.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    js = site.http.get("/assets/site.js")
    assert js.headers["content-type"].startswith("text/javascript")
    for bad in ("/assets/..%2fpages.py", "/assets/pages.py", "/assets/.hidden.css",
                "/assets/nothing.css"):
        assert site.http.get(bad).status_code == 404, bad


def test_used_together_comes_with_its_reasons(site: Site) -> None:
    from pathlib import Path

    from corral.registry._insights import Insights

    sample = Path(__file__).resolve().parents[3] / "examples" / "cousage.tsv"
    Insights(site.registry).seed_cousage(sample)
    for _ in range(60):  # the server's recommender relearns co-usage in the background
        page = site.http.get("/plugins/pypi.pytest").text
        together = page.split('id="tog-h"', 1)[1].split("</section>", 1)[0]
        if "% of pytest projects" in together:
            break
        time.sleep(0.5)
    assert 'href="/plugins/pypi.pytest-cov"' in together
    assert "% of pytest projects" in together
    assert_inert(page)
