"""Running ``git`` safely and turning its failures into clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

__all__ = ["GitError", "git", "has_commits", "require_repo"]

#: Seconds one ``git`` invocation may take unless ``ctx.config["timeout"]`` says otherwise.
DEFAULT_TIMEOUT: Final = 20.0


class GitError(RuntimeError):
    """``git`` is missing, timed out, or refused; the message says which and where."""


def _env() -> dict[str, str]:
    """git's environment: no prompts, no pager, and no system or user configuration.

    The plugin reads statistics only; ignoring configuration keeps its output the
    same everywhere, and inside the sandbox those files are not readable anyway.
    """
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat",
                "GIT_OPTIONAL_LOCKS": "0", "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull})
    return env


def git(workspace: Path, *args: str, timeout: float = DEFAULT_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``git -C workspace ARGS`` and return the finished process.

    Raises:
        GitError: git is not installed, ran past ``timeout``, or failed with ``check``.
    """
    exe = shutil.which("git")
    if exe is None:
        raise GitError("git is not installed or not on PATH; corral.git needs it")
    cmd = [exe, "-c", "core.quotepath=off", "-c", "color.ui=false", "-C", str(workspace), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=_env(), stdin=subprocess.DEVNULL, check=False,
                              encoding="utf-8", errors="replace")
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} in {workspace} took longer than {timeout:g} s") from None
    if check and proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        raise GitError(f"git {args[0]} failed in {workspace} (exit {proc.returncode}): "
                       + (said[-1] if said else "no message"))
    return proc


def require_repo(workspace: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise :class:`GitError` unless ``workspace`` is inside a git work tree."""
    if not workspace.is_dir():
        raise GitError(f"the workspace {workspace} does not exist")
    proc = git(workspace, "rev-parse", "--is-inside-work-tree", timeout=timeout, check=False)
    if proc.returncode != 0 or proc.stdout.strip() != "true":
        said = proc.stderr.strip().splitlines()
        detail = f" (git said: {said[-1]})" if said else ""
        raise GitError(f"the workspace {workspace} is not a git repository{detail}")


def has_commits(workspace: Path, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``HEAD`` points at a commit (a fresh ``git init`` has none)."""
    proc = git(workspace, "rev-parse", "--verify", "--quiet", "HEAD^{commit}",
               timeout=timeout, check=False)
    return proc.returncode == 0
