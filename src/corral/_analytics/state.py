"""The home's analytics state: the opt-in switch (``[analytics] enabled`` in
``settings.toml``, off by default), ``CORRAL_ANALYTICS=0`` that overrides it, and
``analytics.json`` holding only today's nonce and whether the notice was shown.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Final

from corral._analytics.report import day_nonce
from corral._disk.files import write_atomic
from corral._disk.settings import setting_flag, write_setting_flag

__all__ = ["ENV", "STATE_FILE", "AnalyticsState"]

#: ``CORRAL_ANALYTICS=0`` (or ``false``, ``off``, ``no``) disables reports whatever the home says.
ENV: Final = "CORRAL_ANALYTICS"
#: Today's nonce and the notice flag, at the root of a home.
STATE_FILE: Final = "analytics.json"


class AnalyticsState:
    """The analytics switch and state of one home."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser()

    @staticmethod
    def env_disabled() -> bool:
        """Whether the environment turns reports off."""
        return os.environ.get(ENV, "").strip().lower() in ("0", "false", "off", "no")

    @property
    def opted_in(self) -> bool:
        """Whether this home opted in (``corral analytics on``)."""
        return setting_flag(self.home, "analytics", "enabled", default=False)

    @property
    def enabled(self) -> bool:
        """Opted in and not disabled by the environment."""
        return not self.env_disabled() and self.opted_in

    def set_opted_in(self, value: bool) -> None:
        write_setting_flag(self.home, "analytics", "enabled", value)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.home / STATE_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write(self, doc: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        write_atomic(self.home / STATE_FILE, json.dumps(doc, sort_keys=True).encode(),
                     mode=0o600)

    @property
    def notice_shown(self) -> bool:
        return bool(self._read().get("notice_shown"))

    def mark_notice_shown(self) -> None:
        doc = self._read()
        doc["notice_shown"] = True
        self._write(doc)

    def nonce(self, day: dt.date) -> str:
        """The nonce of ``day`` (kept for that day only; a new day draws a new one)."""
        doc = self._read()
        nonce, stored = day_nonce(day.isoformat(), doc.get("today"))
        if doc.get("today") != stored:
            doc["today"] = stored
            self._write(doc)
        return nonce
