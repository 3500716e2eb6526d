"""Quotas over time, counted per plugin: calls per minute, CPU seconds per hour and day, events.

Each window is a sliding-window counter (this fixed window and the previous one,
the previous weighted by how much of it the sliding window still covers): two
floats and a clock read per check, cheap enough for ``Host.call``'s fast path.
CPU seconds are written to the host database (``quota_usage``) as deltas at most
every :data:`FLUSH_EVERY_S`, so a restarted host, or another process of the same
home, starts from what was used.  The limits come from the manifest's
``[quotas]``, overridden by ``[quotas."ID"]`` in the home's ``settings.toml``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._disk.settings import SETTINGS_FILE, read_settings
from corral._errors import CorralError, ManifestError, QuotaExceeded
from corral._model.manifest import LIMITS, check_id
from corral._model.quotas import BYTE_QUOTAS, QUOTAS, check_quota_table, window_name
from corral._runtime.budgets import MIB

if TYPE_CHECKING:
    from corral._model.manifest import Manifest, Sandbox
    from corral._runtime.activation import Active
    from corral._runtime.budgets import Budgets
    from corral._runtime.database import HostDatabase

__all__ = [
    "BYTE_BOUNDS",
    "FLUSH_EVERY_S",
    "Meter",
    "QuotaBook",
    "Window",
    "calls_in_window",
    "effective_quotas",
    "quota_report",
    "settings_quotas",
    "usage_from_db",
]

#: CPU usage reaches the host database at most this often (and when the host closes).
FLUSH_EVERY_S: Final = 5.0
_CPU_KEYS: Final = ("cpu-seconds-per-hour", "cpu-seconds-per-day")
#: Bounds of the byte quotas the settings may set (those of the ``[sandbox]`` budgets).
BYTE_BOUNDS: Final = {key: LIMITS[key][:2] for key in BYTE_QUOTAS}
_TABLE: Final = """
CREATE TABLE IF NOT EXISTS quota_usage (
    plugin_id TEXT NOT NULL,
    quota TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    used REAL NOT NULL,
    PRIMARY KEY (plugin_id, quota, window_start)
)"""
_clock: Final = time.time


@final
class Window:
    """One quota's sliding-window counter (wall-clock windows, so they survive a restart)."""

    __slots__ = ("cur", "end", "key", "limit", "plugin_id", "prev", "span", "unit", "unsaved")

    def __init__(self, plugin_id: str, key: str, limit: int | None) -> None:
        rule = QUOTAS[key]
        assert rule.window is not None
        self.plugin_id = plugin_id
        self.key = key
        self.span: Final = float(rule.window)
        self.unit = rule.unit
        #: The cap, or ``None``: counted, never refused.
        self.limit = limit
        self.end = 0.0
        self.cur = 0.0
        self.prev = 0.0
        #: Not yet written: window start -> amount.
        self.unsaved: dict[int, float] = {}

    def roll(self, now: float) -> None:
        """Move to the window holding ``now``."""
        start = now - now % self.span
        if start + self.span == self.end:
            return
        self.prev = self.cur if start == self.end else 0.0
        self.cur = 0.0
        self.end = start + self.span

    def used(self, now: float) -> float:
        """What the sliding window ending at ``now`` holds."""
        if now >= self.end:
            self.roll(now)
        return self.prev * (self.end - now) / self.span + self.cur

    def add(self, amount: float, now: float) -> None:
        """Count ``amount`` at ``now`` (kept for the database too when ``track``)."""
        if now >= self.end:
            self.roll(now)
        self.cur += amount
        start = int(self.end - self.span)
        self.unsaved[start] = self.unsaved.get(start, 0.0) + amount

    def exceeded(self, used: float, now: float) -> QuotaExceeded:
        """The error for this quota, reached with ``used`` in the window ending at ``now``."""
        assert self.limit is not None
        span = window_name(int(self.span))
        shown = round(used, 3) if self.unit == "cpu-seconds" else int(used)
        return QuotaExceeded(
            f"{self.plugin_id}: {self.key}: {shown} {self.unit} in the last {span} "
            f"of {self.limit} allowed",
            plugin_id=self.plugin_id, limit=self.key, quota=self.limit, measured=shown,
            window=int(self.span), unit=self.unit,
        )

    def check(self, now: float) -> None:
        """Refuse while the window holds its cap or more."""
        if self.limit is not None:
            used = self.used(now)
            if used >= self.limit:
                raise self.exceeded(used, now)


@final
class Meter:
    """One plugin's quotas over time, as this process counts them."""

    __slots__ = ("after_charge", "calls", "cpu", "cpu_weight", "events", "limits", "plugin_id")

    def __init__(self, plugin_id: str, limits: Mapping[str, tuple[int | None, str]]) -> None:
        self.plugin_id = plugin_id
        #: key -> (value, source), every key of :data:`QUOTAS` and the byte quotas.
        self.limits = dict(limits)
        calls = limits["calls-per-minute"][0]
        events = limits["events-per-second"][0]
        #: ``None`` unless limited: the fast path tests only this.
        self.calls = Window(plugin_id, "calls-per-minute", calls) if calls else None
        self.events = Window(plugin_id, "events-per-second", events) if events else None
        #: Always counted, so the usage is there when a limit is set later.
        self.cpu = tuple(Window(plugin_id, key, limits[key][0]) for key in _CPU_KEYS)
        self.cpu_weight = int(limits["cpu-weight"][0] or QUOTAS["cpu-weight"].default or 100)
        #: Called after CPU is counted (the book writes it out now and then).
        self.after_charge: Callable[[], None] | None = None

    @property
    def limits_cpu(self) -> bool:
        """Whether a CPU quota is set (the in-process path then measures thread CPU time)."""
        return any(w.limit is not None for w in self.cpu)

    def take_call(self) -> None:
        """Count one call, refused (nothing counted) at ``calls-per-minute``."""
        w = self.calls
        if w is None:
            return
        now = _clock()
        if now >= w.end:
            w.roll(now)
        used = w.prev * (w.end - now) / w.span + w.cur
        if used >= w.limit:  # type: ignore[operator]  # a Window in ``calls`` has a limit
            raise w.exceeded(used, now)
        w.cur += 1.0

    def before_call(self) -> None:
        """Refuse a call at ``calls-per-minute`` or a spent CPU quota; else count it."""
        now = _clock()
        for w in self.cpu:
            w.check(now)
        self.take_call()

    def charge_cpu(self, seconds: float) -> None:
        """Count ``seconds`` of CPU a finished call used."""
        if seconds > 0:
            now = _clock()
            for w in self.cpu:
                w.add(seconds, now)
            if self.after_charge is not None:
                self.after_charge()

    def take_event(self) -> None:
        """Count one published event, refused (nothing counted) at ``events-per-second``."""
        w = self.events
        if w is None:
            return
        now = _clock()
        used = w.used(now)
        if used >= w.limit:  # type: ignore[operator]
            raise w.exceeded(used, now)
        w.cur += 1.0

    def wrap(self, fn: Callable[..., Any], *, is_async: bool = False) -> Callable[..., Any]:
        """``fn`` (an in-process export) counted against this meter's call and CPU quotas.

        Only the calls are counted for an async export; its CPU quota is checked before.
        """
        w = self.calls
        if w is not None and not self.limits_cpu:
            clock, limit = _clock, w.limit

            def counted(input: Any, ctx: Any) -> Any:  # take_call, inline: a frame less
                now = clock()
                if now >= w.end:
                    w.roll(now)
                used = w.prev * (w.end - now) / w.span + w.cur
                if used >= limit:  # type: ignore[operator]
                    raise w.exceeded(used, now)
                w.cur += 1.0
                return fn(input, ctx)

            return counted
        if is_async:
            before = self.before_call

            def checked(input: Any, ctx: Any) -> Any:
                before()
                return fn(input, ctx)

            return checked
        before, charge, cpu = self.before_call, self.charge_cpu, time.thread_time

        def measured(input: Any, ctx: Any) -> Any:
            before()
            t0 = cpu()
            try:
                return fn(input, ctx)
            finally:
                charge(cpu() - t0)

        return measured

    def usage(self) -> dict[str, float | None]:
        """What each windowed quota holds now, as this process counts it."""
        now = _clock()
        out: dict[str, float | None] = {}
        for key, w in (("calls-per-minute", self.calls), ("events-per-second", self.events),
                       *zip(_CPU_KEYS, self.cpu, strict=True)):
            out[key] = None if w is None else w.used(now)
        return out


def settings_quotas(doc: Mapping[str, Any], file: str = SETTINGS_FILE) -> dict[str, dict[str, int]]:
    """``[quotas."ID"]`` tables of a settings document: plugin id -> checked values.

    An id written without quotes (``[quotas.acme.notes]``) nests; both spellings are read.

    Raises:
        ManifestError: naming the key at fault (an id that is no plugin id included).
    """
    table = doc.get("quotas", {})
    if not isinstance(table, Mapping):
        raise ManifestError("must be a table of [quotas.\"PLUGIN-ID\"] tables", file=file,
                            key="quotas")
    out: dict[str, dict[str, int]] = {}

    def walk(node: Mapping[str, Any], path: list[str]) -> None:
        scalars = {k: v for k, v in node.items() if not isinstance(v, Mapping)}
        if scalars:
            if not path:
                first = next(iter(scalars))
                raise ManifestError(
                    'a quota belongs to a plugin: put it under [quotas."PLUGIN-ID"]',
                    file=file, key=f"quotas.{first}")
            pid = ".".join(path)
            try:
                check_id(pid, what="plugin id in [quotas]", file=file)
            except CorralError:
                raise ManifestError(f"{pid!r} is not a plugin id", file=file,
                                    key=f'quotas."{pid}"') from None
            out[pid] = check_quota_table(scalars, f'quotas."{pid}"', file=file,
                                         bounds=BYTE_BOUNDS)
        for k, v in node.items():
            if isinstance(v, Mapping):
                walk(v, [*path, str(k)])

    walk(table, [])
    return out


def effective_quotas(manifest: Manifest, overrides: Mapping[str, int] | None
                     ) -> dict[str, tuple[int | None, str]]:
    """Each quota of a plugin: ``(value, source)``, source ``settings``, ``manifest`` or
    ``default``; the byte quotas come from the manifest's ``[sandbox]`` budgets.
    """
    over = overrides or {}
    out: dict[str, tuple[int | None, str]] = {}
    for key, rule in QUOTAS.items():
        if key in over:
            out[key] = (over[key], "settings")
        elif key in manifest.quotas:
            out[key] = (manifest.quotas[key], "manifest")
        else:
            out[key] = (rule.default, "default")
    for key in BYTE_QUOTAS:
        if key in over:
            out[key] = (over[key], "settings")
        else:
            declared = key in _declared_sandbox(manifest)
            out[key] = (manifest.sandbox.limit(key), "manifest" if declared else "default")
    return out


def _declared_sandbox(manifest: Manifest) -> set[str]:
    """The ``[sandbox]`` keys whose value differs from the default (what the author set)."""
    return {key for key in BYTE_QUOTAS if manifest.sandbox.limit(key) != LIMITS[key][2]}


def usage_from_db(db: HostDatabase, plugin_id: str, now: float | None = None
                  ) -> dict[str, float]:
    """CPU seconds in each CPU window as written to the host database (every process's)."""
    now = _clock() if now is None else now
    out: dict[str, float] = {}
    with db.transaction() as conn:  # the table may not exist yet: made here, in one step
        conn.execute(_TABLE)
        for key in _CPU_KEYS:
            w = Window(plugin_id, key, None)
            w.roll(now)
            start = int(w.end - w.span)
            rows = dict(conn.execute(
                "SELECT window_start, used FROM quota_usage WHERE plugin_id = ? AND quota = ? "
                "AND window_start IN (?, ?)", (plugin_id, key, start, start - int(w.span)),
            ).fetchall())
            w.cur, w.prev = float(rows.get(start, 0.0)), float(rows.get(start - int(w.span), 0.0))
            out[key] = w.used(now)
    return out


@final
class QuotaBook:
    """The meters of every plugin active in this host, their limits and persisted CPU use."""

    def __init__(self, db: HostDatabase, home: Path, budgets: Budgets | None = None) -> None:
        self.db = db
        self.home = home
        self.budgets = budgets
        self._meters: dict[str, Meter] = {}
        self._lock = threading.Lock()
        self._flushed = _clock()

    def overrides(self) -> dict[str, dict[str, int]]:
        """The home's ``[quotas."ID"]`` settings, checked."""
        return settings_quotas(read_settings(self.home), str(self.home / SETTINGS_FILE))

    def set(self, active: Active) -> Meter:
        """Set up an active plugin's meter (at load): limits resolved, CPU use read back,
        byte quotas of the settings applied to its budgets.
        """
        manifest = active.manifest
        pid = manifest.id
        limits = effective_quotas(manifest, self.overrides().get(pid))
        meter = Meter(pid, limits)
        with self._lock:
            old = self._meters.get(pid)
        if old is not None:
            self._save(old)
        used = self._read(pid)
        now = _clock()
        for w in meter.cpu:
            w.roll(now)
            start = int(w.end - w.span)
            w.cur = used.get((w.key, start), 0.0)
            w.prev = used.get((w.key, start - int(w.span)), 0.0)
        if meter.calls is not None:  # this process's calls of the last minute still count
            self._seed_calls(meter.calls, pid, now)
        self._apply_bytes(active, limits)
        meter.after_charge = self.maybe_flush
        active.quota = meter
        with self._lock:
            self._meters[pid] = meter
        return meter

    def _seed_calls(self, w: Window, plugin_id: str, now: float) -> None:
        """Start from the calls already made: this process's, else those recorded (so a
        one-shot ``corral call`` process cannot start every minute afresh).
        """
        if (old := self._meters.get(plugin_id)) and old.calls is not None:
            w.cur, w.prev, w.end = old.calls.cur, old.calls.prev, old.calls.end
            w.roll(now)
            return
        w.roll(now)
        start = w.end - w.span
        with self.db.transaction() as conn:
            cur, prev = conn.execute(
                "SELECT coalesce(sum(at >= ?), 0), coalesce(sum(at < ?), 0) FROM calls "
                "WHERE plugin_id = ? AND at >= ?",
                (start, start, plugin_id, start - w.span)).fetchone()
        w.cur, w.prev = float(cur), float(prev)

    def _apply_bytes(self, active: Active, limits: Mapping[str, tuple[int | None, str]]) -> None:
        """Settings' ``cache-mb`` and ``state-mb`` replace the manifest's budgets."""
        sandbox: Sandbox = active.manifest.sandbox
        changes: dict[str, Any] = {
            key.replace("-", "_"): value for key, (value, source) in limits.items()
            if key in BYTE_QUOTAS and source == "settings"}
        if not changes:
            return
        from dataclasses import replace  # only a host with such settings pays for it

        effective = replace(sandbox, **changes)
        if "cache_mb" in changes:
            active.budget.caps["cache-mb"] = effective.cache_mb * MIB
        if self.budgets is not None:
            self.budgets.set(active.manifest.id, effective)

    def meter(self, plugin_id: str | None) -> Meter | None:
        """The meter of an active plugin, or ``None``."""
        return self._meters.get(plugin_id) if plugin_id is not None else None

    def drop(self, plugin_id: str) -> None:
        """Write what a plugin used and forget its meter (it was removed)."""
        with self._lock:
            meter = self._meters.pop(plugin_id, None)
        if meter is not None:
            self._save(meter)

    def maybe_flush(self) -> None:
        """Write the CPU use if it was not written in the last :data:`FLUSH_EVERY_S`."""
        if _clock() - self._flushed >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write every meter's unsaved CPU use to the host database (one transaction)."""
        self._flushed = _clock()
        with self._lock:
            meters = list(self._meters.values())
        rows = []
        for meter in meters:
            rows.extend(self._pending(meter))
        self._write(rows)

    def _save(self, meter: Meter) -> None:
        self._write(self._pending(meter))

    @staticmethod
    def _pending(meter: Meter) -> list[tuple[str, str, int, float]]:
        rows: list[tuple[str, str, int, float]] = []
        for w in meter.cpu:
            unsaved, w.unsaved = w.unsaved, {}
            rows.extend((meter.plugin_id, w.key, start, amount)
                        for start, amount in unsaved.items() if amount)
        return rows

    def _write(self, rows: list[tuple[str, str, int, float]]) -> None:
        if not rows:
            return
        with self.db.transaction() as conn:
            conn.execute(_TABLE)
            conn.executemany(
                "INSERT INTO quota_usage (plugin_id, quota, window_start, used) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (plugin_id, quota, window_start) "
                "DO UPDATE SET used = used + excluded.used", rows)

    def _read(self, plugin_id: str) -> dict[tuple[str, int], float]:
        with self.db.transaction() as conn:
            conn.execute(_TABLE)
            rows = conn.execute(
                "SELECT quota, window_start, used FROM quota_usage WHERE plugin_id = ? "
                "AND window_start >= ?", (plugin_id, int(_clock()) - 2 * 86400),
            ).fetchall()
        return {(q, int(s)): float(u) for q, s, u in rows}


def calls_in_window(db: HostDatabase, plugin_id: str, seconds: int,
                    now: float | None = None) -> int:
    """Calls of ``plugin_id`` recorded in the host database in the last ``seconds``."""
    now = _clock() if now is None else now
    with db.transaction() as conn:
        row = conn.execute("SELECT count(*) FROM calls WHERE plugin_id = ? AND at >= ?",
                           (plugin_id, now - seconds)).fetchone()
    return int(row[0])


def quota_report(
    manifest: Manifest,
    overrides: Mapping[str, int] | None,
    *,
    meter: Meter | None,
    cpu_used: Mapping[str, float],
    calls_used: int,
    bytes_used: Mapping[str, int],
) -> dict[str, dict[str, Any]]:
    """Each quota of a plugin as ``corral quota show`` reports it: ``limit`` (``null``:
    unbounded), ``window`` (seconds, ``null`` for none), ``unit``, ``used`` (``null`` where
    this process cannot know it) and ``source`` (``settings``, ``manifest`` or ``default``).

    ``meter`` gives live counts when the plugin is active in this process; otherwise calls
    come from the recorded metrics and CPU from the host database.
    """
    live = meter.usage() if meter is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for key, (value, source) in effective_quotas(manifest, overrides).items():
        rule = QUOTAS.get(key)
        used: float | int | None
        if key in BYTE_QUOTAS:
            cap = (value or 0) * MIB
            out[key] = {"limit": value, "window": None, "unit": "bytes", "cap": cap,
                        "used": int(bytes_used.get(key, 0)), "source": source}
            continue
        assert rule is not None
        if key in _CPU_KEYS:
            used = round(float(cpu_used.get(key, 0.0)), 3)
        elif key == "calls-per-minute":
            got = live.get(key)
            used = int(got) if got is not None else calls_used
        elif key == "events-per-second":
            got = live.get(key)
            used = None if got is None else int(got)
        else:
            used = None
        out[key] = {"limit": value, "window": rule.window, "unit": rule.unit, "used": used,
                    "source": source}
    return out
