"""The JSON Schema of ``corral.toml``, built from the same rules as the model, for editors.

Every key carries a ``description`` (:data:`DESCRIPTIONS`); the Markdown
reference ``docs/manifest.md`` is generated from the same schema
(:mod:`corral._model.manifest_doc`).
"""

from __future__ import annotations

from typing import Any

from corral._model.manifest import (
    ENV_PATTERN,
    EXPORT_NAME_PATTERN,
    HOSTNAME_PATTERN,
    ID_MAX,
    ID_PATTERN,
    ISOLATION_LEVELS,
    LIMIT_DESCRIPTIONS,
    LIMITS,
    MICRO_TYPES,
    PROGRAM_PATTERN,
    TARGET_PATTERN,
)
from corral._model.memo import MAX_TTL_SECONDS
from corral._model.micro import MICRO_MAX_MS
from corral._model.permissions import (
    HOST_API_SERVICES,
    NAME_PATTERN,
    PLACEHOLDERS,
    SECRET_NAME_PATTERN,
)
from corral._model.quotas import QUOTAS

_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_MAX_GRANTS = 256


def _exact(pattern: str) -> str:
    """Anchor a pattern for both ECMA and Python engines (Python's ``$`` allows a final newline)."""
    body = pattern.removeprefix("^").removesuffix("$")
    return rf"^(?![\s\S]*\n)(?:{body})$"


def _grants(item_pattern: str) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": _MAX_GRANTS,
        "items": {"type": "string", "pattern": _exact(item_pattern)},
    }

__all__ = ["DESCRIPTIONS", "manifest_json_schema"]

#: What each key means, by its path (``[]`` marks the items of an array of tables).
DESCRIPTIONS: dict[str, str] = {
    "plugin": "Who the plugin is: its id, name, version and what it is about. Required.",
    "plugin.id": "The plugin's id, `namespace.name` in lower case (for example `acme.hello`). "
                 "Registries give a namespace to one publisher.",
    "plugin.name": "A human name, shown by `corral list` and `corral info`.",
    "plugin.version": "The version, PEP 440 (`1.2.0`, `2.0.0rc1`).",
    "plugin.description": "One or two sentences on what it does.",
    "plugin.license": "An SPDX license expression (`MIT`, `Apache-2.0`).",
    "plugin.authors": "Who wrote it: a list of `{name, email}` tables.",
    "plugin.authors[].name": "An author's name.",
    "plugin.authors[].email": "An author's e-mail address.",
    "plugin.category": "One category, lower case with dashes (`text`, `dev-tools`); "
                       "`corral list --category` filters on it.",
    "plugin.tags": "Up to 32 lower-case tags; `corral list --tag` filters on them.",
    "plugin.requires-corral": "The corral versions it runs on, a PEP 440 range (`>=1.0,<2`).",
    "plugin.entry": "`module:Class` of an object with lifecycle hooks (`on_load`, `on_enable`, "
                    "`on_disable`, `on_unload`, `on_message`).",
    "plugin.homepage": "Its web page.",
    "plugin.repository": "Where its source is.",
    "dependencies": "Other plugins it needs: plugin id -> PEP 440 version range (`\">=1.0\"`, "
                    "or `\"\"` for any). They are installed and enabled first.",
    "permissions": "What it may touch outside itself. Nothing is granted by default: "
                   "every list is empty unless given here.",
    "permissions.fs-read": "Paths it may read: absolute, or starting with a placeholder "
                           "(`{plugin}`, `{data}`, `{cache}`, `{tmp}`, `{workspace}`); "
                           "no `..`.",
    "permissions.fs-write": "Paths it may write (and read): as `fs-read`.",
    "permissions.net-connect": "Exactly the `host:port` pairs it may connect to "
                               "(`api.example.com:443`, `[::1]:8080`).",
    "permissions.spawn": "Programs it may run, by name (looked up on PATH) or absolute path.",
    "permissions.env": "Environment variables it may read, by name.",
    "permissions.host-api": "Host services it may use, as `service:pattern`: "
                            "`events.publish`, `events.subscribe` (topic patterns), "
                            "`state.read`, `state.write` (key patterns), `messages.send` "
                            "(plugin id patterns), `secrets` (an exact secret name), "
                            "`cache.read`, `cache.write` (cache namespace patterns: another "
                            "plugin's or a shared `ctx.cache` namespace).",
    "permissions.reasons": "Why each permission is needed, shown at install and update: "
                           "a kind (`net-connect`) or `kind:entry` -> a sentence. "
                           "It grants nothing.",
    "sandbox": "How it is isolated and what it may use up. Unset limits take their default.",
    "sandbox.isolation": "`none`: runs in the host's process; `limited`: a worker process "
                         "(rlimits, a scrubbed environment, a private tmp, host services "
                         "through a permission-checking broker); `strict`: `limited` plus "
                         "namespaces, Landlock, seccomp-bpf and a pids cgroup, so only its "
                         "grants are reachable.",
    "quotas": "Quotas over time (docs/quotas.md): what the plugin may use per window, "
              "and its CPU weight. The host's settings (`[quotas.ID]`, `corral quota set`) "
              "override them. Unset windows are unbounded.",
    "exports": "The functions the host may call by name: export name -> `module:function`, "
               "or a table with `target` and `cache` to memoise a pure export.",
    "pipeline": "Named chains of micro-plugins (`[[pipeline]]`), run with "
                "`corral micro run ID`.",
    "pipeline[].id": "The pipeline's id, shaped like a plugin id.",
    "pipeline[].description": "What the pipeline does.",
    "pipeline[].steps": "The steps, in order: each names a micro-plugin, or a chain of them "
                        "(see docs/micro-plugins.md).",
    "micro": "Tiny typed handlers (`[[micro]]`) the host runs in one call each.",
    "micro[].id": "The micro-plugin's id, shaped like a plugin id.",
    "micro[].type": "Its kind, which fixes the shape of its input and output.",
    "micro[].handler": "`module:function` that handles one input.",
    "micro[].max-ms": "Wall-clock limit of one run, milliseconds.",
    "micro[].description": "What it does.",
}


def _describe(node: dict[str, Any], path: str = "") -> None:
    """Fill ``description`` of every property below ``node`` from :data:`DESCRIPTIONS`."""
    properties = node.get("properties", {})
    for key in properties:
        sub = properties[key] = dict(properties[key])  # shared parts get their own words
        where = f"{path}.{key}" if path else key
        if where in DESCRIPTIONS:
            sub.setdefault("description", DESCRIPTIONS[where])
        if sub.get("type") == "array" and isinstance(sub.get("items"), dict) \
                and "properties" in sub["items"]:
            sub["items"] = dict(sub["items"])
            _describe(sub["items"], where + "[]")
        elif "properties" in sub:
            _describe(sub, where)


def manifest_json_schema() -> dict[str, Any]:
    """A draft 2020-12 schema that accepts what :meth:`Manifest.from_dict` accepts.

    Checks that need code (PEP 440 versions, version ranges, "did you mean")
    stay in the model; the schema gives editors completion and early errors.
    """
    plugin_id = {"type": "string", "pattern": _exact(ID_PATTERN), "maxLength": ID_MAX}
    target = {"type": "string", "pattern": _exact(TARGET_PATTERN)}
    placeholder = "|".join(PLACEHOLDERS)
    path_grant = _grants(rf"(?!.*(?:^|/)\.\.(?:/|$))(?:/|\{{(?:{placeholder})\}}(?:/|$))[^\x00]*")
    services = "|".join(
        s.replace(".", r"\.") for s in HOST_API_SERVICES if s != "secrets"
    )
    duration = {"anyOf": [
        {"type": "number", "minimum": 0, "maximum": MAX_TTL_SECONDS},
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?\s*[smhd]$"},
    ]}
    limits = {
        key: {"type": "integer", "minimum": low, "maximum": high, "default": default,
              "description": LIMIT_DESCRIPTIONS[key]}
        for key, (low, high, default) in LIMITS.items()
    }
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://corral.dev/schema/corral.toml.json",
        "title": "corral.toml",
        "description": "The manifest of a corral plugin.",
        "type": "object",
        "additionalProperties": False,
        "required": ["plugin"],
        "properties": {
            "plugin": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "name", "version"],
                "properties": {
                    "id": plugin_id,
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "version": {"type": "string", "maxLength": 64},
                    "description": {"type": "string", "maxLength": 2000},
                    "license": {"type": "string", "maxLength": 200},
                    "authors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "email": {
                                    "type": "string",
                                    "maxLength": 254,
                                    "pattern": _exact(r"[^@\s]+@[^@\s]+"),
                                },
                            },
                        },
                    },
                    "category": {
                        "type": "string",
                        "maxLength": 50,
                        "pattern": _exact(r"[a-z0-9][a-z0-9-]*"),
                    },
                    "tags": {
                        "type": "array",
                        "maxItems": 32,
                        "items": {
                            "type": "string",
                            "pattern": _exact(r"[a-z0-9][a-z0-9+.-]{0,49}"),
                        },
                    },
                    "requires-corral": {"type": "string"},
                    "entry": target,
                    "homepage": {"type": "string", "maxLength": 1000},
                    "repository": {"type": "string", "maxLength": 1000},
                },
            },
            "dependencies": {
                "type": "object",
                "propertyNames": plugin_id,
                "additionalProperties": {"type": "string"},
            },
            "permissions": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "fs-read": path_grant,
                    "fs-write": path_grant,
                    "net-connect": _grants(
                        rf"(?:\[[0-9A-Fa-f:.]+\]|{HOSTNAME_PATTERN}):{_PORT}"
                    ),
                    "spawn": _grants(rf"(?!.*/\.\.)(?:{PROGRAM_PATTERN})"),
                    "env": _grants(ENV_PATTERN),
                    "host-api": _grants(
                        rf"secrets:{SECRET_NAME_PATTERN}|(?:{services}):{NAME_PATTERN}"
                    ),
                    "reasons": {
                        "type": "object",
                        "propertyNames": {
                            "pattern": "^(?:fs-read|fs-write|net-connect|spawn|env|host-api)"
                            "(?::.+)?$"
                        },
                        "additionalProperties": {
                            "type": "string", "minLength": 1, "maxLength": 1000
                        },
                    },
                },
            },
            "sandbox": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "isolation": {"enum": list(ISOLATION_LEVELS), "default": "strict"},
                    **limits,
                },
            },
            "quotas": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    key: {"type": "integer", "minimum": rule.low, "maximum": rule.high,
                          **({"default": rule.default} if rule.default is not None else {}),
                          "description": rule.description}
                    for key, rule in QUOTAS.items()
                },
            },
            "exports": {
                "type": "object",
                "propertyNames": {"pattern": _exact(EXPORT_NAME_PATTERN)},
                "additionalProperties": {"oneOf": [target, {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["target"],
                    "properties": {
                        "target": {**target, "description": "`module:function` of the export."},
                        "cache": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["ttl"],
                            "description": "Memoise this pure export: a result is kept per "
                                           "input (canonical JSON), plugin version and "
                                           "configuration; errors are never kept (see "
                                           "docs/caching.md).",
                            "properties": {
                                "ttl": {**duration, "description": "How long a result stays "
                                        "fresh: seconds, or `90s`, `10m`, `2h`, `1d` (at "
                                        "most 30 days)."},
                                "stale": {**duration, "description": "How much longer a "
                                          "stale result may be served while one caller "
                                          "recomputes it (same units); 0 by default."},
                            },
                        },
                    },
                }]},
            },
            "pipeline": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "steps"],
                    "properties": {
                        "id": plugin_id,
                        "description": {"type": "string", "maxLength": 2000},
                        "steps": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                    },
                },
            },
            "micro": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "type", "handler"],
                    "properties": {
                        "id": plugin_id,
                        "type": {"enum": list(MICRO_TYPES)},
                        "handler": target,
                        "max-ms": {
                            "type": "integer",
                            "minimum": MICRO_MAX_MS[0],
                            "maximum": MICRO_MAX_MS[1],
                            "default": MICRO_MAX_MS[2],
                        },
                        "description": {"type": "string"},
                    },
                },
            },
        },
    }
    _describe(schema)
    return schema
