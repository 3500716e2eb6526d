"""Composition of micro-plugins: chains, fan-out, conditions, nesting, named pipelines.

A composition is a tree of nodes:

* :class:`Step` runs one micro-plugin;
* :class:`Chain` feeds each node's output to the next;
* :class:`FanOut` gives the same input to every branch and merges the outputs
  (``all``: a list in branch order; ``first``: the first branch to succeed;
  ``keyed``: a dict by branch name);
* :class:`Ref` runs a named :class:`Pipeline`.

Every node may carry a condition (``when``: an expression over the input;
``if_valid``: a validator's id) and an error policy (``on_error``: ``fail``,
``skip`` -- pass the input on -- or ``default`` -- use ``default``).  A
skipped or failed-and-skipped node passes its input through, so such a node
must not change the type.

:func:`validate_chain` checks a composition before it runs: every id exists,
each output fits the next input (by declared types), no pipeline refers back
to itself; the error names the link at fault.  :class:`Composition` validates,
then runs, and re-validates whenever the manager's table changes.  The dict
form (:func:`pipeline_from_dict`) is the ``[[pipeline]]`` manifest table.

Expressions (``when``) are parsed once into closures, never ``eval``-ed:
dotted paths into the input (``kind``, ``input.ref.name``, ``items.0``; a
missing key is ``null``), literals (numbers, ``'strings'``, ``true``,
``false``, ``null``, ``[lists]``), ``== != < > <= >= in``, ``not in``,
``and or not`` and parentheses.  Ordering two values of different types is
false, never an error.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

from corral._errors import (
    CorralError,
    InvalidPluginError,
    NotFoundError,
    PluginError,
    PluginFailedError,
    UsageError,
)
from corral._model.micro import MicroInfo, fits, shape_problem
from corral._model.pipeline import (
    Chain,
    FanOut,
    Node,
    Pipeline,
    Ref,
    Step,
    chain_of,
    compile_expression,
    pipeline_from_dict,
)
from corral._services.micro.manager import MicroManager, call_error, watch_code

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = [
    "Chain",
    "Composition",
    "FanOut",
    "Node",
    "Pipeline",
    "Ref",
    "Step",
    "compile_expression",
    "pipeline_from_dict",
    "validate_chain",
]

# -- validation -----------------------------------------------------------------------


def _label(node: Node) -> str:
    if isinstance(node, Step):
        return node.micro
    if isinstance(node, Ref):
        return f"pipeline {node.pipeline}"
    return node.name or ("chain" if isinstance(node, Chain) else "parallel")


def _branch_key(node: Node) -> str | None:
    if node.name is not None:
        return node.name
    if isinstance(node, Step):
        return node.micro
    if isinstance(node, Ref):
        return node.pipeline
    return None


@final
class _Checker:
    def __init__(self, micros: Mapping[str, MicroInfo], pipelines: Mapping[str, Pipeline],
                 title: str,
                 refusal: Callable[[str], CorralError | None] | None = None) -> None:
        self.micros = micros
        self.refusal = refusal
        self.pipelines = pipelines
        self.title = title

    def fail(self, where: str, node: Node, message: str, cls: type[CorralError] = UsageError,
             ) -> CorralError:
        return cls(f"{self.title}: link {where} ({_label(node)}): {message}", link=_label(node),
                   index=where)

    def info(self, where: str, node: Node, micro_id: str) -> MicroInfo:
        info = self.micros.get(micro_id)
        if info is None:
            refused = self.refusal(micro_id) if self.refusal is not None else None
            if refused is not None:  # declared by its plugin, but its handler was refused
                raise self.fail(where, node, refused.message, InvalidPluginError)
            close = difflib.get_close_matches(micro_id, list(self.micros), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.fail(where, node, f"no micro-plugin {micro_id!r}{hint}", NotFoundError)
        return info

    def node(self, node: Node, given: str, where: str, stack: tuple[str, ...]) -> str:
        if node.if_valid is not None:
            v = self.info(where, node, node.if_valid)
            if v.type != "validator":
                raise self.fail(where, node, f"if-valid names {node.if_valid}, a {v.type}, "
                                "not a validator")
            if not fits(given, v.input):
                raise self.fail(where, node, f"its validator {v.id} takes {v.input}, "
                                f"but gets {given}")
        out = self.body(node, given, where, stack)
        passes = node.when is not None or node.if_valid is not None or node.on_error == "skip"
        if passes and not (out == given or "any" in (out, given)):
            raise self.fail(where, node, f"it changes {given} into {out}, but when it is "
                            "skipped its input passes on unchanged; give it a step that keeps "
                            "the type")
        if node.on_error == "default":
            problem = shape_problem(out, node.default)
            if problem is not None:
                raise self.fail(where, node, f"its default does not fit its output: {problem}")
        return out

    def body(self, node: Node, given: str, where: str, stack: tuple[str, ...]) -> str:
        if isinstance(node, Step):
            info = self.info(where, node, node.micro)
            if not fits(given, info.input):
                raise self.fail(where, node, f"takes {info.input}, but the link before it "
                                f"gives {given}")
            return info.output
        if isinstance(node, Ref):
            if node.pipeline in stack:
                loop = " -> ".join((*stack[stack.index(node.pipeline):], node.pipeline))
                raise self.fail(where, node, f"cycle: {loop}")
            target = self.pipelines.get(node.pipeline)
            if target is None:
                close = difflib.get_close_matches(node.pipeline, list(self.pipelines), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.fail(where, node, f"no pipeline {node.pipeline!r}{hint}",
                                NotFoundError)
            return self.node(target.root, given, f"{where}>{node.pipeline}",
                             (*stack, node.pipeline))
        if isinstance(node, Chain):
            t = given
            for i, step in enumerate(node.steps, 1):
                t = self.node(step, t, f"{where}.{i}" if where else str(i), stack)
            return t
        outs = []
        keys: set[str] = set()
        for i, branch in enumerate(node.branches, 1):
            sub = f"{where}.{i}" if where else str(i)
            outs.append(self.node(branch, given, sub, stack))
            if node.merge == "keyed":
                key = _branch_key(branch)
                if key is None:
                    raise self.fail(sub, branch, "a keyed fan-out needs a name on this branch")
                if key in keys:
                    raise self.fail(sub, branch, f"two branches share the key {key!r}")
                keys.add(key)
        if node.merge == "all":
            return "list"
        if node.merge == "keyed":
            return "dict"
        return outs[0] if len(set(outs)) == 1 else "any"


def validate_chain(
    node: Node | Pipeline | Sequence[str],
    micros: MicroManager | Mapping[str, MicroInfo],
    pipelines: Mapping[str, Pipeline] | None = None,
    *,
    input: str = "any",
) -> str:
    """Check a composition before running it; return its output type.

    :param node: a node, a pipeline, or a list of micro ids (a plain chain).
    :param micros: the manager (or a map of infos) the ids resolve against.
    :param pipelines: named pipelines that :class:`Ref` nodes may use.
    :param input: the type of the input it will be given.
    :raises NotFoundError: an unknown micro-plugin or pipeline (the link is named).
    :raises UsageError: a type that does not fit, a cycle, a bad condition.
    """
    title = "composition"
    stack: tuple[str, ...] = ()
    if isinstance(node, Pipeline):
        title, stack, node = f"pipeline {node.id}", (node.id,), node.root
    elif not isinstance(node, (Step, Ref, Chain, FanOut)):
        node = chain_of(*node)
    infos: Mapping[str, MicroInfo]
    refusal = None
    if isinstance(micros, MicroManager):
        infos = {info.id: info for info in micros.list()}
        refusal = micros.refusal
    else:
        infos = micros
    return _Checker(infos, pipelines or {}, title, refusal).node(node, input, "", stack)


# -- running ---------------------------------------------------------------------------

_Run = Callable[[Any, Mapping[str, Any]], Any]
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


_here = threading.local()


def _mark_pool_thread() -> None:
    _here.in_pool = True


def _executor() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603 - one lazily created pool per process
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="corral-fanout",
                                       initializer=_mark_pool_thread)
        return _pool


def _link_error(title: str, where: str, micro_id: str, exc: BaseException) -> CorralError:
    """The same kind of error, its message naming the link."""
    if isinstance(exc, CorralError):
        if exc.details.get("link") is not None:
            return exc
        msg = f"{title}: link {where} ({micro_id}) failed: {exc.message}"
        details = {**exc.details, "link": micro_id, "index": where}
        if type(exc) in (PluginError, NotFoundError, UsageError) or (
            isinstance(exc, PluginFailedError) and type(exc).__init__ is CorralError.__init__
        ):
            new = type(exc)(msg, plugin_id=exc.plugin_id, **details)
            new.__cause__ = exc
            return new
        exc.details["link"] = micro_id
        return exc
    return PluginError(f"{title}: link {where} ({micro_id}) raised {type(exc).__name__}: {exc}",
                       link=micro_id, index=where)


@final
class Composition:
    """A validated composition bound to a manager; call :meth:`run`.

    Validation happens here and again whenever the manager's table changes (a
    swap may change a micro-plugin's types).  One run uses one snapshot of the
    table throughout, so every link comes from the same set of versions.
    """

    def __init__(
        self,
        node: Node | Pipeline | Sequence[str],
        manager: MicroManager,
        pipelines: Mapping[str, Pipeline] | None = None,
        *,
        input: str = "any",
    ) -> None:
        self.title = "composition"
        self._stack: tuple[str, ...] = ()
        if isinstance(node, Pipeline):
            self.title, self._stack, node = f"pipeline {node.id}", (node.id,), node.root
        elif not isinstance(node, (Step, Ref, Chain, FanOut)):
            node = chain_of(*node)
        self.node: Final[Node] = node
        self._mgr = manager
        self._pipelines = dict(pipelines or {})
        self._input = input
        self._lock = threading.Lock()
        # (manager version, flat steps or None, general runner or None)
        self._cache: tuple[int, tuple[Any, ...] | None, _Run | None] = (-1, None, None)
        self._flat = isinstance(node, Chain) and all(
            isinstance(s, Step) and s.when is None and s.if_valid is None
            and s.on_error == "fail" for s in node.steps
        ) and node.when is None and node.if_valid is None and node.on_error == "fail"
        self._compile(manager.snapshot)

    def _compile(self, st: tuple[int, dict[str, Any]]) -> tuple[int, tuple[Any, ...] | None,
                                                                  _Run | None]:
        infos = {e[3].id: e[3] for e in st[1].values()}
        checker = _Checker(infos, self._pipelines, self.title, self._mgr.refusal)
        checker.node(self.node, self._input, "", self._stack)
        if self._flat:
            assert isinstance(self.node, Chain)
            steps = tuple(
                (s.micro, *st[1][s.micro][:3], st[1][s.micro][3], str(i))  # type: ignore[union-attr]
                for i, s in enumerate(self.node.steps, 1)
            )
            cache: tuple[int, tuple[Any, ...] | None, _Run | None] = (st[0], steps, None)
        else:
            cache = (st[0], None, self._build(self.node, "", self._stack))
        self._cache = cache
        return cache

    def __call__(self, input: Any = None) -> Any:
        """Same as :meth:`run`."""
        return self.run(input)

    def run(self, input: Any = None) -> Any:
        """Run the composition on ``input`` and return its output.

        :raises PluginFailedError: a link failed and its policy is ``fail``;
            the message and the ``link`` detail name it.
        """
        st = self._mgr.snapshot
        cache = self._cache
        if cache[0] != st[0]:
            cache = self._compile(st)
        steps = cache[1]
        if steps is None:
            return cache[2](input, st[1])  # type: ignore[misc]
        mgr = self._mgr
        x = input
        for micro_id, fn, ctx, out_cls, info, where in steps:
            try:
                x = fn(x) if ctx is None else fn(x, ctx)
            except Exception as exc:
                st = None  # type: ignore[assignment]  # a traceback must not pin the table
                raise _link_error(self.title, where, micro_id, call_error(info, exc)) \
                    from exc
            try:
                if mgr.overran:
                    mgr.check_overran(info)
                if out_cls is not type(x) and out_cls is not None:
                    x = mgr.check_output(info, x)
            except CorralError as exc:
                st = None  # type: ignore[assignment]
                raise _link_error(self.title, where, micro_id, exc) from None
        return x

    def _build(self, node: Node, where: str, stack: tuple[str, ...]) -> _Run:
        """Compile a general node into a closure ``(value, entries) -> value``."""
        body = self._body(node, where, stack)
        title = self.title
        label = _label(node)
        cond = compile_expression(node.when) if node.when is not None else None
        validator = node.if_valid
        policy, default = node.on_error, node.default
        mgr = self._mgr
        if cond is None and validator is None and policy == "fail":
            return body

        def guarded(value: Any, entries: Mapping[str, Any]) -> Any:
            if cond is not None and not cond(value):
                return value
            if validator is not None:
                try:
                    verdict = mgr.execute_in(entries, validator, value)
                except CorralError as exc:
                    raise _link_error(title, where, validator, exc) from None
                if not verdict["valid"]:
                    return value
            try:
                return body(value, entries)
            except CorralError as exc:
                if policy == "skip":
                    return value
                if policy == "default":
                    return default
                raise _link_error(title, where, label, exc) from None

        return guarded

    def _body(self, node: Node, where: str, stack: tuple[str, ...]) -> _Run:
        title, mgr = self.title, self._mgr
        if isinstance(node, Step):
            micro_id = node.micro

            def step(value: Any, entries: Mapping[str, Any]) -> Any:
                try:
                    return mgr.execute_in(entries, micro_id, value)
                except CorralError as exc:
                    entries = None  # type: ignore[assignment]  # do not pin the table
                    raise _link_error(title, where, micro_id, exc) from None

            return step
        if isinstance(node, Ref):
            return self._build(self._pipelines[node.pipeline].root, f"{where}>{node.pipeline}",
                               (*stack, node.pipeline))
        if isinstance(node, Chain):
            parts = tuple(self._build(s, f"{where}.{i}" if where else str(i), stack)
                          for i, s in enumerate(node.steps, 1))

            def chain(value: Any, entries: Mapping[str, Any]) -> Any:
                for part in parts:
                    value = part(value, entries)
                return value

            return chain
        branches = tuple(self._build(b, f"{where}.{i}" if where else str(i), stack)
                         for i, b in enumerate(node.branches, 1))
        keys = tuple(_branch_key(b) or str(i) for i, b in enumerate(node.branches, 1))
        return _fan_out(branches, keys, node.merge, node.parallel, title, where)


def _fan_out(branches: tuple[_Run, ...], keys: tuple[str, ...], merge: str, parallel: bool,
             title: str, where: str) -> _Run:
    def first_error(errors: list[BaseException]) -> CorralError:
        messages = "; ".join(str(e) for e in errors)
        return PluginError(f"{title}: parallel {where or 'root'}: no branch succeeded: "
                           f"{messages}", link=where or "root")

    def run(value: Any, entries: Mapping[str, Any]) -> Any:
        from concurrent.futures import FIRST_COMPLETED, wait

        # A fan-out nested in a pool thread runs its branches in that thread: waiting on
        # the pool from inside it could deadlock once every worker waits.
        if not parallel or len(branches) == 1 or getattr(_here, "in_pool", False):
            if merge == "first":
                errors: list[BaseException] = []
                for b in branches:
                    try:
                        return b(value, entries)
                    except CorralError as exc:
                        errors.append(exc)
                raise first_error(errors)
            outs = [b(value, entries) for b in branches]
        else:
            pool = _executor()
            futures: list[Future[Any]] = [pool.submit(b, value, entries) for b in branches[1:]]
            if merge == "first":
                errors = []
                try:
                    return branches[0](value, entries)
                except CorralError as exc:
                    errors.append(exc)
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        exc2 = f.exception()
                        if exc2 is None:
                            return f.result()
                        errors.append(exc2)
                raise first_error(errors)
            try:
                head = branches[0](value, entries)
            finally:
                wait(futures)
            outs = [head, *(f.result() for f in futures)]
        if merge == "keyed":
            return dict(zip(keys, outs, strict=True))
        return outs

    return run


watch_code(Composition.run.__code__)

