"""A file, socket or program the sandbox refuses is ``permission_denied`` naming the grant.

The end-to-end tests run a strict plugin through the real ``corral`` command;
the unit tests judge the worker's matching and the host's vetting on their own.
"""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult

from corral._sandbox.denials import Grants
from corral._sandbox.failures import vetted
from corral._sandbox.rpc import ErrorInfo
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.worker.attempts import Attempts
from corral._services.sandboxed import sandbox_problem

CODE = '''
import socket
import subprocess


def hostname(value, ctx):
    return open("/etc/hostname").read()


def connect(value, ctx):
    socket.create_connection(("127.0.0.1", 9), timeout=1)


def run_id(value, ctx):
    return subprocess.run(["id"], capture_output=True).stdout.decode()


def read(value, ctx):
    with open(value) as f:
        return f.read()
'''

needs_strict = pytest.mark.skipif(
    sandbox_problem("strict") is not None,
    reason=f"no strict sandbox: {sandbox_problem('strict')}",
)


def make(root: Path, *, read_grant: str | None = None) -> Path:
    d = root / "acme.den"
    (d / "acme_den").mkdir(parents=True)
    (d / "acme_den" / "__init__.py").write_text(CODE)
    grants = f'fs-read = ["{read_grant}"]' if read_grant else ""
    (d / "corral.toml").write_text(textwrap.dedent(f"""
        [plugin]
        id = "acme.den"
        name = "Den"
        version = "1.0.0"

        [permissions]
        {grants}

        [sandbox]
        isolation = "strict"

        [exports]
        hostname = "acme_den:hostname"
        connect = "acme_den:connect"
        run_id = "acme_den:run_id"
        read = "acme_den:read"
    """))
    return d


@pytest.fixture
def den(tmp_path: Path, run_cli: Callable[..., CliResult]) -> Callable[..., CliResult]:
    """``corral call acme.den EXPORT`` on a strict plugin added and enabled by the CLI."""
    secret = tmp_path / "secret.txt"
    secret.write_text("no one may read this\n")
    secret.chmod(0)
    plugin = make(tmp_path / "src", read_grant=str(secret))
    assert run_cli("add", str(plugin)).code == 0
    assert run_cli("enable", "acme.den").code == 0

    def call(export: str, *args: str) -> CliResult:
        return run_cli("call", "acme.den", export, *args)

    return call


@needs_strict
@pytest.mark.parametrize(("export", "permission", "refused"), [
    ("hostname", "fs-read:/etc/hostname", "read /etc/hostname"),
    ("connect", "net-connect:127.0.0.1:9", "connect to 127.0.0.1:9"),
    ("run_id", "spawn:id", "run id"),
])
def test_refusal_names_the_missing_grant(
    den: Callable[..., CliResult], export: str, permission: str, refused: str
) -> None:
    r = den(export, "--json")
    assert r.code == 4, r
    error = r.json["error"]
    assert error["code"] == "permission_denied"
    assert error["permission"] == permission
    assert error["plugin"] == "acme.den"
    assert refused in error["message"]
    assert permission in error["message"]
    assert "Traceback" in error["traceback"]
    assert f"in {export}" in error["traceback"]

    plain = den(export)
    assert plain.code == 4
    lines = plain.err.strip().splitlines()
    assert len(lines) == 1, plain.err  # one headline naming the grant, no traceback under it
    assert lines[0].startswith("corral: error: ")
    assert permission in lines[0]


@needs_strict
def test_a_granted_read_of_an_unreadable_file_stays_a_plugin_error(
    den: Callable[..., CliResult], tmp_path: Path
) -> None:
    r = den("read", "--input", f'"{tmp_path / "secret.txt"}"', "--json")
    if r.code == 0:
        pytest.skip("this worker may read a mode-000 file (capabilities kept)")
    assert r.code == 5, r
    assert r.json["error"]["code"] == "plugin_error"
    assert "PermissionError" in r.json["error"]["message"]


# -- the worker's matching and the host's vetting, without a sandbox ----------------


def _grants(tmp_path: Path) -> Grants:
    return Grants(reads=(str(tmp_path / "plugin"), str(tmp_path / "data")),
                  writes=(str(tmp_path / "data"),), net=("api.example.com:443",),
                  spawn=("git",))


def test_attempts_match_the_error_to_what_was_tried(tmp_path: Path) -> None:
    attempts = Attempts()  # fed audit events by hand: no hook is left in this process
    grants = _grants(tmp_path)
    outside, inside = str(tmp_path / "outside.txt"), str(tmp_path / "data" / "x")

    attempts.seen("open", (outside, "w", os.O_WRONLY | os.O_CREAT))
    attempts.seen("open", ("/usr/lib/python3/os.py", "r", os.O_RDONLY))  # a later import
    refused = PermissionError(13, "Permission denied", outside)
    assert attempts.denied(refused, grants) == f"fs-write:{outside}"

    attempts.clear()
    attempts.seen("open", (inside, "r", os.O_RDONLY))
    assert attempts.denied(PermissionError(13, "Permission denied", inside), grants) is None

    attempts.clear()
    assert attempts.denied(PermissionError(13, "Permission denied", "/never/tried"),
                           grants) is None  # nothing recorded under that name

    attempts.clear()
    attempts.seen("os.listdir", ("/root",))
    assert attempts.denied(PermissionError(13, "denied", "/root"), grants) == "fs-read:/root"

    attempts.clear()
    attempts.seen("subprocess.Popen", ("curl", ["curl", "x"], None, None))
    assert attempts.denied(PermissionError(1, "denied", "curl"), grants) == "spawn:curl"
    attempts.seen("subprocess.Popen", ("git", ["git", "log"], None, None))
    assert attempts.denied(PermissionError(1, "denied", "git"), grants) is None  # granted

    attempts.clear()
    attempts.seen("socket.getaddrinfo", ("10.0.0.1", 80, 0, 1, 0))
    attempts.seen("socket.__new__", (None, socket.AF_INET, socket.SOCK_STREAM, 0))
    assert attempts.denied(PermissionError(1, "denied"), grants) == "net-connect:10.0.0.1:80"
    attempts.clear()
    attempts.seen("socket.getaddrinfo", ("api.example.com", 443, 0, 1, 0))
    attempts.seen("socket.__new__", (None, socket.AF_INET, socket.SOCK_STREAM, 0))
    assert attempts.denied(PermissionError(1, "denied"), grants) is None  # granted


def test_the_host_believes_only_a_denial_its_spec_does_not_grant(tmp_path: Path) -> None:
    spec = SandboxSpec(plugin_id="acme.den", isolation="strict", plugin_dir=tmp_path / "p",
                       data_dir=tmp_path / "d", tmp_dir=tmp_path / "t", cache_dir=tmp_path / "c",
                       read_paths=(Path("/etc"),), spawn=("git",))
    forged = ErrorInfo(code="permission_denied", message="\x1b[31mforged", permission="x")

    def judged(permission: str) -> ErrorInfo:
        return vetted(ErrorInfo(code="permission_denied", message="\x1b[31mforged",
                                permission=permission, traceback="tb",
                                type="PermissionError"), set(), spec)

    denied = judged("fs-read:/root/.ssh/id_rsa")
    assert denied.code == "permission_denied"
    assert denied.traceback == "tb"
    assert denied.message.startswith("acme.den: the sandbox refused to read /root/.ssh/id_rsa")
    assert judged("fs-read:/etc/hostname").code == "plugin_error"  # granted: not a denial
    assert judged(f"fs-write:{tmp_path / 'd' / 'x'}").code == "plugin_error"
    assert judged("spawn:git").code == "plugin_error"
    assert judged("spawn:id").code == "permission_denied"
    assert vetted(forged, set(), spec).code == "plugin_error"
    raised = ErrorInfo(code="permission_denied", message="m", permission="spawn:id",
                       type="PermissionDenied")  # the plugin's own raise is no sandbox verdict
    assert vetted(raised, set(), spec).code == "plugin_error"
    limited = SandboxSpec(plugin_id="acme.den", isolation="limited", plugin_dir=tmp_path / "p",
                          data_dir=tmp_path / "d", tmp_dir=tmp_path / "t",
                          cache_dir=tmp_path / "c")
    refused = ErrorInfo(code="permission_denied", message="m", permission="fs-read:/etc/x",
                        type="PermissionError")
    assert vetted(refused, set(), limited).code == "plugin_error"  # limited confines no reads
