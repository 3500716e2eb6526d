"""The README, walked as a new user would: the quickstart's first command, then "Using it".

- Quickstart command 1 runs as written, with ``bash``, in a copy of the checkout (it
  makes ``.venv`` there and installs ``.[all]`` from the package index, so it needs
  the network CI has); its demo must end well and show the sandbox refusing a file.
  Command 2 is the one CI runs around this very test, so it is not run again here.
  Then "Open the marketplace" runs as written in the same copy (in the background):
  its page at http://127.0.0.1:8470/ must answer with the seeded catalogue.
- The ``python`` blocks under "Using it" run as written, in order, each in a new
  interpreter of this test run, from the checkout's root with ``HOME`` a fresh
  folder (``~/.myapp`` lands there): the second is the application's later start.
- The ``toml`` block is a manifest the model accepts.
- Every verb of the command-line table is one ``corral --help`` lists.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers.docs import REPO, Block, blocks

from corral._cli import main as cli_main
from corral._host import Host
from corral._model.manifest import parse_manifest

README = REPO / "README.md"


def section(heading: str) -> list[Block]:
    """The blocks of the README under ``heading``, up to the next heading of its level or above
    (lines inside code blocks are not headings)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    level = len(heading.split(" ", maxsplit=1)[0])
    first = lines.index(heading) + 1
    last, fenced = len(lines), False
    for number, line in enumerate(lines[first:], first + 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            last = number
            break
    return [b for b in blocks(README) if first <= b.line <= last]


def checkout_copy(dest: Path) -> Path:
    """The files of this checkout (what a clone has), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=False)
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:  # not a git checkout: everything but what a build or a run leaves behind
        skip = {".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", "demo-home"}
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    for name in names:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.timeout(900)
def test_quickstart_installs_and_runs_the_demo(tmp_path: Path) -> None:
    quickstart = next(b for b in section("## Quickstart") if b.language == "sh")
    lines = [ln for ln in quickstart.text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 2, lines
    assert "examples/demo.py" in lines[0], lines
    copy = checkout_copy(tmp_path / "checkout")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "CORRAL_", "VIRTUAL_ENV"))}
    done = subprocess.run(["bash", "-c", lines[0]], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=880, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # the demo's own promises: the plugins ran, the sandbox refused, the host carried on
    assert "refused: permission_denied (exit 4)" in done.stdout, done.stdout[-3000:]
    assert "corral.workspace" in done.stdout
    assert "enabled" in done.stdout
    assert (copy / ".venv" / "bin" / "corral").is_file()
    open_the_marketplace(copy, env)


def open_the_marketplace(copy: Path, env: dict[str, str]) -> None:
    (block,) = [b for b in section("### Open the marketplace") if b.language == "sh"]
    (command,) = [ln for ln in block.text.splitlines() if ln.strip()]
    log = (copy / "marketplace.log").open("wb")
    serve = subprocess.Popen(["bash", "-c", command], cwd=copy, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # the seed of 9,852 plugins comes first
        page = None
        while time.monotonic() < deadline and serve.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                page = httpx.get("http://127.0.0.1:8470/search?q=pytest", timeout=5)
                if page.status_code == 200:
                    break
            time.sleep(0.5)
        assert page is not None, (copy / "marketplace.log").read_text()[-3000:]
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "pytest-xdist" in page.text
        assert (copy / ".marketplace").is_dir()  # the data went where the README says
    finally:
        log.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)


def run_block(block: Block, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", block.text], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.timeout(300)
def test_using_it_runs_as_written_and_again_on_a_later_start(tmp_path: Path) -> None:
    first, later = [b for b in section("## Using it") if b.language == "python"][:2]
    done = run_block(first, tmp_path)
    assert done.returncode == 0, f"{first.where}:\n{done.stderr[-3000:]}"
    # the summary of docs/: every guide is a .md file, and the plugin is listed as enabled
    assert "'.md'" in done.stdout, done.stdout
    assert "corral.workspace 0.1.0" in done.stdout, done.stdout
    home = tmp_path / ".myapp" / "plugins"
    assert (home / "plugins" / "corral.workspace" / "corral.toml").is_file()

    again = run_block(later, tmp_path)
    assert again.returncode == 0, f"{later.where}:\n{again.stderr[-3000:]}"
    with Host(home=home) as host:  # the later start kept the plugin and brought it back
        (info,) = host.list()
        assert (info.id, info.state) == ("corral.workspace", "enabled")


def test_the_example_manifest_is_one_the_model_accepts(tmp_path: Path) -> None:
    (toml,) = [b for b in blocks(README) if b.language == "toml"]
    manifest = parse_manifest(toml.text, file=README.name)
    assert manifest.id == "acme.hello"
    assert set(manifest.exports) == {"greet"}


def test_every_verb_of_the_table_is_in_the_help() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| verb | does |"):text.index("### What runs in the background")]
    named = {m.group(1) for m in re.finditer(r"(?:^\| |· )`([a-z-]+)", table, re.M)}
    assert {"add", "list", "install", "registry", "daemon"} <= named
    help_text = cli_main._parser().format_help()
    missing = {v for v in named if not re.search(rf"^\s+{v}\s", help_text, re.M)}
    assert not missing, f"README's verbs missing from corral --help: {sorted(missing)}"
