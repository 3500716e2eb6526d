"""Gradual rollout of a new micro-plugin version, with automatic rollback.

A rollout sends a growing share of traffic from the ``stable`` micro-plugin to
the ``canary`` one, by sticky key (Unleash's gradual-rollout bucketing:
``normalized_hash(key, rollout_id) <= percent``), through ``steps`` such as
1, 5, 25, 50, 100 percent.  Every ``interval`` seconds the canary's calls in
the last window are checked, as Flagger's canary analysis does:

* fewer than ``min_calls`` calls: no verdict, wait another interval;
* error rate above ``max_error_rate`` or p99 latency above ``max_p99_ms``:
  a failed check; the share stays where it is; after ``threshold`` failed
  checks the rollout is rolled back to 0 percent;
* otherwise the share advances one step; after the last step the canary is
  promoted (100 percent).

The state (step, share, failed checks, next check time, status) lives in a
SQLite file (``<home>/rollouts.db``) and every decision is one transaction
with its reason in ``rollout_events``, so a restarted host resumes where it
was.  The measurement window itself is in memory: a restart starts a fresh
window.  Time comes from an injectable clock.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._errors import NotFoundError, UsageError
from corral._services.micro.abtest import normalized_hash, percentile

if TYPE_CHECKING:
    from corral._services.micro.manager import MicroManager

__all__ = ["DEFAULT_STEPS", "ROLLOUTS_DB", "Rollout", "RolloutPolicy", "RolloutStatus",
           "RolloutStore"]

ROLLOUTS_DB: Final = "rollouts.db"
DEFAULT_STEPS: Final = (1, 5, 25, 50, 100)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    stable TEXT NOT NULL,
    canary TEXT NOT NULL,
    policy TEXT NOT NULL,
    status TEXT NOT NULL,
    step INTEGER NOT NULL,
    percent INTEGER NOT NULL,
    failed_checks INTEGER NOT NULL,
    next_check_at REAL NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_events (
    seq INTEGER PRIMARY KEY,
    rollout_id TEXT NOT NULL,
    at REAL NOT NULL,
    decision TEXT NOT NULL,
    percent INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_events_by_id ON rollout_events (rollout_id, seq);
"""


class RolloutStatus(enum.Enum):
    """Where a rollout is."""

    #: shifting traffic step by step, checking the canary every interval
    RUNNING = "running"
    #: every step passed: the canary takes all traffic
    PROMOTED = "promoted"
    #: the checks failed ``threshold`` times: all traffic back on stable
    ROLLED_BACK = "rolled_back"
    #: stopped by hand: all traffic back on stable
    ABORTED = "aborted"


@final
@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How a rollout proceeds.  Validated on construction (the field is named)."""

    steps: tuple[int, ...] = DEFAULT_STEPS
    #: seconds between checks
    interval: float = 60.0
    max_error_rate: float = 0.01
    #: None: latency is not checked
    max_p99_ms: float | None = None
    #: failed checks before rollback (Flagger's ``threshold``)
    threshold: int = 3
    #: calls a window needs before it is judged
    min_calls: int = 20

    def __post_init__(self) -> None:
        if not self.steps:
            raise UsageError("rollout steps: give at least one percentage", key="steps")
        for i, p in enumerate(self.steps):
            if type(p) is not int or not 0 <= p <= 100:
                raise UsageError(f"rollout steps[{i}]: a percentage must be an integer in "
                                 f"0..100, got {p!r}", key=f"steps[{i}]")
            if i and p <= self.steps[i - 1]:
                raise UsageError(f"rollout steps[{i}]: steps must increase, got {p} after "
                                 f"{self.steps[i - 1]}", key=f"steps[{i}]")
        if not self.interval > 0:
            raise UsageError(f"rollout interval: must be > 0 seconds, got {self.interval!r}",
                             key="interval")
        if not 0 <= self.max_error_rate <= 1:
            raise UsageError("rollout max-error-rate: must be in 0..1, got "
                             f"{self.max_error_rate!r}", key="max-error-rate")
        if self.max_p99_ms is not None and not self.max_p99_ms > 0:
            raise UsageError(f"rollout max-p99-ms: must be > 0, got {self.max_p99_ms!r}",
                             key="max-p99-ms")
        if type(self.threshold) is not int or self.threshold < 1:
            raise UsageError(f"rollout threshold: must be an integer >= 1, got "
                             f"{self.threshold!r}", key="threshold")
        if type(self.min_calls) is not int or self.min_calls < 1:
            raise UsageError(f"rollout min-calls: must be an integer >= 1, got "
                             f"{self.min_calls!r}", key="min-calls")

    def to_dict(self) -> dict[str, Any]:
        """JSON form, CLI/manifest spelling."""
        return {"steps": list(self.steps), "interval": self.interval,
                "max-error-rate": self.max_error_rate, "max-p99-ms": self.max_p99_ms,
                "threshold": self.threshold, "min-calls": self.min_calls}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutPolicy:
        """Inverse of :meth:`to_dict`."""
        return cls(steps=tuple(data["steps"]), interval=data["interval"],
                   max_error_rate=data["max-error-rate"], max_p99_ms=data["max-p99-ms"],
                   threshold=data["threshold"], min_calls=data["min-calls"])


@final
@dataclass(frozen=True, slots=True)
class _State:
    id: str
    stable: str
    canary: str
    policy: RolloutPolicy
    status: RolloutStatus
    step: int
    percent: int
    failed_checks: int
    next_check_at: float
    started_at: float


@final
class RolloutStore:
    """The rollouts database (SQLite, WAL); each change is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path: Final = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def save(self, state: _State, decision: str, reason: str, at: float) -> None:
        """Write the state and the decision that produced it, atomically."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (state.id, state.stable, state.canary, json.dumps(state.policy.to_dict()),
                 state.status.value, state.step, state.percent, state.failed_checks,
                 state.next_check_at, state.started_at, at),
            )
            db.execute(
                "INSERT INTO rollout_events (rollout_id, at, decision, percent, reason) "
                "VALUES (?,?,?,?,?)",
                (state.id, at, decision, state.percent, reason),
            )

    def load(self, rollout_id: str) -> _State | None:
        """The stored state, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM rollouts WHERE id = ?",
                                   (rollout_id,)).fetchone()
        if row is None:
            return None
        return _State(id=row[0], stable=row[1], canary=row[2],
                      policy=RolloutPolicy.from_dict(json.loads(row[3])),
                      status=RolloutStatus(row[4]), step=row[5], percent=row[6],
                      failed_checks=row[7], next_check_at=row[8], started_at=row[9])

    def ids(self) -> list[str]:
        """Every rollout id, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM rollouts ORDER BY id")]

    def events(self, rollout_id: str) -> list[dict[str, Any]]:
        """Every decision, oldest first: ``{"at", "decision", "percent", "reason"}``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, decision, percent, reason FROM rollout_events WHERE rollout_id = ? "
                "ORDER BY seq", (rollout_id,)).fetchall()
        return [{"at": r[0], "decision": r[1], "percent": r[2], "reason": r[3]} for r in rows]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


@final
class Rollout:
    """One rollout, bound to its store; create with :meth:`start` or :meth:`open`."""

    def __init__(self, store: RolloutStore, state: _State,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()
        self._calls = 0
        self._errors = 0
        self._latencies: list[float] = []

    @classmethod
    def start(cls, store: RolloutStore, rollout_id: str, *, stable: str, canary: str,
              policy: RolloutPolicy | None = None,
              clock: Callable[[], float] = time.time) -> Rollout:
        """Begin a rollout at its first step.

        :raises UsageError: one with that id is still running, or stable is canary.
        """
        policy = policy or RolloutPolicy()
        if not rollout_id:
            raise UsageError("a rollout needs an id", key="id")
        if stable == canary:
            raise UsageError(f"rollout {rollout_id}: stable and canary are both {stable!r}",
                             key="canary")
        old = store.load(rollout_id)
        if old is not None and old.status is RolloutStatus.RUNNING:
            raise UsageError(f"rollout {rollout_id} is already running (at {old.percent}%); "
                             "abort it first", rollout=rollout_id)
        now = clock()
        state = _State(rollout_id, stable, canary, policy, RolloutStatus.RUNNING, 0,
                       policy.steps[0], 0, now + policy.interval, now)
        store.save(state, "start", f"started: {stable} -> {canary}, steps "
                   f"{', '.join(map(str, policy.steps))}% every {policy.interval:g} s", now)
        return cls(store, state, clock)

    @classmethod
    def open(cls, store: RolloutStore, rollout_id: str,
             clock: Callable[[], float] = time.time) -> Rollout:
        """Resume a stored rollout.

        :raises NotFoundError: no rollout by that id.
        """
        state = store.load(rollout_id)
        if state is None:
            raise NotFoundError(f"no rollout {rollout_id!r}", rollout=rollout_id)
        return cls(store, state, clock)

    # -- routing and measuring ------------------------------------------------------

    @property
    def percent(self) -> int:
        """The canary's share of traffic now."""
        return self._state.percent

    @property
    def status(self) -> RolloutStatus:
        """Where the rollout is."""
        return self._state.status

    def route(self, key: str) -> str:
        """The micro id that serves ``key`` now (sticky while the share does not shrink)."""
        st = self._state
        if st.percent > 0 and normalized_hash(key, st.id) <= st.percent:
            return st.canary
        return st.stable

    def record(self, micro_id: str, *, ok: bool, ms: float) -> None:
        """Count one finished call; only the canary's calls are judged."""
        if micro_id != self._state.canary:
            return
        with self._lock:
            self._calls += 1
            if not ok:
                self._errors += 1
            self._latencies.append(ms)

    def call(self, manager: MicroManager, key: str, input: Any = None) -> Any:
        """Route, run on ``manager``, record the outcome; then :meth:`tick`."""
        micro_id = self.route(key)
        start = time.perf_counter()
        try:
            out = manager.execute(micro_id, input)
        except Exception:
            self.record(micro_id, ok=False, ms=(time.perf_counter() - start) * 1000)
            self.tick()
            raise
        self.record(micro_id, ok=True, ms=(time.perf_counter() - start) * 1000)
        self.tick()
        return out

    # -- decisions ----------------------------------------------------------------------

    def tick(self) -> str | None:
        """Judge the window if a check is due; return the decision taken, if any.

        Decisions: ``wait`` (too few calls), ``hold`` (failed check below the
        threshold), ``advance``, ``promote``, ``rollback``.
        """
        st = self._state
        now = self._clock()
        if st.status is not RolloutStatus.RUNNING or now < st.next_check_at:
            return None
        with self._lock:
            st = self._state
            if st.status is not RolloutStatus.RUNNING or now < st.next_check_at:
                return None
            calls, errors, lat = self._calls, self._errors, sorted(self._latencies)
            self._calls, self._errors, self._latencies = 0, 0, []
            decision, state, reason = self._judge(st, now, calls, errors, lat)
            self._store.save(state, decision, reason, now)
            self._state = state
            return decision

    @staticmethod
    def _judge(st: _State, now: float, calls: int, errors: int,
               lat: Sequence[float]) -> tuple[str, _State, str]:
        p = st.policy
        later = now + p.interval
        if calls < p.min_calls:
            return "wait", _replace(st, next_check_at=later), (
                f"not enough data: {calls} canary calls in the window, {p.min_calls} needed")
        rate = errors / calls
        p99 = percentile(lat, 99)
        problems = []
        if rate > p.max_error_rate:
            problems.append(f"error rate {rate:.4g} > {p.max_error_rate:g}")
        if p.max_p99_ms is not None and p99 is not None and p99 > p.max_p99_ms:
            problems.append(f"p99 {p99:.4g} ms > {p.max_p99_ms:g} ms")
        measured = f"{calls} calls, error rate {rate:.4g}" + (
            f", p99 {p99:.4g} ms" if p99 is not None else "")
        if problems:
            failed = st.failed_checks + 1
            if failed >= p.threshold:
                return "rollback", _replace(
                    st, status=RolloutStatus.ROLLED_BACK, percent=0, failed_checks=failed,
                    next_check_at=later,
                ), (f"failed check {failed} of {p.threshold}: {'; '.join(problems)} "
                    f"({measured}); rolled back to 0%")
            return "hold", _replace(st, failed_checks=failed, next_check_at=later), (
                f"failed check {failed} of {p.threshold}: {'; '.join(problems)} ({measured}); "
                f"staying at {st.percent}%")
        step = st.step + 1
        if step >= len(p.steps) or p.steps[st.step] == 100:
            return "promote", _replace(st, status=RolloutStatus.PROMOTED, percent=100,
                                       step=len(p.steps) - 1, next_check_at=later), (
                f"checks passed ({measured}); promoted: {st.canary} takes all traffic")
        return "advance", _replace(st, step=step, percent=p.steps[step], next_check_at=later), (
            f"checks passed ({measured}); {st.percent}% -> {p.steps[step]}%")

    def abort(self, reason: str = "aborted by hand") -> None:
        """Send all traffic back to stable now.

        :raises UsageError: the rollout is not running.
        """
        with self._lock:
            st = self._state
            if st.status is not RolloutStatus.RUNNING:
                raise UsageError(f"rollout {st.id} is {st.status.value}, not running",
                                 rollout=st.id)
            state = _replace(st, status=RolloutStatus.ABORTED, percent=0)
            self._store.save(state, "abort", reason, self._clock())
            self._state = state

    def to_dict(self) -> dict[str, Any]:
        """Status for ``corral rollout status``."""
        st = self._state
        return {"id": st.id, "stable": st.stable, "canary": st.canary,
                "status": st.status.value, "percent": st.percent, "step": st.step,
                "failed_checks": st.failed_checks, "next_check_at": st.next_check_at,
                "started_at": st.started_at, "policy": st.policy.to_dict(),
                "events": self._store.events(st.id)}


def _replace(st: _State, **changes: Any) -> _State:
    from dataclasses import replace

    return replace(st, **changes)
