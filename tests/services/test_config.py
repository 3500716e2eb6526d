"""Configuration: schema defaults, file, env overlay, env vars, validation, hot reload."""

from __future__ import annotations

import json
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from corral._errors import InvalidPluginError, NotFoundError
from corral._services.config import (
    ConfigError,
    ConfigManager,
    dumps_toml,
    env_var_name,
    find_secret_refs,
    load_schema,
    resolve_secret_refs,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "greeting": {"type": "string", "default": "hello"},
        "retries": {"type": "integer", "minimum": 0, "default": 3},
        "verbose": {"type": "boolean", "default": False},
        "limits": {
            "type": "object",
            "properties": {"max-commits": {"type": "integer", "default": 100},
                           "branch": {"type": "string"}},
            "additionalProperties": False,
        },
        "token": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}

PID = "acme.git-stats"


def write(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


def manager(home: Path, **kw: Any) -> ConfigManager:
    kw.setdefault("environ", {})
    return ConfigManager(home, schemas={PID: SCHEMA}, **kw)


def test_schema_defaults_alone(tmp_path: Path) -> None:
    assert manager(tmp_path).effective(PID) == {
        "greeting": "hello", "retries": 3, "verbose": False, "limits": {"max-commits": 100}}


def test_layers_in_order_with_sources(tmp_path: Path) -> None:
    write(tmp_path, f"""
[plugins."{PID}"]
greeting = "from file"
retries = 5
limits = {{ branch = "main" }}

[env.prod.plugins."{PID}"]
retries = 9

[env.dev.plugins."{PID}"]
retries = 1
""")
    environ = {
        "CORRAL_ACME_GIT_STATS_VERBOSE": "true",
        "CORRAL_ACME_GIT_STATS_LIMITS__MAX_COMMITS": "7",
        "CORRAL_ACME_GIT_STATS_GREETING": "hi there",  # a string key: taken as written
        "CORRAL_HOME": "/elsewhere",
    }
    m = manager(tmp_path, env="prod", environ=environ)
    config, sources = m.layered(PID)
    assert config == {"greeting": "hi there", "retries": 9, "verbose": True,
                      "limits": {"max-commits": 7, "branch": "main"}}
    file = str(tmp_path / "config.toml")
    assert sources == {
        "greeting": "env CORRAL_ACME_GIT_STATS_GREETING",
        "retries": f"{file} [env.prod]",
        "verbose": "env CORRAL_ACME_GIT_STATS_VERBOSE",
        "limits.max-commits": "env CORRAL_ACME_GIT_STATS_LIMITS__MAX_COMMITS",
        "limits.branch": file,
    }
    assert m.effective(PID, env="dev")["retries"] == 1
    assert m.get(PID, "limits.branch") == "main"
    with pytest.raises(NotFoundError, match="nothing"):
        m.get(PID, "limits.nothing")
    assert env_var_name(PID, "limits.max-commits") == "CORRAL_ACME_GIT_STATS_LIMITS__MAX_COMMITS"


def test_env_vars_of_a_longer_id_are_not_taken(tmp_path: Path) -> None:
    m = ConfigManager(tmp_path, environ={"CORRAL_ACME_GIT_STATS_X": "1",
                                         "CORRAL_ACME_GIT_Y": "2"},
                      schemas={"acme.git": None, PID: None})
    assert m.effective("acme.git") == {"y": 2}
    assert m.effective(PID) == {"x": 1}


def test_invalid_values_name_the_key_path_and_source(tmp_path: Path) -> None:
    write(tmp_path, f'[plugins."{PID}"]\nretries = -1\n')
    with pytest.raises(ConfigError) as info:
        manager(tmp_path).effective(PID)
    assert info.value.key == f'plugins."{PID}".retries'
    assert info.value.source == str(tmp_path / "config.toml")
    assert "-1 is less than the minimum of 0" in info.value.message

    write(tmp_path, f'[plugins."{PID}".limits]\nunknown = 1\n')
    with pytest.raises(ConfigError) as info:
        manager(tmp_path).effective(PID)
    assert info.value.key == f'plugins."{PID}".limits.unknown'


def test_an_invalid_env_var_is_refused_by_name(tmp_path: Path) -> None:
    m = manager(tmp_path, environ={"CORRAL_ACME_GIT_STATS_RETRIES": "many"})
    with pytest.raises(ConfigError) as info:
        m.effective(PID)
    assert info.value.source == "env CORRAL_ACME_GIT_STATS_RETRIES"
    assert info.value.key == f'plugins."{PID}".retries'
    m = manager(tmp_path, environ={"CORRAL_ACME_GIT_STATS_RETRIES": "true"})
    with pytest.raises(ConfigError, match="CORRAL_ACME_GIT_STATS_RETRIES") as info:
        m.effective(PID)
    assert "True is not of type 'integer'" in info.value.message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "[plugins\nbroken = ")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        manager(tmp_path).load()
    assert info.value.source == str(tmp_path / "config.toml")


def test_an_invalid_schema_is_itself_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidPluginError, match="not a valid JSON Schema at properties/n"):
        ConfigManager(tmp_path, schemas={"acme.bad": {"properties": {"n": {"type": "nope"}}}})
    with pytest.raises(InvalidPluginError, match="must be a JSON object"):
        ConfigManager(tmp_path, schemas={"acme.bad": ["not", "a", "schema"]})  # type: ignore[dict-item]
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    assert load_schema("acme.p", plugin) is None
    (plugin / "config.schema.json").write_text("{ not json")
    with pytest.raises(InvalidPluginError, match="line 1"):
        load_schema("acme.p", plugin)
    (plugin / "config.schema.json").write_text(json.dumps(SCHEMA))
    assert load_schema("acme.p", plugin) == SCHEMA


def test_set_and_unset_write_the_file_after_validating(tmp_path: Path) -> None:
    write(tmp_path, 'other = "kept"\n')
    m = manager(tmp_path)
    m.set(PID, "retries", 4)
    m.set(PID, "limits.branch", "dev \"quoted\" ünïcode")
    m.set(PID, "retries", 0, env="staging")
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    assert doc == {"other": "kept",
                   "plugins": {PID: {"retries": 4, "limits": {"branch": "dev \"quoted\" ünïcode"}}},
                   "env": {"staging": {"plugins": {PID: {"retries": 0}}}}}
    before = (tmp_path / "config.toml").read_text()
    with pytest.raises(ConfigError) as info:
        m.set(PID, "retries", "three")
    assert info.value.key == f'plugins."{PID}".retries'
    with pytest.raises(ConfigError, match=r"limits\.bogus"):
        m.set(PID, "limits.bogus", 1)
    assert (tmp_path / "config.toml").read_text() == before
    assert m.unset(PID, "retries") is True
    assert m.unset(PID, "retries") is False
    assert m.effective(PID)["retries"] == 3
    assert m.effective(PID, env="staging")["retries"] == 0


def test_show_and_validate(tmp_path: Path) -> None:
    write(tmp_path, f"""
[plugins."{PID}"]
token = "${{secret:github-token}}"

[plugins."acme.other"]
anything = [1, 2]

[env.prod.plugins."{PID}"]
retries = -5
""")
    m = manager(tmp_path)
    shown = m.show()
    assert shown["plugins"][PID]["secrets"] == {"token": "github-token"}
    assert shown["plugins"][PID]["config"]["token"] == "${secret:github-token}"
    assert shown["plugins"]["acme.other"]["config"] == {"anything": [1, 2]}
    assert m.validate() == {}
    bad = m.validate(env="prod")
    assert list(bad) == [PID]
    assert bad[PID].key == f'plugins."{PID}".retries'
    assert "error" in m.show(env="prod")["plugins"][PID]


def test_secret_refs() -> None:
    config = {"a": "${secret:one}", "b": ["x", "${secret:two}"], "c": "not ${secret:x} whole"}
    assert find_secret_refs(config) == {"a": "one", "b.1": "two"}
    got = resolve_secret_refs(config, lambda name, key: f"<{name}@{key}>")
    assert got == {"a": "<one@a>", "b": ["x", "<two@b.1>"], "c": "not ${secret:x} whole"}


def test_toml_writer_round_trips() -> None:
    doc = {"a": 1, "b": {"c.d": {"e": [1, 2.5, "x"], "f": {"g": True}}}, "h": {}}
    assert tomllib.loads(dumps_toml(doc)) == doc
    with pytest.raises(ConfigError, match="no TOML form"):
        dumps_toml({"a": None})


def wait_for(cond: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_hot_reload_delivers_valid_changes_and_refuses_invalid_ones(tmp_path: Path) -> None:
    write(tmp_path, f'[plugins."{PID}"]\nretries = 1\n')
    m = manager(tmp_path)
    m.load()
    changes: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    errors: list[tuple[str | None, ConfigError]] = []
    lock = threading.Lock()

    def on_change(pid: str, new: dict[str, Any], old: dict[str, Any]) -> None:
        with lock:
            changes.append((pid, new, old))

    def on_error(pid: str | None, err: ConfigError) -> None:
        with lock:
            errors.append((pid, err))

    watcher = m.watch(on_change, on_error)
    try:
        write(tmp_path, f'[plugins."{PID}"]\nretries = 2\n')
        wait_for(lambda: len(changes) == 1)
        assert changes[0][0] == PID
        assert (changes[0][2]["retries"], changes[0][1]["retries"]) == (1, 2)
        assert m.current(PID)["retries"] == 2

        write(tmp_path, f'[plugins."{PID}"]\nretries = "lots"\n')
        wait_for(lambda: len(errors) == 1)
        assert errors[0][0] == PID
        assert errors[0][1].key == f'plugins."{PID}".retries'
        assert m.current(PID)["retries"] == 2  # the old config stays in force

        write(tmp_path, "[plugins\n")
        wait_for(lambda: len(errors) == 2)
        assert errors[1][0] is None
        assert "not valid TOML" in errors[1][1].message
        assert m.current(PID)["retries"] == 2

        write(tmp_path, f'[plugins."{PID}"]\nretries = 6\n')
        wait_for(lambda: len(changes) == 2)
        assert changes[1][1]["retries"] == 6
        assert len(changes) == 2
    finally:
        watcher.stop()


# -- the CLI, with a registered plugin that has a schema ---------------------------------


def test_cli_config_verbs(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from corral._host import Host

    home = tmp_path / "home"
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "corral.toml").write_text(
        f'[plugin]\nid = "{PID}"\nname = "Git Stats"\nversion = "1.0.0"\n\n'
        '[sandbox]\nisolation = "none"\n'
    )
    (plugin / "config.schema.json").write_text(json.dumps(SCHEMA))
    with Host(home=home, workspace=tmp_path) as host:
        host.register(plugin)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        return subprocess.run(
            [sys.executable, "-m", "corral", "--home", str(home), "config", *args],
            check=False, capture_output=True, text=True, timeout=60, env=env,
        )

    got = run("get", PID, "retries", "--json")
    assert json.loads(got.stdout)["value"] == 3
    assert run("set", PID, "retries", "8").returncode == 0
    assert run("set", PID, "retries", "1", "--env", "dev").returncode == 0
    assert run("get", PID, "retries").stdout.strip() == "8"
    assert run("get", PID, "retries", "--env", "dev").stdout.strip() == "1"
    bad = run("set", PID, "retries", "lots", "--json")
    assert bad.returncode == 2
    error = json.loads(bad.stdout)["error"]
    assert error["code"] == "usage"
    assert error["key"] == f'plugins."{PID}".retries'
    assert run("validate").returncode == 0
    (home / "config.toml").write_text(f'[env.prod.plugins."{PID}"]\nretries = -2\n')
    assert run("validate").returncode == 0
    invalid = run("validate", "--env", "prod", "--json")
    assert invalid.returncode == 2
    assert json.loads(invalid.stdout)["errors"][PID]["key"] == f'plugins."{PID}".retries'
    shown = json.loads(run("show", "--env", "prod", "--json").stdout)
    assert "error" in shown["plugins"][PID]
    text = run("show").stdout
    assert "retries = 3    # default" in text


def test_plugin_config_is_what_the_host_hands_over(tmp_path: Path) -> None:
    from corral._model.permissions import Permissions
    from corral._services.config import plugin_config
    from corral._services.secrets import SecretStore

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "config.schema.json").write_text(json.dumps(SCHEMA))
    write(tmp_path, f'[plugins."{PID}"]\nretries = 4\ntoken = "${{secret:gh}}"\n')
    secrets = SecretStore(tmp_path, use_keyring=False)
    secrets.set("gh", "tok-123456")
    perms = Permissions(host_api=("secrets:gh",))
    m = ConfigManager(tmp_path, environ={})

    def resolve(config: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = secrets.resolve_config(config, perms=perms, plugin_id=PID)
        return out

    got = plugin_config(m, PID, plugin, overrides={"verbose": True}, resolve=resolve)
    assert got["token"] == "tok-123456"
    assert (got["retries"], got["verbose"]) == (4, True)
    assert m.current(PID)["token"] == "${secret:gh}"  # in force: references, not values
    # a reload with an unchanged file changes nothing (the overrides are a layer)
    assert m.reload() == ({}, {})
    with pytest.raises(ConfigError, match="verbose"):
        plugin_config(m, PID, plugin, overrides={"verbose": "yes"})
