"""Event payload checks at their exact limits: nesting depth and JSON-ness."""

from __future__ import annotations

from typing import Any

import pytest

from corral._errors import UsageError
from corral._model.jsoncheck import MAX_DEPTH
from corral._model.topics import check_payload


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` containers, alternating lists and dicts, around ``leaf``."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_is_accepted_and_one_more_refused() -> None:
    check_payload(nested(MAX_DEPTH), topic="t.ok")
    with pytest.raises(UsageError, match=r"payload for 't\.deep' is not JSON data"):
        check_payload(nested(MAX_DEPTH + 1), topic="t.deep")


def test_non_json_values_are_refused_by_name() -> None:
    for bad in (float("nan"), {1: "int key"}, {"k": {1, 2}}, 1 << 64):
        with pytest.raises(UsageError, match=r"payload for 't' is not JSON data"):
            check_payload(bad, topic="t")
    check_payload({"k": [1, 2.5, "x", None, True]}, topic="t")
