"""The import probe a worker runs for the host: import a plugin's modules and time each.

It is called like an export (``probe_imports(modules, ctx)``) in the plugin's
own worker, or by ``python -I`` for an ``isolation = "none"`` plugin, so that
plugin code is imported where it would run and never in the host process.
"""

from __future__ import annotations

import importlib
import time
import traceback
from typing import Any

__all__ = ["probe_imports"]


def probe_imports(modules: list[str], ctx: object) -> dict[str, Any]:
    """Import each module and time it.

    Returns ``{"ms": {module: milliseconds}, "failed": None | {"module", "error",
    "traceback"}}``; it stops at the first module that fails.
    """
    times: dict[str, float] = {}
    for module in modules:
        start = time.perf_counter()
        try:
            importlib.import_module(module)
        except BaseException as exc:  # SystemExit counts too
            return {"ms": times, "failed": {
                "module": module, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-8)}}
        times[module] = round((time.perf_counter() - start) * 1000, 3)
    return {"ms": times, "failed": None}
