"""Reading the README and the guides in ``docs/`` the way a reader does: fenced blocks, commands.

A block is a fenced code block with its language (``sh``, ``console``, ``python``,
``toml``, or ``""``).  A command is a line of a shell-like block that runs
``corral``: in ``console`` blocks the lines after ``$ ``; in ``sh`` and plain
blocks every line that starts with ``corral`` or with ``VAR=value corral``.
Continuations (``\\``) are joined; comments, pipes and ``&&`` chains are cut so
that each ``corral`` invocation is one command.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]

#: The README and every guide: what a user reads.
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Block:
    """One fenced block of a document: where it starts, its language and its text."""

    path: Path
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass(frozen=True)
class Command:
    """One ``corral`` invocation read from a block: its arguments after ``corral``."""

    block: Block
    line: str
    argv: tuple[str, ...]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    text = path.read_text(encoding="utf-8")
    return [Block(path, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
            for m in _FENCE.finditer(text)]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return lines


def _shell_lines(block: Block) -> list[str]:
    """The lines of a block that a reader would type."""
    lines = _logical_lines(block.text)
    if block.language == "console":
        return [ln[2:] for ln in lines if ln.startswith("$ ")]
    if block.language in ("sh", "bash", "shell", ""):
        return [ln.strip() for ln in lines]
    return []


def commands(block: Block) -> list[Command]:
    """The ``corral`` invocations typed in ``block``, each cut out of pipes and chains."""
    found: list[Command] = []
    for line in _shell_lines(block):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # prose in a plain block, not a command
        segment: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", "|", ";", "&", ">", ">>", "2>&1"):
                while segment and _ASSIGNMENT.match(segment[0]):
                    segment.pop(0)
                if segment and segment[0] == "corral":
                    found.append(Command(block, line, tuple(segment[1:])))
                segment = [] if word in ("&&", "||", "|", ";", "&") else ["(redirect)"]
                continue
            segment.append(word)
    return found


# -- walking a shell block as written -------------------------------------------------


def sh_block(path: Path, heading: str) -> list[str]:
    """The logical lines of the first ``sh`` block after ``heading``, blank lines dropped."""
    text = path.read_text(encoding="utf-8")
    after = text[text.index(heading):]
    found = re.search(r"^```sh\n(.*?)^```$", after, re.M | re.S)
    assert found, f"no ```sh block after {heading!r} in {path}"
    return [ln.strip() for ln in _logical_lines(found.group(1)) if ln.strip()]


def exported(first: str) -> list[str]:
    """The names a block's first line exports (``export A=... B=...``)."""
    words = shlex.split(first, comments=True)
    assert words[0] == "export", first
    return [w.partition("=")[0] for w in words[1:]]


def steps(lines: list[str]) -> list[tuple[str, str | None]]:
    """``(command, expected output)`` for each non-comment line after the first.

    A ``# prints: TEXT`` line says that ``TEXT`` is in the output of the command before it.
    """
    out: list[tuple[str, str | None]] = []
    for line in lines[1:]:
        if line.startswith("# prints:"):
            assert out, "a '# prints:' line must follow a command"
            out[-1] = (out[-1][0], line.removeprefix("# prints:").strip())
        elif not line.startswith("#"):
            out.append((line, None))
    return out


class ShellWalk:
    """Runs a guide's commands one by one as a reader's shell would, in ``work``.

    Each command runs in its own ``bash`` in the environment the ones before it left
    (``set -a``: ``TOKEN=$(...)`` carries over as in one interactive shell), with
    ``HOME`` a fresh folder and ``corral`` on ``PATH`` running this checkout.  A
    command ending in ``&`` starts in the background in its own process group,
    stopped by :meth:`close`.
    """

    def __init__(self, root: Path, values: dict[str, str]) -> None:
        self.root = root
        self.work, home, bin_dir = root / "checkout", root / "home", root / "bin"
        for d in (self.work, home, bin_dir):
            d.mkdir(exist_ok=True)
        (self.work / "examples").symlink_to(REPO / "examples")
        shim = bin_dir / "corral"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m corral "$@"\n')
        shim.chmod(0o755)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CORRAL_") and k not in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
        env.update(
            HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]),
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **values)
        self.env = env
        self._stack = contextlib.ExitStack()
        self._count = 0

    def run(self, command: str, expected: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run one command; it must exit 0 and print ``expected`` when given."""
        self._count += 1
        dump = self.root / "env.dump"
        script = f"set -a\n{command}\n__rc=$?\nenv -0 > {shlex.quote(str(dump))}\nexit $__rc\n"
        proc = subprocess.run(["bash", "-c", script], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, (
            f"step {self._count}: {command}\nexited {proc.returncode}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        self.env = dict(item.partition("=")[::2] for item in dump.read_text().split("\0")
                        if item and not item.startswith("__rc="))
        if expected is not None:
            assert expected in proc.stdout, (command, proc.stdout)
        return proc

    def background(self, command: str, ready_url: str) -> None:
        """Start ``command`` (its ``&`` removed); wait until ``ready_url`` answers 200."""
        self._count += 1
        log = self.root / f"background-{self._count}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", command.removesuffix("&").strip()],
                                    cwd=self.work, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._stack.callback(_stop_group, proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the background command did not serve {ready_url}: "
                             f"{log.read_text()[-3000:]}")

    def walk(self, commands: list[tuple[str, str | None]], ready_url: str) -> None:
        """Run ``commands`` in order (background ones wait for ``ready_url``)."""
        for command, expected in commands:
            if command.endswith("&"):
                self.background(command, ready_url)
            else:
                self.run(command, expected)

    def close(self) -> None:
        self._stack.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
