"""The opt-in usage report a host may send: built and checked here, with no I/O.

A report says which plugins (ids and versions) one host has and which corral it
runs, nothing else: no host id, no path, no user name.  The only other field
is a random ``nonce`` drawn afresh each day, so that a registry can count a
host once per day while two days' reports cannot be linked.  The server checks
a received report with :func:`check_report`, the same rules the client builds by.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final

from corral._errors import ManifestError, UsageError
from corral._model.manifest import check_id

__all__ = [
    "MAX_PLUGINS",
    "MAX_REPORT_BYTES",
    "NOTICE",
    "REPORT_SCHEMA",
    "build_report",
    "check_report",
    "day_nonce",
    "report_bytes",
]

REPORT_SCHEMA: Final = 1
#: A report names at most this many plugins.
MAX_PLUGINS: Final = 500
#: A report's JSON body is at most this big.
MAX_REPORT_BYTES: Final = 64 * 1024
_NONCE: Final = re.compile(r"^[0-9a-f]{32}$")
_VERSION: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}$")
_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_KEYS: Final = frozenset({"schema", "day", "nonce", "corral_version", "plugins"})

#: Printed before the first report is sent (and by ``corral analytics on``).
NOTICE: Final = (
    "corral analytics: each `corral analytics send` sends the registry the ids and "
    "versions of its installed plugins and the corral version; nothing else - no host id, "
    "no paths, no names. A random number that changes every day lets the registry count "
    "this home once per day without linking two days. See exactly what is sent with "
    "`corral analytics preview`; stop with `corral analytics off` or CORRAL_ANALYTICS=0."
)


def day_nonce(day: str, stored: Mapping[str, Any] | None) -> tuple[str, dict[str, str]]:
    """The nonce of ``day``: the stored one if it is that day's, else a fresh random one.

    Returns the nonce and what to store (``{"day", "nonce"}``); an older day's nonce is
    never reused, so nothing carries over from one day to the next.
    """
    if stored and stored.get("day") == day and _NONCE.match(str(stored.get("nonce", ""))):
        nonce = str(stored["nonce"])
    else:
        nonce = secrets.token_hex(16)
    return nonce, {"day": day, "nonce": nonce}


def build_report(installed: Iterable[tuple[str, str]], corral_version: str, *,
                 day: dt.date, nonce: str) -> dict[str, Any]:
    """The report of a host with ``installed`` (id, version) pairs on ``day``."""
    plugins = sorted({(pid, ver) for pid, ver in installed})
    doc = {
        "schema": REPORT_SCHEMA,
        "day": day.isoformat(),
        "nonce": nonce,
        "corral_version": corral_version,
        "plugins": [{"id": pid, "version": ver} for pid, ver in plugins],
    }
    return check_report(doc)


def check_report(doc: Any) -> dict[str, Any]:
    """``doc`` if it is a well-formed report, else a :class:`UsageError` naming the field.

    Unknown fields are refused: a report carries exactly what this module says.
    """
    if not isinstance(doc, dict):
        raise UsageError("a report is a JSON object", field="report")
    extra = set(doc) - _KEYS
    if extra:
        raise UsageError(f"unknown report field {sorted(extra)[0]!r}", field=sorted(extra)[0])
    if doc.get("schema") != REPORT_SCHEMA:
        raise UsageError(f"schema must be {REPORT_SCHEMA}", field="schema")
    day = doc.get("day")
    if not isinstance(day, str) or not _DAY.match(day):
        raise UsageError("day must be YYYY-MM-DD", field="day")
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        raise UsageError(f"day {day!r} is not a date", field="day") from None
    if not isinstance(doc.get("nonce"), str) or not _NONCE.match(doc["nonce"]):
        raise UsageError("nonce must be 32 lowercase hex digits", field="nonce")
    cv = doc.get("corral_version")
    if not isinstance(cv, str) or not _VERSION.match(cv):
        raise UsageError("corral_version must be a version", field="corral_version")
    plugins = doc.get("plugins")
    if not isinstance(plugins, list):
        raise UsageError("plugins must be a list", field="plugins")
    if len(plugins) > MAX_PLUGINS:
        raise UsageError(f"at most {MAX_PLUGINS} plugins in a report", field="plugins")
    seen: set[str] = set()
    for n, entry in enumerate(plugins):
        where = f"plugins.{n}"
        if not isinstance(entry, dict) or set(entry) != {"id", "version"}:
            raise UsageError(f"{where} must be {{\"id\", \"version\"}}", field=where)
        try:
            check_id(entry["id"], key=f"{where}.id")
        except ManifestError as exc:
            raise UsageError(f"{where}.id: {exc}", field=f"{where}.id") from None
        ver = entry["version"]
        if not isinstance(ver, str) or not _VERSION.match(ver):
            raise UsageError(f"{where}.version must be a version", field=f"{where}.version")
        if entry["id"] in seen:
            raise UsageError(f"{where}.id {entry['id']!r} is named twice", field=f"{where}.id")
        seen.add(entry["id"])
    return doc


def report_bytes(doc: dict[str, Any]) -> bytes:
    """The exact bytes sent for a report (and printed by ``preview``/``--dry-run``)."""
    import json

    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True).encode("ascii")
