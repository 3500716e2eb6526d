"""The manifest model: parsing, round trips and precise error messages."""

from __future__ import annotations

import contextlib
import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers.plugins import MANIFEST_EXAMPLE, to_toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral import Manifest, ManifestError, load_manifest, parse_manifest
from corral._model.manifest import LIMITS, check_id

FILE = "plugins/x/corral.toml"


def base() -> dict[str, Any]:
    return {"plugin": {"id": "acme.demo", "name": "Demo", "version": "1.0.0"}}


def with_(path: str, value: Any) -> dict[str, Any]:
    """``base()`` with ``value`` set at the dotted table path (``sandbox.memory-mb``)."""
    data = base()
    table, key = path.split(".", 1)
    data.setdefault(table, {})[key] = value
    return data


def reject(data: dict[str, Any]) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data, file=FILE)
    err = info.value
    assert str(err).startswith(FILE + ": "), str(err)
    assert err.code == "invalid"
    assert err.exit_code == 3
    return err


# -- the docs/contract.md example -------------------------------------------


def test_design_example_parses() -> None:
    m = parse_manifest(MANIFEST_EXAMPLE)
    assert m.id == "acme.git-stats"
    assert m.version == "1.4.0"
    assert m.authors[0].email == "dev@acme.test"
    assert m.dependencies == {"acme.workspace": ">=1.0,<2"}
    assert m.permissions.fs_read == ("{workspace}",)
    assert m.permissions.net_connect == ("api.example.com:443",)
    assert m.permissions.allows_api("events.publish", "git.push")
    assert not m.permissions.allows_api("events.publish", "other.push")
    assert m.permissions.allows_api("secrets", "github-token")
    assert m.sandbox.isolation == "strict"
    assert m.sandbox.memory_mb == 256
    assert m.exports == {"summary": "git_stats.commands:summary"}
    assert m.micro[0].id == "acme.git-stats.semver"
    assert m.micro[0].max_ms == 50
    assert m.capabilities == ("export:summary", "hooks", "micro:validator")


def test_design_example_round_trips() -> None:
    m = parse_manifest(MANIFEST_EXAMPLE)
    again = Manifest.from_dict(m.to_dict())
    assert again == m
    assert again.to_dict() == m.to_dict()
    # to_dict is TOML-shaped: it survives a trip through JSON-like copying too.
    assert Manifest.from_dict(copy.deepcopy(m.to_dict())) == m


def test_minimal_manifest_defaults() -> None:
    m = Manifest.from_dict(base())
    assert m.sandbox.isolation == "strict"
    assert m.sandbox.memory_mb == LIMITS["memory-mb"][2]
    assert m.permissions.to_dict() == {}
    assert m.exports == {}
    assert Manifest.from_dict(m.to_dict()) == m


def test_manifest_is_immutable() -> None:
    m = Manifest.from_dict(base())
    with pytest.raises(AttributeError):
        m.id = "other.id"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.dependencies["x.y"] = "1"  # type: ignore[index]


def test_load_manifest_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text('[plugin]\nid = "acme.x"\nname = "X"\nversion = "1"\n'
                                          "[sandbox]\nmemory-mb = -5\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'corral.toml'}: sandbox.memory-mb: must be 16..65536, got -5"
    )
    assert info.value.key == "sandbox.memory-mb"
    assert info.value.to_dict()["file"] == str(tmp_path / "corral.toml")


def test_load_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no corral\.toml"):
        load_manifest(tmp_path)


def test_not_utf8() -> None:
    with pytest.raises(ManifestError, match=r"not UTF-8"):
        parse_manifest(b'[plugin]\nid = "\xff"\n', file=FILE)


# -- TOML syntax ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        ('[plugin]\nid = "acme.x"\nname = \n', 3, 8),
        ('[plugin]\nid = "acme.x\n', 2, None),
        ("[plugin\n", 1, 8),
        ('[plugin]\nid = "a.b"\nid = "a.c"\n', 3, None),
    ],
)
def test_toml_syntax_error_has_line_and_column(text: str, line: int, col: int | None) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, file=FILE)
    message = str(info.value)
    assert message.startswith(f"{FILE}: invalid TOML")
    found = re.search(r"line (\d+), column (\d+)", message)
    assert found, message
    assert int(found.group(1)) == line
    if col is not None:
        assert int(found.group(2)) == col


# -- unknown keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "hint"),
    [
        ({"plugin": {"id": "acme.x", "nmae": "X", "version": "1"}}, "plugin.nmae", "name"),
        ({**base(), "sandbx": {}}, "sandbx", "sandbox"),
        ({**base(), "permissions": {"fs-reed": []}}, "permissions.fs-reed", "fs-read"),
        ({**base(), "sandbox": {"memory_mb": 64}}, "sandbox.memory_mb", "memory-mb"),
        ({**base(), "micro": [{"id": "acme.demo.m", "type": "hook", "handlr": "a:b"}]},
         "micro[0].handlr", "handler"),
        ({"plugin": {**base()["plugin"], "authors": [{"name": "A", "emial": "a@b"}]}},
         "plugin.authors[0].emial", "email"),
    ],
)
def test_unknown_key_did_you_mean(data: dict[str, Any], key: str, hint: str) -> None:
    err = reject(data)
    assert err.key == key
    assert f"did you mean {hint!r}" in str(err)


def test_unknown_key_without_close_match_lists_allowed() -> None:
    err = reject({**base(), "zzzzzz": 1})
    assert "did you mean" not in str(err)
    assert "allowed: plugin, dependencies" in str(err)


def test_toml_text_with_typo() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest('[plugin]\nid = "acme.x"\nnmae = "X"\nversion = "1.0"\n', file=FILE)
    assert str(info.value).startswith(f"{FILE}: plugin.nmae: unknown key (did you mean 'name'?)")


# -- required keys and types -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "expect"),
    [
        ({}, "plugin", "required"),
        ({"plugin": {"name": "X", "version": "1"}}, "plugin.id", "is required"),
        ({"plugin": {"id": "acme.x", "version": "1"}}, "plugin.name", "is required"),
        ({"plugin": {"id": "acme.x", "name": "X"}}, "plugin.version", "is required"),
        ({"plugin": {"id": "acme.x", "name": "  ", "version": "1"}}, "plugin.name", "empty"),
        ({"plugin": {"id": "acme.x", "name": 5, "version": "1"}}, "plugin.name",
         "must be a string, got an integer"),
        ({"plugin": "x"}, "plugin", "must be a table, got a string"),
        (with_("plugin.tags", "git"), "plugin.tags", "array"),
        (with_("plugin.tags", ["Git"]), "plugin.tags[0]", "lowercase"),
        (with_("plugin.tags", [1]), "plugin.tags[0]", "must be a string"),
        (with_("plugin.category", "Version Control"), "plugin.category", "lowercase"),
        (with_("plugin.authors", [{"email": "a@b.c"}]), "plugin.authors[0].name", "required"),
        (with_("plugin.authors", [{"name": "A", "email": "nope"}]), "plugin.authors[0].email",
         "e-mail"),
        (with_("plugin.name", "x" * 201), "plugin.name", "at most 200"),
        ({**base(), "micro": {"id": "x"}}, "micro", "array of tables"),
        ({**base(), "exports": ["a:b"]}, "exports", "must be a table"),
    ],
)
def test_missing_and_mistyped(data: dict[str, Any], key: str, expect: str) -> None:
    err = reject(data)
    assert err.key == key
    assert expect in str(err)


# -- ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("Acme.Demo", "did you mean 'acme.demo'"),
        ("acmedemo", "dotted"),
        ("acme demo.x", "lowercase dotted"),
        ("acme.demo\n", "lowercase dotted"),
        ("acme..demo", "lowercase dotted"),
        (".acme.demo", "lowercase dotted"),
        ("acme.demo.", "lowercase dotted"),
        ("acme.-demo", "lowercase dotted"),
        ("", "lowercase dotted"),
        ("\u0430cme.demo", "U+0430 CYRILLIC SMALL LETTER A"),
        ("acme.d\u0435mo", "U+0435"),
        ("acme.demo\u200b", "U+200B"),
        ("a." + "b" * 200, "at most 128"),
        (12, "must be a string, got an integer"),
    ],
)
def test_bad_ids(value: Any, expect: str) -> None:
    err = reject(with_("plugin.id", value))
    assert err.key == "plugin.id"
    assert expect in str(err)


@pytest.mark.parametrize("value", ["acme.demo", "a.b", "acme.git-stats", "a1.b_c.d-e", "x9.y"])
def test_good_ids(value: str) -> None:
    assert check_id(value) == value
    assert Manifest.from_dict(with_("plugin.id", value)).id == value


def test_id_of_exactly_max_length_is_fine() -> None:
    value = "a." + "b" * 126
    assert len(value) == 128
    assert check_id(value) == value


# -- versions and specifiers ------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.0.0.x", "one", "1.0-beta-gamma-x", "", "v", "1..0", " "])
def test_bad_versions(value: str) -> None:
    err = reject(with_("plugin.version", value))
    assert err.key == "plugin.version"


def test_version_must_be_string() -> None:
    err = reject(with_("plugin.version", 1.0))
    assert "must be a string, got a float" in str(err)


@pytest.mark.parametrize("value", ["1.4.0", "1.0", "2.0.0rc1", "1.0.post1", "0.1.dev3"])
def test_good_versions(value: str) -> None:
    assert Manifest.from_dict(with_("plugin.version", value)).version == value


@pytest.mark.parametrize("value", ["=>1.0", ">=1,<", "~1", "latest", ">= one"])
def test_bad_specifiers(value: str) -> None:
    err = reject(with_("plugin.requires-corral", value))
    assert err.key == "plugin.requires-corral"
    assert repr(value) in str(err)
    data = base()
    data["dependencies"] = {"acme.other": value}
    err = reject(data)
    assert err.key == 'dependencies."acme.other"'
    assert "version range" in str(err)


def test_dependency_spec_must_be_string() -> None:
    data = {**base(), "dependencies": {"acme.other": 1}}
    assert "got an integer" in str(reject(data))


def test_bad_dependency_id_and_self_dependency() -> None:
    err = reject({**base(), "dependencies": {"Acme.Other": ">=1"}})
    assert err.key == 'dependencies."Acme.Other"'
    assert "dependency id" in str(err)
    err = reject({**base(), "dependencies": {"acme.demo": ">=1"}})
    assert "itself" in str(err)


def test_empty_dependency_spec_means_any_version() -> None:
    m = Manifest.from_dict({**base(), "dependencies": {"acme.other": ""}})
    assert m.dependencies == {"acme.other": ""}


# -- sandbox limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("memory-mb", -5, "must be 16..65536, got -5"),
        ("memory-mb", 0, "must be 16..65536, got 0"),
        ("memory-mb", 10**12, "must be 16..65536, got 1000000000000"),
        ("memory-mb", True, "got a boolean"),
        ("memory-mb", 256.0, "got a float"),
        ("memory-mb", "256", "got a string"),
        ("cpu-seconds", 0, "1..86400"),
        ("timeout-ms", -1, "got -1"),
        ("timeout-ms", 3_600_001, "got 3600001"),
        ("disk-mb", False, "boolean"),
        ("max-processes", 100_000, "1..4096"),
    ],
)
def test_bad_limits(key: str, value: Any, expect: str) -> None:
    err = reject({**base(), "sandbox": {key: value}})
    assert err.key == f"sandbox.{key}"
    assert expect in str(err)


def test_limit_message_exactly_as_issue() -> None:
    err = reject({**base(), "sandbox": {"memory-mb": -5}})
    assert str(err) == f"{FILE}: sandbox.memory-mb: must be 16..65536, got -5"


@pytest.mark.parametrize("key", list(LIMITS))
def test_limit_bounds_are_inclusive(key: str) -> None:
    low, high, _ = LIMITS[key]
    for value in (low, high):
        m = Manifest.from_dict({**base(), "sandbox": {key: value}})
        assert m.sandbox.to_dict()[key] == value
    for value in (low - 1, high + 1):
        reject({**base(), "sandbox": {key: value}})


@pytest.mark.parametrize("value", ["full", "None", "", 0, None, ["strict"]])
def test_unknown_isolation(value: Any) -> None:
    err = reject({**base(), "sandbox": {"isolation": value}})
    assert err.key == "sandbox.isolation"
    assert "none, limited, strict" in str(err)


# -- permissions -----------------------------------------------------------------------------


def perms(**grants: Any) -> dict[str, Any]:
    return {**base(), "permissions": {k.replace("_", "-"): v for k, v in grants.items()}}


def test_unknown_permission_key() -> None:
    err = reject({**base(), "permissions": {"network": ["a:1"]}})
    assert err.key == "permissions.network"
    assert "unknown key" in str(err)
    err = reject({**base(), "permissions": {"fs_read": ["/x"]}})
    assert "did you mean 'fs-read'" in str(err)


def test_permission_must_be_array_of_strings() -> None:
    assert "array of strings" in str(reject(perms(spawn="git")))
    err = reject(perms(spawn=["git", 3]))
    assert err.key == "permissions.spawn[1]"


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ("api.example.com", "host:port"),
        ("api.example.com:", "port must be 1..65535"),
        ("api.example.com:0", "port must be 1..65535, got '0'"),
        ("api.example.com:70000", "got '70000'"),
        ("api.example.com:-1", "port"),
        ("api.example.com:https", "port"),
        ("[::g]:443", "bad IPv6"),
        ("[::1]", "host:port"),
        ("[:::1]:443", "bad IPv6"),
        ("-bad-.com:80", "host:port"),
        ("exa mple.com:80", "host:port"),
        (":443", "host:port"),
    ],
)
def test_bad_net_connect(entry: str, expect: str) -> None:
    err = reject(perms(net_connect=["ok.example:1", entry]))
    assert err.key == "permissions.net-connect[1]"
    assert expect in str(err)


@pytest.mark.parametrize("entry", ["api.example.com:443", "[::1]:8080", "10.0.0.1:1", "h:65535"])
def test_good_net_connect(entry: str) -> None:
    assert Manifest.from_dict(perms(net_connect=[entry])).permissions.net_connect == (entry,)


@pytest.mark.parametrize("port", ["\u00b2", "\u0664\u0664\u0663", "\uff18\uff10"])
def test_net_connect_port_must_be_ascii_digits(port: str) -> None:
    """Unicode digits pass ``str.isdigit``; they must be refused cleanly, never crash."""
    reject(perms(net_connect=[f"api.example.com:{port}"]))


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ("events.publsh:git.*", "did you mean 'events.publish'"),
        ("filesystem:x", "unknown host-api service"),
        ("events.publish", "needs a topic pattern"),
        ("state.read:", "needs a key pattern"),
        ("events.publish:git..x", "bad topic pattern"),
        ("events.publish:git.>.x", "bad topic pattern"),
        ("events.publish:git/x", "bad topic pattern"),
        ("secrets:bad name", "bad secret name"),
    ],
)
def test_bad_host_api(entry: str, expect: str) -> None:
    err = reject(perms(host_api=[entry]))
    assert err.key == "permissions.host-api[0]"
    assert expect in str(err)


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ("{home}/x", "unknown placeholder"),
        ("{data", "unknown placeholder"),
        ("relative/path", "absolute path"),
        ("~/x", "absolute path"),
        ("{data}/../etc", "'..'"),
        ("/srv/../etc", "'..'"),
        ("{data}x", "expected '/'"),
        ("", "non-empty"),
        ("/a\0b", "non-empty"),
    ],
)
def test_bad_path_grants(entry: str, expect: str) -> None:
    for kind in ("fs_read", "fs_write"):
        err = reject(perms(**{kind: [entry]}))
        assert err.key == f"permissions.{kind.replace('_', '-')}[0]"
        assert expect in str(err)


@pytest.mark.parametrize(
    ("kind", "entry"),
    [("spawn", "rm -rf"), ("spawn", "/usr/../bin/sh"), ("spawn", "../git"), ("env", "A-B"),
     ("env", "1X"), ("env", "")],
)
def test_bad_spawn_and_env(kind: str, entry: str) -> None:
    err = reject(perms(**{kind: [entry]}))
    assert err.key == f"permissions.{kind}[0]"


# -- exports and micro-plugins -------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["../x:y", "os.system", "x:", ":y", "a/b:c", "a:b:c", "a-b:c", "1a:b", "a :b", 7]
)
def test_bad_export_targets(target: Any) -> None:
    err = reject({**base(), "exports": {"run": target}})
    assert err.key == "exports.run"
    assert "module.path:function" in str(err)


def test_bad_entry_target() -> None:
    err = reject(with_("plugin.entry", "git_stats.plugin.Plugin"))
    assert err.key == "plugin.entry"


@pytest.mark.parametrize("name", ["Run", "run now", "1x.y", "ü"])
def test_bad_export_names(name: str) -> None:
    err = reject({**base(), "exports": {name: "a:b"}})
    assert "export names" in str(err)


def micro(**fields: Any) -> dict[str, Any]:
    entry = {"id": "acme.demo.check", "type": "validator", "handler": "m:check", **fields}
    return {**base(), "micro": [entry]}


def test_micro_good() -> None:
    m = Manifest.from_dict(micro(description="checks"))
    assert m.micro[0].max_ms == 100
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(
    ("data", "key", "expect"),
    [
        (micro(id="other.check"), "micro[0].id", "must start with the plugin id 'acme.demo.'"),
        (micro(id="acme.democheck"), "micro[0].id", "must start with the plugin id"),
        (micro(id="acme.demo"), "micro[0].id", "must start with the plugin id"),
        (micro(type="validate"), "micro[0].type", "got 'validate'"),
        (micro(type=None), "micro[0].type", "must be one of"),
        (micro(handler="nope"), "micro[0].handler", "module.path:function"),
        (micro(**{"max-ms": 0}), "micro[0].max-ms", "1..600000"),
        (micro(**{"max-ms": True}), "micro[0].max-ms", "boolean"),
    ],
)
def test_bad_micro(data: dict[str, Any], key: str, expect: str) -> None:
    if data["micro"][0].get("type") is None:
        del data["micro"][0]["type"]
    err = reject(data)
    assert err.key == key
    assert expect in str(err)


def test_duplicate_micro_ids() -> None:
    data = micro()
    data["micro"].append(dict(data["micro"][0]))
    err = reject(data)
    assert err.key == "micro[1].id"
    assert "duplicate" in str(err)


def test_micro_missing_id_and_handler() -> None:
    data = micro()
    del data["micro"][0]["id"]
    assert reject(data).key == "micro[0].id"
    data = micro()
    del data["micro"][0]["handler"]
    assert reject(data).key == "micro[0].handler"


# -- property: from_dict never crashes with anything but ManifestError --------------------

_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.text(alphabet=st.sampled_from(list("az09.:-_/{}[]*> @\u00b2\u0664\u0430\n")),
              max_size=20)
    | st.datetimes()
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_PATHS = [
    ("plugin", "id"), ("plugin", "name"), ("plugin", "version"), ("plugin", "tags"),
    ("plugin", "authors"), ("plugin", "entry"), ("plugin", "requires-corral"),
    ("plugin", "category"), ("dependencies", "acme.other"), ("permissions", "fs-read"),
    ("permissions", "net-connect"), ("permissions", "host-api"), ("permissions", "spawn"),
    ("permissions", "env"), ("sandbox", "isolation"), ("sandbox", "memory-mb"),
    ("exports", "run"), ("micro", None), ("plugin", None), ("dependencies", None),
    ("permissions", None), ("sandbox", None), ("exports", None),
]


def _mutate(data: dict[str, Any], path: tuple[str, str | None], value: Any) -> None:
    table, key = path
    if key is None:
        data[table] = value
        return
    node = data.setdefault(table, {})
    if isinstance(node, dict):
        node[key] = [value] if table == "permissions" and not isinstance(value, list) else value


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(_PATHS), _values), min_size=1, max_size=4),
    st.dictionaries(st.text(max_size=8), _values, max_size=2),
)
def test_from_dict_only_raises_manifest_error(
    mutations: list[tuple[tuple[str, str | None], Any]], extra: dict[str, Any]
) -> None:
    data: dict[str, Any] = base()
    for path, value in mutations:
        _mutate(data, path, value)
    for target in (data, {**data, **extra}):
        message = None
        try:
            m = Manifest.from_dict(target, file=FILE)
        except ManifestError as exc:
            message = str(exc)
        if message is None:
            assert Manifest.from_dict(m.to_dict()) == m
        else:
            assert message.startswith(FILE + ": ")


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=200))
def test_parse_manifest_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(text, file=FILE)


def test_to_dict_is_valid_toml_data() -> None:
    m = parse_manifest(MANIFEST_EXAMPLE)
    assert parse_manifest(to_toml(m.to_dict())) == m
    assert tomllib.loads(to_toml(m.to_dict()))["micro"][0]["max-ms"] == 50
