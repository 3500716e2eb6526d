"""``corral recommend`` and ``corral analytics`` against real servers on loopback.

Reports go to a plain HTTP server that records every request it receives, so
"nothing was sent" is judged by what arrived, and "the dry run prints exactly
what is sent" by comparing bytes.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral._analytics.report import NOTICE
from corral._cli.main import main
from corral.registry._app import open_server
from corral.registry._insights.recommendations import seed_cousage
from corral.registry._seed import seed
from corral.registry._service import Registry


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, body))
        out = json.dumps({"accepted": True, "duplicate": False, "plugins": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []
    handler = type("Handler", (_Recorder,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def _plugin(root: Path, plugin_id: str, version: str) -> Path:
    src = root / plugin_id
    src.mkdir()
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "{plugin_id}"
        name = "{plugin_id}"
        version = "{version}"
        description = "x"
        license = "MIT"
        authors = [{{ name = "T" }}]

        [exports]
        hello = "hello_mod:hello"
        """))
    (src / "hello_mod.py").write_text("def hello(input, ctx):\n    return 1\n")
    return src


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real home with one plugin registered: pypi.pytest-cov 5.0.0."""
    root = tmp_path_factory.mktemp("home")
    assert main(["--home", str(root / "home"), "add",
                 str(_plugin(root, "pypi.pytest-cov", "5.0.0"))]) == 0
    yield root / "home"
    main(["--home", str(root / "home"), "daemon", "stop"])  # the fork server add started


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_ANALYTICS", raising=False)


def test_off_by_default_sends_nothing(home: Path, recorder: tuple[str, list],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, received = recorder
    main(["--home", str(home), "analytics", "off"])
    code, out, _ = _run(capsys, "--home", str(home), "analytics", "send", "--registry", url,
                        "--json")
    assert code == 0
    assert json.loads(out) == {
        "sent": False, "reason": "analytics is off for this home (corral analytics on)"}
    assert received == []


def test_dry_run_prints_exactly_what_is_sent_and_the_notice_comes_first(
        tmp_path: Path, home: Path, recorder: tuple[str, list],
        capsys: pytest.CaptureFixture[str]) -> None:
    url, received = recorder
    (home / "analytics.json").unlink(missing_ok=True)
    assert _run(capsys, "--home", str(home), "analytics", "on", "--json")[0] == 0
    _, preview, _ = _run(capsys, "--home", str(home), "analytics", "preview")
    _, dry, _ = _run(capsys, "--home", str(home), "analytics", "send", "--dry-run",
                     "--registry", url)
    assert received == []  # a dry run sends nothing
    assert dry == preview
    code, out, err = _run(capsys, "--home", str(home), "analytics", "send", "--registry", url)
    assert code == 0
    assert out.startswith("report sent")
    assert NOTICE in err  # shown before the first report
    assert received == [("/v1/reports", preview.rstrip("\n").encode())]
    doc = json.loads(preview)
    assert doc["plugins"] == [{"id": "pypi.pytest-cov", "version": "5.0.0"}]
    assert set(doc) == {"schema", "day", "nonce", "corral_version", "plugins"}
    assert str(home) not in preview
    assert str(tmp_path) not in preview
    _, _, err2 = _run(capsys, "--home", str(home), "analytics", "send", "--registry", url)
    assert NOTICE not in err2  # only before the first
    assert received[1] == received[0]  # same day: the same report, counted once


def test_corral_analytics_0_sends_nothing(home: Path, recorder: tuple[str, list],
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, received = recorder
    main(["--home", str(home), "analytics", "on", "--json"])
    monkeypatch.setenv("CORRAL_ANALYTICS", "0")
    code, out, _ = _run(capsys, "--home", str(home), "analytics", "send", "--registry", url)
    assert code == 0
    assert "nothing sent" in out
    assert received == []
    monkeypatch.delenv("CORRAL_ANALYTICS")
    _run(capsys, "--home", str(home), "analytics", "send", "--registry", url)
    assert len(received) == 1  # positive control: the same home sends without it


def test_no_identifier_links_two_days(home: Path, recorder: tuple[str, list],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, received = recorder
    main(["--home", str(home), "analytics", "on", "--json"])
    _run(capsys, "--home", str(home), "analytics", "send", "--registry", url)
    first = json.loads(received[0][1])
    # the next day: what the home kept is dated yesterday
    state = json.loads((home / "analytics.json").read_text())
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    state["today"]["day"] = yesterday
    (home / "analytics.json").write_text(json.dumps(state))
    _run(capsys, "--home", str(home), "analytics", "send", "--registry", url)
    second = json.loads(received[1][1])
    assert second["nonce"] != first["nonce"]
    assert {k for k in first if first[k] != second[k]} == {"nonce"}
    assert first["nonce"] not in (home / "analytics.json").read_text()


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("reg")
    cat = tmp / "catalogue.tsv"
    cat.write_text("name\tversion\tmonth\tpopularity_rank\tsummary\n"
                   "pytest-cov\t5.0\t2026-10\t50\tcoverage\n"
                   "pytest-xdist\t3.6\t2026-10\t80\tparallel tests\n"
                   "pytest-mock\t3.1\t2026-10\t90\tmocks\n")
    sets = tmp / "cousage.tsv"
    sets.write_text("repo\tfamily\tsource_path\tplugins\n" + "".join(
        f"o/r{n}\tpytest\tp\tpytest-cov,pytest-xdist\n" for n in range(3)) +
        "o/m\tpytest\tp\tpytest-mock,pytest-xdist\n")
    reg = Registry.open(tmp / "data")
    seed(reg, cat)
    seed_cousage(reg.engine, sets)
    with open_server(reg) as url:
        yield url
    reg.close()


def test_recommend_json_for_the_home_and_with(home: Path, registry_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--home", str(home), "recommend", "--registry", registry_url,
                        "--json")
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == ["recommendations"]
    first = doc["recommendations"][0]
    assert set(first) == {"id", "score", "reasons"}
    assert first["id"] == "pypi.pytest-xdist"  # from the home's pytest-cov
    assert first["reasons"][0] == (
        "used with pytest-cov in 100% of projects that use it (lift 1.0)")
    assert first["reasons"][-1].startswith("compatible with your corral ")
    _, out, _ = _run(capsys, "--home", str(home), "recommend", "--with", "pypi.pytest-xdist",
                     "--limit", "1", "--registry", registry_url, "--json")
    got = json.loads(out)["recommendations"]
    assert [r["id"] for r in got] == ["pypi.pytest-cov"]
    code, out, _ = _run(capsys, "--home", str(home), "recommend", "--with", "pypi.pytest-xdist",
                        "--registry", registry_url)
    assert code == 0
    assert "pypi.pytest-cov" in out
    assert "used with pytest-xdist" in out


def test_recommend_refuses_a_bad_limit_and_a_bad_id(home: Path, registry_url: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--home", str(home), "recommend", "--limit", "0",
                        "--registry", registry_url)
    assert code == 2
    assert "--limit" in err
    code, out, _ = _run(capsys, "--home", str(home), "recommend", "--with", "a b",
                        "--registry", registry_url, "--json")
    assert code == 2
    assert json.loads(out)["error"]["code"] == "usage"


def test_registry_seed_cousage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = Path(__file__).resolve().parents[2] / "examples" / "cousage.tsv"
    data = str(tmp_path / "reg")
    code, out, _ = _run(capsys, "registry", "seed", "--cousage", str(sets), "--data", data,
                        "--json")
    assert code == 0
    assert json.loads(out) == {"cousage": {"added": 372, "skipped": 0}}
    _, out, _ = _run(capsys, "registry", "seed", "--cousage", str(sets), "--data", data,
                     "--json")
    assert json.loads(out) == {"cousage": {"added": 0, "skipped": 372}}  # seeding twice
    code, _, err = _run(capsys, "registry", "seed", "--data", data)
    assert code == 2
    assert "--cousage" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("repo\tplugins\nx\ta,b\n")
    code, _, err = _run(capsys, "registry", "seed", "--cousage", str(bad), "--data", data)
    assert code == 2
    assert "missing columns family" in err
