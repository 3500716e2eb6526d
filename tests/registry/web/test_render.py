"""The pure parts of the pages: Markdown sanitising, grants in plain language, their diff."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from corral.registry._web.charts import bar_chart, line_chart
from corral.registry._web.markdown import clean_text, render_markdown
from corral.registry._web.permissions import describe, diff

ATTACKS = [
    ("<script>alert(1)</script>", "<script"),
    ('<img src=x onerror="alert(1)">', "<img"),
    ("[x](javascript:alert(1))", 'href="javascript'),
    ("[x](JaVaScRiPt:alert(1))", "href=\"javascript"),
    ("[x](data:text/html;base64,PHNjcmlwdD4=)", 'href="data'),
    ("![x](https://evil.example/track.png)", "<img"),
    ('<a href="https://ok.example" style="position:fixed">x</a>', "style="),
    ("<iframe src=https://evil.example></iframe>", "<iframe"),
    ('<svg onload="alert(1)"></svg>', "<svg"),
    ("<details open ontoggle=alert(1)>", "ontoggle"),
]


class _Tags(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


@pytest.mark.parametrize("source", [a for a, _ in ATTACKS])
def test_markdown_never_lets_active_content_through(source: str) -> None:
    for tag, attrs in _Tags(render_markdown(source)).found:  # what a browser would build
        assert tag not in ("script", "img", "iframe", "svg", "style", "details"), tag
        assert not any(k.startswith("on") or k == "style" for k in attrs), attrs
        href = attrs.get("href", "").lower()
        assert not href.startswith(("javascript:", "data:")), href


def test_markdown_keeps_what_a_readme_needs() -> None:
    html = render_markdown("# Title\n\n**bold** `code` [docs](https://ok.example/a)\n\n"
                           "| a | b |\n|---|---|\n| 1 | 2 |\n\n[mail](mailto:a@b.example)")
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html
    assert "<code>code</code>" in html
    assert "<table>" in html
    assert 'href="https://ok.example/a"' in html
    assert 'href="mailto:a@b.example"' in html
    assert 'rel="nofollow ugc noopener"' in html


def test_bidi_and_control_characters_are_shown_not_obeyed() -> None:
    assert clean_text("abc\u202edef\u2066x\x1b[2J") == "abc\\u202edef\\u2066x\\x1b[2J"
    assert clean_text("tab\tand\nnewline") == "tab\tand\nnewline"
    assert "\u202e" not in render_markdown("evil\u202etxt.exe")


def test_grants_in_plain_language_riskiest_first() -> None:
    manifest = {"permissions": {
        "fs-read": ["{workspace}", "{data}"], "fs-write": ["/etc/app"], "spawn": ["git"],
        "net-connect": ["api.example.org:443"], "env": ["HOME", "GITHUB_TOKEN"],
        "host-api": ["secrets:db", "events.publish:app.>"]},
        "sandbox": {"isolation": "none"}}
    grants = describe(manifest)
    risk = {g.spelling: g.risk for g in grants}
    assert risk["fs-read {data}"] == "low"
    assert risk["fs-read {workspace}"] == "medium"
    assert risk["fs-write /etc/app"] == "high"
    assert risk["spawn git"] == "high"
    assert risk["net-connect api.example.org:443"] == "medium"
    assert risk["env HOME"] == "low"
    assert risk["env GITHUB_TOKEN"] == "medium"
    assert risk["host-api secrets:db"] == "high"
    assert risk["host-api events.publish:app.>"] == "low"
    assert risk["sandbox.isolation none"] == "high"
    order = [g.risk for g in grants]
    assert order == sorted(order, key=["high", "medium", "low"].index)
    assert describe({}) == []


def test_permission_diff_names_what_was_added_and_dropped() -> None:
    old = {"permissions": {"fs-read": ["{workspace}"], "env": ["HOME"]}}
    new = {"permissions": {"fs-read": ["{workspace}"], "spawn": ["curl"]}}
    changes = diff(old, new)
    assert [g.spelling for g in changes.added] == ["spawn curl"]
    assert [g.spelling for g in changes.removed] == ["env HOME"]
    assert [g.spelling for g in changes.kept] == ["fs-read {workspace}"]
    assert diff(new, new).added == ()
    assert diff(new, new).removed == ()


def test_charts_escape_their_labels() -> None:
    svg = line_chart([("<script>", 1.0), ("b", 2.0)], title="<b>t</b>")
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "<title>&lt;b&gt;" in svg
    assert "style=" not in svg
    assert "&lt;i&gt;" in bar_chart([("<i>", 3.0)], title="x")
