"""docs/registry.md's "From nothing to an install" block, run command by command as written.

How the block is run, mechanically:

- the block is the first ```` ```sh ```` fence after the heading ``## From nothing to an
  install``; a line ending in ``\\`` continues on the next; ``#`` lines are comments;
- its first line must be ``export REG=... KEYS=... HOME2=... PORT=...``: the test
  replaces these four values (a temporary directory's folders and a free port) and
  changes nothing else in any command;
- every other line runs as written in its own ``bash``, in the environment the lines
  before it left (``set -a``, so ``TOKEN=$(...)`` carries over as it does in one
  interactive shell), from a folder that holds the checkout's ``examples/``, with
  ``HOME`` a fresh temporary folder (``~`` in the block lands there) and ``corral``
  on ``PATH`` running this checkout;
- a line ending in ``&`` is started in the background (its process group is stopped at
  the end) and the test waits until ``http://127.0.0.1:$PORT/v1/health`` answers;
- every line must exit 0; the text after the last ``# prints:`` comment must be in the
  standard output of the command just before it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.docs import REPO, ShellWalk, exported, sh_block, steps
from helpers.net import free_port

from corral._sandbox.landlock import landlock_abi

GUIDE = REPO / "docs" / "registry.md"
HEADING = "## From nothing to an install"
PLACES = ("REG", "KEYS", "HOME2", "PORT")


def test_the_guide_block_is_well_formed() -> None:
    lines = sh_block(GUIDE, HEADING)
    assert exported(lines[0]) == list(PLACES)
    cmds = steps(lines)
    text = "\n".join(c for c, _ in cmds)
    for step in ("mkdir -p", "corral registry tuf init", "--offline-keys",
                 "corral registry seed --catalogue examples/catalogue.tsv",
                 "corral registry serve", "create-publisher", "create-token", "add-key",
                 "verify-publisher", "corral registry trust", "--root", "corral new",
                 "corral publish", "corral --home \"$HOME2\" install", "--source",
                 "corral --home \"$HOME2\" enable", "corral --home \"$HOME2\" call"):
        assert step in text, step
    assert "tuf sync" not in text  # admin commands re-sign by themselves
    assert sum(c.endswith("&") for c, _ in cmds) == 1
    assert cmds[-1][1], "the last command says what it prints"
    for place in PLACES:
        assert f"${place}" in text, place


@pytest.mark.timeout(240)
@pytest.mark.skipif(sys.platform != "linux" or landlock_abi() < 1,
                    reason="the command template's strict sandbox needs Linux with Landlock")
def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    lines = sh_block(GUIDE, HEADING)
    assert exported(lines[0]) == list(PLACES)
    port = free_port()
    # the first line's values, replaced (nothing else of the block is)
    walk = ShellWalk(tmp_path, {"REG": str(tmp_path / "registry"),
                                "KEYS": str(tmp_path / "offline-keys"),
                                "HOME2": str(tmp_path / "user-home"), "PORT": str(port)})
    try:
        walk.walk(steps(lines), f"http://127.0.0.1:{port}/v1/health")
    finally:
        walk.close()
    assert (tmp_path / "offline-keys").is_dir()  # tuf init put the offline keys where told
    assert not list((tmp_path / "registry" / "tuf").rglob("root*.pem"))
