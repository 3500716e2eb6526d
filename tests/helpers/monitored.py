"""Plugins for the monitoring tests: one folder, one module, a manifest with its limits."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from corral import Host


def write_plugin(root: Path, plugin_id: str, code: str, exports: dict[str, str], *,
                 isolation: str = "strict", version: str = "1.0.0", entry: str | None = None,
                 sandbox: dict[str, Any] | None = None, host_api: list[str] | None = None) -> Path:
    """A plugin folder ``root/<id>`` whose package ``<id with _>`` holds ``code``."""
    package = plugin_id.replace(".", "_").replace("-", "_")
    folder = root / plugin_id
    (folder / package).mkdir(parents=True, exist_ok=True)
    (folder / package / "__init__.py").write_text(textwrap.dedent(code))
    lines = ["[plugin]", f'id = "{plugin_id}"', f'name = "{plugin_id}"', f'version = "{version}"']
    if entry:
        lines.append(f'entry = "{package}:{entry}"')
    api = host_api if host_api is not None else ["state.read:notes.*", "state.write:notes.*"]
    lines += ["[permissions]", "host-api = [" + ", ".join(f'"{a}"' for a in api) + "]"]
    lines += ["[sandbox]", f'isolation = "{isolation}"']
    lines += [f"{k} = {v}" for k, v in (sandbox or {}).items()]
    lines += ["[exports]"] + [f'{name} = "{package}:{fn}"' for name, fn in exports.items()]
    (folder / "corral.toml").write_text("\n".join(lines) + "\n")
    return folder


def enabled(host: Host, folder: Path) -> str:
    """Register and enable the plugin in ``folder``; its id."""
    (info,) = host.register(folder)
    host.enable(info.id)
    return info.id
