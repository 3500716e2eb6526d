"""The micro-plugin manager: registration, introspection, calling, and the janitor thread.

The kinds and shapes it checks handlers against are pure data in
:mod:`corral._model.micro` (re-exported here: ``micro``, ``MicroInfo``, ``Verdict``...).

Rules of the hot path (:meth:`MicroManager.execute`):

* the table of handlers is an immutable snapshot (a plain ``dict``) replaced as
  a whole on every change, so a call never sees a half-applied change;
* a call does one dict lookup, one call and one ``type(out) is cls`` check;
  deeper shape checks (a validator's verdict) run only on the slow path;
* a call holds the snapshot in a local variable, which is what lets a hot swap
  tell, from the snapshot's reference count, when the calls that started on the
  old version have all finished (CPython reference counting; no per-call
  bookkeeping);
* ``max-ms`` is watched by one janitor thread that samples running frames, so
  an in-process call pays nothing for it: a call seen running past its limit
  has its result abandoned (the call fails with :class:`PluginTimeout`) and the
  micro-plugin is moved to a worker thread, so later callers return on time.
  Handlers declared ``blocking=True`` and async handlers run on a worker thread
  from the start.  Sandboxed micro-plugins are called through the host's
  ``invoke``, which enforces the limit by stopping the worker.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol, final

from corral._errors import (
    CorralError,
    InvalidPluginError,
    NotFoundError,
    PluginError,
    PluginTimeout,
    UsageError,
)
from corral._model.micro import (
    EXACT_CLASS,
    JSON_TYPES,
    KINDS,
    MARK,
    MICRO_MAX_MS,
    F,
    MicroInfo,
    Verdict,
    annotated_types,
    as_verdict,
    declared_type,
    fits,
    kind_shape,
    micro,
    shape_problem,
)
from corral._runtime.blame import plugin_frames, thread_stack
from corral._services.micro.swap import Drains, SwapTicket

__all__ = [
    "JSON_TYPES",
    "KINDS",
    "Entry",
    "Invoke",
    "MicroInfo",
    "MicroManager",
    "SwapTicket",
    "Verdict",
    "call_error",
    "fits",
    "micro",
    "timeout_error",
    "watch_code",
]

#: One table entry: (handler, ctx or None, exact output class or None, info).
#: ``ctx`` None means ``handler(input)``; otherwise ``handler(input, ctx)``.
Entry = tuple[Callable[..., Any], Any, "builtins.type | None", MicroInfo]


class Invoke(Protocol):
    """The host's way to run a micro-plugin at its plugin's isolation level."""

    def __call__(self, micro_id: str, input: Any, /) -> Any: ...


@final
class _Threaded:
    """Runs a handler on a worker thread and gives up after ``max-ms``."""

    __slots__ = ("ctx", "fn", "info", "is_async")

    def __init__(self, fn: Callable[..., Any], ctx: Any, info: MicroInfo) -> None:
        self.fn = fn
        self.ctx = ctx
        self.info = info
        self.is_async = inspect.iscoroutinefunction(fn)

    def __call__(self, value: Any) -> Any:
        result: list[Any] = []
        error: list[BaseException] = []
        fn, ctx = self.fn, self.ctx
        is_async = self.is_async

        def run() -> None:
            try:
                out = fn(value) if ctx is None else fn(value, ctx)
                if is_async:
                    import asyncio  # deferred: ~100 ms to import, needed only by async handlers

                    out = asyncio.run(out)
                result.append(out)
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)

        thread = threading.Thread(target=run, name=f"corral-micro-{self.info.id}", daemon=True)
        thread.start()
        thread.join(self.info.max_ms / 1000)
        if thread.is_alive():
            err = timeout_error(self.info)
            plugin_dir = getattr(ctx, "paths", {}).get("plugin")
            if isinstance(plugin_dir, str):  # hang blame: where the abandoned thread is
                err.details["blame"] = plugin_frames(thread_stack(thread.ident), plugin_dir)
            raise err
        if error:
            raise error[0]
        return result[0]


@final
class _Seen:
    """A call the janitor has seen running: seconds counted so far, and whose it is."""

    __slots__ = ("elapsed", "info")

    def __init__(self, elapsed: float, info: MicroInfo) -> None:
        self.elapsed = elapsed
        self.info = info


def _with_none(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        return fn(value, None)

    return call


def timeout_error(info: MicroInfo) -> PluginTimeout:
    """The error of a call to ``info`` abandoned after its ``max-ms``."""
    return PluginTimeout(
        f"micro-plugin {info.id} did not finish within its limit of {info.max_ms} ms; "
        "the result is abandoned",
        plugin_id=info.plugin_id,
        micro=info.id,
        limit="max-ms",
        limit_ms=info.max_ms,
    )


def call_error(info: MicroInfo, exc: BaseException) -> CorralError:
    """The error a call to ``info`` fails with when its handler raised ``exc``."""
    if isinstance(exc, CorralError):
        return exc
    return PluginError(
        f"micro-plugin {info.id} raised {builtins.type(exc).__name__}: {exc}",
        plugin_id=info.plugin_id,
        micro=info.id,
        exception=builtins.type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
    )


@final
class MicroManager:
    """Registers, swaps and runs micro-plugins; safe to use from many threads.

    Works on its own (register plain functions) or fed by the host (handlers
    that run at their plugin's isolation level through ``invoke``).
    """

    def __init__(self, *, watch_interval: float | None = None) -> None:
        """:param watch_interval: seconds between janitor ticks (default: from the limits)."""
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        #: micro id -> (plugin id, why it was left out): a plugin's micro-plugins that were
        #: refused while the rest of its set was offered (``register_plugin(partial=True)``)
        self._refused: dict[str, tuple[str, CorralError]] = {}
        #: (version number, table): replaced as a whole on every change, never mutated;
        #: compositions read it once per run.  Read-only outside the manager.
        self.snapshot: tuple[int, dict[str, Entry]] = (0, self._entries)
        #: (thread id, micro id) -> (frame, info), set by the janitor for calls past their
        #: limit; empty almost always, so a caller tests it before :meth:`check_overran`.
        self.overran: dict[tuple[int, str], tuple[types.FrameType, MicroInfo]] = {}
        self._drains = Drains()
        self._watch_interval = watch_interval
        self._janitor: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    # -- registration -------------------------------------------------------

    def micro(self, **options: Any) -> Callable[[F], F]:
        """Decorator: mark and register at once (same options as :func:`micro`)."""

        def mark(fn: F) -> F:
            micro(**options)(fn)
            self.register(fn)
            return fn

        return mark

    def prepare(
        self,
        handler: Callable[..., Any] | None = None,
        *,
        id: str | None = None,
        type: str | None = None,
        max_ms: int | None = None,
        input: str | Any = None,
        output: str | Any = None,
        version: str | None = None,
        blocking: bool | None = None,
        ctx: Any = None,
        invoke: Invoke | None = None,
        plugin_id: str | None = None,
        description: str | None = None,
    ) -> Entry:
        """Check a handler and build its table entry without installing it."""
        marked: dict[str, Any] = dict(getattr(handler, MARK, None) or {})

        def pick(name: str, given: Any, default: Any) -> Any:
            if given is not None:
                return given
            return marked.get(name) if marked.get(name) is not None else default

        micro_id = pick("id", id, None)
        kind = pick("type", type, None)
        if not isinstance(micro_id, str) or not micro_id:
            raise UsageError("a micro-plugin needs an id (a non-empty string)", key="id")
        if kind is None:
            raise UsageError(f"micro-plugin {micro_id}: needs a type ({', '.join(KINDS)})",
                             key="type", micro=micro_id)
        limit = pick("max_ms", max_ms, MICRO_MAX_MS[2])
        if builtins.type(limit) is not int or not MICRO_MAX_MS[0] <= limit <= MICRO_MAX_MS[1]:
            raise InvalidPluginError(
                f"micro-plugin {micro_id}: max-ms must be an integer in "
                f"{MICRO_MAX_MS[0]}..{MICRO_MAX_MS[1]}, got {limit!r}",
                key="max-ms", micro=micro_id,
            )
        if (handler is None) == (invoke is None):
            raise UsageError(f"micro-plugin {micro_id}: give a handler or an invoke, not both",
                             micro=micro_id)
        decl_in, decl_out = ("any", "any")
        if handler is not None:
            if not callable(handler):
                raise InvalidPluginError(f"micro-plugin {micro_id}: handler is not callable",
                                         micro=micro_id)
            decl_in, decl_out = annotated_types(handler, micro_id)
        d_in, d_out = pick("input", input, None), pick("output", output, None)
        if d_in is not None:
            decl_in = declared_type(d_in, "input", micro_id)
        if d_out is not None:
            decl_out = declared_type(d_out, "output", micro_id)
        shape_in, shape_out = kind_shape(kind, micro_id, decl_in, decl_out)
        is_blocking = bool(pick("blocking", blocking, False))
        if invoke is not None:
            mode = "invoke"
        elif is_blocking or inspect.iscoroutinefunction(handler):
            mode = "thread"
        else:
            mode = "inline"
        info = MicroInfo(
            id=micro_id, type=kind, input=shape_in, output=shape_out, max_ms=limit,
            version=str(pick("version", version, "1")), plugin_id=plugin_id, mode=mode,
            description=pick("description", description, ""),
        )
        if invoke is not None:
            inv = invoke

            def via_host(value: Any) -> Any:
                return inv(micro_id, value)

            return (via_host, None, EXACT_CLASS[shape_out], info)
        assert handler is not None
        if mode == "thread":
            return (_Threaded(handler, ctx, info), None, EXACT_CLASS[shape_out], info)
        return (handler, ctx, EXACT_CLASS[shape_out], info)

    def register(self, handler: Callable[..., Any] | None = None, **options: Any) -> MicroInfo:
        """Add one micro-plugin; an id already registered is refused (use :meth:`swap`).

        :raises InvalidPluginError: its declared shape does not fit its kind.
        :raises UsageError: the id is taken, or the options make no sense.
        """
        entry = self.prepare(handler, **options)
        with self._lock:
            if entry[3].id in self._entries:
                raise UsageError(
                    f"micro-plugin {entry[3].id} is already registered; swap it to replace it",
                    micro=entry[3].id,
                )
            self._install({entry[3].id: entry}, (), None)
        return entry[3]

    def register_plugin(
        self,
        plugin_id: str,
        micros: Iterable[Any],
        *,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        invoke: Invoke | None = None,
        ctx: Any = None,
        version: str = "1",
        on_drained: Callable[[tuple[MicroInfo, ...]], None] | None = None,
        partial: bool = False,
    ) -> SwapTicket:
        """Install (or atomically replace) every micro-plugin of one plugin.

        ``micros`` are ``[[micro]]`` entries (objects with ``id``, ``type``,
        ``max_ms``, ``description``).  In-process plugins pass the resolved
        ``functions`` (by micro id) and their ``ctx``; sandboxed ones pass the
        host's ``invoke``.  Micro-plugins the plugin no longer declares are removed.
        With ``partial``, a micro-plugin whose handler is refused is left out and
        the others are installed; running or chaining it raises why (:meth:`refusal`).
        """
        entries: dict[str, Entry] = {}
        refused: dict[str, tuple[str, CorralError]] = {}
        for m in micros:
            try:
                entries[m.id] = self._plugin_entry(plugin_id, m, functions, invoke, ctx,
                                                   version)
            except InvalidPluginError as exc:
                if not partial:
                    raise
                refused[m.id] = (plugin_id, exc)
        with self._lock:
            for mid in entries:
                old = self._entries.get(mid)
                if old is not None and old[3].plugin_id != plugin_id:
                    raise UsageError(f"micro-plugin {mid} already belongs to "
                                     f"{old[3].plugin_id or 'the host'}", micro=mid)
            gone = tuple(mid for mid, e in self._entries.items()
                         if e[3].plugin_id == plugin_id and mid not in entries)
            self._forget_refused(plugin_id)
            self._refused.update(refused)
            return self._install(entries, gone, on_drained)

    def _plugin_entry(self, plugin_id: str, m: Any,
                      functions: Mapping[str, Callable[..., Any]] | None,
                      invoke: Invoke | None, ctx: Any, version: str) -> Entry:
        """The table entry of one ``[[micro]]`` of a plugin."""
        if invoke is not None:
            return self.prepare(None, id=m.id, type=m.type, max_ms=m.max_ms, invoke=invoke,
                                plugin_id=plugin_id, version=version,
                                description=getattr(m, "description", ""))
        fn = (functions or {}).get(m.id)
        if fn is None:
            raise InvalidPluginError(f"{plugin_id}: micro {m.id} has no handler",
                                     plugin_id=plugin_id, micro=m.id)
        if ctx is None:  # handlers are f(input, ctx) whatever ctx is
            fn = _with_none(fn)
        return self.prepare(fn, id=m.id, type=m.type, max_ms=m.max_ms, ctx=ctx,
                            plugin_id=plugin_id, version=version,
                            description=getattr(m, "description", ""))

    def _forget_refused(self, plugin_id: str) -> None:
        for mid in [mid for mid, (pid, _) in self._refused.items() if pid == plugin_id]:
            del self._refused[mid]

    def refusal(self, micro_id: str) -> CorralError | None:
        """Why a plugin's micro-plugin ``micro_id`` was left out, or ``None``."""
        found = self._refused.get(micro_id)
        return None if found is None else found[1]

    def swap(
        self,
        *handlers: Callable[..., Any] | Entry,
        on_drained: Callable[[tuple[MicroInfo, ...]], None] | None = None,
        **options: Any,
    ) -> SwapTicket:
        """Replace one or several micro-plugins at once, while calls are in flight.

        Calls already started finish on the old versions; calls starting after
        this returns see only the new ones (all of them, never a mix).
        ``on_drained(old_infos)`` runs once the old versions have no call left.
        Each handler is a marked function (options apply to a single one) or an
        entry from :meth:`prepare`.

        :raises NotFoundError: an id that is not registered.
        """
        entries: dict[str, Entry] = {}
        for h in handlers:
            entry = h if isinstance(h, tuple) else self.prepare(h, **options)
            entries[entry[3].id] = entry
        with self._lock:
            for mid in entries:
                if mid not in self._entries:
                    raise NotFoundError(f"cannot swap micro-plugin {mid}: it is not registered",
                                        micro=mid)
            return self._install(entries, (), on_drained)

    def unregister(self, *micro_ids: str) -> SwapTicket:
        """Remove micro-plugins; calls in flight finish.

        :raises NotFoundError: an id that is not registered.
        """
        with self._lock:
            for mid in micro_ids:
                if mid not in self._entries:
                    raise NotFoundError(f"no micro-plugin {mid!r} to unregister", micro=mid)
            return self._install({}, micro_ids, None)

    def unregister_plugin(
        self,
        plugin_id: str,
        on_drained: Callable[[tuple[MicroInfo, ...]], None] | None = None,
    ) -> SwapTicket:
        """Remove every micro-plugin of ``plugin_id`` (none is fine)."""
        with self._lock:
            self._forget_refused(plugin_id)
            gone = tuple(m for m, e in self._entries.items() if e[3].plugin_id == plugin_id)
            return self._install({}, gone, on_drained)

    def _install(
        self,
        new: Mapping[str, Entry],
        gone: Iterable[str],
        on_drained: Callable[[tuple[MicroInfo, ...]], None] | None,
    ) -> SwapTicket:
        """Publish a new table (caller holds the lock)."""
        if self._closed:
            raise UsageError("the micro-plugin manager is closed")
        old = self._entries
        table = dict(old)
        replaced = [old[mid][3] for mid in new if mid in old]
        for mid in gone:
            replaced.append(table.pop(mid)[3])
        table.update(new)
        self.snapshot = (self.snapshot[0] + 1, table)
        self._entries = table
        ticket = self._drains.retire(old, tuple(replaced), on_drained)
        del old
        self._start_janitor()
        self._wake.set()
        return ticket

    # -- introspection --------------------------------------------------------

    def list(self, kind: str | None = None) -> builtins.list[MicroInfo]:
        """Registered micro-plugins, by id."""
        entries = self._entries
        return [e[3] for _, e in sorted(entries.items()) if kind is None or e[3].type == kind]

    def get(self, micro_id: str) -> MicroInfo:
        """One micro-plugin's info.

        :raises NotFoundError: unknown id.
        """
        entry = self._entries.get(micro_id)
        if entry is None:
            raise self._not_found(micro_id)
        return entry[3]

    def __contains__(self, micro_id: object) -> bool:
        return micro_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def version(self) -> int:
        """Bumped on every change to the table."""
        return self.snapshot[0]

    def _not_found(self, micro_id: str) -> CorralError:
        refused = self.refusal(micro_id)
        if refused is not None:
            return refused
        known = sorted(self._entries)
        close = difflib.get_close_matches(micro_id, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return NotFoundError(f"no micro-plugin {micro_id!r}{hint}", micro=micro_id)

    # -- calling --------------------------------------------------------------

    def execute(self, micro_id: str, input: Any = None) -> Any:
        """Run one micro-plugin and return its output.

        :raises NotFoundError: unknown id.
        :raises PluginError: it raised, or returned the wrong shape (named).
        :raises PluginTimeout: it ran past ``max-ms``.
        """
        # The body of execute_in, inlined: one frame is half the dispatch budget.
        entries = self._entries  # held while running: marks this call in flight
        try:
            fn, ctx, out_cls, info = entries[micro_id]
        except KeyError:
            raise self._not_found(micro_id) from None
        try:
            out = fn(input) if ctx is None else fn(input, ctx)
        except Exception as exc:
            entries = None  # type: ignore[assignment]  # a traceback must not pin the table
            raise call_error(info, exc) from exc
        if self.overran:
            self.check_overran(info)
        if out_cls is not type(out) and out_cls is not None:
            return self.check_output(info, out)
        return out

    def execute_in(self, entries: Mapping[str, Entry], micro_id: str, value: Any) -> Any:
        """Run one micro-plugin from a given snapshot (compositions)."""
        try:
            fn, ctx, out_cls, info = entries[micro_id]
        except KeyError:
            raise self._not_found(micro_id) from None
        try:
            out = fn(value) if ctx is None else fn(value, ctx)
        except Exception as exc:
            entries = None  # type: ignore[assignment]  # a traceback must not pin the table
            raise call_error(info, exc) from exc
        if self.overran:
            self.check_overran(info)
        if out_cls is not type(out) and out_cls is not None:
            return self.check_output(info, out)
        return out

    def check_output(self, info: MicroInfo, out: Any) -> Any:
        """Slow output check: ``out`` did not match the exact class of its shape.

        A validator's ``True``/``False`` comes back as the verdict it means.
        """
        if info.output == "verdict" and type(out) is bool:
            return as_verdict(out)
        if info.output == "verdict" and type(out) is dict:
            reasons = out.get("reasons")
            if type(out.get("valid")) is bool and type(reasons) is list:
                for r in reasons:
                    if type(r) is not str:
                        break
                else:
                    return out
        problem = shape_problem(info.output, out)
        if problem is None:
            return out
        raise PluginError(
            f"micro-plugin {info.id} ({info.type}) returned the wrong shape: {problem}",
            plugin_id=info.plugin_id,
            micro=info.id,
            expected=info.output,
        )

    def check_overran(self, info: MicroInfo) -> None:
        """Raise if the janitor flagged the calling frame's call as past its limit."""
        key = (threading.get_ident(), info.id)
        hit = self.overran.get(key)
        if hit is not None and hit[0] is sys._getframe(1):
            del self.overran[key]
            raise timeout_error(hit[1])

    # -- janitor: limits and draining -------------------------------------------

    def _start_janitor(self) -> None:
        if self._janitor is None:
            self._janitor = threading.Thread(target=self._run_janitor, name="corral-micro-janitor",
                                             daemon=True)
            self._janitor.start()

    def _interval(self) -> float:
        if self._watch_interval is not None:
            return self._watch_interval
        limits = [e[3].max_ms for e in self._entries.values() if e[3].mode == "inline"]
        if not limits:
            return 0.05
        return min(max(min(limits) / 4000, 0.002), 0.025)

    def _run_janitor(self) -> None:
        seen: dict[tuple[Any, ...], _Seen] = {}
        last = time.monotonic()
        while not self._closed:
            interval = self._interval()
            self._wake.wait(interval)
            self._wake.clear()
            if self._closed:
                break
            now = time.monotonic()
            # A tick that came late means the process was starved (CPU or GIL); the watched
            # threads were starved too, so only a normal tick's worth of time is counted.
            credit, last = min(now - last, 2 * interval), now
            try:
                self._watch(seen, credit)
                self._drains.check()
            except Exception:  # noqa: S112 - the janitor must outlive any surprise
                continue

    def _watch(self, seen: dict[tuple[Any, ...], _Seen], credit: float) -> None:
        """Find inline calls running past their limit; abandon them and demote the handler.

        A call is keyed by its frame object (held while it runs, so that its id
        cannot be reused), the micro id and, in a chain, the step.
        """
        codes = _WATCHED_CODES
        entries = self._entries
        live: set[tuple[Any, ...]] = set()
        running: set[types.FrameType] = set()
        me = threading.get_ident()
        for tid, top in sys._current_frames().items():
            if tid == me:
                continue
            f: types.FrameType | None = top
            while f is not None:
                if f.f_code in codes:
                    running.add(f)
                    local = f.f_locals
                    mid = local.get("micro_id")
                    # The call's own version (its ``info`` local, once looked up), not the
                    # table's: a call started before a swap keeps its old limit.
                    own = local.get("info")
                    if not (isinstance(own, MicroInfo) and own.id == mid):
                        entry = entries.get(mid) if isinstance(mid, str) else None
                        own = entry[3] if entry is not None else None
                    if own is not None and own.mode == "inline":
                        key = (f, mid, local.get("where"))
                        live.add(key)
                        state = seen.get(key)
                        if state is None:
                            state = seen[key] = _Seen(-credit, own)
                        state.elapsed += credit
                        info = state.info
                        if state.elapsed >= 0 and state.elapsed * 1000 > info.max_ms:
                            self.overran[(tid, info.id)] = (f, info)
                            state.elapsed = -1e9  # flagged once
                            self._demote(info)
                    del local
                f = f.f_back
            del top
        for key in [k for k in seen if k not in live]:
            del seen[key]
        for flag, (frame, _) in list(self.overran.items()):
            if frame not in running:  # that call has already returned
                self.overran.pop(flag, None)

    def _demote(self, info: MicroInfo) -> None:
        """Move a slow inline handler to a worker thread so callers return on time."""
        with self._lock:
            entry = self._entries.get(info.id)
            if entry is None or entry[3] is not info:
                return
            fn, ctx, out_cls, _ = entry
            slow = replace(info, mode="thread")
            table = dict(self._entries)
            table[info.id] = (_Threaded(fn, ctx, slow), None, out_cls, slow)
            self.snapshot = (self.snapshot[0] + 1, table)
            self._entries = table

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every replaced version has drained; False on timeout."""
        return self._drains.wait(timeout)

    def close(self) -> None:
        """Stop the janitor thread; the manager refuses changes afterwards."""
        self._drains.check()
        self._closed = True
        self._wake.set()
        if self._janitor is not None and self._janitor is not threading.current_thread():
            self._janitor.join(1)

    def __enter__(self) -> MicroManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Code objects of the frames that run handlers inline (compositions add theirs with
#: :func:`watch_code`); the janitor reads ``micro_id`` from these frames' locals.
_WATCHED_CODES: set[types.CodeType] = {MicroManager.execute.__code__,
                                       MicroManager.execute_in.__code__}


def watch_code(code: types.CodeType) -> None:
    """Have the janitor watch frames of ``code`` for ``max-ms``.

    Such a frame runs handlers inline and keeps the running handler's id in a
    local named ``micro_id`` (and, in a chain, the step in ``where``).
    """
    _WATCHED_CODES.add(code)
