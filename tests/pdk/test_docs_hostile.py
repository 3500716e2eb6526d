"""``corral docs`` on a hostile plugin: no link followed out of it, no unsafe link published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral import InvalidPluginError
from corral._pdk.docgen import plugin_docs, safe_url, to_html, to_markdown

SECRET_LINE = "root-only: the host's private file"


def make_plugin(root: Path, *, description: str = "docs", homepage: str | None = None,
                schema: str | None = None) -> Path:
    plugin = root / "acme.docs"
    plugin.mkdir(parents=True)
    home = f"homepage = {json.dumps(homepage)}\n" if homepage is not None else ""
    (plugin / "corral.toml").write_text(f'''[plugin]
id = "acme.docs"
name = "Docs"
version = "1.0.0"
description = {json.dumps(description)}
{home}
[exports]
run = "docs_mod:run"
''')
    (plugin / "docs_mod.py").write_text('def run(value, ctx):\n    """Run it."""\n')
    if schema is not None:
        (plugin / "config.schema.json").write_text(schema)
    return plugin


def docs_cli(plugin: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_HOME"}
    env["CORRAL_HOME"] = str(out.parent / "home")
    return subprocess.run([sys.executable, "-m", "corral", "docs", str(plugin), "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("name", ["config.schema.json", "docs_mod.py", "corral.toml"])
def test_a_link_out_of_the_plugin_is_refused(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"type": "object", "properties": {
        "k": {"type": "string", "description": SECRET_LINE}}}))
    plugin = make_plugin(tmp_path)
    target = plugin / name
    if target.exists():
        outside.write_text(target.read_text() + f"\n# {SECRET_LINE}\n")
        target.unlink()
    target.symlink_to(outside)
    out = tmp_path / "site"
    res = docs_cli(plugin, out)
    assert res.returncode == 3, res.stderr
    assert res.stderr.startswith(f"corral: error: {target}: symbolic links are not allowed")
    assert not out.exists() or not any(out.iterdir())  # nothing written
    with pytest.raises(InvalidPluginError, match="symbolic links"):
        plugin_docs(plugin)


def test_a_link_inside_a_sub_folder_is_refused_too(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path)
    (plugin / "data").mkdir()
    (plugin / "data" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidPluginError, match="passwd: symbolic links"):
        plugin_docs(plugin)


def test_a_plain_plugin_still_documents(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, schema=json.dumps({"type": "object", "properties": {
        "k": {"type": "string", "description": "a key"}}}))
    res = docs_cli(plugin, tmp_path / "site")
    assert res.returncode == 0, res.stderr
    assert "a key" in (tmp_path / "site" / "acme.docs.md").read_text()


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JavaScript:alert(1)",
                                 "java\tscript:alert(1)", " javascript:alert(1)",
                                 "javascript\\:alert(1)", "data:text/html,<script>x</script>",
                                 "vbscript:msgbox", "file:///etc/passwd"])
def test_unsafe_urls_are_refused(url: str) -> None:
    assert not safe_url(url)


@pytest.mark.parametrize("url", ["https://acme.test/x", "http://acme.test", "mailto:a@acme.test",
                                 "docs/usage.md", "#install", "/abs/path", "../up"])
def test_safe_urls_are_kept(url: str) -> None:
    assert safe_url(url)


HOSTILE_PROSE = ("see [docs](javascript:alert(1)), ![img]( javascript:alert(2)), "
                 "[x](JAVA\tSCRIPT:alert(3)), [esc](javascript\\:alert(4)) "
                 "and [ok](https://acme.test/ok) or [rel](guide.md)\n"
                 "[ref]: javascript:alert(5)\n[good]: https://acme.test/good")


def _links(markdown: str) -> list[str]:
    """Every destination a CommonMark reader would link to (inline and definitions)."""
    import re

    return [m.group(2) for m in re.finditer(r"(?<!\\)\]([(:])\s*<?([^\s)>]*)", markdown)]


def test_javascript_links_in_markdown_are_inert(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, description=HOSTILE_PROSE, homepage="javascript:alert(6)",
                         schema=json.dumps({"type": "object", "properties": {"k": {
                             "type": "string", "description": HOSTILE_PROSE}}}))
    md = to_markdown(plugin_docs(plugin))
    links = _links(md)
    assert "https://acme.test/ok" in links
    assert "guide.md" in links
    assert "https://acme.test/good" in links
    assert links  # all() below must not pass on nothing
    assert all(safe_url(u) for u in links), links
    assert "]\\(javascript:alert(1))" in md  # shown, not linked
    assert "- **Homepage:** javascript:alert(6)" in md


def test_html_links_only_to_safe_urls(tmp_path: Path) -> None:
    bad = make_plugin(tmp_path / "bad", homepage="javascript:alert(1)")
    page = to_html(plugin_docs(bad))
    assert "href" not in page
    assert "javascript:alert(1)" in page  # as text
    good = make_plugin(tmp_path / "good", homepage="https://acme.test/docs")
    page = to_html(plugin_docs(good))
    assert '<a href="https://acme.test/docs">https://acme.test/docs</a>' in page


def test_safe_homepage_is_a_markdown_link(tmp_path: Path) -> None:
    md = to_markdown(plugin_docs(make_plugin(tmp_path, homepage="https://acme.test/h")))
    assert "- **Homepage:** [https://acme.test/h](https://acme.test/h)" in md
