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

__all__ = ["SIMPLE", "ExportWrapper", "FastEntry", "FastTable", "MemoWrapper", "check_input",
           "checked_output", "fast_entries", "now", "plugin_error"]

SIMPLE: Final = SIMPLE_TYPES
now: Final = time.perf_counter_ns
#: function, ctx, whether it is async, metrics key
FastEntry = tuple[Callable[..., Any], Context, bool, tuple[str, str]]
#: plugin id -> export name -> its entry: the exports of enabled in-process plugins
FastTable = dict[str, dict[str, FastEntry]]


#: Wraps a sync export while monitoring is on: ``(plugin id, version, fn) -> fn``.
ExportWrapper = Callable[[str, str, Callable[..., Any]], Callable[..., Any]]
#: Memoises an export declared ``cache = {...}``: ``(active, export name, fn) -> fn``.
MemoWrapper = Callable[[Active, str, Callable[..., Any]], Callable[..., Any]]


def fast_entries(active: Active, async_names: set[str], memoise: MemoWrapper | None = None,
                 monitor: ExportWrapper | None = None) -> dict[str, FastEntry]:
    """The fast-path entries of an enabled in-process plugin.

    Each export is wrapped, innermost first, by ``monitor`` (sync exports, while
    monitoring is on), ``memoise`` (its memoisation, if declared) and the plugin's
    quotas over time (``_runtime/quotas.py``), so a memoised hit is still a call.
    """
    plugin_id = active.manifest.id
    version = active.manifest.version
    meter = active.quota
    metered = meter.wrap if meter is not None and (
        meter.calls is not None or meter.limits_cpu) else None

    def build(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        is_async = name in async_names
        if monitor is not None and not is_async:
            fn = monitor(plugin_id, version, fn)
        if memoise is not None:
            fn = memoise(active, name, fn)
        if metered is not None:
            fn = metered(fn, is_async=is_async)
        return fn

    return {
        name: (build(name, fn), active.ctx, name in async_names, (plugin_id, name))
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
