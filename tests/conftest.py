"""Shared fixtures: a host on a temporary home, a workspace, a real CLI.

Plain helpers (plugin directories, closing hosts, CLI results) live in
``tests/helpers/``; test modules import them as ``from helpers.plugins import ...``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import ENV_DROP, CliResult
from helpers.hosts import close_quietly

from corral._host import Host

# CLI processes share a fork server daemon per home; in tests, let it idle out soon
# rather than outlive the run by the default ten minutes.
os.environ.setdefault("CORRAL_FORKSERVER_IDLE", "5")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return ws


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def host(home: Path, workspace: Path) -> Iterator[Host]:
    h = Host(home=home, workspace=workspace, hook_timeout=1.0)
    try:
        yield h
    finally:
        close_quietly(h)


@pytest.fixture
def run_cli(tmp_path: Path, home: Path, workspace: Path) -> Callable[..., CliResult]:
    """Run ``python -m corral ARGS`` for real, in ``workspace``, with ``CORRAL_HOME=home``.

    ``TMPDIR`` points inside ``tmp_path`` so that tests can see stray temporary files.
    """
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["CORRAL_HOME"] = str(home)
    systmp = tmp_path / "systmp"
    systmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(systmp)

    def run(*args: str, timeout: float = 60) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "corral", *args],
            capture_output=True,
            text=True,
            cwd=workspace,
            env=env,
            timeout=timeout,
            check=False,
        )
        doc = None
        if "--json" in args:
            # json.loads refuses trailing data: exactly one document on stdout.
            doc = json.loads(proc.stdout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr, doc)

    return run
