"""OpenTelemetry export of the plugin metrics, for hosts that have ``opentelemetry-sdk``.

Observable instruments whose callbacks read the home's host database (the same
figures as ``corral metrics``), so whatever reader or exporter the application
configured on its ``MeterProvider`` (OTLP, Prometheus, in-memory) sends them.
Nothing here is imported unless :func:`export_opentelemetry` is called.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from corral._errors import MissingExtra
from corral._model.exposition import Family
from corral._runtime.database import HostDatabase
from corral._runtime.stats import host_families

__all__ = ["INSTRUMENTS", "export_opentelemetry"]

#: Prometheus family (and sample suffix) -> (OpenTelemetry name, kind, unit, description).
INSTRUMENTS: Final = {
    ("corral_plugin_calls_total", ""): ("corral.plugin.calls", "counter", "{call}",
                                        "Calls finished, by plugin and outcome."),
    ("corral_plugin_errors_total", ""): ("corral.plugin.errors", "counter", "{call}",
                                         "Calls that did not end ok."),
    ("corral_plugin_call_duration_seconds", "_sum"): (
        "corral.plugin.call.duration", "counter", "s", "Wall-clock time of calls, summed."),
    ("corral_plugin_cpu_seconds_total", ""): ("corral.plugin.cpu.time", "counter", "s",
                                              "CPU time (exact for sandboxed workers)."),
    ("corral_plugin_memory_peak_bytes", ""): ("corral.plugin.memory.peak", "gauge", "By",
                                              "Highest memory use seen."),
    ("corral_plugin_io_read_bytes_total", ""): ("corral.plugin.io.read", "counter", "By",
                                                "Block-device bytes read."),
    ("corral_plugin_io_write_bytes_total", ""): ("corral.plugin.io.write", "counter", "By",
                                                 "Block-device bytes written."),
    ("corral_plugin_oom_kills_total", ""): ("corral.plugin.oom_kills", "counter", "{kill}",
                                            "Kills by the kernel's OOM killer."),
}
#: How long one reading of the database serves every instrument's callback.
_REUSE_SECONDS: Final = 0.5


class _Readings:
    """The families read once per collection, shared by every instrument's callback."""

    def __init__(self, db: HostDatabase, max_plugins: int) -> None:
        self.db = db
        self.max_plugins = max_plugins
        self._lock = threading.Lock()
        self._at = 0.0
        self._by: dict[tuple[str, str], list[tuple[dict[str, str], float]]] = {}

    def samples(self, key: tuple[str, str]) -> list[tuple[dict[str, str], float]]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > _REUSE_SECONDS:
                families: list[Family] = host_families(self.db, max_plugins=self.max_plugins)
                by: dict[tuple[str, str], list[tuple[dict[str, str], float]]] = {}
                for fam in families:
                    for suffix, labels, value in fam.samples:
                        by.setdefault((fam.name, suffix), []).append((labels, value))
                self._by, self._at = by, now
            return list(self._by.get(key, []))


def export_opentelemetry(db: HostDatabase, meter_provider: Any = None, *,
                         max_plugins: int = 50) -> list[Any]:
    """Register the plugin metrics as observable instruments on ``meter_provider`` (the
    global one when ``None``); returns the instruments.

    :raises MissingExtra: ``opentelemetry-sdk`` (or its API) is not installed.
    """
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise MissingExtra.of("opentelemetry", "monitor",
                              needed_by="the OpenTelemetry export") from exc

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("corral")
    readings = _Readings(db, max_plugins)
    made = []
    for key, (name, kind, unit, description) in INSTRUMENTS.items():

        def observe(_options: Any, key: tuple[str, str] = key) -> Iterable[Any]:
            return [metrics.Observation(value, labels) for labels, value in readings.samples(key)]

        create = meter.create_observable_counter if kind == "counter" else (
            meter.create_observable_gauge)
        made.append(create(name, callbacks=[observe], unit=unit, description=description))
    return made
