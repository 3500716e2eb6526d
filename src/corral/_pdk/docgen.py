"""``corral docs``: a plugin's documentation, as Markdown and as one static HTML page.

Built from the manifest, the exports' and micro handlers' signatures and
docstrings (read with :mod:`ast`; nothing is imported), the config schema
(``config.schema.json``) and ``[permissions.reasons]``.  Output is
deterministic (same plugin, same bytes) and the HTML page is self-contained,
with every piece of text escaped.

The plugin's files are hostile input: a plugin holding a link (or a special
file) is refused before anything is read, as copying it would be, and a link
is made only to a safe URL (:func:`safe_url`); a Markdown link or link
definition in the plugin's prose to any other URL is shown as plain text.
"""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path
from typing import Any, Final

from corral._disk.tree import check_plugin_tree

__all__ = ["SAFE_SCHEMES", "plugin_docs", "safe_url", "to_html", "to_markdown"]

NO_REASON: Final = "no reason given"
#: The only schemes a generated page links to; a URL without a scheme is relative.
SAFE_SCHEMES: Final = frozenset({"http", "https", "mailto"})
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
#: ``](`` of an inline link or image and ``]:`` of a link definition, with the URL after it.
_MD_LINK: Final = re.compile(r"\](\(|:)[ \t\n]*<?([^ \t\n)>]*)")

_CSS: Final = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}h1{margin-bottom:0}code{background:#f3f3f3;padding:0 .2em}"
    "table{border-collapse:collapse;width:100%;margin:1rem 0}"
    "th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}"
    "th{background:#f6f6f6}.missing{color:#b00}pre{white-space:pre-wrap;background:#fafafa;"
    "padding:.5rem;border-left:3px solid #ddd}"
)


def safe_url(url: object) -> bool:
    """Whether a page may link to ``url``: ``http``, ``https``, ``mailto`` or relative.

    Browsers ignore control characters and spaces inside a scheme (a tab in
    ``javascript``) and Markdown drops a backslash before ``:``, so both are
    dropped before the scheme is read.
    """
    cleaned = "".join(ch for ch in str(url) if ch > " " and ch not in "\x7f\\")
    m = _SCHEME.match(cleaned)
    return m is None or m.group(1).lower() in SAFE_SCHEMES


def _callable_doc(plugin_dir: Path, name: str, target: str) -> dict[str, Any]:
    from corral._pdk.lint import find_definition

    out: dict[str, Any] = {"name": name, "target": target, "signature": None, "doc": "",
                           "file": None, "line": None}
    found = find_definition(plugin_dir, target)
    if found is None:
        return out
    out["file"], node = found
    attr = target.partition(":")[2]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        out["signature"] = f"{prefix} {attr}({ast.unparse(node.args)})"
        out["doc"] = ast.get_docstring(node) or ""
        out["line"] = node.lineno
    elif isinstance(node, ast.ClassDef):
        out["signature"] = f"class {attr}"
        out["doc"] = ast.get_docstring(node) or ""
        out["line"] = node.lineno
    return out


def _config_rows(schema: dict[str, Any] | None, prefix: str = "") -> list[dict[str, Any]]:
    if not schema:
        return []
    rows = []
    required = set(schema.get("required") or ())
    for name in sorted(schema.get("properties") or {}):
        sub = schema["properties"][name]
        if not isinstance(sub, dict):
            continue
        key = f"{prefix}{name}"
        kind = sub.get("type", "any")
        rows.append({
            "key": key,
            "type": "|".join(kind) if isinstance(kind, list) else str(kind),
            "default": sub.get("default"),
            "required": name in required,
            "description": str(sub.get("description", "")),
        })
        if "properties" in sub:
            rows.extend(_config_rows(sub, key + "."))
    return rows


def plugin_docs(plugin_dir: Path) -> dict[str, Any]:
    """Everything the pages show, as JSON-ready data (what ``corral docs --json`` prints)."""
    from corral._model.config import load_schema
    from corral._model.manifest import load_manifest

    check_plugin_tree(plugin_dir)
    m = load_manifest(plugin_dir)
    reasons = m.permission_reasons
    perms = []
    for kind, grants in m.permissions.to_dict().items():
        for grant in grants:
            perms.append({"kind": kind, "grant": grant,
                          "reason": reasons.get(f"{kind}:{grant}") or reasons.get(kind)})
    return {
        "id": m.id,
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "authors": [{"name": a.name, "email": a.email} for a in m.authors],
        "license": m.license,
        "category": m.category,
        "tags": list(m.tags),
        "requires-corral": m.requires_corral,
        "homepage": m.homepage,
        "repository": m.repository,
        "dependencies": dict(m.dependencies),
        "exports": [_callable_doc(plugin_dir, n, t) for n, t in sorted(m.exports.items())],
        "micro": [
            {**_callable_doc(plugin_dir, mi.id, mi.handler), "type": mi.type,
             "max-ms": mi.max_ms, "description": mi.description}
            for mi in m.micro
        ],
        "config": _config_rows(load_schema(m.id, plugin_dir)),
        "permissions": perms,
        "sandbox": m.sandbox.to_dict(),
    }


# -- Markdown -----------------------------------------------------------------------


def _inert(m: re.Match[str]) -> str:
    """A Markdown link to an unsafe URL, its ``(`` or ``:`` escaped so it is no link."""
    return m.group() if safe_url(m.group(2)) else "]\\" + m.group()[1:]


def _no_html(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(value: object) -> str:
    """Markdown prose: no raw HTML (``&``, ``<``, ``>`` as entities), links to safe URLs only."""
    return _MD_LINK.sub(_inert, _no_html(value))


def _md_link(url: str) -> str:
    """``url`` as a Markdown link if it is safe, else as inert text."""
    if not safe_url(url) or any(c in url for c in "()<> \n"):
        return _text(url)
    return f"[{_text(url)}]({url})"


def _cell(value: object) -> str:
    """A Markdown table cell: no raw HTML, pipes, newlines or links to unsafe URLs."""
    text = _no_html(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return _MD_LINK.sub(_inert, text)


def _code(value: object) -> str:
    """A code span in a table cell (raw text: code spans show HTML literally)."""
    text = "" if value is None else str(value)
    if "`" in text or "\n" in text:
        return _cell(text)
    return "`" + text.replace("|", "\\|") + "`"


def _fenced(text: str, lang: str = "") -> list[str]:
    """``text`` verbatim in a code fence longer than any backtick run inside it."""
    import re

    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text, fence]


def _json(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _facts(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's header facts, as (label, text) pairs; empty ones are left out by callers."""
    return [
        ("Authors", ", ".join(a["name"] + (f" <{a['email']}>" if a["email"] else "")
                              for a in doc["authors"])),
        ("License", doc["license"]), ("Category", doc["category"]),
        ("Tags", ", ".join(doc["tags"])), ("Requires corral", doc["requires-corral"]),
        ("Homepage", doc["homepage"]), ("Repository", doc["repository"]),
    ]


def to_markdown(doc: dict[str, Any]) -> str:
    """The Markdown page."""
    out = [f"# {_text(doc['name'])} `{doc['id']}` {doc['version']}", ""]
    if doc["description"]:
        out += [_text(doc["description"]), ""]
    facts = _facts(doc)
    links = {"Homepage", "Repository"}
    listed = [f"- **{k}:** {_md_link(v) if k in links else _text(v)}" for k, v in facts if v]
    if listed:
        out += [*listed, ""]
    if doc["dependencies"]:
        out += ["## Dependencies", "", "| plugin | versions |", "| --- | --- |"]
        out += [f"| {_code(k)} | {_code(v or '*')} |" for k, v in doc["dependencies"].items()]
        out.append("")
    for title, items in (("Exports", doc["exports"]), ("Micro-plugins", doc["micro"])):
        if not items:
            continue
        out += [f"## {title}", ""]
        for item in items:
            out += [f"### `{item['name']}`", ""]
            if item.get("type"):
                out += [f"*{item['type']}*, at most {item['max-ms']} ms", ""]
            out += [*_fenced(item["signature"] or item["target"], "python"), ""]
            if item["doc"]:
                out += [*_fenced(item["doc"]), ""]
            elif item.get("description"):
                out += [_text(item["description"]), ""]
            else:
                out += ["*No docstring.*", ""]
            out += [f"Target: `{item['target']}`", ""]
    if doc["config"]:
        out += ["## Configuration", "", "| key | type | default | required | description |",
                "| --- | --- | --- | --- | --- |"]
        out += [
            f"| {_code(r['key'])} | {_cell(r['type'])} | "
            f"{_code(_json(r['default'])) if r['default'] is not None else ''} | "
            f"{'yes' if r['required'] else 'no'} | {_cell(r['description'])} |"
            for r in doc["config"]
        ]
        out.append("")
    out += ["## Permissions", ""]
    if not doc["permissions"]:
        out += ["None: the plugin may touch nothing outside itself.", ""]
    else:
        out += ["| permission | grant | why |", "| --- | --- | --- |"]
        out += [
            f"| {p['kind']} | {_code(p['grant'])} | "
            f"{_cell(p['reason']) if p['reason'] else '**' + NO_REASON + '**'} |"
            for p in doc["permissions"]
        ]
        out.append("")
    out += ["## Sandbox", "", "| limit | value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in doc["sandbox"].items()]
    return "\n".join(out) + "\n"


# -- HTML ---------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _html_link(url: str) -> str:
    """``url`` as a link if it is safe, else as plain text."""
    return f'<a href="{_e(url)}">{_e(url)}</a>' if safe_url(url) else _e(url)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Rows of already-escaped cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(doc: dict[str, Any]) -> str:
    """One self-contained HTML page (inline CSS, no scripts, every text escaped)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(doc['name'])} {_e(doc['version'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(doc['name'])}</h1>",
        f"<p><code>{_e(doc['id'])}</code> {_e(doc['version'])}</p>",
    ]
    if doc["description"]:
        parts.append(f"<p>{_e(doc['description'])}</p>")
    facts = _facts(doc)
    links = {"Homepage", "Repository"}
    items = "".join(f"<li><b>{_e(k)}:</b> {_html_link(v) if k in links else _e(v)}</li>"
                    for k, v in facts if v)
    if items:
        parts.append(f"<ul>{items}</ul>")
    if doc["dependencies"]:
        parts.append("<h2>Dependencies</h2>")
        parts.append(_table(["plugin", "versions"],
                            [[_e(k), _e(v or "any")] for k, v in doc["dependencies"].items()]))
    for title, entries in (("Exports", doc["exports"]), ("Micro-plugins", doc["micro"])):
        if not entries:
            continue
        parts.append(f"<h2>{title}</h2>")
        for item in entries:
            parts.append(f"<h3><code>{_e(item['name'])}</code></h3>")
            if item.get("type"):
                parts.append(f"<p><i>{_e(item['type'])}</i>, at most {_e(item['max-ms'])} ms</p>")
            parts.append(f"<pre><code>{_e(item['signature'] or item['target'])}</code></pre>")
            text = item["doc"] or item.get("description")
            parts.append(f"<pre>{_e(text)}</pre>" if text else "<p><i>No docstring.</i></p>")
            parts.append(f"<p>Target: <code>{_e(item['target'])}</code></p>")
    if doc["config"]:
        parts.append("<h2>Configuration</h2>")
        parts.append(_table(
            ["key", "type", "default", "required", "description"],
            [[f"<code>{_e(r['key'])}</code>", _e(r["type"]),
              _e(_json(r["default"])) if r["default"] is not None else "",
              "yes" if r["required"] else "no", _e(r["description"])] for r in doc["config"]],
        ))
    parts.append("<h2>Permissions</h2>")
    if not doc["permissions"]:
        parts.append("<p>None: the plugin may touch nothing outside itself.</p>")
    else:
        parts.append(_table(
            ["permission", "grant", "why"],
            [[_e(p["kind"]), f"<code>{_e(p['grant'])}</code>",
              _e(p["reason"]) if p["reason"] else f'<span class="missing">{NO_REASON}</span>']
             for p in doc["permissions"]],
        ))
    parts.append("<h2>Sandbox</h2>")
    parts.append(_table(["limit", "value"], [[_e(k), _e(v)] for k, v in doc["sandbox"].items()]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
