"""corral's main job in one run: register the first-party plugins, enable them, use them.

Run from a checkout::

    python examples/demo.py [--home DIR]

The home (default ``./demo-home``) is wiped first, so every run starts clean.
The workspace is this repository: the demo summarises its files, reads its git
history, checks the installed plugins' versions against a small built-in list
of published versions, shows a failure handled the way the CLI reports it,
shows the sandbox refusing a plugin what it was not granted (a file outside
its grants) while the host carries on, and ends with the plugins' states and
call metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import corral

REPO = Path(__file__).resolve().parent.parent
PLUGINS = ("workspace", "git", "updater")

#: A stand-in for the registry: versions published per plugin id.
VERSION_SOURCE: dict[str, Any] = {
    "corral.workspace": ["0.1.0", "0.1.1", "0.2.0b1"],
    "corral.git": ["0.1.0", "0.2.0", "1.0.0rc1"],
    "corral.updater": {"versions": ["0.1.0", "1.0.0"], "yanked": ["1.0.0"]},
}

#: A plugin the demo writes into its home: granted nothing, it tries to read a file.
SNOOP_TOML = """\
[plugin]
id = "demo.snoop"
name = "Snoop"
version = "0.1.0"
description = "Written by the demo: granted nothing, it tries to read a file anyway."

[sandbox]
isolation = "strict"

[exports]
peek = "snoop:peek"
"""
SNOOP_CODE = """\
def peek(path, ctx):
    with open(path) as f:
        return f.read()
"""


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], indent: str = "  ",
          right: Sequence[int] = ()) -> str:
    """Rows as aligned columns; the columns numbered in ``right`` are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(row)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line([h.upper() for h in headers]), *(line(r) for r in cells)])


def size(n: int) -> str:
    """Bytes in a human unit."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def section(title: str) -> None:
    print(f"\n== {title}")


def guarded(title: str, show: Callable[[], None]) -> None:
    """Run one section; a plugin failure is reported in a line and the demo goes on."""
    section(title)
    try:
        show()
    except corral.CorralError as exc:
        print(f"  ({exc.code}: {exc.message})")


def excluded(home: Path) -> list[str]:
    """The demo's own home, when it lies inside the workspace, is not part of the tour."""
    return [home.relative_to(REPO).as_posix()] if home.is_relative_to(REPO) else []


def show_summary(host: corral.Host, home: Path) -> None:
    out = host.call("corral.workspace", "summary", {"top": 5, "exclude": excluded(home)})
    print(f"  {out['files']} files, {size(out['bytes'])} (.git, caches and venvs skipped)")
    rows = [(r["language"], r["files"], size(r["bytes"])) for r in out["by_language"][:8]]
    print(table(rows, ["language", "files", "size"], right=(1, 2)))
    print("  largest files")
    print(table([(r["path"], size(r["bytes"])) for r in out["largest"]], ["path", "size"],
                indent="    ", right=(1,)))


def show_find(host: corral.Host, home: Path) -> None:
    out = host.call("corral.workspace", "find",
                    {"pattern": "corral.toml", "limit": 10, "exclude": excluded(home)})
    print(f"  {out['count']} files named like {out['pattern']!r} ({out['mode']}):")
    for match in out["matches"]:
        print(f"    {match['path']}")


def show_status(host: corral.Host) -> None:
    st = host.call("corral.git", "status")
    where = st["branch"] or "(detached HEAD)"
    commit = (st["commit"] or "no commits yet")[:10]
    upstream = (f"{st['upstream']} ahead {st['ahead']} behind {st['behind']}"
                if st["upstream"] else "no upstream")
    print(f"  branch {where} at {commit}, {upstream}")
    print(f"  staged {st['staged']}, modified {st['modified']}, untracked {st['untracked']}, "
          f"conflicted {st['conflicted']}" + ("  (clean)" if st["clean"] else ""))
    for group in ("staged", "modified", "untracked"):
        names = st["files"][group]
        if names:
            more = st[group] - len(names[:5])
            print(f"    {group:9s} " + ", ".join(names[:5]) + (f" (+{more})" if more else ""))


def show_log(host: corral.Host) -> None:
    out = host.call("corral.git", "log", {"limit": 5})
    if not out["commits"]:
        print("  no commits yet")
        return
    rows = [(c["short"], c["date"][:10], c["author"][:30], c["subject"][:56])
            for c in out["commits"]]
    print(table(rows, ["commit", "date", "author", "subject"]))


def show_authors(host: corral.Host) -> None:
    out = host.call("corral.git", "authors")
    if not out["authors"]:
        print("  no commits yet")
        return
    rows = [(a["name"][:32], a["commits"], f"+{a['added']}", f"-{a['removed']}")
            for a in out["authors"][:10]]
    print(table(rows, ["author", "commits", "added", "removed"], right=(1, 2, 3)))
    print(f"  {out['commits']} commits in all")


def show_updates(host: corral.Host) -> None:
    installed = {i.id: i.version for i in host.list(discovered=False)}
    out = host.call("corral.updater", "check",
                    {"installed": installed, "available": VERSION_SOURCE})
    rows = [(r["id"], r["current"], r["latest"] or "-", r["update"]) for r in out["plugins"]]
    print(table(rows, ["plugin", "current", "latest", "update"]))
    print(f"  {out['count']} update(s): {', '.join(out['updates']) or 'none'}"
          "  (pre-releases and yanked versions skipped)")
    for version in ("1.4.2", "v2.0", "1.02.0-rc.1"):
        verdict = host.call("corral.updater", "corral.updater.semver", version)
        why = "; ".join(verdict["reasons"])
        print(f"  semver {version!r:14s} {'valid' if verdict['valid'] else 'invalid: ' + why}")


def show_failure(host: corral.Host) -> None:
    print("""  $ corral call corral.workspace find --json --input '{"limit": 3}'""")
    try:
        host.call("corral.workspace", "find", {"limit": 3})
    except corral.CorralError as exc:
        error = {k: v for k, v in exc.to_dict().items() if k != "traceback"}
        print(f"  exit {exc.exit_code}")
        print("  " + json.dumps({"error": error}, ensure_ascii=False))
    out = host.call("corral.workspace", "find", {"pattern": "demo.py"})
    paths = ", ".join(m["path"] for m in out["matches"])
    print(f"  the host keeps working: find 'demo.py' -> {paths}")


def show_denied(host: corral.Host, home: Path) -> None:
    """A strict plugin granted nothing asks for a file: the kernel refuses, the host goes on."""
    src = home / "demo-src" / "snoop"
    src.mkdir(parents=True)
    (src / "corral.toml").write_text(SNOOP_TOML)
    (src / "snoop.py").write_text(SNOOP_CODE)
    secret = home / "not-granted.txt"
    secret.write_text("the host's own data\n")
    host.enable(host.register(src)[0].id)
    print("  demo.snoop (strict, [permissions] empty) opens a file outside its grants:")
    print(f"  $ corral call demo.snoop peek --input '\"{secret}\"'")
    try:
        text = host.call("demo.snoop", "peek", str(secret))
        print(f"  NOT REFUSED: it read {text!r}")  # only where this machine cannot confine
    except corral.CorralError as exc:
        print(f"  refused: {exc.code} (exit {exc.exit_code}): {exc.message.splitlines()[0]}")
    print(f"  the host carries on: {len(host.list(state='enabled'))} plugins enabled, "
          f"{secret.name} untouched ({secret.read_text().strip()!r})")


def show_plugins(host: corral.Host) -> None:
    rows = []
    for info in host.list(discovered=False):
        metrics = host.info(info.id)["metrics"]
        outcomes = metrics.get("outcomes", {})
        wall = metrics.get("wall_ms", {})
        rows.append((info.id, info.version, info.state, metrics.get("calls", 0),
                     outcomes.get("ok", 0), metrics.get("calls", 0) - outcomes.get("ok", 0),
                     f"{wall.get('p50', 0):.2f}", f"{wall.get('max', 0):.2f}"))
    print(table(rows, ["plugin", "version", "state", "calls", "ok", "failed", "p50 ms",
                       "max ms"], right=(3, 4, 5, 6, 7)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--home", default="demo-home",
                        help="the host's home, wiped first (default: ./demo-home)")
    args = parser.parse_args(argv)
    home = Path(args.home).absolute()
    shutil.rmtree(home, ignore_errors=True)
    started = time.perf_counter()
    print(f"corral {corral.__version__} demo")
    print(f"  home       {home} (fresh)")
    print(f"  workspace  {REPO}")
    with corral.Host(home=home, workspace=REPO) as host:
        section("register and enable the first-party plugins")
        for info in host.register(*(REPO / "plugins" / name for name in PLUGINS)):
            host.enable(info.id)
        rows = [(i.id, i.version, i.state, i.description) for i in host.list(discovered=False)]
        print(table(rows, ["plugin", "version", "state", "description"]))
        guarded("corral.workspace summary", lambda: show_summary(host, home))
        guarded("corral.workspace find", lambda: show_find(host, home))
        guarded("corral.git status", lambda: show_status(host))
        guarded("corral.git log", lambda: show_log(host))
        guarded("corral.git authors", lambda: show_authors(host))
        guarded("corral.updater check", lambda: show_updates(host))
        guarded("a failure, handled: an export called with bad input",
                lambda: show_failure(host))
        guarded("the sandbox at work: a plugin reaches for what it was not granted",
                lambda: show_denied(host, home))
        section("plugins and their call metrics")
        show_plugins(host)
    print(f"\ndone in {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
