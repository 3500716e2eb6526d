"""What a real ``python -m corral`` run returned, and the environment it runs in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Variables of the outer environment that would point the CLI at a real home.
ENV_DROP = ("CORRAL_HOME", "XDG_DATA_HOME")


@dataclass
class CliResult:
    """Exit code, stdout, stderr and (with ``--json``) the one JSON document printed."""

    code: int
    out: str
    err: str
    json: Any
