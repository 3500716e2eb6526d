"""``corral new``: ids and packages, every template valid, refusals, and new -> validate -> test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import CliResult
from helpers.hosts import snapshot

from corral._errors import UsageError
from corral._model.manifest import load_manifest
from corral._pdk.new import TEMPLATES, ask_missing, create_plugin, package_name, plugin_id_for
from corral._pdk.validate import validate_plugin
from corral._version import __version__


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Hello World", "local.hello-world"),
        ("Crème Brûlée!", "local.creme-brulee"),
        ("acme.git-stats", "acme.git-stats"),
        ("Acme.Hello", "local.acme-hello"),
    ],
)
def test_plugin_id_from_name(name: str, expected: str) -> None:
    assert plugin_id_for(name) == expected


def test_plugin_id_override_and_refusals() -> None:
    assert plugin_id_for("Anything", "acme.thing") == "acme.thing"
    with pytest.raises(UsageError, match="--id"):
        plugin_id_for("x", "NotAnId")
    with pytest.raises(UsageError, match="cannot make a plugin id"):
        plugin_id_for("!!!")


def test_package_name() -> None:
    assert package_name("acme.git-stats") == "acme_git_stats"
    assert package_name("9lives.cat") == "p_9lives_cat"


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_every_template_is_a_valid_plugin(tmp_path: Path, template: str) -> None:
    made = create_plugin(
        "Git Stats", template=template, plugin_id="acme.git-stats", directory=tmp_path / "gs",
        author='Ada "the first" Lovelace', email="ada@acme.test",
        description='Counts "commits" \\ and more',
    )
    root = made.path
    assert root == tmp_path / "gs"
    manifest = load_manifest(root)
    assert manifest.id == "acme.git-stats"
    assert manifest.sandbox.isolation == "strict"
    assert manifest.authors[0].name == 'Ada "the first" Lovelace'
    assert manifest.description == 'Counts "commits" \\ and more'
    report = validate_plugin(root, host_version=__version__, known={})
    assert report["ok"], report["errors"]
    assert report["warnings"] == []
    # Nothing to suggest either: every grant has its reason, and there is a self-test.
    assert report["suggestions"] == []
    assert "self-test" in manifest.exports
    granted = manifest.permissions.to_dict()
    for kind, grants in granted.items():
        for grant in grants:
            reasons = manifest.permission_reasons
            assert reasons.get(f"{kind}:{grant}") or reasons.get(kind), (kind, grant)
    assert "tests/test_acme_git_stats.py" in made.files
    assert "README.md" in made.files
    for rel in made.files:
        text = (root / rel).read_text()
        assert "{{" not in text, rel
        if rel.endswith(".py"):
            compile(text, rel, "exec")  # the generated code is valid Python
    assert "acme.git-stats" in (root / "README.md").read_text()
    # Nothing but the plugin was left next to it (built in a sibling, then renamed).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs"]


def test_generated_code_passes_ruff_and_mypy_strict(tmp_path: Path) -> None:
    """Authors running the usual linters with default settings get no finding at all.

    Default line length (88), no config from around (``--isolated``,
    ``--config-file=``); the packages and their tests of all templates at once.
    """
    # A long description ending in a quote takes the wrapped package docstring.
    long = 'Keeps notes, counts its starts and announces them; it ends with a "quote"'
    made = [
        create_plugin(f"acme.{template}-demo", template=template, author="Ada",
                      directory=tmp_path / template,
                      description=long if template == "full" else None)
        for template in TEMPLATES
    ]
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select",
         "E,F,W,I,B,UP,SIM", "--no-cache", "--output-format", "concise", "."],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=60,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    assert "All checks passed" in ruff.stdout
    targets = [str(m.path / m.package) for m in made]
    targets += [str(m.path / "tests" / f"test_{m.package}.py") for m in made]
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file=", "--cache-dir",
         str(tmp_path / ".mypy_cache"), *targets],
        capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    checked = sum(rel.endswith(".py") for m in made for rel in m.files)
    assert f"no issues found in {checked} source files" in mypy.stdout


def test_isolation_and_unknown_choices(tmp_path: Path) -> None:
    made = create_plugin("acme.low", directory=tmp_path / "low", isolation="none")
    assert load_manifest(made.path).sandbox.isolation == "none"
    with pytest.raises(UsageError, match="unknown template 'nope'"):
        create_plugin("acme.x", template="nope", directory=tmp_path / "x")
    with pytest.raises(UsageError, match="unknown isolation"):
        create_plugin("acme.x", isolation="loose", directory=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="not empty"):
        create_plugin("acme.busy", directory=target)
    assert snapshot(tmp_path) == before
    made = create_plugin("acme.busy", directory=target, force=True)
    assert not (target / "keep.txt").exists()
    assert (target / "corral.toml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert create_plugin("acme.empty", directory=empty).path == empty
    assert made.id == "acme.busy"


def test_ask_missing_asks_only_for_what_is_missing() -> None:
    asked: list[str] = []
    answers = {"template": "listener", "plugin id": "", "author": "Ada"}

    def ask(question: str, default: str) -> str:
        asked.append(question.split(" (", maxsplit=1)[0])
        return answers.get(question.split(" (", maxsplit=1)[0], "") or default

    values: dict[str, str | None] = {"name": "Hello World", "template": None, "id": None,
                                     "description": "given", "author": None, "email": None,
                                     "isolation": None}
    ask_missing(values, ask)
    assert "description" not in asked
    assert values["template"] == "listener"
    assert values["id"] == "local.hello-world"  # empty answer: the default
    assert values["author"] == "Ada"
    assert values["email"] is None
    assert values["isolation"] == "strict"


def test_cli_new_without_a_terminal_takes_defaults(run_cli, workspace: Path) -> None:
    res: CliResult = run_cli("new", "Hello World", "--json")
    assert res.code == 0, res.err
    assert res.json["id"] == "local.hello-world"
    assert res.json["template"] == "command"
    assert res.json["isolation"] == "strict"
    assert Path(res.json["path"]) == workspace / "hello-world"
    again = run_cli("new", "Hello World", "--json")
    assert again.code == 2
    assert again.json["error"]["code"] == "usage"
    assert "not empty" in again.json["error"]["message"]


@pytest.fixture
def lean_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs without auto-loaded plugins (hypothesis alone costs ~2 s to import).

    ``corral test`` then names ``-p corral.testing`` itself, which this also checks.
    Request it before ``run_cli``, which copies the environment when it is set up.
    """
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def _walk(run_cli, workspace: Path, template: str, isolation: str) -> Path:
    """new -> validate -> test through the real CLI; returns the plugin directory."""
    res = run_cli("new", f"acme.{template}-demo", "--template", template, "--isolation",
                  isolation, "--author", "Ada", "--json")
    assert res.code == 0, res.err
    path = Path(res.json["path"])
    val = run_cli("validate", str(path), "--json")
    assert val.code == 0, val.out
    assert val.json["errors"] == []
    test = run_cli("test", str(path), "--json", timeout=120)
    assert test.code == 0, test.err[-3000:]
    assert test.json["ok"] is True
    assert " passed" in test.err
    assert "failed" not in test.err
    return path


@pytest.mark.parametrize(
    ("template", "isolation"),
    [("command", "strict"), ("listener", "strict"), ("micro", "none"), ("full", "none")],
)
def test_walk_new_validate_test(
    lean_pytest: None, run_cli, workspace: Path, template: str, isolation: str
) -> None:
    path = _walk(run_cli, workspace, template, isolation)
    if template == "command":
        # A broken plugin makes its own tests fail: corral test says so with exit 5.
        code = path / "acme_command_demo" / "commands.py"
        code.write_text(code.read_text().replace('f"Hello, {', 'f"Goodbye, {'))
        res = run_cli("test", str(path), "--", "-q", "-k", "greet and not fast")
        assert res.code == 5
        assert "Goodbye" in res.out


def test_generated_tests_find_their_plugin_without_help(tmp_path: Path) -> None:
    """Plain pytest (no option, no env): the plugin is the corral.toml above the tests."""
    made = create_plugin("acme.plain", directory=tmp_path / "plain", isolation="none")
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_PLUGIN"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "corral.testing",
         "--rootdir",
         str(made.path), str(made.path / "tests"), "-k", "greet and not fast"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 passed" in proc.stdout


def test_cli_test_refusals(run_cli, workspace: Path) -> None:
    res = run_cli("test", str(workspace / "missing"), "--json")
    assert res.code == 2
    (workspace / "corral.toml").write_text('[plugin]\nid = "acme.t"\nname = "T"\nversion = "1"\n')
    res = run_cli("test", str(workspace), "--json")
    assert res.code == 3
    assert "no tests/ folder" in res.json["error"]["message"]
