"""The opt-in report: exactly its fields, hostile input refused, no link across days."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from corral._analytics.report import (
    MAX_PLUGINS,
    build_report,
    check_report,
    day_nonce,
    report_bytes,
)
from corral._analytics.state import AnalyticsState
from corral._errors import UsageError

DAY = dt.date(2026, 12, 7)


def _report(**over: object) -> dict[str, object]:
    doc = build_report([("acme.b", "2.0"), ("acme.a", "1.0")], "1.2.3", day=DAY,
                       nonce="0" * 32)
    doc.update(over)
    return doc


def test_a_report_holds_the_installed_set_and_the_version_only() -> None:
    doc = _report()
    assert set(doc) == {"schema", "day", "nonce", "corral_version", "plugins"}
    assert doc["plugins"] == [{"id": "acme.a", "version": "1.0"},
                              {"id": "acme.b", "version": "2.0"}]
    assert json.loads(report_bytes(doc)) == doc


@pytest.mark.parametrize(("over", "field"), [
    ({"host": "my-laptop"}, "host"),
    ({"nonce": "ABC"}, "nonce"),
    ({"day": "2026-13-01"}, "day"),
    ({"schema": 2}, "schema"),
    ({"corral_version": "1.0; rm -rf /"}, "corral_version"),
    ({"plugins": [{"id": "../../etc/passwd", "version": "1"}]}, "plugins.0.id"),
    ({"plugins": [{"id": "acme.<script>", "version": "1"}]}, "plugins.0.id"),
    ({"plugins": [{"id": "acme.a", "version": "1", "path": "/home/me"}]}, "plugins.0"),
    ({"plugins": [{"id": "acme.a", "version": "1"}] * 2}, "plugins.1.id"),
    ({"plugins": [{"id": f"acme.p{i}", "version": "1"} for i in range(MAX_PLUGINS + 1)]},
     "plugins"),
])
def test_malformed_or_hostile_reports_are_refused(over: dict[str, object], field: str) -> None:
    with pytest.raises(UsageError) as err:
        check_report(_report(**over))
    assert err.value.details["field"] == field


def test_the_nonce_is_new_each_day_and_kept_within_it(tmp_path: Path) -> None:
    state = AnalyticsState(tmp_path)
    first = state.nonce(DAY)
    assert state.nonce(DAY) == first  # a second report that day is the same host
    nxt = state.nonce(DAY + dt.timedelta(days=1))
    assert nxt != first
    # nothing of the first day is left on disk to link them
    assert first not in (tmp_path / "analytics.json").read_text()
    a = build_report([("acme.a", "1.0")], "1.0", day=DAY, nonce=first)
    b = build_report([("acme.a", "1.0")], "1.0", day=DAY + dt.timedelta(days=1), nonce=nxt)
    assert {k for k in a if a[k] != b[k]} == {"day", "nonce"}


def test_day_nonce_refuses_a_stale_or_malformed_stored_value() -> None:
    assert day_nonce("2026-12-07", {"day": "2026-12-06", "nonce": "a" * 32})[0] != "a" * 32
    assert day_nonce("2026-12-07", {"day": "2026-12-07", "nonce": "x"})[0] != "x"
    assert day_nonce("2026-12-07", {"day": "2026-12-07", "nonce": "a" * 32})[0] == "a" * 32


def test_analytics_is_off_by_default_and_the_environment_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_ANALYTICS", raising=False)
    state = AnalyticsState(tmp_path)
    assert not state.enabled
    (tmp_path / "settings.toml").write_text("# keep me\n[sandbox]\nx = 1\n")
    state.set_opted_in(True)
    assert state.enabled
    assert "# keep me" in (tmp_path / "settings.toml").read_text()
    monkeypatch.setenv("CORRAL_ANALYTICS", "0")
    assert state.opted_in
    assert not state.enabled
