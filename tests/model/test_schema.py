"""The published JSON Schema of ``corral.toml`` agrees with the model."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest
from helpers.plugins import MANIFEST_EXAMPLE

from corral import Manifest, ManifestError, parse_manifest
from corral._model.schema import manifest_json_schema

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = manifest_json_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def model_accepts(data: dict[str, Any]) -> bool:
    try:
        Manifest.from_dict(data)
    except ManifestError:
        return False
    return True


def schema_accepts(validator: Any, data: dict[str, Any]) -> bool:
    return validator.is_valid(data)


def design() -> dict[str, Any]:
    return parse_manifest(MANIFEST_EXAMPLE).to_dict()


def base() -> dict[str, Any]:
    return {"plugin": {"id": "acme.demo", "name": "Demo", "version": "1.0.0"}}


def edit(path: str, value: Any, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``start`` (the docs/contract.md example) with ``value`` at ``table.key``."""
    data = copy.deepcopy(start if start is not None else design())
    table, _, key = path.partition(".")
    if not key:
        data[table] = value
    else:
        data.setdefault(table, {})[key] = value
    return data


def micro(**fields: Any) -> dict[str, Any]:
    entry = {"id": "acme.git-stats.semver", "type": "validator", "handler": "m:f", **fields}
    return edit("micro", [entry])


VALID = {
    "design": design(),
    "minimal": base(),
    "none-isolation": edit("sandbox", {"isolation": "none"}),
    "limits-at-bounds": edit("sandbox", {"memory-mb": 16, "cpu-seconds": 86400,
                                         "timeout-ms": 1, "disk-mb": 1_048_576,
                                         "max-processes": 4096}),
    "ipv6": edit("permissions", {"net-connect": ["[::1]:443"]}),
    "placeholder-only": edit("permissions", {"fs-read": ["{plugin}", "{tmp}/x", "/srv"]}),
    "empty-tables": {**base(), "dependencies": {}, "exports": {}, "micro": []},
    "micro-no-max": micro(),
    "exports": edit("exports", {"a_b": "x.y:z", "c-d": "m:F.g"}),
    "author-no-email": edit("plugin.authors", [{"name": "A"}]),
}

INVALID = {
    # structure
    "no-plugin": {"sandbox": {}},
    "unknown-top": {**base(), "extra": {}},
    "unknown-plugin-key": edit("plugin.nmae", "x"),
    "unknown-sandbox-key": edit("sandbox", {"memory_mb": 64}),
    "unknown-permission": edit("permissions", {"network": ["a:1"]}),
    "missing-name": {"plugin": {"id": "acme.x", "version": "1"}},
    "empty-name": edit("plugin.name", ""),
    "name-too-long": edit("plugin.name", "x" * 201),
    "description-too-long": edit("plugin.description", "x" * 2001),
    # ids
    "id-upper": edit("plugin.id", "Acme.Demo"),
    "id-no-dot": edit("plugin.id", "acmedemo"),
    "id-space": edit("plugin.id", "acme demo.x"),
    "id-cyrillic": edit("plugin.id", "\u0430cme.demo"),
    "id-too-long": edit("plugin.id", "a." + "b" * 200),
    "id-trailing-newline": edit("plugin.id", "acme.demo\n"),
    "dep-id-bad": edit("dependencies", {"Acme.X": ">=1"}),
    # limits
    "memory-negative": edit("sandbox", {"memory-mb": -5}),
    "memory-huge": edit("sandbox", {"memory-mb": 10**9}),
    "memory-bool": edit("sandbox", {"memory-mb": True}),
    "timeout-zero": edit("sandbox", {"timeout-ms": 0}),
    "isolation-unknown": edit("sandbox", {"isolation": "full"}),
    # permissions
    "net-no-port": edit("permissions", {"net-connect": ["api.example.com"]}),
    "net-port-0": edit("permissions", {"net-connect": ["api.example.com:0"]}),
    "net-port-70000": edit("permissions", {"net-connect": ["api.example.com:70000"]}),
    "net-bad-hostname": edit("permissions", {"net-connect": ["-bad-.com:80"]}),
    "path-relative": edit("permissions", {"fs-read": ["relative/x"]}),
    "path-unknown-placeholder": edit("permissions", {"fs-read": ["{home}/x"]}),
    "path-dotdot": edit("permissions", {"fs-write": ["{data}/../../etc"]}),
    "env-bad": edit("permissions", {"env": ["A-B"]}),
    "spawn-with-space": edit("permissions", {"spawn": ["rm -rf"]}),
    "host-api-unknown-service": edit("permissions", {"host-api": ["filesystem:x"]}),
    "host-api-bad-pattern": edit("permissions", {"host-api": ["events.publish:git..x"]}),
    # exports and micro
    "export-dotdot": edit("exports", {"x": "../x:y"}),
    "export-no-colon": edit("exports", {"x": "os.system"}),
    "export-bad-name": edit("exports", {"Run": "a:b"}),
    "micro-bad-type": micro(type="validate"),
    "micro-no-handler": edit("micro", [{"id": "acme.git-stats.m", "type": "hook"}]),
    "micro-max-ms-zero": micro(**{"max-ms": 0}),
    # lengths the model bounds and the schema can express with maxLength
    "license-too-long": edit("plugin.license", "x" * 201),
    "category-too-long": edit("plugin.category", "x" * 51),
    "homepage-too-long": edit("plugin.homepage", "x" * 1001),
    "too-many-env-grants": edit("permissions", {"env": [f"V{i}" for i in range(257)]}),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_manifests_pass_both(validator: Any, name: str) -> None:
    data = VALID[name]
    assert model_accepts(data), name
    assert schema_accepts(validator, data), list(validator.iter_errors(data))


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_manifests_fail_both(validator: Any, name: str) -> None:
    data = INVALID[name]
    assert not model_accepts(data), f"the model accepts {name}"
    assert not schema_accepts(validator, data), f"the schema accepts {name}, the model does not"


def test_schema_is_json_and_draft_2020(validator: Any) -> None:
    schema = manifest_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert json.loads(json.dumps(schema)) == schema
    # It describes every key the model knows about.
    plugin_keys = set(schema["properties"]["plugin"]["properties"])
    assert {"id", "name", "version", "entry", "requires-corral", "authors"} <= plugin_keys
    from corral._model.manifest import _TOP_KEYS

    assert set(schema["properties"]) == set(_TOP_KEYS)
    assert {"plugin", "dependencies", "permissions", "sandbox", "exports", "micro",
            "pipeline", "quotas"} == set(_TOP_KEYS)
    # Defaults in the schema are the model's defaults.
    defaults = Manifest.from_dict(base()).sandbox.to_dict()
    for key, value in defaults.items():
        assert schema["properties"]["sandbox"]["properties"][key]["default"] == value


def test_cli_schema_prints_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "corral", "schema"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == manifest_json_schema()
