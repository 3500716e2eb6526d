"""Messages to sandboxed plugins: ``on_message`` runs in the receiver's strict worker.

One real host with a strict receiver, a strict receiver without a handler, a
strict sender and an in-process sender: replies come back from the worker,
grants are checked on the sender, a raise, a timeout and a crash of the worker
fail that one delivery, and a message whose sender gave up is never handled.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Host
from corral._errors import (
    NotFoundError,
    PermissionDenied,
    PluginError,
    PluginTimeout,
    UsageError,
    WorkerCrashed,
)
from corral._services.sandboxed import sandbox_problem

RECV = "acme.recv"
MUTE = "acme.mute"
SSEND = "acme.ssend"
LOCAL = "acme.local"
NOGRANT = "acme.nogrant"

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

RECV_CODE = '''
import os
import time

HANDLED = []


class Plugin:
    def on_message(self, message, sender, ctx):
        HANDLED.append(message.get("tag") if isinstance(message, dict) else message)
        if not isinstance(message, dict):
            return {"echo": message, "from": sender}
        if message.get("fail"):
            raise ValueError("asked to fail")
        if message.get("crash"):
            os._exit(9)  # (a PID namespace's init ignores its own SIGKILL)
        if message.get("sleep"):
            time.sleep(message["sleep"])
        if "store" in message:
            ctx.state.set("recv.last", message["store"])
        if message.get("forward"):
            return ctx.messages.send(message["forward"], {"tag": "forwarded"}, timeout=2.0)
        return {"echo": message, "from": sender, "by": ctx.plugin_id,
                "ctx": type(ctx).__name__}


def handled(input, ctx):
    return HANDLED


def busy(input, ctx):
    time.sleep(input)
    return "done"


def send_self(input, ctx):
    return ctx.messages.send("acme.recv", {"tag": "self"}, timeout=1.0)
'''

MUTE_CODE = '''
class Plugin:
    def on_enable(self, ctx):
        pass


def ping(input, ctx):
    return "pong"
'''

SENDER_CODE = '''
def send(input, ctx):
    return ctx.messages.send(input["to"], input["message"], timeout=input.get("timeout", 5.0))


def broadcast(input, ctx):
    return ctx.messages.broadcast(input)


class Plugin:
    def on_message(self, message, sender, ctx):
        return {"local-echo": message, "from": sender}
'''


def _plugin(root: Path, pid: str, code: str, isolation: str, grants: list[str],
            exports: list[str], entry: bool = True) -> Path:
    pkg = pid.replace(".", "_")
    d = root / "src" / pid
    (d / pkg).mkdir(parents=True)
    (d / pkg / "__init__.py").write_text(code)
    exported = "\n".join(f'{e} = "{pkg}:{e}"' for e in exports)
    (d / "corral.toml").write_text(textwrap.dedent(f"""
        [plugin]
        id = "{pid}"
        name = "{pid}"
        version = "1.0.0"
        {f'entry = "{pkg}:Plugin"' if entry else ""}

        [permissions]
        host-api = {grants!r}

        [sandbox]
        isolation = "{isolation}"
        timeout-ms = 15000

        [exports]
        """) + exported + "\n")
    return d


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("msgs")
    plugins = [
        _plugin(root, RECV, RECV_CODE, "strict",
                ["state.write:recv.*", f"messages.send:{RECV}", f"messages.send:{LOCAL}"],
                ["handled", "busy", "send_self"]),
        _plugin(root, MUTE, MUTE_CODE, "strict", [], ["ping"]),
        _plugin(root, SSEND, SENDER_CODE, "strict",
                [f"messages.send:{RECV}", f"messages.send:{MUTE}"], ["send", "broadcast"],
                entry=False),
        _plugin(root, LOCAL, SENDER_CODE, "none", [f"messages.send:{RECV}"],
                ["send", "broadcast"]),
        _plugin(root, NOGRANT, SENDER_CODE, "strict", [], ["send"], entry=False),
    ]
    with Host(home=root / "home", workspace=root) as h:
        h.register(*plugins)
        for pid in (RECV, MUTE, SSEND, LOCAL, NOGRANT):
            h.enable(pid)
        yield h


def _handled(host: Host) -> list[Any]:
    out: list[Any] = host.call(RECV, "handled")
    return out


def test_only_a_sandboxed_entry_with_on_message_receives(host: Host) -> None:
    receivers = host.messenger.receivers()
    assert RECV in receivers
    assert LOCAL in receivers
    assert MUTE not in receivers  # its entry has no on_message
    assert SSEND not in receivers  # no entry at all
    with pytest.raises(UsageError, match=f"{MUTE} does not receive messages"):
        host.call(SSEND, "send", {"to": MUTE, "message": 1})


def test_the_host_sends_and_the_worker_replies(host: Host) -> None:
    reply = host.messenger.send(RECV, {"tag": "from-host", "n": 1}, timeout=10.0)
    assert reply == {"echo": {"tag": "from-host", "n": 1}, "from": None, "by": RECV,
                     "ctx": "WorkerContext"}
    assert "from-host" in _handled(host)


def test_in_process_and_strict_senders_reach_the_strict_receiver(host: Host) -> None:
    got = host.call(LOCAL, "send", {"to": RECV, "message": {"tag": "from-local"}})
    assert got["from"] == LOCAL
    assert got["ctx"] == "WorkerContext"
    got = host.call(SSEND, "send", {"to": RECV, "message": {"tag": "from-strict"}})
    assert got["from"] == SSEND
    assert got["by"] == RECV
    # a sandboxed receiver answers a sandboxed plugin's message to an in-process one, too
    assert host.call(RECV, "handled")  # the worker is up
    assert host.messenger.send(RECV, {"tag": "fwd", "forward": LOCAL}) == {
        "local-echo": {"tag": "forwarded"}, "from": RECV}


def test_the_sender_needs_the_grant(host: Host) -> None:
    with pytest.raises(PermissionDenied) as info:
        host.call(NOGRANT, "send", {"to": RECV, "message": {"tag": "denied"}})
    assert info.value.permission == f"host-api:messages.send:{RECV}"
    assert "denied" not in _handled(host)
    with pytest.raises(NotFoundError, match=r"acme\.nobody"):
        host.messenger.send("acme.nobody", 1)


def test_the_handlers_ctx_has_the_receivers_services(host: Host) -> None:
    host.messenger.send(RECV, {"tag": "store", "store": {"kept": True}})
    got = host.shared_state.get("recv.last")
    assert got is not None
    assert got.value == {"kept": True}
    assert got.updated_by == RECV


def test_a_broadcast_reaches_the_worker_without_a_reply(host: Host) -> None:
    sent = host.call(LOCAL, "broadcast", {"tag": "all"})
    assert sent == [RECV]  # LOCAL itself and the ungranted receivers are skipped
    deadline = time.monotonic() + 10
    while "all" not in _handled(host):
        assert time.monotonic() < deadline, "the broadcast never reached the worker"
        time.sleep(0.05)


def test_a_raising_handler_is_a_plugin_error_with_its_traceback(host: Host) -> None:
    with pytest.raises(PluginError) as info:
        host.call(LOCAL, "send", {"to": RECV, "message": {"tag": "fail", "fail": True}})
    # the in-process sender sees a PluginError raised into its own call
    assert "asked to fail" in info.value.message
    with pytest.raises(PluginError) as direct:
        host.messenger.send(RECV, {"tag": "fail2", "fail": True})
    assert direct.value.message.startswith(f"{RECV} failed handling a message from the host")
    assert "ValueError: asked to fail" in direct.value.message
    assert "ValueError" in direct.value.details["traceback"]
    assert direct.value.details["receiver"] == RECV
    assert host.messenger.send(RECV, "still fine")["echo"] == "still fine"


def test_a_slow_handler_times_the_sender_out_and_the_receiver_recovers(host: Host) -> None:
    with pytest.raises(PluginTimeout, match=f"{RECV} did not answer within 0.3 s"):
        host.messenger.send(RECV, {"tag": "slow", "sleep": 1.0}, timeout=0.3)
    # No clock: had the sender waited for the 1 s handler it would have got
    # its echo back, not a PluginTimeout naming the 0.3 s limit.
    assert host.messenger.send(RECV, "after slow", timeout=10.0)["echo"] == "after slow"


def test_a_message_whose_sender_gave_up_is_never_handled(host: Host) -> None:
    host.call(RECV, "handled")  # the worker is up
    done: list[Any] = []
    t = threading.Thread(target=lambda: done.append(host.call(RECV, "busy", 1.0)))
    t.start()
    time.sleep(0.2)  # the worker is inside "busy": the message waits behind it
    with pytest.raises(PluginTimeout):
        host.messenger.send(RECV, {"tag": "expired"}, timeout=0.3)
    t.join()
    assert done == ["done"]
    # FIFO: once this reply is back, the expired message was taken and dropped
    assert host.messenger.send(RECV, {"tag": "next"}, timeout=10.0)["echo"] == {"tag": "next"}
    handled = _handled(host)
    assert "next" in handled
    assert "expired" not in handled


def test_a_worker_crash_fails_that_delivery_only(host: Host) -> None:
    before = host.attachments.supervisor().worker_pid(RECV)
    assert before is not None
    with pytest.raises(WorkerCrashed) as info:
        host.call(SSEND, "send", {"to": RECV, "message": {"tag": "crash", "crash": True}})
    assert "exited with status 9" in info.value.message
    # the next message starts a new worker; the other plugins never noticed
    reply = host.call(SSEND, "send", {"to": RECV, "message": {"tag": "revived"}})
    assert reply["echo"] == {"tag": "revived"}
    assert host.attachments.supervisor().worker_pid(RECV) not in (None, before)
    assert host.call(MUTE, "ping") == "pong"
    assert host.call(LOCAL, "send", {"to": RECV, "message": "x"})["from"] == LOCAL
    with pytest.raises(WorkerCrashed) as direct:
        host.messenger.send(RECV, {"tag": "crash", "crash": True})
    assert direct.value.details["receiver"] == RECV
    assert host.messenger.send(RECV, "again")["echo"] == "again"


def test_a_sandboxed_plugin_cannot_message_itself(host: Host) -> None:
    # Refused at once: a send that waited out its timeout would raise
    # PluginTimeout, not this UsageError.
    with pytest.raises(UsageError, match=f"{RECV} cannot send a message to itself"):
        host.call(RECV, "send_self")


def test_disable_stops_delivery_and_enable_restores_it(host: Host) -> None:
    host.disable(RECV)
    try:
        assert RECV not in host.messenger.receivers()
        with pytest.raises(UsageError, match=f"plugin {RECV} is disabled"):
            host.messenger.send(RECV, "while disabled")
        with pytest.raises(UsageError, match=f"plugin {RECV} is disabled"):
            host.call(SSEND, "send", {"to": RECV, "message": "while disabled"})
        assert host.attachments.supervisor().worker_pid(RECV) is None
    finally:
        host.enable(RECV)
    assert host.messenger.send(RECV, "back")["echo"] == "back"
    assert os.getpid() != host.attachments.supervisor().worker_pid(RECV)
