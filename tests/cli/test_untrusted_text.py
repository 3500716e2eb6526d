"""Plugin text at the host's faces, judged by the exact bytes the CLI prints.

A hostile plugin puts escape sequences (clear screen, window title, OSC 52
clipboard), C1 controls, bidi overrides and forged ``corral: error:`` lines in
its results, exceptions, log records, manifest and unknown manifest keys; none
may reach the terminal raw, ``--json`` must keep the exact string, and
ordinary unicode must print unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import close_quietly

from corral import Host
from corral._model.text import neutralise
from corral._services.sandboxed import sandbox_problem

HOSTILE = ("ok\x1b[2J\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIH4=\x07\u202eexe.txt\u2066\x9b2J"
           "\ncorral: error: forged\r\x00")
#: What the CLI prints for HOSTILE from plugin acme.evil.
SHOWN = (b"ok\\x1b[2J\\x1b]0;pwned\\x07\\x1b]52;c;cm0gLXJmIH4=\\x07\\u202eexe.txt\\u2066\\u009b2J"
         b"\n  acme.evil| corral: error: forged\\x0d\\x00")
FRIENDLY = "héllo 日本 😀 👨\u200d👩\u200d👧 a\tb"
SECRET = "s3cr3t-Value-4711"
#: Bytes that must never reach a terminal from a plugin.
RAW = [b"\x1b", b"\x07", b"\x00", b"\r", "\x9b".encode(), "\u202e".encode(), "\u2066".encode()]

CODE = f'''
HOSTILE = {HOSTILE!r}
FRIENDLY = {FRIENDLY!r}


def result(value, ctx):
    return HOSTILE


def friendly(value, ctx):
    return FRIENDLY


def boom(value, ctx):
    raise ValueError(HOSTILE)


def log(value, ctx):
    ctx.log.warning(HOSTILE)
    return "logged"


def leak_log(value, ctx):
    ctx.log.warning("token=%s", ctx.secrets.get("token"))
    return "logged"


def leak_raise(value, ctx):
    raise RuntimeError("token=" + ctx.secrets.get("token"))


def leak_return(value, ctx):
    return {{"token": ctx.secrets.get("token"), "text": "token=" + ctx.secrets.get("token")}}


def leak_text(value, ctx):
    return "token=" + ctx.secrets.get("token")


def leak_publish(value, ctx):
    ctx.events.publish("evil.leak", {{"token": ctx.secrets.get("token")}})
    return "published"


class Plugin:
    def on_enable(self, ctx):
        if ctx.config.get("fail"):
            raise RuntimeError("cannot start with token=" + ctx.secrets.get("token"))
'''

EXPORTS = ("result", "friendly", "boom", "log", "leak_log", "leak_raise", "leak_return",
           "leak_text", "leak_publish")


def manifest(isolation: str, *, name: str = "Evil", description: str = "evil",
             extra: str = "") -> str:
    exports = "\n".join(f'{e} = "evil_mod:{e}"' for e in EXPORTS)
    return f'''[plugin]
id = "acme.evil"
name = {json.dumps(name)}
version = "1.0.0"
description = {json.dumps(description)}
entry = "evil_mod:Plugin"
{extra}
[sandbox]
isolation = "{isolation}"

[permissions]
host-api = ["secrets:token", "events.publish:evil.*"]

[exports]
{exports}
'''


def make_evil(root: Path, isolation: str = "none", **kw: Any) -> Path:
    plugin = root / "src" / "acme.evil"
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "evil_mod.py").write_text(CODE)
    (plugin / "corral.toml").write_text(manifest(isolation, **kw))
    return plugin


@dataclass
class Out:
    code: int
    out: bytes
    err: bytes

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Out]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``python -m corral`` for real, with its exact bytes."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOME", "XDG_DATA_HOME")}
    env["CORRAL_HOME"] = str(tmp_path / "home")
    env["CORRAL_SECRETS_KEYRING"] = "0"
    (tmp_path / "ws").mkdir(exist_ok=True)

    def run(*args: str, stdin: str = "") -> Out:
        proc = subprocess.run([sys.executable, "-m", "corral", *args], input=stdin.encode(),
                              capture_output=True, cwd=tmp_path / "ws", env=env, timeout=120,
                              check=False)
        return Out(proc.returncode, proc.stdout, proc.stderr)

    return run


ISOLATIONS = ["none", pytest.param("limited", marks=pytest.mark.skipif(
    sandbox_problem("limited") is not None, reason="no sandbox here"))]


@pytest.fixture(params=ISOLATIONS)
def evil(request: pytest.FixtureRequest, tmp_path: Path, cli: Cli) -> Cli:
    """acme.evil registered and enabled (in-process and sandboxed), secret ``token`` set."""
    assert cli("secret", "set", "token", stdin=SECRET).code == 0
    res = cli("add", str(make_evil(tmp_path, request.param)))
    assert res.code == 0, res.err
    res = cli("enable", "acme.evil")
    assert res.code == 0, res.err
    return cli


def assert_safe(data: bytes) -> None:
    """No raw control or bidi byte, and no line a plugin could pass off as the host's."""
    for raw in RAW:
        assert raw not in data, (raw, data)
    lines = data.split(b"\n")
    assert not any(line.startswith(b"corral: error: forged") for line in lines), data


# -- the one function ---------------------------------------------------------------


@pytest.mark.parametrize("char", [*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xa0)),
                                  "\u061c", "\u200e", "\u200f", "\u2028", "\u2029",
                                  *map(chr, range(0x202a, 0x202f)),
                                  *map(chr, range(0x2066, 0x206a)), chr(0xd800), chr(0xdfff)])
def test_every_unsafe_character_is_shown_as_its_code(char: str) -> None:
    shown = neutralise(f"a{char}b", one_line=True)
    code = ord(char)
    assert shown == (f"a\\x{code:02x}b" if code < 0x20 else f"a\\u{code:04x}b")
    assert shown.isascii()
    assert shown.isprintable()


def test_lines_keep_their_place_under_the_source() -> None:
    assert neutralise("one\ncorral: error: two", "acme.x") == "one\n  acme.x| corral: error: two"
    assert neutralise("one\ntwo") == "one\ntwo"  # host text: newlines stay
    assert neutralise("a\tb\nc", one_line=True) == "a\\x09b\\x0ac"
    # a source naming itself with a newline is kept to one line too
    assert neutralise("a\nb", "x\ny") == "a\n  x\\x0ay| b"
    # the stdout/stderr pass leaves what a face already neutralised as it is
    assert neutralise(neutralise(HOSTILE, "p")) == neutralise(HOSTILE, "p")


def test_ordinary_unicode_is_untouched() -> None:
    assert neutralise(FRIENDLY) == FRIENDLY
    assert neutralise("naïve — “quoted” ½ ß", one_line=True) == "naïve — “quoted” ½ ß"


# -- results, errors and logs through `corral call` ----------------------------------


def test_a_text_result_prints_neutralised(evil: Cli) -> None:
    res = evil("call", "acme.evil", "result")
    assert res.code == 0, res.err
    assert res.out == SHOWN + b"\n"
    assert_safe(res.out)


def test_json_keeps_the_exact_string(evil: Cli) -> None:
    res = evil("call", "acme.evil", "result", "--json")
    assert res.code == 0, res.err
    assert res.json() == {"result": HOSTILE}
    assert_safe(res.out)


def test_ordinary_unicode_prints_unchanged(evil: Cli) -> None:
    res = evil("call", "acme.evil", "friendly")
    assert res.out == FRIENDLY.encode() + b"\n"
    assert evil("call", "acme.evil", "friendly", "--json").json() == {"result": FRIENDLY}


def test_an_exception_cannot_forge_a_host_line(evil: Cli) -> None:
    res = evil("call", "acme.evil", "boom")
    assert res.code != 0
    assert res.out == b""
    assert_safe(res.err)
    first, *rest = res.err.rstrip(b"\n").split(b"\n")
    assert first.startswith(b"corral: error: ")
    assert b"ok\\x1b[2J\\x1b]0;pwned\\x07" in first
    assert rest  # the forged line and the traceback follow, each under the plugin's id
    assert rest  # all() below must not pass on nothing
    assert all(line.startswith(b"  acme.evil| ") for line in rest), res.err
    doc = evil("call", "acme.evil", "boom", "--json").json()
    assert HOSTILE in doc["error"]["message"]


def test_a_log_record_prints_under_its_plugin(evil: Cli) -> None:
    res = evil("call", "acme.evil", "log")
    assert res.code == 0
    assert res.out == b"logged\n"
    assert b"acme.evil: warning: " + SHOWN + b"\n" in res.err
    assert_safe(res.err)


def test_log_records_name_their_plugin_in_a_field(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logging.getLogger("corral").addHandler(keep)
    host = Host(home=tmp_path / "home", workspace=tmp_path)
    try:
        host.register(make_evil(tmp_path, "none"))
        host.enable("acme.evil")
        assert host.call("acme.evil", "log") == "logged"
    finally:
        logging.getLogger("corral").removeHandler(keep)
        close_quietly(host)
    [record] = [r for r in records if r.name == "corral.plugin.acme.evil"]
    assert record.plugin_id == "acme.evil"  # type: ignore[attr-defined]
    assert record.getMessage() == HOSTILE  # the record stays exact; printers neutralise


# -- manifest text ----------------------------------------------------------------------


def test_manifest_name_and_description_are_neutralised(tmp_path: Path, cli: Cli) -> None:
    cli("add", str(make_evil(tmp_path, name=f"Evil{HOSTILE}", description=HOSTILE)))
    listed = cli("list")
    assert listed.code == 0, listed.err
    assert_safe(listed.out)
    [row] = listed.out.splitlines()[1:]  # one row: the newline became \x0a
    assert b"ok\\x1b[2J" in row
    info = cli("info", "acme.evil")
    assert info.code == 0, info.err
    assert_safe(info.out)
    name_line = info.out.splitlines()[1]
    assert name_line.startswith(b"  Evilok\\x1b[2J\\x1b]0;pwned\\x07")
    assert b"\\x0acorral: error: forged" in name_line
    validated = cli("validate", str(tmp_path / "src" / "acme.evil"), "--no-sandbox")
    assert_safe(validated.out + validated.err)
    doc = cli("list", "--json").json()
    assert doc["plugins"][0]["description"] == HOSTILE


def test_unknown_manifest_keys_echoed_by_validate(tmp_path: Path, cli: Cli) -> None:
    key = json.dumps("x\x1b]52;c;AAAA\x07\ncorral: error: forged \u202e")
    plugin = make_evil(tmp_path, extra=f"{key} = 1\n")
    res = cli("validate", str(plugin), "--no-sandbox")
    assert res.code == 3
    assert_safe(res.out + res.err)
    assert b"x\\x1b]52;c;AAAA\\x07" in res.out
    assert b"\n  " + str(plugin).encode() + b"| corral: error: forged \\u202e" in res.out
    doc = cli("validate", str(plugin), "--no-sandbox", "--json").json()
    assert "x\x1b]52;c;AAAA\x07\ncorral: error: forged \u202e" in doc["errors"][0]["message"]


# -- secrets ----------------------------------------------------------------------------


def test_a_logged_secret_is_redacted(evil: Cli) -> None:
    res = evil("call", "acme.evil", "leak_log")
    assert res.code == 0
    assert b"acme.evil: warning: token=***\n" in res.err
    assert SECRET.encode() not in res.out + res.err


def test_a_secret_in_an_exception_is_redacted(evil: Cli) -> None:
    res = evil("call", "acme.evil", "leak_raise")
    assert res.code != 0
    assert b"token=***" in res.err
    assert SECRET.encode() not in res.out + res.err
    res = evil("call", "acme.evil", "leak_raise", "--json")
    assert SECRET not in json.dumps(res.json())
    assert "token=***" in res.json()["error"]["message"]


def test_a_returned_secret_is_redacted_in_text_and_json(evil: Cli) -> None:
    res = evil("call", "acme.evil", "leak_text")
    assert res.out == b"token=***\n"
    res = evil("call", "acme.evil", "leak_return", "--json")
    assert res.json() == {"result": {"token": "***", "text": "token=***"}}
    res = evil("call", "acme.evil", "leak_return")
    assert SECRET.encode() not in res.out
    assert b'"token": "***"' in res.out


def test_a_published_secret_is_not_printed_but_kept_for_subscribers(
    evil: Cli, tmp_path: Path
) -> None:
    """Events are data between plugins: stored exact, never printed (see docs/output.md)."""
    res = evil("call", "acme.evil", "leak_publish")
    assert res.out == b"published\n"
    assert SECRET.encode() not in res.out + res.err


def test_a_secret_in_a_failed_hook_is_neither_printed_nor_stored(
    tmp_path: Path, cli: Cli
) -> None:
    assert cli("secret", "set", "token", stdin=SECRET).code == 0
    assert cli("add", str(make_evil(tmp_path))).code == 0
    assert cli("config", "set", "acme.evil", "fail", "true").code == 0
    res = cli("enable", "acme.evil")
    assert res.code != 0
    assert b"token=***" in res.err
    assert SECRET.encode() not in res.out + res.err
    db = tmp_path / "home" / "corral.db"
    conn = sqlite3.connect(db)
    try:
        stored = " ".join(str(row) for row in conn.execute("SELECT * FROM plugins"))
    finally:
        conn.close()
    assert "token=***" in stored
    assert SECRET not in stored
    info = cli("info", "acme.evil")
    assert b"token=***" in info.out
    assert SECRET.encode() not in info.out + info.err


@pytest.fixture
def no_secret_leak_in_host_logs(tmp_path: Path) -> Iterator[list[str]]:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    logging.getLogger("corral").addHandler(keep)
    try:
        yield seen
    finally:
        logging.getLogger("corral").removeHandler(keep)


def test_the_host_redacts_its_plugin_loggers(
    tmp_path: Path, no_secret_leak_in_host_logs: list[str]
) -> None:
    """An application embedding the host gets redacted records without doing anything."""
    host = Host(home=tmp_path / "home", workspace=tmp_path)
    try:
        host.secrets.set("token", SECRET)
        host.register(make_evil(tmp_path))
        host.enable("acme.evil")
        assert host.call("acme.evil", "leak_log") == "logged"
        assert host.call("acme.evil", "leak_text") == "token=" + SECRET  # the API is exact
    finally:
        close_quietly(host)
    assert "token=***" in no_secret_leak_in_host_logs
    assert not any(SECRET in m for m in no_secret_leak_in_host_logs)


# -- a hostile registry -------------------------------------------------------------------


@pytest.fixture
def hostile_registry() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering search and show with hostile text."""
    import http.server
    import threading

    entry = {"id": "acme.evil", "name": f"Evil{HOSTILE}", "version": "1.0.0",
             "summary": HOSTILE, "downloads": 7, "rating": 5, "verified": False,
             "publisher": f"mallory{HOSTILE}", "tags": [], "category": None}
    bodies = {
        "/v1/search": {"results": [entry], "total": 1},
        "/v1/plugins/acme.evil": {**entry, "versions": [
            {"version": f"1.0.0{HOSTILE}", "yanked": False, "sha256": None}]},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            body = bodies.get(path, {"error": {"code": "not_found", "message": HOSTILE}})
            data = json.dumps(body).encode()
            self.send_response(200 if path in bodies else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_search_and_show_are_neutralised(hostile_registry: str, cli: Cli) -> None:
    found = cli("search", "evil", "--registry", hostile_registry)
    assert found.code == 0, found.err
    assert_safe(found.out)
    assert len(found.out.splitlines()) == 2  # one row and the count: no forged lines
    shown = cli("show", "acme.evil", "--registry", hostile_registry)
    assert shown.code == 0, shown.err
    assert_safe(shown.out)
    assert not any(line.startswith(b"corral: ") for line in shown.out.splitlines())
    missing = cli("show", "acme.nope", "--registry", hostile_registry)
    assert missing.code != 0
    assert_safe(missing.err)
    assert missing.err.startswith(b"corral: error: ok\\x1b[2J")
    assert b"\n  registry| corral: error: forged" in missing.err
    doc = cli("show", "acme.evil", "--registry", hostile_registry, "--json").json()
    assert doc["summary"] == HOSTILE


def test_a_secret_with_quotes_is_redacted_inside_json_too(tmp_path: Path, cli: Cli) -> None:
    tricky = 'pa"ss\\word\u202e-1'
    assert cli("secret", "set", "token", stdin=tricky).code == 0
    assert cli("add", str(make_evil(tmp_path))).code == 0
    assert cli("enable", "acme.evil").code == 0
    res = cli("call", "acme.evil", "leak_return", "--json")
    assert res.json() == {"result": {"token": "***", "text": "token=***"}}
    res = cli("call", "acme.evil", "leak_text")
    assert res.out == b"token=***\n"
