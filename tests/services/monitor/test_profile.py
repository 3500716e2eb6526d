"""Sampled profiles of real plugin calls: the hot function dominates, waits are labelled."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from helpers.monitored import enabled, write_plugin

from corral import Host
from corral._services.sandboxed import sandbox_problem

CODE = '''
import time


def hot_loop(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def cold_helper(n):
    return sum(range(n))


def work(value, ctx):
    cold_helper(100)
    return hot_loop(value)


def chatty(value, ctx):
    for i in range(value):
        ctx.state.set("notes.k", i)
        ctx.state.get("notes.k")
    return value


def sleepy(value, ctx):
    time.sleep(value)
    return value
'''

EXPORTS = {"work": "work", "chatty": "chatty", "sleepy": "sleepy"}

LEVELS = [
    pytest.param("none", id="in-process"),
    pytest.param("strict", id="strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=f"{sandbox_problem('strict')}")),
]


def _profile(tmp_path: Path, isolation: str, export: str, value: Any, calls: int) -> Any:
    folder = write_plugin(tmp_path / "src", "acme.prof", CODE, EXPORTS, isolation=isolation)
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        host.call(pid, export, value)  # the worker is started and the module imported
        with host.monitor(pid) as report:
            for _ in range(calls):
                host.call(pid, export, value)
    return report


def _self(report: Any) -> dict[str, float]:
    return {f["function"]: f["self_share"] for f in report.functions(50)}


@pytest.mark.parametrize("isolation", LEVELS)
def test_the_cpu_heavy_function_dominates_the_samples(tmp_path: Path, isolation: str) -> None:
    report = _profile(tmp_path, isolation, "work", 400_000, 16)
    shares = _self(report)
    assert report.samples >= 10
    assert max(shares, key=shares.__getitem__) == "hot_loop"
    assert shares["hot_loop"] >= 0.6
    top = report.functions(1)[0]
    assert (top["file"], top["line"]) == ("acme_prof/__init__.py", 5)
    # the export calls hot_loop: it holds the whole sample as its total
    work = next(f for f in report.functions(50) if f["function"] == "work")
    assert work["total_share"] >= 0.9
    assert work["self_share"] < 0.2


@pytest.mark.parametrize("isolation", LEVELS)
def test_waits_on_host_services_are_their_own_frames(tmp_path: Path, isolation: str) -> None:
    report = _profile(tmp_path, isolation, "chatty", 200, 6)
    names = {f["function"] for f in report.functions(50)}
    if isolation == "strict":
        assert {"[broker] state.set", "[broker] state.get"} <= names
        assert report.share("[broker]") >= 0.5
    else:  # in process the plugin calls the host's services directly
        assert any(n.startswith("[host] ") for n in names)
        assert report.share("[host]") >= 0.5
    chatty = next(f for f in report.functions(50) if f["function"] == "chatty")
    assert chatty["total_share"] >= 0.9


@pytest.mark.parametrize("isolation", LEVELS)
def test_sleeping_is_io_named_by_the_call(tmp_path: Path, isolation: str) -> None:
    report = _profile(tmp_path, isolation, "sleepy", 0.05, 4)
    assert report.share("[io] sleep") >= 0.8
    assert _self(report).get("sleepy", 0.0) < 0.2


@pytest.mark.parametrize("isolation", LEVELS)
def test_no_calls_no_samples_and_the_profiler_is_off_afterwards(tmp_path: Path,
                                                                isolation: str) -> None:
    folder = write_plugin(tmp_path / "src", "acme.prof", CODE, EXPORTS, isolation=isolation)
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        with host.monitor(pid) as first:
            for _ in range(3):
                host.call(pid, "work", 400_000)
        for _ in range(3):  # not monitored: its worker's sampler stays parked
            host.call(pid, "work", 400_000)
        with host.monitor(pid) as report:
            pass
        with host.monitor(pid) as second:
            for _ in range(5):
                host.call(pid, "work", 400_000)
    assert first.samples > 0
    if isolation != "none":  # one batch of samples per call, none from unmonitored calls
        assert (first.calls, report.calls, second.calls) == (3, 0, 5)
    assert report.samples == 0
    assert report.functions() == []
    assert second.samples > 0


def test_written_files_are_what_they_say(tmp_path: Path) -> None:
    report = _profile(tmp_path, "none", "work", 300_000, 5)
    svg = tmp_path / "p.svg"
    html = tmp_path / "p.html"
    scope = tmp_path / "p.json"
    assert report.write(svg) == "svg"
    assert report.write(html) == "html"
    assert report.write(scope) == "speedscope"
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert any("hot_loop" in (t.text or "") for t in root.iter("{http://www.w3.org/2000/svg}title"))
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "hot_loop" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no external asset
    doc = json.loads(scope.read_text())
    check_speedscope(doc)
    frames = doc["shared"]["frames"]
    assert any(f["name"] == "hot_loop" and f["file"] == "acme_prof/__init__.py" for f in frames)


def check_speedscope(doc: dict[str, Any]) -> None:
    """The shape of speedscope's file format (its schema's required parts, sampled kind)."""
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    assert isinstance(frames, list)
    assert frames
    for f in frames:
        assert isinstance(f["name"], str)
        assert set(f) <= {"name", "file", "line", "col"}
        if "line" in f:
            assert isinstance(f["line"], int)
    (profile,) = doc["profiles"]
    assert profile["type"] == "sampled"
    assert profile["unit"] == "milliseconds"
    assert isinstance(profile["name"], str)
    assert len(profile["samples"]) == len(profile["weights"])
    for stack in profile["samples"]:
        assert stack
        assert all(isinstance(i, int) and 0 <= i < len(frames) for i in stack)
    assert all(isinstance(w, int | float) and w >= 0 for w in profile["weights"])
    assert profile["startValue"] <= profile["endValue"]
    assert profile["endValue"] == pytest.approx(sum(profile["weights"]), abs=0.01)


HOSTILE = '''
def _burn(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


evil = "</text></g><script>alert(1)</script><g>&amp;\\x1b[2J\\u202e\\ufffe"
_burn.__code__ = _burn.__code__.replace(co_name=evil, co_qualname=evil)


def work(value, ctx):
    return _burn(value)
'''


@pytest.mark.parametrize("isolation", LEVELS)
def test_hostile_function_names_are_escaped_in_every_format(tmp_path: Path,
                                                             isolation: str) -> None:
    folder = write_plugin(tmp_path / "src", "acme.evil", HOSTILE, {"work": "work"},
                          isolation=isolation)
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        with host.monitor(pid) as report:
            for _ in range(6):
                host.call(pid, "work", 300_000)
    top = report.functions(1)[0]["function"]
    assert top.startswith("</text></g><script>")
    assert "\x1b" not in top
    assert "\u202e" not in top
    svg = tmp_path / "evil.svg"
    report.write(svg)
    root = ET.parse(svg).getroot()  # well-formed XML: nothing closed early, nothing illegal
    ns = "{http://www.w3.org/2000/svg}"
    assert not list(root.iter(f"{ns}script"))
    assert not list(root.iter("script"))
    assert {el.tag for el in root.iter()} <= {f"{ns}{t}" for t in ("svg", "title", "rect",
                                                                     "text", "g")}
    assert any("<script>alert(1)</script>" in (t.text or "") for t in root.iter(f"{ns}title"))
    page = (tmp_path / "evil.html")
    report.write(page)
    assert "<script" not in page.read_text()
    scope = tmp_path / "evil.json"
    report.write(scope)
    check_speedscope(json.loads(scope.read_text()))


def test_a_workers_samples_are_checked_before_they_count() -> None:
    from corral._services.monitor.profile import ProfileReport

    report = ProfileReport("acme.x", "strict", 2.0)
    frames = [("f", "a.py", 1), ("g", "a.py", 5), "not a frame", ("h", "a.py", "x")]
    samples = [([0, 1], 3.0), ([0, 7], 1.0), ([0, 2], 1.0), ([1], float("nan")), ([1], -4.0),
               ([0] * 10_000, 1.0), "junk", ([1], 2.0)]
    report.add(frames, samples, 8)
    assert report.stacks == {(0, 1): 3.0, (1,): 2.0}
    assert report.total_ms == 5.0
