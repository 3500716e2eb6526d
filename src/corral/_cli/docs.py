"""The command line's docs verb: Markdown and HTML documentation of a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._cli.output import dump

if TYPE_CHECKING:
    import argparse

    from corral._cli.output import VerbAdder

__all__ = ["add_verbs"]


def cmd_docs(args: argparse.Namespace) -> int:
    """Write ``<id>.md`` and/or ``<id>.html`` into ``-o DIR`` (default: the current one)."""
    from pathlib import Path

    from corral._errors import NotFoundError
    from corral._pdk.docgen import plugin_docs, to_html, to_markdown

    plugin_dir = Path(args.path).expanduser().absolute()
    if not plugin_dir.is_dir():
        raise NotFoundError(f"{plugin_dir}: no such plugin directory", path=str(plugin_dir))
    doc = plugin_docs(plugin_dir)
    out_dir = Path(args.output).expanduser().absolute()
    pages = {}
    if args.format in ("md", "both"):
        pages[out_dir / f"{doc['id']}.md"] = to_markdown(doc)
    if args.format in ("html", "both"):
        pages[out_dir / f"{doc['id']}.html"] = to_html(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in pages.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never a half-written page
    if args.json:
        dump({"plugin": doc["id"], "files": [str(p) for p in pages], "docs": doc})
    else:
        for path in pages:
            print(f"wrote {path}")
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``docs``."""
    sp = verb("docs", cmd_docs, "generate a plugin's documentation (Markdown, HTML)")
    sp.add_argument("path")
    sp.add_argument("-o", "--output", default=".", metavar="DIR", help="where to write")
    sp.add_argument("--format", choices=("md", "html", "both"), default="both")
