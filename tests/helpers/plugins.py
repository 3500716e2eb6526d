"""Test plugins: manifests as TOML and real plugin directories written to disk.

``make_plugin`` writes a plugin folder whose module echoes its input (and,
on request, logs every lifecycle hook), so tests exercise real discovery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The manifest example of docs/contract.md, verbatim.
MANIFEST_EXAMPLE = """
[plugin]
id = "acme.git-stats"          # lowercase dotted id, unique in a registry
name = "Git Stats"
version = "1.4.0"              # PEP 440 / semver-compatible
description = "Commit statistics for the workspace"
license = "MIT"
authors = [{ name = "Acme", email = "dev@acme.test" }]
category = "vcs"
tags = ["git", "stats"]
requires-corral = ">=0.1"      # host API compatibility
entry = "git_stats.plugin:Plugin"   # optional: class with lifecycle hooks

[dependencies]                 # other plugins
"acme.workspace" = ">=1.0,<2"

[permissions]                  # everything not granted is denied
fs-read = ["{workspace}"]      # placeholders: {plugin} {data} {cache} {tmp} {workspace}
fs-write = ["{data}"]
net-connect = ["api.example.com:443"]
spawn = ["git"]
env = ["LANG"]
host-api = ["events.publish:git.*", "events.subscribe:workspace.*",
            "state.read:git.*", "state.write:git.*", "secrets:github-token"]

[sandbox]
isolation = "strict"           # none | limited | strict (default strict)
memory-mb = 256
cpu-seconds = 10
timeout-ms = 5000              # wall clock per call
disk-mb = 100                  # quota on {data}
max-processes = 8

[exports]                      # callables the host may call by name
summary = "git_stats.commands:summary"

[[micro]]                      # micro-plugins
id = "acme.git-stats.semver"
type = "validator"             # command-enhancer|validator|transformer|formatter|hook|utility
handler = "git_stats.micro:is_semver"
max-ms = 50
"""

#: An export that returns its input, and a few that misbehave on purpose.
ECHO_CODE = '''
import asyncio
import math


def echo(value, ctx):
    return value


def boom(value, ctx):
    return 1 / 0


def nan(value, ctx):
    return math.nan


def a_set(value, ctx):
    return {1, 2}


def where(value, ctx):
    return {"data_dir": str(ctx.data_dir), "plugin": ctx.plugin_id,
            "workspace": str(ctx.workspace), "config": dict(ctx.config),
            "exists": ctx.data_dir.is_dir()}


async def aecho(value, ctx):
    await asyncio.sleep(0)
    return {"async": value}


async def aboom(value, ctx):
    await asyncio.sleep(0)
    raise ValueError("async boom")


async def anan(value, ctx):
    return [math.inf]
'''

ECHO_EXPORTS = ("echo", "boom", "nan", "a_set", "where", "aecho", "aboom", "anan")

#: An entry class logging every hook to ``data_dir/hooks.log`` and ``workspace/order.log``.
HOOKS_CODE = '''
from pathlib import Path


def _log(ctx, name):
    line = f"{ctx.plugin_id}:{name}\\n"
    with open(Path(ctx.data_dir) / "hooks.log", "a") as f:
        f.write(line)
    with open(Path(ctx.workspace) / "order.log", "a") as f:
        f.write(line)


class Plugin:
    ctx = None

    def on_load(self, ctx):
        self.ctx = ctx
        _log(ctx, "on_load")

    def on_enable(self, ctx):
        _log(ctx, "on_enable")

    def on_disable(self, ctx):
        _log(ctx, "on_disable")

    def on_unload(self, ctx):
        _log(ctx, "on_unload")

    def on_error(self, exc):
        _log(self.ctx, "on_error:" + exc.code)
'''


def module_name(plugin_id: str) -> str:
    """The default top-level module of a test plugin (unique per id)."""
    return "cp_" + plugin_id.replace(".", "_").replace("-", "_")


def toml_value(value: Any) -> str:
    """A TOML literal for the small set of values test manifests use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialise a manifest-shaped dict (tables of scalars, arrays of tables) to TOML."""
    lines: list[str] = []
    for table, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{table}]]")
                lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in item.items())
                lines.append("")
            continue
        lines.append(f"[{table}]")
        lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


def manifest_dict(
    plugin_id: str = "acme.demo",
    *,
    version: str = "1.0.0",
    isolation: str = "none",
    exports: Mapping[str, str] | None = None,
    **extras: Any,
) -> dict[str, Any]:
    """A valid manifest table; ``extras`` keys are tables (``plugin`` merges into [plugin])."""
    mod = module_name(plugin_id)
    data: dict[str, Any] = {
        "plugin": {"id": plugin_id, "name": plugin_id.title(), "version": version,
                   **extras.pop("plugin", {})},
        "sandbox": {"isolation": isolation, **extras.pop("sandbox", {})},
    }
    if exports is None:
        exports = {name: f"{mod}:{name}" for name in ECHO_EXPORTS}
    if exports:
        data["exports"] = dict(exports)
    for key, value in extras.items():
        if value is not None:
            data[key] = value
    return data


def make_plugin(
    root: Path,
    id: str = "acme.demo",
    files: Mapping[str, str] | None = None,
    *,
    toml: str | None = None,
    entry: bool = False,
    **manifest: Any,
) -> Path:
    """Write a real plugin directory ``root/src/<id>`` and return it.

    ``files`` maps relative paths to text (default: the echo module); ``toml``
    replaces the whole manifest; ``entry=True`` adds the hook-logging class;
    other keywords go to :func:`manifest_dict`.
    """
    plugin_dir = root / "src" / id
    plugin_dir.mkdir(parents=True, exist_ok=True)
    mod = module_name(id)
    if files is None:
        code = ECHO_CODE + (HOOKS_CODE if entry else "")
        files = {f"{mod}.py": code}
    for rel, text in files.items():
        path = plugin_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if toml is None:
        if entry:
            manifest.setdefault("plugin", {})["entry"] = f"{mod}:Plugin"
        toml = to_toml(manifest_dict(id, **manifest))
    (plugin_dir / "corral.toml").write_text(toml)
    return plugin_dir


def micro_plugin(root: Path, pid: str, code: str, isolation: str = "none",
                 micros: Sequence[tuple[str, str]] = (("semver", "validator"),
                                                      ("upper", "formatter"))) -> Path:
    """A plugin folder ``root/pid`` whose package ``code`` serves ``[[micro]]`` handlers.

    ``micros`` are ``(function, type)``: each becomes micro ``<pid>.<function>``.
    """
    d = root / pid
    pkg = pid.replace(".", "_")
    (d / pkg).mkdir(parents=True)
    (d / pkg / "__init__.py").write_text(code)
    tables = "".join(
        f'\n[[micro]]\nid = "{pid}.{fn}"\ntype = "{kind}"\nhandler = "{pkg}:{fn}"\n'
        for fn, kind in micros)
    (d / "corral.toml").write_text(
        f'[plugin]\nid = "{pid}"\nname = "x"\nversion = "1.0.0"\n\n'
        f'[sandbox]\nisolation = "{isolation}"\n{tables}')
    return d

