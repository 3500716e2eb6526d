"""The registry server's ``/metrics``: request counts and latency per route template,
scraped over real HTTP, with labels that a flood of distinct paths cannot grow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from corral.registry._app import open_server
from corral.registry._service import Registry


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_requests_are_counted_per_route_template_with_bounded_labels(tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "data")
    try:
        with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/v1/health").status_code == 200
            for i in range(25):  # distinct ids: one route template, not 25 label values
                assert http.get(f"/v1/plugins/acme.p{i}").status_code == 404
            for i in range(25):  # unknown paths: all "unmatched"
                http.get(f"/nowhere/{i}")
            r = http.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            fams = _families(r.text)
            assert "/metrics" not in http.get("/openapi.json").text  # not part of the API
    finally:
        reg.close()
    counts = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
              for s in fams["corral_registry_requests"].samples}
    assert counts[("GET", "/v1/health", "200")] == 1
    assert counts[("GET", "/v1/plugins/{plugin_id}", "404")] == 25
    assert counts[("GET", "unmatched", "404")] == 25
    routes = {s.labels["route"] for s in fams["corral_registry_requests"].samples}
    assert not any("acme.p" in r or "nowhere" in r for r in routes)
    hist = fams["corral_registry_request_duration_seconds"]
    count = {s.labels["route"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert count["/v1/plugins/{plugin_id}"] == 25
    inf = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
           and s.labels["route"] == "/v1/health"]
    assert inf[0].value == 1
