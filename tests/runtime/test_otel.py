"""The OpenTelemetry export, read back through the SDK's own in-memory reader."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers.plugins import make_plugin

from corral import Host, PluginError

sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
export = pytest.importorskip("opentelemetry.sdk.metrics.export")


def _points(reader: Any) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def test_plugin_metrics_reach_an_opentelemetry_reader(host: Host, workspace: Path) -> None:
    reader = export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    try:
        host.register(make_plugin(workspace, "acme.otel"))
        host.enable("acme.otel")
        instruments = host.export_opentelemetry(provider)
        assert len(instruments) >= 5
        for i in range(4):
            host.call("acme.otel", "echo", i)
        with pytest.raises(PluginError):
            host.call("acme.otel", "boom", None)
        host.flush_metrics()
        points = _points(reader)
        calls = {(p.attributes["plugin"], p.attributes["outcome"]): p.value
                 for p in points["corral.plugin.calls"]}
        assert calls == {("acme.otel", "ok"): 4, ("acme.otel", "plugin_error"): 1}
        errors = {p.attributes["plugin"]: p.value for p in points["corral.plugin.errors"]}
        assert errors == {"acme.otel": 1}
        duration = [p.value for p in points["corral.plugin.call.duration"]]
        assert duration[0] > 0
        host.call("acme.otel", "echo", 9)
        host.flush_metrics()
        time.sleep(0.6)  # past the reuse window: the next collection reads afresh
        calls = {(p.attributes["plugin"], p.attributes["outcome"]): p.value
                 for p in _points(reader)["corral.plugin.calls"]}
        assert calls[("acme.otel", "ok")] == 5
    finally:
        provider.shutdown()
