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

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral._sandbox.landlock import landlock_abi

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "registry.md"
HEADING = "## From nothing to an install"
PLACES = ("REG", "KEYS", "HOME2", "PORT")


def guide_block(text: str) -> list[str]:
    """The lines of the guide's ``sh`` block, continuations joined, blank lines dropped."""
    after = text[text.index(HEADING):]
    found = re.search(r"^```sh\n(.*?)^```$", after, re.M | re.S)
    assert found, f"no ```sh block after {HEADING!r} in {GUIDE}"
    lines: list[str] = []
    pending = ""
    for raw in found.group(1).splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    return lines


def commands(lines: list[str]) -> list[tuple[str, str | None]]:
    """``(command, expected output)`` for each non-comment line after the first."""
    out: list[tuple[str, str | None]] = []
    for line in lines[1:]:
        if line.startswith("# prints:"):
            assert out, "a '# prints:' line must follow a command"
            out[-1] = (out[-1][0], line.removeprefix("# prints:").strip())
        elif not line.startswith("#"):
            out.append((line, None))
    return out


def placeholders(first: str) -> list[str]:
    """The names the block's first line exports (it must export exactly :data:`PLACES`)."""
    words = shlex.split(first)
    assert words[0] == "export", first
    return [w.partition("=")[0] for w in words[1:]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env_after(command: str, env: dict[str, str], cwd: Path,
               dump: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in bash with ``env``; the environment it leaves goes to ``dump``."""
    script = f"set -a\n{command}\n__rc=$?\nenv -0 > {shlex.quote(str(dump))}\nexit $__rc\n"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@contextlib.contextmanager
def background(command: str, env: dict[str, str], cwd: Path, log: Path) -> Iterator[None]:
    """Start ``command`` (its ``&`` removed) in its own process group; stop it at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", command.removesuffix("&").strip()], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def _wait_ready(url: str, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the background command did not serve {url}: {log.read_text()[-3000:]}")


def test_the_guide_block_is_well_formed() -> None:
    lines = guide_block(GUIDE.read_text())
    assert placeholders(lines[0]) == list(PLACES)
    cmds = commands(lines)
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
    lines = guide_block(GUIDE.read_text())
    assert placeholders(lines[0]) == list(PLACES)
    port = _free_port()
    work = tmp_path / "checkout"  # where the user pastes the block
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    for d in (work, home, bin_dir):
        d.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    shim = bin_dir / "corral"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m corral "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CORRAL_") and k not in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    env.update(
        HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]),
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        # the first line's values, replaced (nothing else of the block is)
        REG=str(tmp_path / "registry"), KEYS=str(tmp_path / "offline-keys"),
        HOME2=str(tmp_path / "user-home"), PORT=str(port),
    )
    dump = tmp_path / "env.dump"
    with contextlib.ExitStack() as stack:
        last = None
        for i, (command, expected) in enumerate(commands(lines), 1):
            if command.endswith("&"):
                log = tmp_path / f"background-{i}.log"
                stack.enter_context(background(command, env, work, log))
                _wait_ready(f"http://127.0.0.1:{port}", log)
                continue
            proc = _env_after(command, env, work, dump)
            assert proc.returncode == 0, (
                f"step {i}: {command}\nexited {proc.returncode}\n"
                f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
            env = dict(item.partition("=")[::2] for item in dump.read_text().split("\0")
                       if item and not item.startswith("__rc="))
            if expected is not None:
                assert expected in proc.stdout, (command, proc.stdout)
            last = proc
        assert last is not None
    assert (tmp_path / "offline-keys").is_dir()  # tuf init put the offline keys where told
    assert not list((tmp_path / "registry" / "tuf").rglob("root*.pem"))

