"""The registry server's ``/metrics``: requests and their latency per route template.

Labels stay bounded: the route is the template a request matched (``/v1/plugins/{plugin_id}``,
never the path itself), or ``unmatched``; the method is one of the HTTP methods or
``OTHER``; the status is the response's code.  Written as Prometheus text by
:mod:`corral._model.exposition`, with no client library.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final, final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral._model.exposition import Family, render

__all__ = ["RequestMetrics", "RequestRecorder"]

#: Latency bucket bounds, in seconds.
BOUNDS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@final
class RequestRecorder:
    """Request counts and latency histograms, by method, route template and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        #: (method, route) -> [count, sum seconds, bucket counts...]
        self._latency: dict[tuple[str, str], list[float]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        with self._lock:
            key = (method, route, str(status))
            self._counts[key] = self._counts.get(key, 0) + 1
            acc = self._latency.get((method, route))
            if acc is None:
                acc = self._latency[(method, route)] = [0.0] * (2 + len(BOUNDS))
            acc[0] += 1
            acc[1] += seconds
            for i, bound in enumerate(BOUNDS):
                if seconds <= bound:
                    acc[2 + i] += 1

    def exposition(self) -> str:
        """Everything recorded so far, as Prometheus text."""
        requests = Family("corral_registry_requests_total", "counter",
                          "HTTP requests answered, by route template and status.")
        latency = Family("corral_registry_request_duration_seconds", "histogram",
                         "Time to answer a request, by route template.")
        with self._lock:
            counts = sorted(self._counts.items())
            lat = sorted((k, list(v)) for k, v in self._latency.items())
        for (method, route, status), n in counts:
            requests.add("", {"method": method, "route": route, "status": status}, n)
        for (method, route), acc in lat:
            labels = {"method": method, "route": route}
            for bound, count in zip(BOUNDS, acc[2:], strict=True):
                latency.add("_bucket", {**labels, "le": repr(bound)}, count)
            latency.add("_bucket", {**labels, "le": "+Inf"}, acc[0])
            latency.add("_sum", labels, acc[1])
            latency.add("_count", labels, acc[0])
        return render([requests, latency])


@final
class RequestMetrics:
    """ASGI middleware timing every HTTP request into a :class:`RequestRecorder`."""

    def __init__(self, app: ASGIApp, recorder: RequestRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None)
            self.recorder.record(
                str(scope.get("method", "")),
                template if isinstance(template, str) else "unmatched",
                status[0],
                time.perf_counter() - start,
            )
