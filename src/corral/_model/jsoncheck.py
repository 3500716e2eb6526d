"""Checks that values crossing the plugin boundary are plain JSON data."""

from __future__ import annotations

import math
from typing import Any, Final

__all__ = ["MAX_DEPTH", "SIMPLE_TYPES", "json_problem"]

#: Types that are JSON on their own (floats need a NaN/infinity check).
SIMPLE_TYPES: Final = frozenset({str, int, bool, type(None)})
MAX_DEPTH: Final = 64


def json_problem(value: Any, where: str = "$", depth: int = 0) -> str | None:
    """Describe the first part of ``value`` that is not JSON data, or return ``None``.

    JSON data is ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists and
    dicts with string keys of those, at most :data:`MAX_DEPTH` deep.
    """
    t = type(value)
    if t in SIMPLE_TYPES:
        return None
    if t is float:
        return None if math.isfinite(value) else f"{where} is {value!r}, not a finite number"
    if depth >= MAX_DEPTH:
        return f"{where} is nested more than {MAX_DEPTH} levels deep"
    if t is list:
        for i, item in enumerate(value):
            if type(item) not in SIMPLE_TYPES:
                problem = json_problem(item, f"{where}[{i}]", depth + 1)
                if problem:
                    return problem
        return None
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{where} has a key {key!r} of type {type(key).__name__}, not str"
            if type(item) not in SIMPLE_TYPES:
                problem = json_problem(item, f"{where}.{key}", depth + 1)
                if problem:
                    return problem
        return None
    return f"{where} is a {t.__name__}, which is not JSON data"
