"""Micro-plugins: tiny typed handlers, their kinds and shapes, and the manager that runs them.

A micro-plugin is one function of one of six kinds.  Each kind fixes a shape,
checked when the handler is registered (from its annotations, resolved with
:func:`typing.get_type_hints`, or from a declared ``input``/``output`` type),
never discovered while serving:

================  ====================  =========================================
kind              input                 output
================  ====================  =========================================
validator         any                   ``{"valid": bool, "reasons": [str]}``
formatter         any                   ``str``
transformer       declared (or any)     a value of the declared type (or any)
command-enhancer  the command ``dict``  the command ``dict``
hook              any                   ``None`` or anything (ignored)
utility           declared (or any)     declared (or any)
================  ====================  =========================================

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
import inspect
import sys
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypedDict, TypeVar, final

from corral._errors import (
    CorralError,
    InvalidPluginError,
    NotFoundError,
    PluginError,
    PluginTimeout,
    UsageError,
)
from corral._services.micro.swap import Drains, SwapTicket

__all__ = [
    "JSON_TYPES",
    "KINDS",
    "MicroInfo",
    "MicroManager",
    "SwapTicket",
    "Verdict",
    "fits",
    "micro",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The type names a micro-plugin's input and output may declare.
JSON_TYPES: Final = ("any", "null", "bool", "int", "number", "str", "list", "dict", "verdict")
#: The six kinds, as spelled in ``[[micro]]`` ``type``.
KINDS: Final = ("command-enhancer", "validator", "transformer", "formatter", "hook", "utility")

MICRO_MAX_MS: Final = (1, 600_000, 100)
_ATTR: Final = "__corral_micro__"


class Verdict(TypedDict):
    """What a validator returns."""

    valid: bool
    reasons: list[str]


#: kind -> (fixed input type or None if declarable, fixed output type or None if declarable)
_KIND_SHAPES: Final[Mapping[str, tuple[str | None, str | None]]] = types.MappingProxyType(
    {
        "validator": ("any", "verdict"),
        "formatter": ("any", "str"),
        "transformer": (None, None),
        "command-enhancer": ("dict", "dict"),
        "hook": ("any", "any"),
        "utility": (None, None),
    }
)


def fits(out: str, into: str) -> bool:
    """Whether a value declared ``out`` may be passed where ``into`` is expected.

    ``any`` on either side fits (it cannot be proved wrong before running);
    ``int`` fits ``number``; a ``verdict`` is a ``dict``.
    """
    if out == into or "any" in (out, into):
        return True
    if into == "number" and out == "int":
        return True
    return into == "dict" and out == "verdict"


def _py_type_name(hint: Any, where: str, micro_id: str) -> str:
    """Map an annotation to one of :data:`JSON_TYPES`."""
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return "any"
    if hint is None or hint is type(None):
        return "null"
    if hint is Verdict:
        return "verdict"
    simple = {bool: "bool", int: "int", float: "number", str: "str"}
    if hint in simple:
        return simple[hint]
    origin = typing.get_origin(hint) or hint
    if origin in (typing.Union, types.UnionType):
        names = {_py_type_name(a, where, micro_id) for a in typing.get_args(hint)}
        names.discard("null")
        if len(names) == 1:
            return "any"  # Optional[X]: may be null, so nothing narrower can be promised
        return "any"
    if isinstance(origin, type):
        if typing.is_typeddict(origin):
            return "dict"
        if issubclass(origin, (dict, Mapping)):
            return "dict"
        if issubclass(origin, (list, tuple)) or origin is Sequence:
            return "list"
    if origin is Mapping or origin is Sequence:
        return "dict" if origin is Mapping else "list"
    raise InvalidPluginError(
        f"micro-plugin {micro_id}: the {where} annotation {hint!r} is not JSON data "
        f"(use one of {', '.join(JSON_TYPES)})",
        key=where,
        micro=micro_id,
    )


def _declared(value: str | type | Any, where: str, micro_id: str) -> str:
    if isinstance(value, str):
        if value not in JSON_TYPES:
            raise InvalidPluginError(
                f"micro-plugin {micro_id}: {where} type {value!r} is not one of "
                f"{', '.join(JSON_TYPES)}",
                key=where,
                micro=micro_id,
            )
        return value
    return _py_type_name(value, where, micro_id)


def _annotations(fn: Callable[..., Any], micro_id: str) -> tuple[str, str]:
    """The (input, output) type names from ``fn``'s annotations, ``any`` where missing."""
    target = fn
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(fn, "__call__", fn)  # noqa: B004 - a callable object's signature
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise InvalidPluginError(
            f"micro-plugin {micro_id}: cannot resolve its annotations: {exc}", micro=micro_id
        ) from exc
    try:
        params = [
            p for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    in_hint = hints.get(params[0].name, Any) if params else Any
    out_hint = hints.get("return", Any)
    return _py_type_name(in_hint, "input", micro_id), _py_type_name(out_hint, "output", micro_id)


def _shape(kind: str, micro_id: str, declared_in: str, declared_out: str) -> tuple[str, str]:
    """Check declared types against the kind; return the (input, output) shape."""
    if kind not in _KIND_SHAPES:
        raise InvalidPluginError(
            f"micro-plugin {micro_id}: type must be one of {', '.join(KINDS)}, got {kind!r}",
            key="type",
            micro=micro_id,
        )
    fixed_in, fixed_out = _KIND_SHAPES[kind]
    shape_in, shape_out = declared_in, declared_out
    if fixed_in is not None:
        if not fits(fixed_in, declared_in) or (fixed_in != "any" and declared_in not in
                                                (fixed_in, "any")):
            raise InvalidPluginError(
                f"micro-plugin {micro_id} ({kind}) takes {fixed_in}, but its input is "
                f"declared {declared_in}",
                key="input",
                micro=micro_id,
            )
        shape_in = fixed_in if declared_in == "any" else declared_in
    if fixed_out is not None and fixed_out != "any":
        ok = declared_out in ("any", fixed_out) or (
            fixed_out == "verdict" and declared_out == "dict"
        )
        if not ok:
            what = {"verdict": 'a verdict {"valid": bool, "reasons": [str]}'}.get(
                fixed_out, fixed_out
            )
            raise InvalidPluginError(
                f"micro-plugin {micro_id} ({kind}) must return {what}, but its output is "
                f"declared {declared_out}",
                key="output",
                micro=micro_id,
            )
        shape_out = fixed_out
    elif fixed_out == "any":
        shape_out = "any"
    return shape_in, shape_out


@final
@dataclass(frozen=True, slots=True)
class MicroInfo:
    """What the manager knows of one registered micro-plugin (no function inside)."""

    #: dotted id, unique in the manager
    id: str
    #: one of :data:`KINDS`
    type: str
    #: declared input type name (one of :data:`JSON_TYPES`)
    input: str
    #: declared output type name (one of :data:`JSON_TYPES`)
    output: str
    #: wall-clock limit per call, in milliseconds
    max_ms: int = MICRO_MAX_MS[2]
    #: a label for the implementation (a plugin version, "v2", ...)
    version: str = "1"
    #: the plugin it belongs to, if any
    plugin_id: str | None = None
    #: "inline" (caller's thread), "thread" (worker thread), "invoke" (host's isolation)
    mode: str = "inline"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form, manifest spelling."""
        return {
            "id": self.id, "type": self.type, "input": self.input, "output": self.output,
            "max-ms": self.max_ms, "version": self.version, "plugin": self.plugin_id,
            "mode": self.mode, "description": self.description,
        }


def micro(
    *,
    id: str,
    type: str,
    max_ms: int = MICRO_MAX_MS[2],
    input: str | Any = None,
    output: str | Any = None,
    version: str = "1",
    blocking: bool = False,
    description: str = "",
) -> Callable[[F], F]:
    """Mark a function as a micro-plugin; :meth:`MicroManager.register` reads the mark.

    Example::

        @micro(id="acme.text.upper", type="transformer")
        def upper(s: str) -> str:
            return s.upper()

        manager.register(upper)
    """
    options = {"id": id, "type": type, "max_ms": max_ms, "input": input, "output": output,
               "version": version, "blocking": blocking, "description": description}

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, options)
        return fn

    return mark


# One table entry: (handler, ctx or None, exact output class or None, info).
# ``ctx`` None means ``handler(input)``; otherwise ``handler(input, ctx)``.
_Entry = tuple[Callable[..., Any], Any, "builtins.type | None", MicroInfo]


class _Deep:
    """Never the type of a value: forces the slow output check (verdicts, numbers)."""


_EXACT: Final[Mapping[str, builtins.type | None]] = types.MappingProxyType(
    {"any": None, "null": builtins.type(None), "bool": bool, "int": int, "number": _Deep,
     "str": str, "list": list, "dict": dict, "verdict": _Deep}
)


def _shape_problem(shape: str, out: Any) -> str | None:
    """Why ``out`` is not of ``shape``, or None."""
    t = builtins.type(out)
    if shape == "any":
        return None
    if shape == "number":
        return None if t in (int, float) else f"a number expected, got {t.__name__}"
    if shape == "int":
        return None if t is int else f"an int expected, got {t.__name__}"
    if shape == "verdict":
        if t is not dict:
            return f'a verdict {{"valid": bool, "reasons": [str]}} expected, got {t.__name__}'
        if builtins.type(out.get("valid")) is not bool:
            return "a verdict needs 'valid': a bool"
        reasons = out.get("reasons", [])
        if builtins.type(reasons) is not list or any(
            builtins.type(r) is not str for r in reasons
        ):
            return "a verdict's 'reasons' must be a list of strings"
        return None
    cls = _EXACT[shape]
    if t is not cls:
        return f"{shape} expected, got {t.__name__}"
    return None


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
                    import asyncio

                    out = asyncio.run(out)
                result.append(out)
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)

        thread = threading.Thread(target=run, name=f"corral-micro-{self.info.id}", daemon=True)
        thread.start()
        thread.join(self.info.max_ms / 1000)
        if thread.is_alive():
            raise _timeout(self.info)
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


def _timeout(info: MicroInfo) -> PluginTimeout:
    return PluginTimeout(
        f"micro-plugin {info.id} did not finish within its limit of {info.max_ms} ms; "
        "the result is abandoned",
        plugin_id=info.plugin_id,
        micro=info.id,
        limit="max-ms",
        limit_ms=info.max_ms,
    )


def _raised(info: MicroInfo, exc: BaseException) -> CorralError:
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
        self._entries: dict[str, _Entry] = {}
        # (version number, entries): read as one attribute by compositions
        self._state: tuple[int, dict[str, _Entry]] = (0, self._entries)
        # (thread id, micro id) -> info, set by the janitor for calls past their limit
        self._overran: dict[tuple[int, str], tuple[types.FrameType, MicroInfo]] = {}
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
    ) -> _Entry:
        """Check a handler and build its table entry without installing it."""
        marked: dict[str, Any] = dict(getattr(handler, _ATTR, None) or {})

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
            decl_in, decl_out = _annotations(handler, micro_id)
        d_in, d_out = pick("input", input, None), pick("output", output, None)
        if d_in is not None:
            decl_in = _declared(d_in, "input", micro_id)
        if d_out is not None:
            decl_out = _declared(d_out, "output", micro_id)
        shape_in, shape_out = _shape(kind, micro_id, decl_in, decl_out)
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

            return (via_host, None, _EXACT[shape_out], info)
        assert handler is not None
        if mode == "thread":
            return (_Threaded(handler, ctx, info), None, _EXACT[shape_out], info)
        return (handler, ctx, _EXACT[shape_out], info)

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
    ) -> SwapTicket:
        """Install (or atomically replace) every micro-plugin of one plugin.

        ``micros`` are ``[[micro]]`` entries (objects with ``id``, ``type``,
        ``max_ms``, ``description``).  In-process plugins pass the resolved
        ``functions`` (by micro id) and their ``ctx``; sandboxed ones pass the
        host's ``invoke``.  Micro-plugins the plugin no longer declares are removed.
        """
        entries: dict[str, _Entry] = {}
        for m in micros:
            if invoke is not None:
                entry = self.prepare(None, id=m.id, type=m.type, max_ms=m.max_ms, invoke=invoke,
                                     plugin_id=plugin_id, version=version,
                                     description=getattr(m, "description", ""))
            else:
                fn = (functions or {}).get(m.id)
                if fn is None:
                    raise InvalidPluginError(f"{plugin_id}: micro {m.id} has no handler",
                                             plugin_id=plugin_id, micro=m.id)
                if ctx is None:  # handlers are f(input, ctx) whatever ctx is
                    fn = _with_none(fn)
                entry = self.prepare(fn, id=m.id, type=m.type, max_ms=m.max_ms, ctx=ctx,
                                     plugin_id=plugin_id, version=version,
                                     description=getattr(m, "description", ""))
            entries[m.id] = entry
        with self._lock:
            for mid in entries:
                old = self._entries.get(mid)
                if old is not None and old[3].plugin_id != plugin_id:
                    raise UsageError(f"micro-plugin {mid} already belongs to "
                                     f"{old[3].plugin_id or 'the host'}", micro=mid)
            gone = tuple(mid for mid, e in self._entries.items()
                         if e[3].plugin_id == plugin_id and mid not in entries)
            return self._install(entries, gone, on_drained)

    def swap(
        self,
        *handlers: Callable[..., Any] | _Entry,
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
        entries: dict[str, _Entry] = {}
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
            gone = tuple(m for m, e in self._entries.items() if e[3].plugin_id == plugin_id)
            return self._install({}, gone, on_drained)

    def _install(
        self,
        new: Mapping[str, _Entry],
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
        self._state = (self._state[0] + 1, table)
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
        return self._state[0]

    def _not_found(self, micro_id: str) -> NotFoundError:
        known = sorted(self._entries)
        import difflib

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
        # The body of _execute_in, inlined: one frame is half the dispatch budget.
        entries = self._entries  # held while running: marks this call in flight
        try:
            fn, ctx, out_cls, info = entries[micro_id]
        except KeyError:
            raise self._not_found(micro_id) from None
        try:
            out = fn(input) if ctx is None else fn(input, ctx)
        except Exception as exc:
            entries = None  # type: ignore[assignment]  # a traceback must not pin the table
            raise _raised(info, exc) from exc
        if self._overran:
            self._check_overran(info)
        if out_cls is not type(out) and out_cls is not None:
            return self._checked(info, out)
        return out

    def _execute_in(self, entries: Mapping[str, _Entry], micro_id: str, value: Any) -> Any:
        """Run one micro-plugin from a given snapshot (compositions)."""
        try:
            fn, ctx, out_cls, info = entries[micro_id]
        except KeyError:
            raise self._not_found(micro_id) from None
        try:
            out = fn(value) if ctx is None else fn(value, ctx)
        except Exception as exc:
            entries = None  # type: ignore[assignment]  # a traceback must not pin the table
            raise _raised(info, exc) from exc
        if self._overran:
            self._check_overran(info)
        if out_cls is not type(out) and out_cls is not None:
            return self._checked(info, out)
        return out

    def _checked(self, info: MicroInfo, out: Any) -> Any:
        """Slow output check: ``out`` did not match the exact class of its shape."""
        if info.output == "verdict" and type(out) is dict:
            reasons = out.get("reasons")
            if type(out.get("valid")) is bool and type(reasons) is list:
                for r in reasons:
                    if type(r) is not str:
                        break
                else:
                    return out
        problem = _shape_problem(info.output, out)
        if problem is None:
            return out
        raise PluginError(
            f"micro-plugin {info.id} ({info.type}) returned the wrong shape: {problem}",
            plugin_id=info.plugin_id,
            micro=info.id,
            expected=info.output,
        )

    def _check_overran(self, info: MicroInfo) -> None:
        """Raise if the janitor flagged the calling frame's call as past its limit."""
        key = (threading.get_ident(), info.id)
        hit = self._overran.get(key)
        if hit is not None and hit[0] is sys._getframe(1):
            del self._overran[key]
            raise _timeout(hit[1])

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
                    entry = entries.get(mid) if isinstance(mid, str) else None
                    if entry is not None and entry[3].mode == "inline":
                        key = (f, mid, local.get("where"))
                        live.add(key)
                        state = seen.get(key)
                        if state is None:
                            state = seen[key] = _Seen(-credit, entry[3])
                        state.elapsed += credit
                        info = state.info
                        if state.elapsed >= 0 and state.elapsed * 1000 > info.max_ms:
                            self._overran[(tid, info.id)] = (f, info)
                            state.elapsed = -1e9  # flagged once
                            self._demote(info)
                    del local
                f = f.f_back
            del top
        for key in [k for k in seen if k not in live]:
            del seen[key]
        for flag, (frame, _) in list(self._overran.items()):
            if frame not in running:  # that call has already returned
                self._overran.pop(flag, None)

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
            self._state = (self._state[0] + 1, table)
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


#: Code objects of the frames that run handlers inline (compositions add theirs); the
#: janitor reads ``micro_id`` from these frames' locals.
_WATCHED_CODES: set[types.CodeType] = {MicroManager.execute.__code__,
                                       MicroManager._execute_in.__code__}

