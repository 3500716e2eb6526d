"""Hang blame: a call that runs past its time names the plugin frame it was stuck in."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.monitored import enabled, write_plugin

from corral import Host, PluginTimeout
from corral._services.sandboxed import sandbox_problem

# line numbers matter: `x += 1` of spin() is line 7, its call in hang() line 11
CODE = '''
import time


def spin():
    x = 0
    while True: x += 1  # one line: the frame is on it wherever the loop is


def hang(value, ctx):
    spin()


def native(value, ctx):
    return sum(range(10 ** 13))


def quick(value, ctx):
    return value


class Plugin:
    def on_enable(self, ctx):
        spin()


def _hostile():
    while True:
        pass


evil = "\\x1b]0;owned\\x07</title><script>alert(1)</script>\\u202e"
_hostile.__code__ = _hostile.__code__.replace(co_name=evil, co_qualname=evil)


def hostile(value, ctx):
    _hostile()


def decoy():
    while True: pass  # noqa


def threaded(value, ctx):
    import threading
    threading.Thread(target=decoy, daemon=True).start()
    spin()
'''
EXPORTS = {"hang": "hang", "native": "native", "quick": "quick", "hostile": "hostile",
           "threaded": "threaded"}

SANDBOXED = [
    pytest.param(level, marks=pytest.mark.skipif(
        sandbox_problem(level) is not None, reason=f"{sandbox_problem(level)}"))
    for level in ("strict", "limited")
]


def _timeout(tmp_path: Path, isolation: str, export: str) -> PluginTimeout:
    folder = write_plugin(tmp_path / "src", "acme.hang", CODE, EXPORTS, isolation=isolation,
                          sandbox={"timeout-ms": 800})
    with Host(home=tmp_path / "home") as host:
        pid = enabled(host, folder)
        assert host.call(pid, "quick", 1) == 1
        with pytest.raises(PluginTimeout) as caught:
            host.call(pid, export, None)
        assert host.call(pid, "quick", 2) == 2  # a new worker serves the next call
    return caught.value


@pytest.mark.parametrize("isolation", SANDBOXED)
def test_a_spinning_call_names_its_frame(tmp_path: Path, isolation: str) -> None:
    err = _timeout(tmp_path, isolation, "hang")
    blame = err.details["blame"]
    assert blame[0] == {"file": "acme_hang/__init__.py", "line": 7, "function": "spin"}
    assert blame[1] == {"file": "acme_hang/__init__.py", "line": 11, "function": "hang"}
    assert "in spin, acme_hang/__init__.py:7" in err.message
    assert err.details["limit"] == "timeout-ms"
    # only the plugin's own frames: nothing of the worker's call loop
    assert all("serve.py" not in f["file"] for f in blame)


@pytest.mark.skipif(sandbox_problem("strict") is not None, reason="no strict sandbox")
def test_a_call_stuck_in_native_code_is_still_blamed(tmp_path: Path) -> None:
    err = _timeout(tmp_path, "strict", "native")
    assert err.details["blame"][0] == {"file": "acme_hang/__init__.py", "line": 15,
                                       "function": "native"}


@pytest.mark.skipif(sandbox_problem("strict") is not None, reason="no strict sandbox")
def test_a_hostile_function_name_is_neutralised(tmp_path: Path) -> None:
    err = _timeout(tmp_path, "strict", "hostile")
    name = err.details["blame"][0]["function"]
    assert "\x1b" not in name
    assert "\x07" not in name
    assert "\u202e" not in name
    assert name.startswith("\\x1b]0;owned\\x07</title>")
    assert err.details["blame"][1]["function"] == "hostile"


def test_an_in_process_hook_that_hangs_names_its_frame(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "src", "acme.hang", CODE, EXPORTS, isolation="none",
                          entry="Plugin")
    with Host(home=tmp_path / "home", hook_timeout=0.3) as host:
        host.register(folder)
        with pytest.raises(PluginTimeout) as caught:
            host.enable("acme.hang")
    blame = caught.value.details["blame"]
    assert blame[0] == {"file": "acme_hang/__init__.py", "line": 7, "function": "spin"}
    assert blame[1]["function"] == "on_enable"


@pytest.mark.skipif(sandbox_problem("strict") is not None, reason="no strict sandbox")
def test_the_call_thread_is_blamed_not_another_thread_of_the_plugin(tmp_path: Path) -> None:
    err = _timeout(tmp_path, "strict", "threaded")
    functions = [f["function"] for f in err.details["blame"]]
    assert functions == ["spin", "threaded"]


def test_a_dump_is_read_for_the_call_thread_only() -> None:
    from corral._sandbox.blame import parse

    dump = (
        "garbage \x00\x01 before\n"
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/p/acme/side.py", line 3 in decoy\n'
        "\n"
        "Current thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/p/acme/mod.py", line 9 in spin\n'
        '  File "/usr/lib/corral/_sandbox/worker/serve.py", line 300 in _run\n'
    )
    assert parse(dump) == [("/p/acme/mod.py", 9, "spin"),
                           ("/usr/lib/corral/_sandbox/worker/serve.py", 300, "_run")]
    assert parse("no dump at all") == []


def test_only_frames_inside_the_plugin_folder_are_named(tmp_path: Path) -> None:
    from corral._runtime.blame import plugin_frames

    root = tmp_path / "plugin"
    stack = [("/etc/shadow", 1, "secret"), (f"{root}/../outside.py", 2, "escape"),
             (f"{root}x/neighbour.py", 3, "near"), (f"{root}/pkg/m.py", 4, "mine\x1b[2J")]
    assert plugin_frames(stack, str(root)) == [
        {"file": "pkg/m.py", "line": 4, "function": "mine\\x1b[2J"}]


def test_a_blocking_micro_plugin_past_its_limit_names_its_frame(tmp_path: Path) -> None:
    import importlib.util
    import threading
    from types import SimpleNamespace

    from corral._services.micro.manager import MicroManager

    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "slowmicro.py").write_text(
        "def wait_here(gate):\n"
        "    gate.wait(5)\n"
        "\n"
        "def handler(value, ctx):\n"
        "    wait_here(value)\n"
    )
    spec = importlib.util.spec_from_file_location("slowmicro_blame", folder / "slowmicro.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gate = threading.Event()
    mgr = MicroManager()
    try:
        mgr.register(module.handler, id="t.blame.slow", type="utility", max_ms=50,
                     blocking=True, ctx=SimpleNamespace(paths={"plugin": str(folder)}))
        with pytest.raises(PluginTimeout) as caught:
            mgr.execute("t.blame.slow", gate)
    finally:
        gate.set()
        mgr.close()
    assert caught.value.details["blame"] == [
        {"file": "slowmicro.py", "line": 2, "function": "wait_here"},
        {"file": "slowmicro.py", "line": 5, "function": "handler"},
    ]
