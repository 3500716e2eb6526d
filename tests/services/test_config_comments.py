"""``config set``/``unset`` edit config.toml in place: comments, order and layout survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

from corral._services.config import ConfigError, ConfigManager

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "retries": {"type": "integer", "minimum": 0, "default": 3},
        "greeting": {"type": "string", "default": "hello"},
        "limits": {
            "type": "object",
            "properties": {"max-commits": {"type": "integer"}, "branch": {"type": "string"}},
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
PID = "acme.git-stats"
OTHER = "acme.other"

ORIGINAL = f"""\
# corral configuration for this machine -- edited by hand

top = "kept"   # a top-level key of the application

[plugins."{PID}"]
# how often to retry a failed fetch
retries = 5    # five is plenty
greeting = 'single quoted'

limits.branch = "main"   # dotted key, kept as written

[plugins."{OTHER}"]
flag = true

# overlays per environment
[env.prod.plugins."{PID}"]
retries = 9    # prod is flaky
"""


def _manager(home: Path) -> ConfigManager:
    return ConfigManager(home, environ={}, schemas={PID: SCHEMA, OTHER: None})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "config.toml").write_text(ORIGINAL)
    return tmp_path


def _text(home: Path) -> str:
    return (home / "config.toml").read_text()


def test_set_replaces_only_the_value(home: Path) -> None:
    _manager(home).set(PID, "retries", 7)
    assert _text(home) == ORIGINAL.replace("retries = 5    # five", "retries = 7    # five")


def test_set_inside_a_dotted_key_and_a_new_key_keep_everything_else(home: Path) -> None:
    m = _manager(home)
    m.set(PID, "limits.branch", "dev")
    m.set(PID, "limits.max-commits", 50)
    text = _text(home)
    assert 'limits.branch = "dev"   # dotted key, kept as written' in text
    assert "limits.max-commits = 50" in text
    for line in ORIGINAL.splitlines():
        if "limits.branch" not in line:
            assert line in text.splitlines(), line
    # order kept: the new key sits with its dotted sibling, before the next table
    assert text.index("limits.max-commits") < text.index(f'[plugins."{OTHER}"]')
    assert tomllib.loads(text)["plugins"][PID]["limits"] == {"branch": "dev", "max-commits": 50}


def test_set_in_a_new_plugin_and_a_new_env_appends_headers(home: Path) -> None:
    m = _manager(home)
    m.add_schema("acme.new", None)
    m.set("acme.new", "level", 2)
    m.set(PID, "retries", 1, env="dev")
    text = _text(home)
    assert text.startswith(ORIGINAL)
    assert '[plugins."acme.new"]\nlevel = 2' in text
    assert '[env.dev.plugins."acme.git-stats"]\nretries = 1' in text
    assert "[plugins]\n" not in text
    assert "[env]\n" not in text
    assert m.effective(PID, env="dev")["retries"] == 1
    assert m.effective(PID, env="prod")["retries"] == 9


def test_unset_removes_the_line_and_keeps_comments(home: Path) -> None:
    m = _manager(home)
    assert m.unset(PID, "retries") is True
    text = _text(home)
    assert "retries = 5" not in text
    assert "# how often to retry a failed fetch" in text
    assert "retries = 9    # prod is flaky" in text
    assert m.unset(PID, "retries") is False
    assert _text(home) == text
    assert m.unset(PID, "nothing.here") is False
    assert m.unset("acme.unknown", "x") is False


def test_unset_prunes_a_table_it_empties_unless_it_holds_a_comment(home: Path) -> None:
    m = _manager(home)
    assert m.unset(PID, "limits.branch") is True
    assert "limits" not in _text(home)
    assert m.unset(OTHER, "flag") is True  # its table holds the "overlays" comment: kept
    text = _text(home)
    assert "# overlays per environment" in text
    assert tomllib.loads(text)["plugins"][OTHER] == {}
    assert m.unset(PID, "retries", env="prod") is True  # nothing left there: pruned
    assert "[env.prod" not in _text(home)
    assert "env" not in tomllib.loads(_text(home))


def test_invalid_value_leaves_the_file_byte_identical(home: Path) -> None:
    m = _manager(home)
    stat = (home / "config.toml").stat()
    with pytest.raises(ConfigError) as info:
        m.set(PID, "retries", -1)
    assert info.value.key == f'plugins."{PID}".retries'
    with pytest.raises(ConfigError, match="no TOML form"):
        m.set(PID, "greeting", None)
    with pytest.raises(ConfigError, match="not a table"):
        m.set(OTHER, "flag.inner", 1)
    assert _text(home) == ORIGINAL
    assert (home / "config.toml").stat().st_ino == stat.st_ino  # never replaced
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]


def test_bad_toml_is_refused_and_untouched(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[plugins\nx = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _manager(tmp_path).set(PID, "retries", 1)
    assert (tmp_path / "config.toml").read_text() == "[plugins\nx = 1\n"


def test_first_write_creates_the_file(tmp_path: Path) -> None:
    m = _manager(tmp_path)
    m.set(PID, "tags", ["a", "b"])
    assert tomllib.loads((tmp_path / "config.toml").read_text()) == {
        "plugins": {PID: {"tags": ["a", "b"]}}}
    assert m.unset(PID, "tags") is True
    assert tomllib.loads((tmp_path / "config.toml").read_text()) == {}


def test_mode_is_kept_and_concurrent_writers_lose_nothing(home: Path) -> None:
    os.chmod(home / "config.toml", 0o640)
    m = _manager(home)
    for name in (PID, OTHER):
        m.add_schema(name, None)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            _manager(home).set(OTHER, f"k{i}", i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    doc = tomllib.loads(_text(home))
    assert {f"k{i}" for i in range(8)} <= set(doc["plugins"][OTHER])
    assert "# five is plenty" in _text(home)
    assert (home / "config.toml").stat().st_mode & 0o777 == 0o640


def test_cli_set_and_unset_keep_comments(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(ORIGINAL)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        return subprocess.run(
            [sys.executable, "-m", "corral", "--home", str(home), "config", *args],
            check=False, capture_output=True, text=True, timeout=60, env=env,
        )

    got = run("set", OTHER, "flag", "false", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["set"]["key"] == "flag"
    assert run("unset", PID, "greeting").returncode == 0
    text = (home / "config.toml").read_text()
    assert "flag = false" in text
    assert "greeting" not in text
    assert "# corral configuration for this machine -- edited by hand" in text
    assert "retries = 5    # five is plenty" in text
    missing = run("unset", PID, "greeting", "--json")
    assert missing.returncode != 0
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
