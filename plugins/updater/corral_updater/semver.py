"""The ``corral.updater.semver`` validator: is a string a Semantic Versioning 2.0.0 version?"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from corral import PluginContext

__all__ = ["semver_reasons", "validate"]

_IDENT: Final = re.compile(r"[0-9A-Za-z-]+")
_MAX_LEN: Final = 256


def _core_reasons(core: str) -> list[str]:
    parts = core.split(".")
    if len(parts) != 3:
        return [f"needs exactly three numbers MAJOR.MINOR.PATCH, got {len(parts)} in {core!r}"]
    reasons = []
    for label, part in zip(("major", "minor", "patch"), parts, strict=True):
        if not part.isascii() or not part.isdigit():
            reasons.append(f"{label} must be a non-negative integer, got {part!r}")
        elif len(part) > 1 and part.startswith("0"):
            reasons.append(f"{label} must not have leading zeros, got {part!r}")
    return reasons


def _ident_reasons(text: str, what: str, *, numeric_zeros: bool) -> list[str]:
    reasons = []
    for ident in text.split("."):
        if not ident:
            reasons.append(f"{what} has an empty identifier")
        elif not _IDENT.fullmatch(ident):
            reasons.append(f"{what} identifier {ident!r} may hold only [0-9A-Za-z-]")
        elif numeric_zeros and ident.isdigit() and len(ident) > 1 and ident.startswith("0"):
            reasons.append(f"{what} numeric identifier {ident!r} must not have leading zeros")
    return reasons


def semver_reasons(version: str) -> list[str]:
    """Everything wrong with ``version`` as SemVer 2.0.0; empty when it is valid."""
    if not version:
        return ["is empty"]
    if len(version) > _MAX_LEN:
        return [f"is longer than {_MAX_LEN} characters"]
    if version[0] in "vV":
        return [f"starts with {version[0]!r}: SemVer has no prefix (try {version[1:]!r})"]
    rest, plus, build = version.partition("+")
    core, dash, pre = rest.partition("-")
    reasons = _core_reasons(core)
    if dash:
        reasons += _ident_reasons(pre, "pre-release", numeric_zeros=True)
    if plus:
        reasons += _ident_reasons(build, "build metadata", numeric_zeros=False)
    return reasons


def validate(input: object, ctx: PluginContext) -> dict[str, Any]:
    """Validate ``"1.2.3"`` or ``{"version": "1.2.3"}``: ``{"valid": bool, "reasons": [...]}``."""
    version = input.get("version") if isinstance(input, dict) else input
    if not isinstance(version, str):
        return {"valid": False, "reasons": [f"expected a version string, got {version!r}"]}
    reasons = semver_reasons(version)
    return {"valid": not reasons, "reasons": reasons}
