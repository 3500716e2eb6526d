"""Configuration as data: schemas, layers, the env var mapping, validation, TOML out.

Pure functions over dicts (the only I/O is reading a schema file); the
manager in ``_config`` feeds them files and environments.  See ``_config``
for the layers and the ``CORRAL_<ID>_<KEY>`` mapping.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from corral._errors import InvalidPluginError, UsageError

__all__ = [
    "SCHEMA_NAME",
    "ConfigError",
    "check_schema",
    "dumps_toml",
    "env_layer",
    "env_var_name",
    "find_secret_refs",
    "load_schema",
    "merge",
    "merge_path",
    "prune",
    "resolve_secret_refs",
    "schema_defaults",
    "validate_config",
]

#: A plugin's config schema, in its directory.
SCHEMA_NAME: Final = "config.schema.json"
ENV_PREFIX: Final = "CORRAL_"
_SECRET_REF: Final = re.compile(r"^\$\{secret:([A-Za-z0-9_.-]+)\}$")
_BARE_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(UsageError):
    """A configuration that breaks its schema or cannot be read.

    ``key`` is the dotted key path (``plugins."acme.x".limits.max``) and
    ``source`` the layer that supplied the value (a file, an env var).
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        source: str | None = None,
        plugin_id: str | None = None,
        **details: Any,
    ) -> None:
        self.key = key
        self.source = source
        prefix = f"{source}: " if source else ""
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message, plugin_id=plugin_id, key=key, source=source,
                         **details)


# -- schemas -----------------------------------------------------------------------


def check_schema(plugin_id: str, schema: Any, *, file: str | None = None) -> None:
    """Raise :class:`InvalidPluginError` unless ``schema`` is a valid JSON Schema."""
    import jsonschema  # type: ignore[import-untyped]
    import jsonschema.exceptions  # type: ignore[import-untyped]
    import jsonschema.validators  # type: ignore[import-untyped]

    if not isinstance(schema, dict):
        raise InvalidPluginError(
            f"{file or plugin_id}: a config schema must be a JSON object, "
            f"got {type(schema).__name__}",
            plugin_id=plugin_id, file=file,
        )
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidPluginError(
            f"{file or plugin_id}: the config schema is not a valid JSON Schema at {where}: "
            f"{exc.message}",
            plugin_id=plugin_id, file=file, key=where,
        ) from None


def load_schema(plugin_id: str, plugin_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The plugin's ``config.schema.json``, checked, or ``None`` when it has none."""
    path = Path(plugin_dir) / SCHEMA_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPluginError(
            f"{path}: line {exc.lineno}: the config schema is not JSON: {exc.msg}",
            plugin_id=plugin_id, file=str(path),
        ) from None
    check_schema(plugin_id, schema, file=str(path))
    assert isinstance(schema, dict)
    return schema


def schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``default`` values of an object schema's properties, nested objects included."""
    out: dict[str, Any] = {}
    top = schema.get("default")
    if isinstance(top, dict):
        out.update(copy.deepcopy(top))
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict):
            continue
        if "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        elif sub.get("type") == "object" or "properties" in sub:
            nested = schema_defaults(sub)
            if nested:
                out[name] = nested
    return out


def _property(schema: Mapping[str, Any] | None, path: list[str]) -> Mapping[str, Any] | None:
    for part in path:
        if schema is None:
            return None
        props = schema.get("properties")
        if not isinstance(props, dict) or not isinstance(props.get(part), dict):
            return None
        schema = props[part]
    return schema


# -- environment variables ------------------------------------------------------------


def _norm(name: str) -> str:
    return name.upper().replace(".", "_").replace("-", "_")


def env_var_name(plugin_id: str, key: str) -> str:
    """The environment variable for ``key`` (dotted path) of ``plugin_id``."""
    return ENV_PREFIX + _norm(plugin_id) + "_" + "__".join(_norm(p) for p in key.split("."))


def env_layer(
    plugin_id: str,
    schema: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    known_ids: list[str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The env var layer of one plugin, and the source of each key path."""
    prefix = ENV_PREFIX + _norm(plugin_id) + "_"
    # a longer id sharing the prefix owns its own variables (acme.git vs acme.git-stats)
    longer = [ENV_PREFIX + _norm(o) + "_" for o in known_ids
              if o != plugin_id and _norm(o).startswith(_norm(plugin_id) + "_")]
    layer: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(prefix) or any(var.startswith(lp) for lp in longer):
            continue
        raw = environ[var]
        parts: list[str] = []
        sub = schema
        for seg in var[len(prefix):].split("__"):
            if not seg:
                raise ConfigError(f"{var} has an empty key segment", source=f"env {var}",
                                  plugin_id=plugin_id)
            name = seg.lower()
            props = sub.get("properties") if sub is not None else None
            if isinstance(props, dict):
                for candidate in props:
                    if _norm(candidate) == seg:
                        name = candidate
                        break
            parts.append(name)
            sub = _property(sub, [name]) if sub is not None else None
        key = ".".join(parts)
        wants_string = sub is not None and sub.get("type") == "string"
        if wants_string:
            value: Any = raw
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                if sub is not None and "type" in sub:
                    raise ConfigError(
                        f"{raw!r} is not JSON, and the schema wants {sub['type']}",
                        key=f'plugins."{plugin_id}".{key}', source=f"env {var}",
                        plugin_id=plugin_id,
                    ) from None
                value = raw
        node = layer
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{var} sets inside a key that another variable sets",
                                  source=f"env {var}", plugin_id=plugin_id)
            node = nxt
        node[parts[-1]] = value
        sources[key] = f"env {var}"
    return layer, sources


# -- merging and validating ----------------------------------------------------------------


def merge(base: dict[str, Any], over: Mapping[str, Any], source: str,
           sources: dict[str, str], prefix: str = "") -> None:
    """Merge ``over`` into ``base`` (tables merge), recording the source of each leaf."""
    for key, value in over.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            if not isinstance(base.get(key), dict):
                base[key] = {}
                sources.pop(path, None)
            merge(base[key], value, source, sources, path + ".")
        else:
            base[key] = copy.deepcopy(value)
            for known in [k for k in sources if k.startswith(path + ".")]:
                del sources[known]
            sources[path] = source


def _source_of(path: list[str], sources: Mapping[str, str]) -> str | None:
    for i in range(len(path), 0, -1):
        src = sources.get(".".join(path[:i]))
        if src is not None:
            return src
    return None


def validate_config(
    plugin_id: str,
    config: Mapping[str, Any],
    schema: Mapping[str, Any] | None,
    sources: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`ConfigError` naming the first bad key path, unless ``config`` is valid."""
    if schema is None:
        return
    import jsonschema.validators

    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    err = errors[0]
    path = [str(p) for p in err.path]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [r for r in err.validator_value if r not in err.instance]
        if missing:
            path.append(str(missing[0]))
    elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set((err.schema.get("properties") or {}).keys())
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            path.append(str(extra[0]))
    key = f'plugins."{plugin_id}"' + "".join(f".{p}" for p in path)
    raise ConfigError(
        err.message, key=key, source=_source_of(path, sources or {}), plugin_id=plugin_id,
        problems=len(errors),
    )


def find_secret_refs(config: Any, prefix: str = "") -> dict[str, str]:
    """Key path -> secret name for every ``"${secret:NAME}"`` value."""
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(find_secret_refs(v, f"{prefix}{k}."))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            out.update(find_secret_refs(v, f"{prefix}{i}."))
    elif isinstance(config, str):
        m = _SECRET_REF.match(config)
        if m:
            out[prefix.rstrip(".")] = m.group(1)
    return out


def resolve_secret_refs(config: Any, get_secret: Callable[[str, str], str]) -> Any:
    """A copy of ``config`` with each ``"${secret:NAME}"`` replaced by ``get_secret(NAME, key)``."""

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str):
            m = _SECRET_REF.match(value)
            if m:
                return get_secret(m.group(1), path)
        return value

    return walk(config, "")


# -- TOML out --------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(
            f"{_toml_key(k)} = {_toml_value(v, where)}" for k, v in value.items()
        ) + " }"
    raise ConfigError(f"{type(value).__name__} values have no TOML form (use unset to remove)",
                      key=where)


def dumps_toml(doc: Mapping[str, Any]) -> str:
    """TOML text for ``doc`` (tables as ``[a."b.c"]`` headers, comments are not kept)."""
    lines: list[str] = []

    def table(prefix: list[str], t: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in t.items() if not isinstance(v, dict)]
        subs = [(k, v) for k, v in t.items() if isinstance(v, dict)]
        if prefix and (scalars or not subs):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v, '.'.join([*prefix, k]))}")
        for k, v in subs:
            table([*prefix, k], v)

    table([], doc)
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != doc:  # pragma: no cover - a bug in the writer above
        raise ConfigError("internal error: the TOML written does not read back the same")
    return text


def merge_path(config: dict[str, Any], parts: list[str], value: Any, source: str,
                sources: dict[str, str]) -> None:
    node = config
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)
    path = ".".join(parts)
    for known in [k for k in sources if k.startswith(path + ".")]:
        del sources[known]
    sources[path] = source


def prune(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without empty plugin tables left by unset."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            pruned = prune(v)
            if pruned or k not in ("plugins", "env"):
                out[k] = pruned
        else:
            out[k] = v
    return out
