"""The JSON Schema of ``corral.toml``, built from the same rules as the model, for editors."""

from __future__ import annotations

from typing import Any

from ._manifest import (
    ENV_PATTERN,
    EXPORT_NAME_PATTERN,
    ID_MAX,
    ID_PATTERN,
    ISOLATION_LEVELS,
    LIMITS,
    MICRO_MAX_MS,
    MICRO_TYPES,
    TARGET_PATTERN,
)
from ._permissions import HOST_API_SERVICES, PLACEHOLDERS

__all__ = ["manifest_json_schema"]


def manifest_json_schema() -> dict[str, Any]:
    """A draft 2020-12 schema that accepts what :meth:`Manifest.from_dict` accepts.

    Checks that need code (PEP 440 versions, version ranges, "did you mean")
    stay in the model; the schema gives editors completion and early errors.
    """
    plugin_id = {"type": "string", "pattern": ID_PATTERN, "maxLength": ID_MAX}
    target = {"type": "string", "pattern": TARGET_PATTERN}
    strings = {"type": "array", "items": {"type": "string"}}
    placeholder = "|".join(PLACEHOLDERS)
    path_grant = {
        "type": "array",
        "items": {"type": "string", "pattern": rf"^(/|\{{({placeholder})\}}(/|$))"},
    }
    services = "|".join(s.replace(".", r"\.") for s in HOST_API_SERVICES)
    limits = {
        key: {"type": "integer", "minimum": low, "maximum": high, "default": default}
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
                    "license": {"type": "string"},
                    "authors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "email": {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+$"},
                            },
                        },
                    },
                    "category": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]*$"},
                    "tags": {
                        "type": "array",
                        "maxItems": 32,
                        "items": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9+.-]{0,49}$"},
                    },
                    "requires-corral": {"type": "string"},
                    "entry": target,
                    "homepage": {"type": "string"},
                    "repository": {"type": "string"},
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
                    "net-connect": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
                        },
                    },
                    "spawn": strings,
                    "env": {"type": "array", "items": {"type": "string", "pattern": ENV_PATTERN}},
                    "host-api": {
                        "type": "array",
                        "items": {"type": "string", "pattern": rf"^({services}):.+$"},
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
                "propertyNames": {"pattern": EXPORT_NAME_PATTERN},
                "additionalProperties": target,
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
