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
import functools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from corral._errors import CorralError, NotFoundError, PluginError, PluginFailedError, UsageError
from corral._services.micro import manager as _micro
from corral._services.micro.manager import MicroInfo, MicroManager, _shape_problem, fits

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

ON_ERROR: Final = ("fail", "skip", "default")
MERGES: Final = ("all", "first", "keyed")

# -- expressions ------------------------------------------------------------------

_TOKEN: Final = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|\d+))*))"
)
_Expr = Callable[[Any], Any]
_WORDS: Final = {"true": True, "false": False, "null": None}


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"expression {text!r}: cannot read {text[pos:].strip()!r}",
                             expression=text)
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _path(dotted: str) -> _Expr:
    parts = dotted.split(".")
    if parts[0] == "input":
        parts = parts[1:]
    keys = tuple(parts)

    def get(value: Any) -> Any:
        for key in keys:
            if type(value) is dict:
                value = value.get(key)
            elif type(value) is list and key.isdigit():
                i = int(key)
                value = value[i] if i < len(value) else None
            else:
                return None
        return value

    return get


def _order(op: str) -> Callable[[Any, Any], bool]:
    def num(v: Any) -> bool:
        return type(v) in (int, float)

    def compare(a: Any, b: Any) -> bool:
        if not ((num(a) and num(b)) or (type(a) is str and type(b) is str)):
            return False
        if op == "<":
            return bool(a < b)
        if op == ">":
            return bool(a > b)
        if op == "<=":
            return bool(a <= b)
        return bool(a >= b)

    return compare


def _contains(a: Any, b: Any) -> bool:
    if type(b) in (list, dict) or (type(b) is str and type(a) is str):
        try:
            return a in b
        except TypeError:
            return False
    return False


def _either(a: _Expr, b: _Expr) -> _Expr:
    return lambda v: bool(a(v)) or bool(b(v))


def _both(a: _Expr, b: _Expr) -> _Expr:
    return lambda v: bool(a(v)) and bool(b(v))


@final
class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            want = repr(value) if value else "more"
            got = repr(tok[1]) if tok else "the end"
            raise UsageError(f"expression {self.text!r}: expected {want}, got {got}",
                             expression=self.text)
        self.i += 1
        return tok

    def parse(self) -> _Expr:
        expr = self.or_()
        if self.peek() is not None:
            raise UsageError(f"expression {self.text!r}: unexpected {self.peek()[1]!r}",  # type: ignore[index]
                             expression=self.text)
        return expr

    def or_(self) -> _Expr:
        left = self.and_()
        while self.peek() == ("name", "or"):
            self.take()
            left = _either(left, self.and_())
        return left

    def and_(self) -> _Expr:
        left = self.not_()
        while self.peek() == ("name", "and"):
            self.take()
            left = _both(left, self.not_())
        return left

    def not_(self) -> _Expr:
        if self.peek() == ("name", "not"):
            self.take()
            inner = self.not_()
            return lambda v: not inner(v)
        return self.cmp()

    def cmp(self) -> _Expr:
        left = self.atom()
        tok = self.peek()
        if tok is None:
            return left
        op = tok[1]
        if tok == ("name", "not") and self.i + 1 < len(self.toks) and \
                self.toks[self.i + 1] == ("name", "in"):
            self.take()
            self.take()
            right = self.atom()
            return lambda v: not _contains(left(v), right(v))
        if op in ("==", "!=", "<", ">", "<=", ">=") or tok == ("name", "in"):
            self.take()
            right = self.atom()
            if op == "==":
                return lambda v: bool(left(v) == right(v))
            if op == "!=":
                return lambda v: bool(left(v) != right(v))
            if op == "in":
                return lambda v: _contains(left(v), right(v))
            order = _order(op)
            return lambda v: order(left(v), right(v))
        return left

    def atom(self) -> _Expr:
        kind, text = self.take()
        if kind == "num":
            n: Any = float(text) if "." in text else int(text)
            return lambda v: n
        if kind == "str":
            s = text[1:-1]
            return lambda v: s
        if text == "(":
            inner = self.or_()
            self.take(")")
            return inner
        if text == "[":
            items: list[_Expr] = []
            if self.peek() != ("op", "]"):
                items.append(self.or_())
                while self.peek() == ("op", ","):
                    self.take()
                    items.append(self.or_())
            self.take("]")
            return lambda v: [item(v) for item in items]
        if kind == "name":
            if text in ("and", "or", "not", "in"):
                raise UsageError(f"expression {self.text!r}: unexpected {text!r}",
                                 expression=self.text)
            if text in _WORDS:
                word = _WORDS[text]
                return lambda v: word
            return _path(text)
        raise UsageError(f"expression {self.text!r}: unexpected {text!r}", expression=self.text)


@functools.lru_cache(maxsize=1024)
def compile_expression(text: str) -> Callable[[Any], bool]:
    """Parse a condition once; the result maps an input to True or False.

    :raises UsageError: the expression cannot be read (the message shows where).
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError("an expression must be a non-empty string", expression=text)
    expr = _Parser(text).parse()
    return lambda value: bool(expr(value))


# -- the model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Guards:
    #: run only when this expression over the input holds
    when: str | None = None
    #: run only when this validator passes the input
    if_valid: str | None = None
    #: "fail" (default), "skip" (pass the input on) or "default" (use ``default``)
    on_error: str = "fail"
    default: Any = None
    #: the key in a ``keyed`` fan-out
    name: str | None = None

    def _check_guards(self) -> None:
        if self.on_error not in ON_ERROR:
            raise UsageError(f"on-error must be one of {', '.join(ON_ERROR)}, "
                             f"got {self.on_error!r}", key="on-error")
        if self.when is not None:
            compile_expression(self.when)


@final
@dataclass(frozen=True, slots=True)
class Step(_Guards):
    """Run one micro-plugin."""

    micro: str

    def __post_init__(self) -> None:
        self._check_guards()


@final
@dataclass(frozen=True, slots=True)
class Ref(_Guards):
    """Run a named pipeline."""

    pipeline: str

    def __post_init__(self) -> None:
        self._check_guards()


@final
@dataclass(frozen=True, slots=True)
class Chain(_Guards):
    """Each node's output is the next one's input."""

    steps: tuple[Node, ...]

    def __post_init__(self) -> None:
        self._check_guards()
        if not self.steps:
            raise UsageError("a chain needs at least one step", key="steps")


@final
@dataclass(frozen=True, slots=True)
class FanOut(_Guards):
    """Every branch gets the same input; outputs are merged by ``merge``."""

    branches: tuple[Node, ...]
    merge: str = "all"
    parallel: bool = True

    def __post_init__(self) -> None:
        self._check_guards()
        if not self.branches:
            raise UsageError("a fan-out needs at least one branch", key="parallel")
        if self.merge not in MERGES:
            raise UsageError(f"merge must be one of {', '.join(MERGES)}, got {self.merge!r}",
                             key="merge")


Node = Step | Ref | Chain | FanOut


@final
@dataclass(frozen=True, slots=True)
class Pipeline:
    """A named composition: the ``[[pipeline]]`` manifest table."""

    id: str
    root: Chain
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The manifest spelling (see :func:`pipeline_from_dict`)."""
        out: dict[str, Any] = {"id": self.id, "steps": [_node_to_dict(s) for s in
                                                         self.root.steps]}
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pipeline:
        """Same as :func:`pipeline_from_dict`."""
        return pipeline_from_dict(data)


_STEP_KEYS: Final = ("micro", "pipeline", "chain", "parallel", "merge", "when", "if-valid",
                     "on-error", "default", "name")
_BODY_KEYS: Final = ("micro", "pipeline", "chain", "parallel")


def _node_to_dict(node: Node) -> dict[str, Any]:
    out: dict[str, Any]
    if isinstance(node, Step):
        out = {"micro": node.micro}
    elif isinstance(node, Ref):
        out = {"pipeline": node.pipeline}
    elif isinstance(node, Chain):
        out = {"chain": [_node_to_dict(s) for s in node.steps]}
    else:
        out = {"parallel": [_node_to_dict(b) for b in node.branches], "merge": node.merge}
    if node.when is not None:
        out["when"] = node.when
    if node.if_valid is not None:
        out["if-valid"] = node.if_valid
    if node.on_error != "fail":
        out["on-error"] = node.on_error
    if node.on_error == "default":
        out["default"] = node.default
    if node.name is not None:
        out["name"] = node.name
    return out


def _bad(key: str, problem: str) -> UsageError:
    """A dict-form error: ``details["key"]`` is the key path, ``details["problem"]`` the rest."""
    return UsageError(f"{key}: {problem}", key=key, problem=problem)


def _unknown(key: object, allowed: Sequence[str], where: str) -> UsageError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return _bad(f"{where}.{key}" if where else str(key),
                f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _node_from_dict(data: Any, where: str) -> Node:
    if not isinstance(data, Mapping):
        raise _bad(where, f"a step must be a table, got {type(data).__name__}")
    for key in data:
        if key not in _STEP_KEYS:
            raise _unknown(key, _STEP_KEYS, where)
    bodies = [k for k in _BODY_KEYS if k in data]
    if len(bodies) != 1:
        raise _bad(where, f"a step needs exactly one of {', '.join(_BODY_KEYS)}, got "
                   f"{', '.join(bodies) or 'none'}")
    body = bodies[0]
    if "merge" in data and body != "parallel":
        raise _bad(f"{where}.merge", "only a parallel step merges")
    if "default" in data and data.get("on-error") != "default":
        raise _bad(f"{where}.default", 'only used with on-error = "default"')
    if data.get("on-error") == "default" and "default" not in data:
        raise _bad(f"{where}.default", 'required with on-error = "default"')
    for key in ("micro", "pipeline", "when", "if-valid", "name", "on-error", "merge"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            raise _bad(f"{where}.{key}", f"must be a non-empty string, got {data[key]!r}")
    if data.get("on-error", "fail") not in ON_ERROR:
        raise _bad(f"{where}.on-error", f"must be one of {', '.join(ON_ERROR)}, got "
                   f"{data['on-error']!r}")
    if data.get("merge", "all") not in MERGES:
        raise _bad(f"{where}.merge", f"must be one of {', '.join(MERGES)}, got "
                   f"{data['merge']!r}")
    if "when" in data:
        try:
            compile_expression(data["when"])
        except UsageError as exc:
            raise _bad(f"{where}.when", exc.message) from None
    guards: dict[str, Any] = {
        "when": data.get("when"), "if_valid": data.get("if-valid"),
        "on_error": data.get("on-error", "fail"), "default": data.get("default"),
        "name": data.get("name"),
    }
    if body == "micro":
        return Step(data["micro"], **guards)
    if body == "pipeline":
        return Ref(data["pipeline"], **guards)
    items = data[body]
    if not isinstance(items, list) or not items:
        raise _bad(f"{where}.{body}", "must be a non-empty array of step tables")
    nodes = tuple(_node_from_dict(item, f"{where}.{body}[{i}]") for i, item in enumerate(items))
    if body == "chain":
        return Chain(nodes, **guards)
    return FanOut(nodes, merge=data.get("merge", "all"), **guards)


_PIPELINE_KEYS: Final = ("id", "description", "steps")


def pipeline_from_dict(data: Mapping[str, Any]) -> Pipeline:
    """Build a :class:`Pipeline` from its dict (TOML) form.

    ``{"id": str, "description": str?, "steps": [step, ...]}`` where each step
    table has exactly one body -- ``micro = ID``, ``pipeline = ID``,
    ``chain = [steps]`` or ``parallel = [steps]`` (with ``merge``) -- and
    optional ``when``, ``if-valid``, ``on-error``, ``default``, ``name``.

    :raises UsageError: ``details["key"]`` is the key path at fault
        (``steps[2].on-error``) and ``details["problem"]`` says what is wrong.
    """
    if not isinstance(data, Mapping):
        raise _bad("pipeline", f"must be a table, got {type(data).__name__}")
    for key in data:
        if key not in _PIPELINE_KEYS:
            raise _unknown(key, _PIPELINE_KEYS, "")
    pid = data.get("id")
    if not isinstance(pid, str) or not pid:
        raise _bad("id", "is required (a non-empty string)")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise _bad("steps", "must be a non-empty array of step tables")
    nodes = tuple(_node_from_dict(s, f"steps[{i}]") for i, s in enumerate(steps))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _bad("description", f"must be a string, got {type(description).__name__}")
    return Pipeline(pid, Chain(nodes), description)


def chain_of(*micro_ids: str) -> Chain:
    """A plain chain of micro-plugins, in order."""
    return Chain(tuple(Step(m) for m in micro_ids))


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
                 title: str) -> None:
        self.micros = micros
        self.pipelines = pipelines
        self.title = title

    def fail(self, where: str, node: Node, message: str, cls: type[CorralError] = UsageError,
             ) -> CorralError:
        return cls(f"{self.title}: link {where} ({_label(node)}): {message}", link=_label(node),
                   index=where)

    def info(self, where: str, node: Node, micro_id: str) -> MicroInfo:
        info = self.micros.get(micro_id)
        if info is None:
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
            problem = _shape_problem(out, node.default)
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
    if isinstance(micros, MicroManager):
        infos = {e[3].id: e[3] for e in micros._entries.values()}
    else:
        infos = micros
    return _Checker(infos, pipelines or {}, title).node(node, input, "", stack)


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
        self._compile(manager._state)

    def _compile(self, st: tuple[int, dict[str, Any]]) -> tuple[int, tuple[Any, ...] | None,
                                                                  _Run | None]:
        infos = {e[3].id: e[3] for e in st[1].values()}
        _Checker(infos, self._pipelines, self.title).node(self.node, self._input, "",
                                                          self._stack)
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
        st = self._mgr._state
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
                raise _link_error(self.title, where, micro_id, _micro._raised(info, exc)) \
                    from exc
            try:
                if mgr._overran:
                    mgr._check_overran(info)
                if out_cls is not type(x) and out_cls is not None:
                    x = mgr._checked(info, x)
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
                    verdict = mgr._execute_in(entries, validator, value)
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
                    return mgr._execute_in(entries, micro_id, value)
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


_micro._WATCHED_CODES.add(Composition.run.__code__)

