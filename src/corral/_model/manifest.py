"""The ``corral.toml`` manifest: typed, immutable models and their validation.

Pure data: :meth:`Manifest.from_dict` takes a parsed TOML table and either
returns a :class:`Manifest` or raises :class:`ManifestError` whose message
names the file, the key path and what was expected.  An unknown key is an
error (it is usually a typo) with a "did you mean" hint.  Nothing here imports
or runs plugin code.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, final

from corral._disk.layout import MANIFEST_NAME
from corral._errors import ManifestError, UsageError
from corral._model.memo import EXPORT_CACHE_KEYS, ExportCache, parse_duration
from corral._model.micro import KINDS, MICRO_MAX_MS
from corral._model.permissions import (
    HOST_API_SERVICES,
    PLACEHOLDERS,
    SECRET_NAME_PATTERN,
    Permissions,
    valid_pattern,
)
from corral._model.pipeline import pipeline_from_dict
from corral._model.quotas import check_quota_table, quota_dict

__all__ = [
    "ISOLATION_LEVELS",
    "LIMITS",
    "LIMIT_DESCRIPTIONS",
    "MANIFEST_NAME",
    "MICRO_TYPES",
    "Author",
    "Manifest",
    "Micro",
    "PipelineDecl",
    "Sandbox",
    "check_id",
    "load_manifest",
    "parse_manifest",
]

ISOLATION_LEVELS: Final = ("none", "limited", "strict")
#: The ``[[micro]]`` types: the micro-plugin kinds.
MICRO_TYPES: Final = KINDS
#: ``[sandbox]`` limits: key -> (minimum, maximum, default).
LIMITS: Final[Mapping[str, tuple[int, int, int]]] = MappingProxyType(
    {
        "memory-mb": (16, 65536, 256),
        "cpu-seconds": (1, 86400, 10),
        "timeout-ms": (1, 3_600_000, 5000),
        "disk-mb": (1, 1_048_576, 100),
        "max-processes": (1, 4096, 8),
        # Budgets of what the host holds for a plugin (docs/budgets.md).
        "tmp-mb": (1, 1_048_576, 100),
        "cache-mb": (1, 1_048_576, 100),
        "state-mb": (1, 4096, 16),
        "state-keys": (1, 1_000_000, 10_000),
        "events-mb": (1, 4096, 64),
        "queue-mb": (1, 4096, 16),
        "log-lines": (1, 1_000_000, 1000),
        "log-kb": (1, 65536, 256),
    }
)
#: What each ``[sandbox]`` limit bounds, for the JSON schema and docs/budgets.md.
LIMIT_DESCRIPTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "memory-mb": "Address space of the plugin's worker, MiB.",
        "cpu-seconds": "CPU time of the plugin's worker over its life, seconds.",
        "timeout-ms": "Wall-clock limit of one call, milliseconds.",
        "disk-mb": "Total size of everything under {data}, MiB (and of any one file written).",
        "max-processes": "Processes and threads the plugin's worker may run at once.",
        "tmp-mb": "Total size of everything under {tmp}, MiB; wiped on disable and unload.",
        "cache-mb": "Total size of everything under {cache}, MiB; wiped on disable and unload. "
                    "Separately, of the `ctx.cache` entries it wrote to the host's cache.",
        "state-mb": "Bytes of shared-state keys and values this plugin last wrote, MiB.",
        "state-keys": "Shared-state keys this plugin last wrote.",
        "events-mb": "Bytes this plugin keeps in durable topics and the dead-letter store, MiB.",
        "queue-mb": "Bytes the host holds in memory for this plugin's polled subscriptions, MiB.",
        "log-lines": "Log lines (ctx.log, stdout, stderr) one call may write.",
        "log-kb": "Bytes of log (ctx.log, stdout, stderr) one call may write, KiB.",
    }
)

ID_MAX: Final = 128
_ID_SEGMENT = r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?"
ID_PATTERN: Final = rf"^{_ID_SEGMENT}(?:\.{_ID_SEGMENT})+$"
_ID_RE: Final = re.compile(ID_PATTERN)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TARGET_PATTERN: Final = rf"^{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*$"
_TARGET_RE: Final = re.compile(TARGET_PATTERN)
EXPORT_NAME_PATTERN: Final = r"^[a-z_][a-z0-9_-]*$"
_EXPORT_RE: Final = re.compile(EXPORT_NAME_PATTERN)
ENV_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_RE: Final = re.compile(ENV_PATTERN)
HOSTNAME_PATTERN: Final = (
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_HOSTNAME_RE: Final = re.compile(HOSTNAME_PATTERN)
PROGRAM_PATTERN: Final = r"[A-Za-z0-9_][A-Za-z0-9_.+-]*|/[^\0]+"
_PROGRAM_RE: Final = re.compile(PROGRAM_PATTERN)

_PLUGIN_KEYS: Final = (
    "id",
    "name",
    "version",
    "description",
    "license",
    "authors",
    "category",
    "tags",
    "requires-corral",
    "entry",
    "homepage",
    "repository",
)
_TOP_KEYS: Final = (
    "plugin", "dependencies", "permissions", "sandbox", "exports", "micro", "pipeline",
    "quotas",
)
_PERMISSION_KEYS: Final = ("fs-read", "fs-write", "net-connect", "spawn", "env", "host-api")
#: ``[permissions.reasons]``: why each permission is needed, keyed by kind or ``kind:entry``.
REASONS_KEY: Final = "reasons"
_SANDBOX_KEYS: Final = ("isolation", *LIMITS)
_BUDGET_KEYS: Final = (
    "tmp-mb", "cache-mb", "state-mb", "state-keys", "events-mb", "queue-mb", "log-lines", "log-kb"
)
_MICRO_KEYS: Final = ("id", "type", "handler", "max-ms", "description")
_AUTHOR_KEYS: Final = ("name", "email")
_PIPELINE_KEYS: Final = ("id", "description", "steps")
#: ``[exports.NAME]`` written as a table: its target and how its results are memoised.
_EXPORT_KEYS: Final = ("target", "cache")


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@final
@dataclass(frozen=True, slots=True)
class Author:
    """One entry of ``plugin.authors``."""

    name: str
    email: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Sandbox:
    """The ``[sandbox]`` table: isolation level and resource limits."""

    isolation: Literal["none", "limited", "strict"] = "strict"
    memory_mb: int = LIMITS["memory-mb"][2]
    cpu_seconds: int = LIMITS["cpu-seconds"][2]
    timeout_ms: int = LIMITS["timeout-ms"][2]
    disk_mb: int = LIMITS["disk-mb"][2]
    max_processes: int = LIMITS["max-processes"][2]
    tmp_mb: int = LIMITS["tmp-mb"][2]
    cache_mb: int = LIMITS["cache-mb"][2]
    state_mb: int = LIMITS["state-mb"][2]
    state_keys: int = LIMITS["state-keys"][2]
    events_mb: int = LIMITS["events-mb"][2]
    queue_mb: int = LIMITS["queue-mb"][2]
    log_lines: int = LIMITS["log-lines"][2]
    log_kb: int = LIMITS["log-kb"][2]

    def limit(self, key: str) -> int:
        """The value of limit ``key`` in manifest spelling (``disk-mb``)."""
        value: int = getattr(self, key.replace("-", "_"))
        return value

    def to_dict(self) -> dict[str, Any]:
        """The table in manifest spelling."""
        return {
            "isolation": self.isolation,
            "memory-mb": self.memory_mb,
            "cpu-seconds": self.cpu_seconds,
            "timeout-ms": self.timeout_ms,
            "disk-mb": self.disk_mb,
            "max-processes": self.max_processes,
            **{key: self.limit(key) for key in _BUDGET_KEYS},
        }


@final
@dataclass(frozen=True, slots=True)
class Micro:
    """One ``[[micro]]`` entry: a tiny typed handler."""

    id: str
    type: str
    handler: str
    max_ms: int = MICRO_MAX_MS[2]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The entry in manifest spelling."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "handler": self.handler,
            "max-ms": self.max_ms,
        }
        if self.description:
            out["description"] = self.description
        return out


def _freeze(value: Any) -> Any:
    """A deep read-only copy of TOML data (tables become mapping proxies, arrays tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@final
@dataclass(frozen=True, slots=True)
class PipelineDecl:
    """One ``[[pipeline]]`` entry: a named composition of micro-plugins.

    ``steps`` keep the manifest spelling, read-only; ``corral._services.micro.compose`` runs them.
    """

    id: str
    steps: tuple[Mapping[str, Any], ...]
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The entry in manifest spelling."""
        out: dict[str, Any] = {"id": self.id, "steps": _thaw(self.steps)}
        if self.description:
            out["description"] = self.description
        return out


@final
@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated ``corral.toml``.  Build it with :func:`parse_manifest` or :meth:`from_dict`."""

    id: str
    name: str
    version: str
    description: str = ""
    license: str | None = None
    authors: tuple[Author, ...] = ()
    category: str | None = None
    tags: tuple[str, ...] = ()
    requires_corral: str = ""
    entry: str | None = None
    homepage: str | None = None
    repository: str | None = None
    dependencies: Mapping[str, str] = field(default_factory=_empty)
    permissions: Permissions = field(default_factory=Permissions)
    sandbox: Sandbox = field(default_factory=Sandbox)
    exports: Mapping[str, str] = field(default_factory=_empty)
    micro: tuple[Micro, ...] = ()
    pipelines: tuple[PipelineDecl, ...] = ()
    #: ``[permissions.reasons]``: ``"net-connect"`` or ``"net-connect:api.example.com:443"``
    #: -> why the plugin needs it (shown by ``corral docs`` and the marketplace).
    permission_reasons: Mapping[str, str] = field(default_factory=_empty)
    #: ``[quotas]``: quotas over time as declared (``calls-per-minute`` -> 600); see
    #: ``_model/quotas.py``.  Unset keys take the host's settings or their default.
    quotas: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: ``[exports.NAME] cache = {ttl = "10m"}``: export name -> how its results are memoised.
    export_cache: Mapping[str, ExportCache] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str | None = None) -> Manifest:
        """Validate a parsed manifest table; a :class:`ManifestError` names the key at fault."""
        return _Reader(file).manifest(data)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as TOML-shaped data; ``from_dict(m.to_dict()) == m``."""
        plugin: dict[str, Any] = {"id": self.id, "name": self.name, "version": self.version}
        if self.description:
            plugin["description"] = self.description
        for key, value in (
            ("license", self.license),
            ("category", self.category),
            ("entry", self.entry),
            ("homepage", self.homepage),
            ("repository", self.repository),
        ):
            if value is not None:
                plugin[key] = value
        if self.authors:
            plugin["authors"] = [
                {"name": a.name, **({"email": a.email} if a.email else {})} for a in self.authors
            ]
        if self.tags:
            plugin["tags"] = list(self.tags)
        if self.requires_corral:
            plugin["requires-corral"] = self.requires_corral
        out: dict[str, Any] = {"plugin": plugin}
        if self.dependencies:
            out["dependencies"] = dict(self.dependencies)
        perms: dict[str, Any] = dict(self.permissions.to_dict())
        if self.permission_reasons:
            perms[REASONS_KEY] = dict(self.permission_reasons)
        if perms:
            out["permissions"] = perms
        out["sandbox"] = self.sandbox.to_dict()
        if self.exports:
            out["exports"] = {
                name: {"target": target, "cache": self.export_cache[name].to_dict()}
                if name in self.export_cache else target
                for name, target in self.exports.items()
            }
        if self.micro:
            out["micro"] = [m.to_dict() for m in self.micro]
        if self.pipelines:
            out["pipeline"] = [p.to_dict() for p in self.pipelines]
        if self.quotas:
            out["quotas"] = quota_dict(self.quotas)
        return out

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the plugin offers: ``export:NAME``, ``micro:TYPE`` and ``hooks`` (sorted)."""
        caps = {f"export:{name}" for name in self.exports}
        caps.update(f"micro:{m.type}" for m in self.micro)
        if self.entry:
            caps.add("hooks")
        return tuple(sorted(caps))


def parse_manifest(text: str | bytes, *, file: str = MANIFEST_NAME) -> Manifest:
    """Parse TOML text into a :class:`Manifest`; syntax errors give line and column."""
    import tomllib

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"not UTF-8 text (byte {exc.start} cannot be decoded)", file=file
            ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"invalid TOML: {exc}", file=file) from exc
    return Manifest.from_dict(data, file=file)


def load_manifest(plugin_dir: str | os.PathLike[str]) -> Manifest:
    """Read ``plugin_dir/corral.toml`` without importing any plugin code."""
    plugin_dir = Path(plugin_dir)
    path = plugin_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {plugin_dir}", file=str(path)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    return parse_manifest(raw, file=str(path))


def check_id(value: object, *, what: str = "plugin id", file: str | None = None,
             key: str = "plugin.id") -> str:
    """Validate a plugin id: lowercase ASCII dotted name; look-alike Unicode is named."""
    if not isinstance(value, str):
        raise ManifestError(f"{what} must be a string, got {_kind(value)}", file=file, key=key)
    for ch in value:
        if not ch.isascii():
            name = unicodedata.name(ch, "unknown character")
            raise ManifestError(
                f"{what} {value!r} contains non-ASCII {ch!r} (U+{ord(ch):04X} {name}); "
                "ids are lowercase ASCII",
                file=file,
                key=key,
            )
    if len(value) > ID_MAX:
        raise ManifestError(
            f"{what} is {len(value)} characters long, at most {ID_MAX} allowed", file=file, key=key
        )
    if not _ID_RE.fullmatch(value):
        hint = ""
        if value.lower() != value:
            hint = f" (did you mean {value.lower()!r}?)"
        elif "." not in value:
            hint = " (ids are dotted: namespace.name, e.g. 'acme.git-stats')"
        raise ManifestError(
            f"{what} {value!r} is not a lowercase dotted name like 'acme.git-stats'{hint}",
            file=file,
            key=key,
        )
    return value


def _kind(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a float",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"^[A-Za-z0-9_-]+$", key) else f'"{key}"'


class _Reader:
    """Walks a manifest table, raising :class:`ManifestError` with a precise key path."""

    __slots__ = ("file",)

    def __init__(self, file: str | None) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> ManifestError:
        return ManifestError(message, file=self.file, key=key)

    def table(self, data: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.fail(key, f"must be a table, got {_kind(data)}")
        for name in data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"{key}." if key else ""
                raise self.fail(
                    f"{where}{_toml_key(name)}",
                    f"unknown key{hint}; allowed: {', '.join(allowed)}",
                )
        return data

    def string(self, table: Mapping[str, Any], name: str, key: str, *,
               required: bool = False, max_len: int = 1000) -> str | None:
        if name not in table:
            if required:
                raise self.fail(f"{key}.{name}" if key else name, "is required")
            return None
        value = table[name]
        path = f"{key}.{name}" if key else name
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_kind(value)}")
        if required and not value.strip():
            raise self.fail(path, "must not be empty")
        if len(value) > max_len:
            raise self.fail(path, f"must be at most {max_len} characters, got {len(value)}")
        return value

    def strings(self, value: object, key: str, *, max_items: int = 256) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array of strings, got {_kind(value)}")
        if len(value) > max_items:
            raise self.fail(key, f"must have at most {max_items} entries, got {len(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", f"must be a string, got {_kind(item)}")
        return tuple(value)

    def integer(self, table: Mapping[str, Any], name: str, key: str,
                bounds: tuple[int, int, int]) -> int:
        low, high, default = bounds
        if name not in table:
            return default
        value = table[name]
        path = f"{key}.{name}"
        if type(value) is not int:
            raise self.fail(path, f"must be an integer {low}..{high}, got {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(path, f"must be {low}..{high}, got {value}")
        return value

    def target(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string 'module.path:function', got {_kind(value)}")
        if not _TARGET_RE.fullmatch(value):
            raise self.fail(
                key, f"must be 'module.path:function' (dotted Python names), got {value!r}"
            )
        return value

    def manifest(self, data: Mapping[str, Any]) -> Manifest:
        top = self.table(data, "", _TOP_KEYS)
        if "plugin" not in top:
            raise self.fail("plugin", "the [plugin] table is required")
        plugin = self.table(top["plugin"], "plugin", _PLUGIN_KEYS)
        if "id" not in plugin:
            raise self.fail("plugin.id", "is required")
        plugin_id = check_id(plugin["id"], file=self.file)
        name = self.string(plugin, "name", "plugin", required=True, max_len=200)
        version = self._version(plugin)
        description = self.string(plugin, "description", "plugin", max_len=2000) or ""
        requires = self._specifier(plugin.get("requires-corral", ""), "plugin.requires-corral")
        entry = None
        if "entry" in plugin:
            entry = self.target(plugin["entry"], "plugin.entry")
        tags: tuple[str, ...] = ()
        if "tags" in plugin:
            tags = self.strings(plugin["tags"], "plugin.tags", max_items=32)
            for i, tag in enumerate(tags):
                if not re.fullmatch(r"^[a-z0-9][a-z0-9+.-]{0,49}$", tag):
                    raise self.fail(
                        f"plugin.tags[{i}]",
                        f"must be a lowercase word of at most 50 characters, got {tag!r}",
                    )
        category = self.string(plugin, "category", "plugin", max_len=50)
        if category is not None and not re.fullmatch(r"^[a-z0-9][a-z0-9-]*$", category):
            raise self.fail("plugin.category", f"must be a lowercase word, got {category!r}")
        return Manifest(
            id=plugin_id,
            name=name or "",
            version=version,
            description=description,
            license=self.string(plugin, "license", "plugin", max_len=200),
            authors=self._authors(plugin.get("authors", [])),
            category=category,
            tags=tags,
            requires_corral=requires,
            entry=entry,
            homepage=self.string(plugin, "homepage", "plugin"),
            repository=self.string(plugin, "repository", "plugin"),
            dependencies=self._dependencies(top.get("dependencies", {}), plugin_id),
            permissions=(perms := self._permissions(top.get("permissions", {}))),
            permission_reasons=self._reasons(top.get("permissions", {}), perms),
            sandbox=self._sandbox(top.get("sandbox", {})),
            exports=self._exports(top.get("exports", {})),
            export_cache=self._export_cache(top.get("exports", {})),
            micro=(micro := self._micro(top.get("micro", []), plugin_id)),
            pipelines=self._pipelines(
                top.get("pipeline", []), plugin_id, {m.id for m in micro}
            ),
            quotas=MappingProxyType(check_quota_table(top.get("quotas", {}), "quotas",
                                                      file=self.file)),
        )

    def _version(self, plugin: Mapping[str, Any]) -> str:
        from packaging.version import InvalidVersion, Version

        raw = self.string(plugin, "version", "plugin", required=True, max_len=64) or ""
        try:
            Version(raw)
        except InvalidVersion:
            raise self.fail(
                "plugin.version", f"must be a PEP 440 version like '1.4.0', got {raw!r}"
            ) from None
        return raw

    def _specifier(self, value: object, key: str) -> str:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        if not isinstance(value, str):
            raise self.fail(
                key, f"must be a version range string like '>=1.0,<2', got {_kind(value)}"
            )
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise self.fail(
                key, f"must be a version range like '>=1.0,<2', got {value!r}"
            ) from None
        return value

    def _authors(self, value: object) -> tuple[Author, ...]:
        if not isinstance(value, list):
            raise self.fail("plugin.authors", f"must be an array of tables, got {_kind(value)}")
        authors = []
        for i, item in enumerate(value):
            key = f"plugin.authors[{i}]"
            table = self.table(item, key, _AUTHOR_KEYS)
            name = self.string(table, "name", key, required=True, max_len=200) or ""
            email = self.string(table, "email", key, max_len=254)
            if email is not None and not re.fullmatch(r"^[^@\s]+@[^@\s]+$", email):
                raise self.fail(f"{key}.email", f"must be an e-mail address, got {email!r}")
            authors.append(Author(name=name, email=email))
        return tuple(authors)

    def _dependencies(self, value: object, plugin_id: str) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            raise self.fail("dependencies", f"must be a table, got {_kind(value)}")
        deps: dict[str, str] = {}
        for dep_id, spec in value.items():
            key = f"dependencies.{_toml_key(dep_id)}"
            check_id(dep_id, what="dependency id", file=self.file, key=key)
            if dep_id == plugin_id:
                raise self.fail(key, "a plugin cannot depend on itself")
            deps[dep_id] = self._specifier(spec, key)
        return MappingProxyType(deps)

    def _permissions(self, value: object) -> Permissions:
        table = self.table(value, "permissions", (*_PERMISSION_KEYS, REASONS_KEY))
        lists = {
            k: self.strings(v, f"permissions.{k}") for k, v in table.items() if k != REASONS_KEY
        }
        for kind in ("fs-read", "fs-write"):
            for i, entry in enumerate(lists.get(kind, ())):
                self._path_grant(entry, f"permissions.{kind}[{i}]")
        for i, entry in enumerate(lists.get("net-connect", ())):
            self._endpoint(entry, f"permissions.net-connect[{i}]")
        for i, entry in enumerate(lists.get("spawn", ())):
            if not _PROGRAM_RE.fullmatch(entry) or "/.." in entry:
                raise self.fail(
                    f"permissions.spawn[{i}]",
                    f"must be a program name like 'git' or an absolute path, got {entry!r}",
                )
        for i, entry in enumerate(lists.get("env", ())):
            if not _ENV_RE.fullmatch(entry):
                raise self.fail(
                    f"permissions.env[{i}]",
                    f"must be an environment variable name, got {entry!r}",
                )
        for i, entry in enumerate(lists.get("host-api", ())):
            self._api_grant(entry, f"permissions.host-api[{i}]")
        return Permissions(
            fs_read=lists.get("fs-read", ()),
            fs_write=lists.get("fs-write", ()),
            net_connect=lists.get("net-connect", ()),
            spawn=lists.get("spawn", ()),
            env=lists.get("env", ()),
            host_api=lists.get("host-api", ()),
        )

    def _reasons(self, value: Mapping[str, Any], perms: Permissions) -> Mapping[str, str]:
        """``[permissions.reasons]``: each key a granted kind or ``kind:entry``, each value text."""
        raw = value.get(REASONS_KEY, {})
        if not isinstance(raw, Mapping):
            raise self.fail("permissions.reasons", f"must be a table, got {_kind(raw)}")
        granted = perms.to_dict()
        out: dict[str, str] = {}
        for name, text in raw.items():
            key = f"permissions.reasons.{_toml_key(name)}"
            kind, sep, entry = name.partition(":")
            if kind not in _PERMISSION_KEYS:
                close = difflib.get_close_matches(kind, _PERMISSION_KEYS, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(
                    key,
                    f"unknown permission kind {kind!r}{hint}; use one of "
                    f"{', '.join(_PERMISSION_KEYS)}, optionally followed by ':entry'",
                )
            if kind not in granted:
                raise self.fail(key, f"gives a reason for {kind}, which is not granted")
            if sep and entry not in granted[kind]:
                raise self.fail(
                    key,
                    f"gives a reason for {entry!r}, which is not in permissions.{kind} "
                    f"({', '.join(granted[kind])})",
                )
            if not isinstance(text, str) or not text.strip():
                raise self.fail(key, f"must be a non-empty string, got {_kind(text)}")
            if len(text) > 1000:
                raise self.fail(key, f"must be at most 1000 characters, got {len(text)}")
            out[name] = text
        return MappingProxyType(out)

    def _path_grant(self, entry: str, key: str) -> None:
        if "\0" in entry or not entry:
            raise self.fail(key, "must be a non-empty path")
        if entry.startswith("{"):
            end = entry.find("}")
            name = entry[1:end] if end > 0 else entry[1:]
            if end < 0 or name not in PLACEHOLDERS:
                raise self.fail(
                    key,
                    f"unknown placeholder in {entry!r}; use one of "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS),
                )
            rest = entry[end + 1 :]
            if rest and not rest.startswith("/"):
                raise self.fail(key, f"expected '/' after the placeholder, got {entry!r}")
        elif not entry.startswith("/"):
            raise self.fail(
                key, f"must be an absolute path or start with a placeholder, got {entry!r}"
            )
        if ".." in entry.split("/"):
            raise self.fail(key, f"must not contain '..', got {entry!r}")

    def _endpoint(self, entry: str, key: str) -> None:
        host, sep, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            import ipaddress

            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise self.fail(key, f"bad IPv6 address in {entry!r}") from None
        elif not sep or not _HOSTNAME_RE.fullmatch(host):
            raise self.fail(
                key, f"must be 'host:port' (IPv6 as '[::1]:443'), got {entry!r}"
            )
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise self.fail(key, f"port must be 1..65535, got {port!r} in {entry!r}")

    def _api_grant(self, entry: str, key: str) -> None:
        service, sep, target = entry.partition(":")
        if service not in HOST_API_SERVICES:
            close = difflib.get_close_matches(service, list(HOST_API_SERVICES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.fail(
                key,
                f"unknown host-api service {service!r}{hint}; known: "
                + ", ".join(HOST_API_SERVICES),
            )
        if not sep or not target:
            raise self.fail(
                key, f"{service} needs a {HOST_API_SERVICES[service]} after ':', got {entry!r}"
            )
        if service == "secrets":
            if not re.fullmatch(SECRET_NAME_PATTERN, target):
                raise self.fail(key, f"bad secret name {target!r}")
        elif not valid_pattern(target):
            raise self.fail(
                key,
                f"bad {HOST_API_SERVICES[service]} {target!r}: dotted names, '*' for one "
                "level, a final '>' for any depth",
            )

    def _sandbox(self, value: object) -> Sandbox:
        table = self.table(value, "sandbox", _SANDBOX_KEYS)
        isolation = table.get("isolation", "strict")
        if isolation not in ISOLATION_LEVELS:
            raise self.fail(
                "sandbox.isolation",
                f"must be one of {', '.join(ISOLATION_LEVELS)}, got {isolation!r}",
            )
        return Sandbox(
            isolation=isolation,
            memory_mb=self.integer(table, "memory-mb", "sandbox", LIMITS["memory-mb"]),
            cpu_seconds=self.integer(table, "cpu-seconds", "sandbox", LIMITS["cpu-seconds"]),
            timeout_ms=self.integer(table, "timeout-ms", "sandbox", LIMITS["timeout-ms"]),
            disk_mb=self.integer(table, "disk-mb", "sandbox", LIMITS["disk-mb"]),
            max_processes=self.integer(
                table, "max-processes", "sandbox", LIMITS["max-processes"]
            ),
            **{
                key.replace("-", "_"): self.integer(table, key, "sandbox", LIMITS[key])
                for key in _BUDGET_KEYS
            },
        )

    def _exports(self, value: object) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            raise self.fail("exports", f"must be a table, got {_kind(value)}")
        exports: dict[str, str] = {}
        for name, target in value.items():
            key = f"exports.{_toml_key(name)}"
            if not _EXPORT_RE.fullmatch(name):
                raise self.fail(key, "export names are lowercase words (a-z, 0-9, '_', '-')")
            if isinstance(target, Mapping):
                table = self.table(target, key, _EXPORT_KEYS)
                if "target" not in table:
                    raise self.fail(f"{key}.target", "is required")
                exports[name] = self.target(table["target"], f"{key}.target")
            else:
                exports[name] = self.target(target, key)
        return MappingProxyType(exports)

    def _export_cache(self, value: object) -> Mapping[str, ExportCache]:
        """The ``cache`` tables of exports written as tables (checked by :meth:`_exports`)."""
        out: dict[str, ExportCache] = {}
        for name, spec in value.items() if isinstance(value, Mapping) else ():
            if not isinstance(spec, Mapping) or "cache" not in spec:
                continue
            key = f"exports.{_toml_key(name)}.cache"
            table = self.table(spec["cache"], key, EXPORT_CACHE_KEYS)
            if "ttl" not in table:
                raise self.fail(f"{key}.ttl", "is required")
            seconds = {}
            for part in EXPORT_CACHE_KEYS:
                if part in table:
                    parsed = parse_duration(table[part])
                    if parsed is None or (part == "ttl" and parsed <= 0):
                        raise self.fail(
                            f"{key}.{part}",
                            "must be a duration such as 30 (seconds), \"90s\", \"10m\", "
                            f"\"2h\" or \"1d\", more than 0 and at most 30 days, "
                            f"got {table[part]!r}",
                        )
                    seconds[part] = parsed
            out[name] = ExportCache(**seconds)
        return MappingProxyType(out)

    def _micro(self, value: object, plugin_id: str) -> tuple[Micro, ...]:
        if not isinstance(value, list):
            raise self.fail("micro", f"must be an array of tables ([[micro]]), got {_kind(value)}")
        seen: set[str] = set()
        out = []
        for i, item in enumerate(value):
            key = f"micro[{i}]"
            table = self.table(item, key, _MICRO_KEYS)
            if "id" not in table:
                raise self.fail(f"{key}.id", "is required")
            micro_id = check_id(table["id"], what="micro-plugin id", file=self.file,
                                key=f"{key}.id")
            if not micro_id.startswith(plugin_id + "."):
                raise self.fail(
                    f"{key}.id", f"must start with the plugin id '{plugin_id}.', got {micro_id!r}"
                )
            if micro_id in seen:
                raise self.fail(f"{key}.id", f"duplicate micro-plugin id {micro_id!r}")
            seen.add(micro_id)
            kind = table.get("type")
            if kind not in MICRO_TYPES:
                raise self.fail(
                    f"{key}.type", f"must be one of {', '.join(MICRO_TYPES)}, got {kind!r}"
                )
            if "handler" not in table:
                raise self.fail(f"{key}.handler", "is required")
            out.append(
                Micro(
                    id=micro_id,
                    type=kind,
                    handler=self.target(table["handler"], f"{key}.handler"),
                    max_ms=self.integer(table, "max-ms", key, MICRO_MAX_MS),
                    description=self.string(table, "description", key, max_len=2000) or "",
                )
            )
        return tuple(out)

    def _pipelines(
        self, value: object, plugin_id: str, taken: set[str]
    ) -> tuple[PipelineDecl, ...]:
        """``[[pipeline]]`` entries; their steps are checked by the composition parser.

        That parser is pure data validation (no I/O, nothing run), so the model may use it.
        """
        if not isinstance(value, list):
            raise self.fail(
                "pipeline", f"must be an array of tables ([[pipeline]]), got {_kind(value)}"
            )
        if not value:
            return ()
        seen = set(taken)
        out = []
        for i, item in enumerate(value):
            key = f"pipeline[{i}]"
            table = self.table(item, key, _PIPELINE_KEYS)
            if "id" not in table:
                raise self.fail(f"{key}.id", "is required")
            pipeline_id = check_id(
                table["id"], what="pipeline id", file=self.file, key=f"{key}.id"
            )
            if not pipeline_id.startswith(plugin_id + "."):
                raise self.fail(
                    f"{key}.id",
                    f"must start with the plugin id '{plugin_id}.', got {pipeline_id!r}",
                )
            if pipeline_id in seen:
                raise self.fail(
                    f"{key}.id",
                    f"duplicate id {pipeline_id!r} (micro-plugins and pipelines share one "
                    "namespace)",
                )
            seen.add(pipeline_id)
            if "steps" not in table:
                raise self.fail(f"{key}.steps", "is required")
            try:
                pipeline_from_dict(table)
            except UsageError as exc:
                raise self.fail(f"{key}.{exc.details['key']}", exc.details["problem"]) from None
            description = self.string(table, "description", key, max_len=2000) or ""
            out.append(PipelineDecl(pipeline_id, _freeze(table["steps"]), description))
        return tuple(out)
