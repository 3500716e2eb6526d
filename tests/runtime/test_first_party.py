"""The first-party plugins (``plugins/``) on a real git repository, and the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import corral
from corral import Host, PluginError

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
IDS = ("corral.workspace", "corral.git", "corral.updater")

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither this machine's global nor its system git config may change any result."""
    fake_home = tmp_path / "git-home"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(fake_home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_AUTHOR_NAME",
                 "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)


def git(repo: Path, *args: str, author: tuple[str, str] = ("Alice", "alice@example.test"),
        date: str = "2024-01-01T12:00:00+00:00") -> str:
    """Run git in ``repo`` as ``author`` at ``date``; return its stdout."""
    name, email = author
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
           "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    proc = subprocess.run(["git", "-c", "init.defaultBranch=trunk", "-c", "commit.gpgsign=false",
                           *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=True)
    return proc.stdout


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


ALICE = ("Alice", "alice@example.test")
BOB = ("Bob", "bob@example.test")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Three commits by two authors on ``trunk``, then one staged, one modified, one new file.

    Alice: README.md (3 lines) + src/app.py (10 lines); Bob: src/util.py (5 lines);
    Alice: src/app.py +2 -1.
    """
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root / "README.md", "# demo\n\nhello\n")
    write(root / "src" / "app.py", "".join(f"x{i} = {i}\n" for i in range(10)))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "Add README and app", author=ALICE,
        date="2024-01-01T10:00:00+00:00")
    write(root / "src" / "util.py", "".join(f"def f{i}(): ...\n" for i in range(5)))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "Add util", author=BOB, date="2024-01-02T10:00:00+00:00")
    lines = (root / "src" / "app.py").read_text().splitlines(keepends=True)
    write(root / "src" / "app.py", "".join([*lines[1:], "y = 1\n", "z = 2\n"]))
    git(root, "commit", "-q", "-am", "Expand app | with a pipe", author=ALICE,
        date="2024-01-03T10:00:00+00:00")
    write(root / "notes.txt", "staged\n")
    git(root, "add", "notes.txt")
    write(root / "README.md", "# demo\n\nhello again\n")
    write(root / "scratch file.py", "print('hi')\n")
    # Folders that summaries skip.
    write(root / "src" / "__pycache__" / "app.cpython-311.pyc", "x" * 100)
    write(root / "node_modules" / "left-pad" / "index.js", "module.exports = 1\n")
    return root


@contextmanager
def open_host(tmp_path: Path, workspace: Path, name: str = "home") -> Iterator[Host]:
    """A host with the three first-party plugins registered and enabled."""
    with Host(home=tmp_path / name, workspace=workspace) as host:
        host.register(*(PLUGINS / p for p in ("workspace", "git", "updater")))
        for plugin_id in IDS:
            host.enable(plugin_id)
        yield host


@pytest.fixture
def host(tmp_path: Path, repo: Path) -> Iterator[Host]:  # shadows conftest's: different plugins
    with open_host(tmp_path, repo) as h:
        yield h


# -- manifests ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["workspace", "git", "updater"])
def test_manifest_is_complete_and_validates(name: str, tmp_path: Path) -> None:
    manifest = corral.load_manifest(PLUGINS / name)
    assert manifest.id == f"corral.{name}"
    assert manifest.license == "MIT"
    assert manifest.authors
    assert manifest.category
    assert manifest.tags
    assert manifest.description
    assert str(manifest.requires_corral) == ">=0.1"
    assert manifest.sandbox.isolation == "strict"
    assert "{workspace}" in manifest.permissions.fs_read
    with Host(home=tmp_path / "vhome", workspace=tmp_path) as host:
        report = host.validate(PLUGINS / name)
    assert report["ok"], report["errors"]


def test_plugins_list_enabled_with_their_exports(host: Host) -> None:
    infos = {i.id: i for i in host.list(discovered=False)}
    assert sorted(infos) == sorted(IDS)
    assert infos  # all() below must not pass on nothing
    assert all(i.state == "enabled" for i in infos.values())
    assert "export:summary" in infos["corral.workspace"].capabilities
    assert "micro:validator" in infos["corral.updater"].capabilities
    assert host.info("corral.git")["permissions"]["spawn"] == ["git"]


# -- corral.workspace -------------------------------------------------------------


def test_summary_counts_files_and_skips_noise(host: Host, repo: Path) -> None:
    out = host.call("corral.workspace", "summary", {"top": 2})
    # README.md, notes.txt, scratch file.py, src/app.py, src/util.py; not .git,
    # __pycache__ or node_modules.
    assert out["files"] == 5
    sizes = [p.stat().st_size for p in (repo / "README.md", repo / "notes.txt",
             repo / "scratch file.py", repo / "src" / "app.py", repo / "src" / "util.py")]
    assert out["bytes"] == sum(sizes)
    by_ext = {r["extension"]: r["files"] for r in out["by_extension"]}
    assert by_ext == {".py": 3, ".md": 1, ".txt": 1}
    assert out["by_language"][0] == {
        "language": "Python", "files": 3,
        "bytes": sum(sizes[2:]),
    }
    assert [r["path"] for r in out["largest"]] == ["src/app.py", "src/util.py"]  # 75, 70 bytes
    assert out["truncated"] is False


def test_summary_of_a_subfolder_and_with_exclude(host: Host) -> None:
    out = host.call("corral.workspace", "summary", {"path": "src"})
    assert out["path"] == "src"
    assert out["files"] == 2
    assert host.call("corral.workspace", "summary", {"exclude": ["src"]})["files"] == 3


def test_find_glob_path_glob_substring_and_limit(host: Host) -> None:
    out = host.call("corral.workspace", "find", {"pattern": "*.py"})
    assert out["mode"] == "glob"
    assert [m["path"] for m in out["matches"]] == ["scratch file.py", "src/app.py", "src/util.py"]
    out = host.call("corral.workspace", "find", {"pattern": "src/*.py"})
    assert [m["path"] for m in out["matches"]] == ["src/app.py", "src/util.py"]
    out = host.call("corral.workspace", "find", {"pattern": "UTIL"})
    assert out["mode"] == "substring"
    assert [m["path"] for m in out["matches"]] == ["src/util.py"]
    out = host.call("corral.workspace", "find", {"pattern": "*.py", "limit": 1})
    assert out["count"] == 1
    assert out["truncated"] is True
    assert host.call("corral.workspace", "find", {"pattern": "nothing-like-this"})["count"] == 0


@pytest.mark.parametrize("path", ["..", "../..", "/etc", "src/../../"])
def test_paths_escaping_the_workspace_are_refused(host: Host, path: str) -> None:
    with pytest.raises(PluginError, match="escapes the workspace") as info:
        host.call("corral.workspace", "summary", {"path": path})
    assert info.value.plugin_id == "corral.workspace"
    with pytest.raises(PluginError, match="escapes the workspace"):
        host.call("corral.workspace", "find", {"pattern": "*", "path": path})


def test_symlinks_out_of_the_workspace_are_neither_followed_nor_accepted(
    host: Host, repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.py", "password = 1\n")
    (repo / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PluginError, match="escapes the workspace"):
        host.call("corral.workspace", "summary", {"path": "link"})
    found = host.call("corral.workspace", "find", {"pattern": "secret"})
    assert found["count"] == 0
    assert host.call("corral.workspace", "summary")["files"] == 5


@pytest.mark.parametrize(
    ("export", "value", "message"),
    [
        ("find", {}, "needs a pattern"),
        ("find", {"pattern": "x", "limit": 0}, "limit must be an integer"),
        ("summary", {"top": "ten"}, "top must be an integer"),
        ("summary", ["not", "an", "object"], "takes an object"),
        ("summary", {"path": "no/such/dir"}, "is not a folder"),
    ],
)
def test_bad_input_is_a_plugin_error_and_the_host_carries_on(
    host: Host, export: str, value: Any, message: str
) -> None:
    with pytest.raises(PluginError, match=message) as info:
        host.call("corral.workspace", export, value)
    assert info.value.code == "plugin_error"
    assert info.value.exit_code == 5
    assert host.call("corral.workspace", "summary")["files"] == 5
    metrics = host.info("corral.workspace")["metrics"]
    assert metrics["outcomes"]["plugin_error"] == 1


# -- corral.git ------------------------------------------------------------------


@needs_git
def test_status_counts_staged_modified_untracked(host: Host, repo: Path) -> None:
    out = host.call("corral.git", "status")
    assert out["branch"] == "trunk"
    assert out["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert out["upstream"] is None
    assert out["ahead"] is None
    assert (out["staged"], out["modified"], out["untracked"], out["conflicted"]) == (1, 1, 3, 0)
    assert out["files"]["staged"] == ["notes.txt"]
    assert out["files"]["modified"] == ["README.md"]
    assert sorted(out["files"]["untracked"]) == [
        "node_modules/", "scratch file.py", "src/__pycache__/",
    ]
    assert out["clean"] is False


@needs_git
def test_status_limit_keeps_counts_whole(host: Host) -> None:
    out = host.call("corral.git", "status", {"limit": 1})
    assert out["untracked"] == 3
    assert len(out["files"]["untracked"]) == 1


@needs_git
def test_status_ahead_of_upstream(tmp_path: Path, repo: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    write(clone / "more.txt", "more\n")
    git(clone, "add", ".")
    git(clone, "commit", "-q", "-m", "More", author=BOB)
    with open_host(tmp_path, clone, name="home2") as host:
        out = host.call("corral.git", "status")
    assert out["branch"] == "trunk"
    assert out["upstream"] == "origin/trunk"
    assert (out["ahead"], out["behind"]) == (1, 0)
    assert out["clean"] is True


@needs_git
def test_log_lists_commits_newest_first(host: Host, repo: Path) -> None:
    out = host.call("corral.git", "log")
    assert [c["subject"] for c in out["commits"]] == [
        "Expand app | with a pipe", "Add util", "Add README and app",
    ]
    first = out["commits"][0]
    assert first["author"] == "Alice"
    assert first["email"] == "alice@example.test"
    assert first["date"].startswith("2024-01-03T10:00:00")
    assert first["hash"] == git(repo, "rev-parse", "HEAD").strip()
    assert first["hash"].startswith(first["short"])
    assert out["commits"][1]["author"] == "Bob"
    assert host.call("corral.git", "log", {"limit": 2})["count"] == 2


@needs_git
def test_authors_count_commits_and_lines(host: Host) -> None:
    out = host.call("corral.git", "authors")
    assert out["commits"] == 3
    assert out["authors"] == [
        {"name": "Alice", "email": "alice@example.test", "commits": 2,
         "added": 3 + 10 + 2, "removed": 1, "files_changed": 3},
        {"name": "Bob", "email": "bob@example.test", "commits": 1,
         "added": 5, "removed": 0, "files_changed": 1},
    ]


@needs_git
def test_repository_without_commits(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    write(empty / "a.txt", "a\n")
    with open_host(tmp_path, empty) as host:
        status = host.call("corral.git", "status")
        assert status["branch"] == "trunk"
        assert status["commit"] is None
        assert status["untracked"] == 1
        assert host.call("corral.git", "log") == {"commits": [], "count": 0}
        assert host.call("corral.git", "authors") == {"authors": [], "commits": 0}


@needs_git
@pytest.mark.parametrize("export", ["status", "log", "authors"])
def test_not_a_repository_is_a_clear_plugin_error(tmp_path: Path, export: str) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with open_host(tmp_path, plain) as host:
        with pytest.raises(PluginError) as info:
            host.call("corral.git", export)
        assert info.value.plugin_id == "corral.git"
        assert f"the workspace {plain} is not a git repository" in info.value.message
        assert info.value.to_dict()["exception"] == "GitError"
        # The failure is the plugin's alone: the host and its other plugins carry on.
        assert host.call("corral.workspace", "summary")["files"] == 0


def test_git_missing_is_a_clear_plugin_error(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(PluginError, match="git is not installed or not on PATH"):
        host.call("corral.git", "status")


# -- corral.updater ----------------------------------------------------------------


def check(host: Host, **input: Any) -> dict[str, Any]:
    out: dict[str, Any] = host.call("corral.updater", "check", input)
    return out


def by_id(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in out["plugins"]}


def test_updater_picks_latest_and_kind(host: Host) -> None:
    out = check(
        host,
        installed={"a": "1.0.0", "b": "1.2.3", "c": "2.1", "d": "3.0.0", "e": "1.0"},
        available={
            "a": ["0.9", "1.0.0", "2.0.0", "1.9.9", "10.0.0"],  # PEP 440 order, not text
            "b": ["1.2.3", "1.3.0", "1.2.10"],
            "c": ["2.1", "2.1.1"],
            "d": ["2.0.0", "3.0.0"],
            "e": ["1.0", "1.0.post1"],
        },
    )
    rows = by_id(out)
    assert (rows["a"]["latest"], rows["a"]["update"]) == ("10.0.0", "major")
    assert rows["a"]["newer"] == ["1.9.9", "2.0.0", "10.0.0"]
    assert (rows["b"]["latest"], rows["b"]["update"]) == ("1.3.0", "minor")
    assert (rows["c"]["latest"], rows["c"]["update"]) == ("2.1.1", "patch")
    assert (rows["d"]["latest"], rows["d"]["update"]) == ("3.0.0", "none")
    assert rows["e"]["update"] == "post-release"
    assert [r["id"] for r in out["plugins"]] == ["a", "b", "c", "d", "e"]
    assert out["updates"] == ["a", "b", "c", "e"]  # biggest kind of update first
    assert out["count"] == 4


def test_updater_ignores_prereleases_unless_installed_is_one(host: Host) -> None:
    out = check(
        host,
        installed={"stable": "1.0.0", "beta": "2.0.0b1", "rc": "3.0.0rc1"},
        available={
            "stable": ["1.0.0", "1.1.0", "2.0.0a1", "1.2.0.dev3"],
            "beta": ["2.0.0b1", "2.0.0b2", "1.9.0"],
            "rc": ["3.0.0rc1", "3.0.0"],
        },
    )
    rows = by_id(out)
    assert (rows["stable"]["latest"], rows["stable"]["update"]) == ("1.1.0", "minor")
    assert rows["stable"]["newer"] == ["1.1.0"]
    assert (rows["beta"]["latest"], rows["beta"]["update"]) == ("2.0.0b2", "pre-release")
    assert (rows["rc"]["latest"], rows["rc"]["update"]) == ("3.0.0", "pre-release")


def test_updater_skips_yanked_and_reports_unknown_plugins(host: Host) -> None:
    out = check(
        host,
        installed={"y": "1.0.0", "gone": "1.1.0", "missing": "1.0", "weird": "not-a-version"},
        available={
            "y": {"versions": ["1.0.0", "1.1.0", "1.2.0"], "yanked": ["1.2.0"]},
            "gone": {"versions": ["1.0.0", "1.1.0"], "yanked": ["1.1.0"]},
            "weird": ["1.0"],
        },
    )
    rows = by_id(out)
    assert (rows["y"]["latest"], rows["y"]["update"]) == ("1.1.0", "minor")
    assert rows["gone"]["yanked"] is True
    assert rows["gone"]["latest"] == "1.0.0"
    assert rows["gone"]["update"] == "none"
    assert rows["missing"]["update"] == "unknown"
    assert rows["weird"]["update"] == "unknown"
    assert "not PEP 440" in rows["weird"]["error"]


def test_updater_reads_a_source_file_in_workspace_or_data(host: Host, repo: Path) -> None:
    write(repo / "versions.json", json.dumps({"available": {"p": ["1.0", "1.0.1"]}}))
    out = check(host, installed={"p": "1.0"}, source="versions.json")
    assert by_id(out)["p"]["update"] == "patch"
    data_dir = Path(host.info("corral.updater")["data_dir"])
    write(data_dir / "registry.json", json.dumps({"q": ["2.0", "3.0"]}))
    out = check(host, installed={"q": "2.0"}, source="registry.json")
    assert by_id(out)["q"]["update"] == "major"


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({"installed": {"p": "1.0"}, "source": "../../../etc/passwd"}, "outside the workspace"),
        ({"installed": {"p": "1.0"}, "source": "/etc/hostname"}, "outside the workspace"),
        ({"installed": {"p": "1.0"}, "source": "nope.json"}, "not found"),
        ({"installed": {"p": "1.0"}, "available": {"p": ["1.0", "banana"]}}, "not a PEP 440"),
        ({"installed": {"p": "1.0"}}, "available must be an object"),
        ({"installed": {"p": 1}, "available": {}}, "must be a version string"),
        ({"installed": {}, "available": {}, "source": "x.json"}, "not both"),
    ],
)
def test_updater_bad_input(host: Host, input: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        host.call("corral.updater", "check", input)


def test_updater_source_with_bad_json(host: Host, repo: Path) -> None:
    write(repo / "broken.json", "{not json")
    with pytest.raises(PluginError, match="not valid JSON"):
        check(host, installed={"p": "1.0"}, source="broken.json")


@pytest.mark.parametrize(
    ("version", "valid", "reason"),
    [
        ("1.2.3", True, None),
        ("0.0.0", True, None),
        ("1.0.0-alpha.1+build.5", True, None),
        ("1.0.0-0.3.7", True, None),
        ("1.0.0-x-y-z.--", True, None),
        ("1.2", False, "three numbers"),
        ("v1.2.3", False, "no prefix"),
        ("01.2.3", False, "leading zeros"),
        ("1.2.3-01", False, "leading zeros"),
        ("1.2.3-", False, "empty identifier"),
        ("1.2.3+b@d", False, "may hold only"),
        ("1.a.3", False, "non-negative integer"),
        ("", False, "is empty"),
        (7, False, "expected a version string"),
    ],
)
def test_semver_micro_validator(host: Host, version: Any, valid: bool, reason: str | None) -> None:
    verdict = host.call("corral.updater", "corral.updater.semver", version)
    assert verdict["valid"] is valid
    if reason is None:
        assert verdict["reasons"] == []
    else:
        assert any(reason in r for r in verdict["reasons"]), verdict
    wrapped = host.call("corral.updater", "corral.updater.semver", {"version": version})
    assert wrapped == verdict


# -- the CLI and the demo -------------------------------------------------------------


@needs_git
def test_cli_call_prints_results_and_json_errors(tmp_path: Path, repo: Path) -> None:
    base = [sys.executable, "-m", "corral", "--home", str(tmp_path / "cli-home"),
            "--workspace", str(repo)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                              check=False)

    assert run("add", *(str(PLUGINS / p) for p in ("workspace", "git"))).returncode == 0
    assert run("enable", "corral.git").returncode == 0
    done = run("call", "corral.git", "log", "--json", "--input", '{"limit": 1}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["commits"][0]["subject"] == "Expand app | with a pipe"
    assert run("enable", "corral.workspace").returncode == 0
    failed = run("call", "corral.workspace", "summary", "--json", "--input", '{"path": ".."}')
    assert failed.returncode == 5
    error = json.loads(failed.stdout)["error"]
    assert error["code"] == "plugin_error"
    assert "escapes the workspace" in error["message"]


def test_demo_runs_clean_and_says_what_it_did(tmp_path: Path) -> None:
    home = tmp_path / "demo home"
    (home / "stale").mkdir(parents=True)  # the demo wipes its home first
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py"), "--home",
                           str(home)], capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not (home / "stale").exists()
    for line in (
        "== corral.workspace summary",
        "== corral.git status",
        "== corral.git log",
        "== corral.git authors",
        "== corral.updater check",
        "== plugins and their call metrics",
        '"code": "plugin_error"',
        "the host keeps working",
        "semver '1.4.2'        valid",
    ):
        assert line in out, f"{line!r} missing from the demo's output:\n{out}"
    table = out[out.index("== plugins and their call metrics"):].splitlines()
    for plugin_id in IDS:
        row = next(r for r in table if r.strip().startswith(plugin_id))
        assert "enabled" in row.split()
    workspace_row = next(r for r in table if r.strip().startswith("corral.workspace")).split()
    assert int(workspace_row[5]) == 1  # the one failed call is counted
    assert "Traceback" not in out + proc.stderr
    denied = out[out.index("== the sandbox at work"):]
    assert "\n  refused: " in denied  # the strict plugin granted nothing could not read it
    assert "the host carries on" in denied
    assert "acme.hello" not in out  # no made-up installed plugin
