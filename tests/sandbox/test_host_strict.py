"""A strict plugin under a real host: hooks, grants and host services, judged from outside."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from corral import Host, PermissionDenied, PluginError
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

CODE = '''
import os
from pathlib import Path


class Plugin:
    def _log(self, ctx, what):
        with open(Path(ctx.data_dir) / "hooks.log", "a") as f:
            f.write(what + "\\n")

    def on_load(self, ctx):
        self._log(ctx, "load")

    def on_enable(self, ctx):
        self._log(ctx, "enable")

    def on_disable(self, ctx):
        self._log(ctx, "disable")


def read(input, ctx):
    return Path(input).read_text()


def remember(input, ctx):
    ctx.state.set("notes.last", input)
    return ctx.state.get("notes.last")


def peek(input, ctx):
    return ctx.state.get("other.secret")


def pid(input, ctx):
    return os.getpid()
'''


def make(root: Path, *, entry_code: str = CODE) -> Path:
    d = root / "src" / "acme.strict"
    (d / "acme_strict").mkdir(parents=True)
    (d / "acme_strict" / "__init__.py").write_text(entry_code)
    (d / "corral.toml").write_text(
        textwrap.dedent(
            """
            [plugin]
            id = "acme.strict"
            name = "Strict"
            version = "1.0.0"
            entry = "acme_strict:Plugin"

            [permissions]
            host-api = ["state.read:notes.*", "state.write:notes.*"]

            [sandbox]
            isolation = "strict"
            timeout-ms = 10000

            [exports]
            read = "acme_strict:read"
            remember = "acme_strict:remember"
            peek = "acme_strict:peek"
            pid = "acme_strict:pid"
            """
        )
    )
    return d


def test_hooks_run_inside_the_worker(tmp_path: Path) -> None:
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make(tmp_path))
        host.enable("acme.strict")
        inside = host.call("acme.strict", "pid")
        worker = host.attachments.supervisor().worker_pid("acme.strict")
        assert worker is not None
        assert worker != os.getpid()
        # The worker runs in its own pid namespace: the pid it sees is the last
        # of the NSpid chain the kernel shows for the worker's host-side pid.
        nspid = next(line for line in Path(f"/proc/{worker}/status").read_text().splitlines()
                     if line.startswith("NSpid:"))
        assert int(nspid.split()[-1]) == inside
        assert inside != os.getpid()
        host.disable("acme.strict")
        log = tmp_path / "home" / "data" / "acme.strict" / "hooks.log"
        assert log.read_text().split() == ["load", "enable", "disable"]


def test_reading_outside_the_grants_fails_and_the_host_goes_on(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make(tmp_path))
        host.enable("acme.strict")
        with pytest.raises(PermissionDenied) as denied:  # the sandbox's refusal names the grant
            host.call("acme.strict", "read", str(canary))
        assert denied.value.permission == f"fs-read:{canary}"
        assert host.call("acme.strict", "remember", {"n": 1}) == {"n": 1}
    assert canary.read_text() == "secret"


def test_state_outside_the_grants_is_denied_by_name(tmp_path: Path) -> None:
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make(tmp_path))
        host.enable("acme.strict")
        with pytest.raises(PermissionDenied) as info:
            host.call("acme.strict", "peek")
        assert info.value.permission == "host-api:state.read:other.secret"


def test_a_failing_sandboxed_hook_fails_only_its_plugin(tmp_path: Path) -> None:
    bad = CODE.replace('        self._log(ctx, "enable")', '        raise RuntimeError("no")')
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make(tmp_path, entry_code=bad))
        with pytest.raises(PluginError, match="no"):
            host.enable("acme.strict")
        info = host.info("acme.strict")
        assert info["state"] == "failed"
        assert "RuntimeError" in json.dumps(info["error"])
