"""Micro-plugin kinds and shapes: the six kinds, the JSON type names, and what fits where.

Pure data, no I/O: the manifest checks ``[[micro]]`` types against :data:`KINDS`, the
manager checks handlers against :func:`kind_shape`, and compositions check links with
:func:`fits` and :func:`shape_problem`.

A micro-plugin is one function of one of six kinds.  Each kind fixes a shape,
checked when the handler is registered (from its annotations, resolved with
:func:`typing.get_type_hints`, or from a declared ``input``/``output`` type),
never discovered while serving:

================  ====================  =========================================
kind              input                 output
================  ====================  =========================================
validator         any                   ``{"valid": bool, "reasons": [str]}`` or ``bool``
formatter         any                   ``str``
transformer       declared (or any)     a value of the declared type (or any)
command-enhancer  the command ``dict``  the command ``dict``
hook              any                   ``None`` or anything (ignored)
utility           declared (or any)     declared (or any)
================  ====================  =========================================

A validator that returns ``bool`` (the seed's ``validate?(input): boolean``) gives
the verdict ``{"valid": that bool, "reasons": []}`` (:func:`as_verdict`).
"""

from __future__ import annotations

import builtins
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypedDict, TypeVar, final

from corral._errors import InvalidPluginError

__all__ = [
    "EXACT_CLASS",
    "JSON_TYPES",
    "KINDS",
    "KIND_SHAPES",
    "MARK",
    "MICRO_MAX_MS",
    "MicroInfo",
    "Verdict",
    "annotated_types",
    "as_verdict",
    "check_annotated_shape",
    "declared_type",
    "fits",
    "kind_shape",
    "micro",
    "shape_problem",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The type names a micro-plugin's input and output may declare.
JSON_TYPES: Final = ("any", "null", "bool", "int", "number", "str", "list", "dict", "verdict")
#: The six kinds, as spelled in ``[[micro]]`` ``type``.
KINDS: Final = ("command-enhancer", "validator", "transformer", "formatter", "hook", "utility")

#: ``max-ms`` of a micro-plugin: (minimum, maximum, default).
MICRO_MAX_MS: Final = (1, 600_000, 100)
#: The attribute :func:`micro` sets on a handler; the manager reads its options there.
MARK: Final = "__corral_micro__"


class Verdict(TypedDict):
    """What a validator returns."""

    valid: bool
    reasons: list[str]


#: kind -> (fixed input type or None if declarable, fixed output type or None if declarable)
KIND_SHAPES: Final[Mapping[str, tuple[str | None, str | None]]] = types.MappingProxyType(
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


def declared_type(value: str | type | Any, where: str, micro_id: str) -> str:
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


def annotated_types(fn: Callable[..., Any], micro_id: str) -> tuple[str, str]:
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


#: Annotation names read from source -> type names (anything else cannot be told statically).
_SOURCE_TYPES: Final = {
    "bool": "bool", "int": "int", "float": "number", "str": "str", "None": "null",
    "dict": "dict", "Dict": "dict", "Mapping": "dict", "MutableMapping": "dict",
    "list": "list", "List": "list", "tuple": "list", "Tuple": "list", "Sequence": "list",
    "Verdict": "verdict", "Any": "any", "object": "any",
}


def _source_type(text: str | None) -> str:
    """The type name an annotation written as ``text`` stands for, ``any`` when unsure."""
    if not text:
        return "any"
    text = text.strip().strip("'\"")
    if "|" in text or text.startswith(("Optional[", "typing.Optional[", "Union[")):
        return "any"
    head = text.split("[", 1)[0].rsplit(".", 1)[-1]
    return _SOURCE_TYPES.get(head, "any")


def check_annotated_shape(kind: str, micro_id: str, input_annotation: str | None,
                          output_annotation: str | None) -> None:
    """Check a handler's annotations, as written in its source, against its kind.

    Lets ``add`` and ``validate`` refuse a misdeclared micro-plugin without importing
    its code; an annotation that cannot be told from its text passes (checked on load).

    Raises:
        InvalidPluginError: the declared shape does not fit the kind (named).
    """
    kind_shape(kind, micro_id, _source_type(input_annotation), _source_type(output_annotation))


def kind_shape(kind: str, micro_id: str, declared_in: str, declared_out: str) -> tuple[str, str]:
    """Check declared types against the kind; return the (input, output) shape."""
    if kind not in KIND_SHAPES:
        raise InvalidPluginError(
            f"micro-plugin {micro_id}: type must be one of {', '.join(KINDS)}, got {kind!r}",
            key="type",
            micro=micro_id,
        )
    fixed_in, fixed_out = KIND_SHAPES[kind]
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
            fixed_out == "verdict" and declared_out in ("dict", "bool")
        )
        if not ok:
            what = {"verdict": 'a verdict {"valid": bool, "reasons": [str]} or a bool'}.get(
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
        setattr(fn, MARK, options)
        return fn

    return mark


class _Deep:
    """Never the type of a value: forces the slow output check (verdicts, numbers)."""


#: shape -> the exact class an output of that shape has (None: anything), or a class no value
#: has, which sends the check down the slow path of :func:`shape_problem`.
EXACT_CLASS: Final[Mapping[str, builtins.type | None]] = types.MappingProxyType(
    {"any": None, "null": builtins.type(None), "bool": bool, "int": int, "number": _Deep,
     "str": str, "list": list, "dict": dict, "verdict": _Deep}
)


def as_verdict(out: Any) -> Any:
    """A validator's ``True``/``False`` as the verdict it means; anything else unchanged."""
    if builtins.type(out) is bool:
        return {"valid": out, "reasons": []}
    return out


def shape_problem(shape: str, out: Any) -> str | None:
    """Why ``out`` is not of ``shape``, or None."""
    t = builtins.type(out)
    if shape == "any":
        return None
    if shape == "number":
        return None if t in (int, float) else f"a number expected, got {t.__name__}"
    if shape == "int":
        return None if t is int else f"an int expected, got {t.__name__}"
    if shape == "verdict":
        if t is bool:
            return None  # True/False: the verdict it means (see as_verdict)
        if t is not dict:
            return (f'a verdict {{"valid": bool, "reasons": [str]}} or a bool expected, '
                    f"got {t.__name__}")
        if builtins.type(out.get("valid")) is not bool:
            return "a verdict needs 'valid': a bool"
        reasons = out.get("reasons", [])
        if builtins.type(reasons) is not list or any(
            builtins.type(r) is not str for r in reasons
        ):
            return "a verdict's 'reasons' must be a list of strings"
        return None
    cls = EXACT_CLASS[shape]
    if t is not cls:
        return f"{shape} expected, got {t.__name__}"
    return None

