"""The in-process call path's pieces: the table of ready exports and the JSON checks.

``Host.call`` runs the fast path inline (a delegation would cost a frame on the
benchmarked path); the table it reads and the checks it calls live here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from corral._errors import PluginError, UsageError
from corral._model.jsoncheck import SIMPLE_TYPES, json_problem
from corral._runtime.activation import Active, Context, format_tb

__all__ = ["SIMPLE", "ExportWrapper", "FastEntry", "FastTable", "check_input", "checked_output",
           "fast_entries", "now", "plugin_error"]

SIMPLE: Final = SIMPLE_TYPES
now: Final = time.perf_counter_ns
#: function, ctx, whether it is async, metrics key
FastEntry = tuple[Callable[..., Any], Context, bool, tuple[str, str]]
#: plugin id -> export name -> its entry: the exports of enabled in-process plugins
FastTable = dict[str, dict[str, FastEntry]]


#: Wraps a sync export while monitoring is on: ``(plugin id, version, fn) -> fn``.
ExportWrapper = Callable[[str, str, Callable[..., Any]], Callable[..., Any]]


def fast_entries(
    active: Active, async_names: set[str], wrap: ExportWrapper | None = None
) -> dict[str, FastEntry]:
    """The fast-path entries of an enabled in-process plugin (sync exports passed through
    ``wrap`` when given).
    """
    plugin_id = active.manifest.id
    version = active.manifest.version
    return {
        name: (
            fn if wrap is None or name in async_names else wrap(plugin_id, version, fn),
            active.ctx, name in async_names, (plugin_id, name),
        )
        for name, fn in active.exports.items()
    }


def check_input(plugin_id: str, export: str, value: Any) -> None:
    """Refuse an input that is not JSON data."""
    problem = json_problem(value)
    if problem:
        raise UsageError(
            f"input to {plugin_id} {export}: " + problem.replace("$", "input", 1),
            plugin_id=plugin_id,
            export=export,
        )


def checked_output(plugin_id: str, export: str, out: Any) -> Any:
    """``out`` if it is JSON data, else the plugin's error."""
    problem = json_problem(out)
    if problem:
        raise PluginError(
            f"{plugin_id} {export} returned something that is not JSON data: "
            + problem.replace("$", "result", 1),
            plugin_id=plugin_id,
            export=export,
        )
    return out


def plugin_error(plugin_id: str, export: str, exc: BaseException) -> PluginError:
    """The error a call raises when the plugin's code raised ``exc``."""
    return PluginError(
        f"{plugin_id} {export} raised {type(exc).__name__}: {exc}",
        plugin_id=plugin_id,
        export=export,
        exception=type(exc).__name__,
        traceback=format_tb(exc),
    )
