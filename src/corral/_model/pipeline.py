"""Pipeline syntax: the nodes of a composition, ``when`` expressions and ``[[pipeline]]`` tables.

Pure data: parsing and building nodes runs nothing, so the manifest model may use it.
Expressions are parsed once into closures, never ``eval``-ed: dotted paths into the input
(a missing key is ``null``), literals, ``== != < > <= >= in``, ``not in``, ``and or not``
and parentheses.  Ordering two values of different types is false, never an error.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from corral._errors import UsageError

__all__ = [
    "MERGES",
    "ON_ERROR",
    "Chain",
    "FanOut",
    "Node",
    "Pipeline",
    "Ref",
    "Step",
    "chain_of",
    "compile_expression",
    "pipeline_from_dict",
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
