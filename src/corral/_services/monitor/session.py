"""A monitoring session: sample one plugin's calls while a block runs (``Host.monitor``).

A sandboxed plugin's calls are sampled inside its worker (the supervisor asks each
call for its samples); an in-process plugin's by a sampler thread of the host that
reads every thread running the plugin's code.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from corral._sandbox.worker.sampler import Sampler
from corral._services.monitor.profile import ProfileReport

if TYPE_CHECKING:
    from corral._sandbox.rpc import Profile
    from corral._sandbox.supervisor import Supervisor

__all__ = ["DEFAULT_INTERVAL", "monitoring"]

#: Seconds between samples; the interpreter's switch interval (5 ms) bounds how often a
#: sampler thread gets to look at a thread that keeps the CPU busy.
DEFAULT_INTERVAL: Final = 0.005


@contextlib.contextmanager
def monitoring(plugin_id: str, isolation: str, plugin_dir: str,
               supervisor: Callable[[], Supervisor], *,
               interval: float = DEFAULT_INTERVAL) -> Iterator[ProfileReport]:
    """Sample ``plugin_id`` until the block ends; the report is complete after it."""
    report = ProfileReport(plugin_id, isolation, round(interval * 1000.0, 3))
    start = time.perf_counter()
    if isolation == "none":
        sampler = Sampler(plugin_dir, interval=interval)
        sampler.start()
        try:
            yield report
        finally:
            report.add(*sampler.stop())
            report.calls = 0  # one batch from the host's sampler, not one per call
            report.seconds = time.perf_counter() - start
        return
    lock = threading.Lock()

    def sink(msg: Profile) -> None:
        with lock:
            report.add(msg.frames, msg.samples, msg.count)

    sup = supervisor()
    sup.set_profiler(plugin_id, sink, interval)
    try:
        yield report
    finally:
        sup.set_profiler(plugin_id, None)
        report.seconds = time.perf_counter() - start
