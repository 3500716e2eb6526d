"""``corral docs`` and ``[permissions.reasons]``: Markdown, HTML, escaping, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from corral import ManifestError, parse_manifest
from corral._pdk.docgen import NO_REASON, plugin_docs, to_html, to_markdown

MANIFEST = '''
[plugin]
id = "acme.git-stats"
name = "Git Stats"
version = "1.4.0"
description = "Commit statistics for the workspace"
license = "MIT"
authors = [{ name = "Acme", email = "dev@acme.test" }]
category = "vcs"
tags = ["git", "stats"]
requires-corral = ">=0.1"

[dependencies]
"acme.workspace" = ">=1.0,<2"

[permissions]
fs-read = ["{workspace}"]
net-connect = ["api.example.com:443"]
spawn = ["git"]

[permissions.reasons]
spawn = "runs git log to count commits"
"net-connect:api.example.com:443" = "fetches the issue tracker's counts"

[sandbox]
isolation = "strict"
timeout-ms = 2000

[exports]
summary = "git_stats.commands:summary"
evil = "git_stats.commands:evil"

[[micro]]
id = "acme.git-stats.semver"
type = "validator"
handler = "git_stats.micro:is_semver"
max-ms = 50
description = "Whether a string is a semantic version"
'''

COMMANDS = '''
async def summary(input, ctx, *, limit=10):
    """Count commits per author.

    Returns {"authors": {name: count}}.
    """


def evil(input, ctx):
    """<script>alert(1)</script> & <img src=x onerror=alert(2)> | pipe"""
'''

SCHEMA = {
    "type": "object",
    "required": ["branch"],
    "properties": {
        "branch": {"type": "string", "default": "main", "description": "the branch | to read"},
        "limits": {"type": "object", "properties": {
            "max": {"type": "integer", "default": 100}}},
    },
}


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    root = tmp_path / "git-stats"
    (root / "git_stats").mkdir(parents=True)
    (root / "corral.toml").write_text(MANIFEST)
    (root / "git_stats" / "__init__.py").write_text("")
    (root / "git_stats" / "commands.py").write_text(COMMANDS)
    (root / "git_stats" / "micro.py").write_text("def is_semver(value, ctx):\n    return True\n")
    (root / "config.schema.json").write_text(json.dumps(SCHEMA))
    return root


def test_reasons_are_parsed_and_round_trip() -> None:
    m = parse_manifest(MANIFEST)
    assert dict(m.permission_reasons) == {
        "spawn": "runs git log to count commits",
        "net-connect:api.example.com:443": "fetches the issue tracker's counts",
    }
    assert parse_manifest(MANIFEST).to_dict()["permissions"]["reasons"]["spawn"]
    from corral._model.manifest import Manifest

    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(("reasons", "expect"), [
    ('spwan = "x"', "did you mean 'spawn'"),
    ('env = "x"', "env, which is not granted"),
    ('"spawn:curl" = "x"', "'curl', which is not in permissions.spawn"),
    ('spawn = ""', "non-empty string"),
    ('spawn = 3', "non-empty string"),
])
def test_bad_reasons_are_refused(reasons: str, expect: str) -> None:
    text = MANIFEST.replace('spawn = "runs git log to count commits"', reasons)
    with pytest.raises(ManifestError, match=expect) as info:
        parse_manifest(text)
    assert "permissions.reasons" in str(info.value)


def test_docs_data(plugin: Path) -> None:
    doc = plugin_docs(plugin)
    summary = next(e for e in doc["exports"] if e["name"] == "summary")
    assert summary["signature"] == "async def summary(input, ctx, *, limit=10)"
    assert summary["doc"].startswith("Count commits per author.")
    assert (summary["file"], summary["line"]) == ("git_stats/commands.py", 2)
    assert doc["micro"][0]["signature"] == "def is_semver(value, ctx)"
    assert [r["key"] for r in doc["config"]] == ["branch", "limits", "limits.max"]
    assert doc["config"][0]["required"] is True
    reasons = {(p["kind"], p["grant"]): p["reason"] for p in doc["permissions"]}
    assert reasons == {
        ("fs-read", "{workspace}"): None,
        ("net-connect", "api.example.com:443"): "fetches the issue tracker's counts",
        ("spawn", "git"): "runs git log to count commits",
    }


def test_markdown(plugin: Path) -> None:
    md = to_markdown(plugin_docs(plugin))
    assert md.startswith("# Git Stats `acme.git-stats` 1.4.0\n")
    for text in ("Commit statistics for the workspace", "- **License:** MIT",
                 "- **Authors:** Acme &lt;dev@acme.test&gt;", "- **Tags:** git, stats",
                 "| `acme.workspace` | `>=1.0,<2` |",
                 "async def summary(input, ctx, *, limit=10)", "Count commits per author.",
                 "### `acme.git-stats.semver`", "*validator*, at most 50 ms",
                 '| `branch` | string | `"main"` | yes | the branch \\| to read |',
                 "| `limits.max` | integer | `100` | no |  |",
                 "| spawn | `git` | runs git log to count commits |",
                 f"| fs-read | `{{workspace}}` | **{NO_REASON}** |",
                 "| timeout-ms | 2000 |", "| isolation | strict |"):
        assert text in md, text
    # a hostile docstring is shown verbatim in a code block, never as raw HTML
    assert "```\n<script>alert(1)</script> & <img src=x onerror=alert(2)> | pipe\n```" in md


def test_html_is_escaped_and_self_contained(plugin: Path) -> None:
    page = to_html(plugin_docs(plugin))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(2)&gt;" \
        in page
    assert "<style>" in page
    assert "http" not in page.split("<body>")[0]  # no external stylesheet or script
    assert f'<span class="missing">{NO_REASON}</span>' in page
    assert "<td>runs git log to count commits</td>" in page
    assert "async def summary(input, ctx, *, limit=10)" in page


def test_hostile_manifest_text_is_escaped(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "corral.toml").write_text(
        '[plugin]\nid = "acme.x"\nname = "<b>X</b>"\nversion = "1.0.0"\n'
        'description = "\\"><script>x()</script>"\n'
        '[permissions]\nspawn = ["git"]\n[permissions.reasons]\nspawn = "<iframe>"\n'
    )
    page = to_html(plugin_docs(root))
    assert "<script" not in page
    assert "<iframe" not in page
    assert "<b>X" not in page
    assert "&lt;b&gt;X&lt;/b&gt;" in page
    md = to_markdown(plugin_docs(root))
    assert "<script" not in md
    assert "<iframe" not in md
    assert "&lt;iframe&gt;" in md


def test_output_is_deterministic(plugin: Path) -> None:
    a = plugin_docs(plugin)
    b = plugin_docs(plugin)
    assert to_markdown(a) == to_markdown(b)
    assert to_html(a) == to_html(b)


def test_cli_docs(run_cli: Any, plugin: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    res = run_cli("docs", str(plugin), "-o", str(out), "--json")
    assert res.code == 0, res.err
    assert res.json["plugin"] == "acme.git-stats"
    assert sorted(Path(f).name for f in res.json["files"]) == [
        "acme.git-stats.html", "acme.git-stats.md"]
    first = (out / "acme.git-stats.html").read_bytes()
    assert run_cli("docs", str(plugin), "-o", str(out), "--format", "html").code == 0
    assert (out / "acme.git-stats.html").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["acme.git-stats.html", "acme.git-stats.md"]
    res = run_cli("docs", str(tmp_path / "nope"), "--json")
    assert res.json["error"]["code"] == "not_found"
    assert not (tmp_path / "nope").exists()
    assert run_cli("docs", str(plugin), "--format", "pdf").code == 2
