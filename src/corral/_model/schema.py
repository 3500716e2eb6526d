"""The JSON Schema of ``corral.toml``, built from the same rules as the model, for editors."""

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
from corral._model.micro import MICRO_MAX_MS
from corral._model.permissions import (
    HOST_API_SERVICES,
    NAME_PATTERN,
    PLACEHOLDERS,
    SECRET_NAME_PATTERN,
)

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

__all__ = ["manifest_json_schema"]


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
    limits = {
        key: {"type": "integer", "minimum": low, "maximum": high, "default": default,
              "description": LIMIT_DESCRIPTIONS[key]}
        for key, (low, high, default) in LIMITS.items()
    }
    return {
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
                        "description": "why each permission is needed: a kind or 'kind:entry' "
                        "-> a sentence",
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
            "exports": {
                "type": "object",
                "propertyNames": {"pattern": _exact(EXPORT_NAME_PATTERN)},
                "additionalProperties": target,
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
