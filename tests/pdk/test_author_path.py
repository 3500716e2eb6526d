"""The plugin author's whole path, end to end, through the real CLI in subprocesses.

keys generate -> new -> test -> validate -> pack (twice: reproducible) ->
publish DIR to a TUF registry served by ``corral registry serve`` on loopback ->
registry trust on a clean home -> install (signature checked against the
verified publisher's key) -> enable -> call (strict sandbox) -> verify -> docs.
Every step's exit code and output are checked and its wall time recorded;
``-s`` shows the table.  ``benchmarks/bench_author_path.py`` runs the same
walk as a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.net import free_port

from corral._sandbox.landlock import landlock_abi

PLUGIN_ID = "acme.hello"
REASON = "head shows the first lines of a file of your workspace; nothing else is read"


@dataclass
class Step:
    """One command of the walk: who runs it, the argv after ``corral``, exit code, seconds."""

    #: "registry" (the operator's one-off setup), "author" or "user" (the path itself),
    #: "check" (extra commands that only check it: a second pack, more calls)
    phase: str
    name: str
    argv: list[str]
    code: int
    seconds: float
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Walk:
    """Runs ``python -m corral ...`` in subprocesses under ``root`` and records each step."""

    root: Path
    steps: list[Step] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("CORRAL_REGISTRY", "CORRAL_TOKEN", "CORRAL_HOME", "CORRAL_PLUGIN")}
        env["CORRAL_KEYS_DIR"] = str(self.root / "keys")  # a fresh keys dir
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the inner pytest of `corral test`
        self.env = env

    def run(self, phase: str, name: str, *argv: str, expect: int = 0, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 60) -> Step:
        """Run ``corral ARGV``; assert its exit code is ``expect``; record it."""
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "corral", *argv], capture_output=True, text=True,
            cwd=cwd or self.root, env={**self.env, **(env or {})}, timeout=timeout, check=False,
        )
        step = Step(phase, name, list(argv), proc.returncode, time.perf_counter() - start,
                    proc.stdout, proc.stderr)
        self.steps.append(step)
        assert proc.returncode == expect, (
            f"corral {' '.join(argv)} exited {proc.returncode}, expected {expect}\n"
            f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
        return step

    def seconds(self, phase: str | None = None) -> float:
        return sum(s.seconds for s in self.steps if phase in (None, s.phase))

    def count(self, phase: str | None = None) -> int:
        return sum(1 for s in self.steps if phase in (None, s.phase))

    def table(self) -> str:
        """Each step with its exit code and seconds, and the totals per phase."""
        lines = [f"{'#':>2}  {'phase':8}  {'step':20}  {'exit':>4}  {'seconds':>7}  "
                 f"command ($T = {self.root})"]
        for i, s in enumerate(self.steps, 1):
            cmd = " ".join(a.replace(str(self.root), "$T") for a in s.argv)
            lines.append(f"{i:>2}  {s.phase:8}  {s.name:20}  {s.code:>4}  {s.seconds:7.2f}  "
                         f"corral {cmd}")
        for phase in ("registry", "author", "user", "check"):
            lines.append(f"    {phase:8}  {self.count(phase):>2} commands  "
                         f"{self.seconds(phase):6.2f} s")
        lines.append(f"    the path (author + user): {self.path_commands()} commands, "
                     f"{self.path_seconds():.2f} s")
        return "\n".join(lines)

    def path_commands(self) -> int:
        """Commands of the author's and the user's path (no setup, no extra checks)."""
        return self.count("author") + self.count("user")

    def path_seconds(self) -> float:
        """Wall seconds of the author's and the user's path."""
        return self.seconds("author") + self.seconds("user")


@contextmanager
def serve_registry(walk: Walk, data: Path) -> Iterator[str]:
    """``corral registry serve`` on a loopback port, in a subprocess; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "registry", "serve", "--data", str(data),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=walk.env, cwd=walk.root,
    )
    try:
        while True:
            try:
                if httpx.get(f"{url}/tuf/metadata/timestamp.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.perf_counter() - start > 30:
                if proc.poll() is None:  # still up but not answering: stop it, or the read hangs
                    proc.kill()
                    proc.wait()
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"corral registry serve did not come up: {err[-2000:]}")
            time.sleep(0.05)
        walk.steps.append(Step("registry", "serve (until ready)",
                               ["registry", "serve", "--data", str(data), "--port", str(port)],
                               0, time.perf_counter() - start, "", ""))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def author_walk(root: Path) -> Walk:
    """The whole path, each step checked; returns the walk with its timings."""
    walk = Walk(root)
    data, offline = root / "registry", root / "offline-keys"
    work, user_home, user_ws = root / "work", root / "user-home", root / "user-workspace"
    for d in (work, user_ws):
        d.mkdir()
    reg = ["--data", str(data), "--json"]

    # The registry operator, once: a verified publisher owning the namespace, TUF keys.
    walk.run("registry", "create publisher", "registry", "admin", "create-publisher", "acme",
             "--verified", *reg)
    walk.run("registry", "create namespace", "registry", "admin", "create-namespace", "acme",
             "--owner", "acme", *reg)
    token = walk.run("registry", "create token", "registry", "admin", "create-token", "acme",
                     "--scope", "publish", *reg).json["token"]
    init = walk.run("registry", "tuf init", "registry", "tuf", "init", "--offline-keys",
                    str(offline), *reg).json
    root_json = data / "tuf" / "metadata" / "1.root.json"
    assert init["root"] == 1
    assert root_json.is_file()

    # The author: a key, registered with the publisher account.
    key = walk.run("author", "keys generate", "keys", "generate", "default",
                   "--json").json["generated"]
    pub = root / "keys" / "default.pub"
    assert pub.read_text().strip() == key["public_key"]
    added = walk.run("registry", "register the key", "registry", "admin", "add-key", "acme",
                     str(pub), *reg).json
    assert added["keyid"] == key["keyid"]
    assert added["revoked"] is False

    with serve_registry(walk, data) as url:
        # new (edit nothing), test, validate.
        made = walk.run("author", "new", "new", PLUGIN_ID, "--template", "command",
                        "--isolation", "strict", "--author", "Ada", "--json", cwd=work).json
        plugin = Path(made["path"])
        assert plugin == work / "hello"
        assert made["isolation"] == "strict"
        tested = walk.run("author", "test", "test", str(plugin), "--json", cwd=work,
                          timeout=120)
        assert tested.json["ok"] is True
        assert " passed" in tested.err
        assert "failed" not in tested.err
        assert "skipped" not in tested.err
        report = walk.run("author", "validate", "validate", str(plugin), "--json").json
        assert report["ok"] is True
        assert report["plugin"] == PLUGIN_ID
        for section in ("errors", "warnings", "security", "performance", "suggestions"):
            assert report[section] == [], (section, report[section])

        # pack, twice: the same sources give the same signed bytes.
        packs = []
        for n in (1, 2):
            out = root / f"pack{n}"
            out.mkdir()
            phase = "author" if n == 1 else "check"
            packs.append(walk.run(phase, f"pack #{n}", "pack", str(plugin), "-o", str(out),
                                  "--json").json)
        assert packs[0]["signed"] is True
        assert packs[0]["keyid"] == key["keyid"]
        assert packs[0]["sha256"] == packs[1]["sha256"]
        assert (Path(packs[0]["path"]).read_bytes() == Path(packs[1]["path"]).read_bytes())

        # publish the directory: validated, packed, signed and uploaded in one step.
        published = walk.run("author", "publish", "publish", str(plugin), "--registry", url,
                             "--json", env={"CORRAL_TOKEN": token}).json
        assert published["id"] == PLUGIN_ID
        assert published["version"] == "0.1.0"
        assert published["sha256"] == packs[0]["sha256"]  # reproducible: the same bytes
        assert published["signature"] == {"state": "signed", "signer": "default",
                                           "keyid": key["keyid"]}
        assert published["signer"] == key["keyid"]  # what the registry recorded
        assert published["publisher_verified"] is True
        assert published["warnings"] == []
        assert not list(plugin.glob("*.corral"))  # nothing left in the plugin

        # A user on a clean home: trust the registry's root, install, enable, call.
        home = ["--home", str(user_home), "--workspace", str(user_ws)]
        trusted = walk.run("user", "registry trust", "registry", "trust", url, "--root",
                           str(root_json), "--home", str(user_home), "--json").json
        assert trusted["root_version"] == 1
        installed = walk.run("user", "install", *home, "install", PLUGIN_ID, "--source", url,
                             "--json").json
        assert installed["added"] == [{"id": PLUGIN_ID, "version": "0.1.0"}]
        walk.run("user", "enable", *home, "enable", PLUGIN_ID, "--json")
        greeting = walk.run("user", "call greet", *home, "call", PLUGIN_ID, "greet", "--input",
                            '{"name": "Ada"}', "--json").json
        assert greeting == {"result": {"greeting": "Hello, Ada!"}}
        (user_ws / "notes.txt").write_text("one\ntwo\nthree\n")
        head = walk.run("check", "call head", *home, "call", PLUGIN_ID, "head", "--input",
                        '{"path": "notes.txt", "lines": 2}', "--json").json
        assert head["result"]["lines"] == ["one", "two"]
        # The strict sandbox: a file outside the workspace cannot be read.
        denied = walk.run("check", "call head (denied)", *home, "call", PLUGIN_ID, "head",
                          "--input", json.dumps({"path": str(root / "keys" / "default.pem")}),
                          "--json", expect=4).json  # the refusal names the missing grant
        assert denied["error"]["code"] == "permission_denied"
        assert denied["error"]["permission"] == f"fs-read:{root / 'keys' / 'default.pem'}"
        selftest = walk.run("check", "call self-test", *home, "call", PLUGIN_ID, "self-test",
                            "--json").json
        assert selftest["result"]["ok"] is True
        verified = walk.run("user", "verify", *home, "verify", "--json").json
        assert verified["ok"] is True
        (entry,) = verified["plugins"]
        assert entry["state"] == "ok"
        assert entry["signature"] == {"state": "signed", "keyid": key["keyid"],
                                      "signer": "default"}

        # Publishing the same version again is a safe retry: packing is reproducible, so
        # the registry gives back what it stores. Other bytes under that version are
        # refused (exit 2); a new version, unsigned and in text mode, keeping its archive
        # with -o, goes through.
        again = walk.run("check", "publish again", "publish", str(plugin), "--registry", url,
                         "--json", env={"CORRAL_TOKEN": token}).json
        assert (again["id"], again["version"]) == (PLUGIN_ID, "0.1.0")
        assert again["created"] is False
        (plugin / "CHANGES.md").write_text("an edit without a new version\n")
        clash = walk.run("check", "publish changed", "publish", str(plugin), "--registry", url,
                         "--json", env={"CORRAL_TOKEN": token}, expect=2).json
        assert clash["error"]["reason"] == "version_exists"
        (plugin / "CHANGES.md").unlink()
        toml = plugin / "corral.toml"
        toml.write_text(toml.read_text().replace('version = "0.1.0"', 'version = "0.1.1"'))
        kept = root / "kept"
        kept.mkdir()
        text = walk.run("check", "publish 0.1.1", "publish", str(plugin), "--no-sign", "-o",
                        str(kept), "--registry", url, env={"CORRAL_TOKEN": token}).out
        archive = kept / f"{PLUGIN_ID}-0.1.1.corral"
        assert archive.is_file()
        assert f"published {PLUGIN_ID} 0.1.1" in text
        assert "unsigned" in text
        assert f"archive kept at {archive}" in text

    # docs of the plugin: every export and the reason for the permission.
    docs_dir = root / "docs"
    docs = walk.run("author", "docs", "docs", str(plugin), "-o", str(docs_dir), "--json").json
    assert sorted(Path(f).name for f in docs["files"]) == [f"{PLUGIN_ID}.html",
                                                           f"{PLUGIN_ID}.md"]
    md = (docs_dir / f"{PLUGIN_ID}.md").read_text()
    html = (docs_dir / f"{PLUGIN_ID}.html").read_text()
    for export in ("greet", "head", "self-test"):
        assert f"### `{export}`" in md, export
        assert export in html
    assert f"| fs-read | `{{workspace}}` | {REASON} |" in md
    assert REASON in html
    assert "no reason given" not in md
    return walk


@pytest.mark.timeout(300)  # 18 commands; under a loaded machine each may take seconds
@pytest.mark.skipif(sys.platform != "linux" or landlock_abi() < 1,
                    reason="the strict sandbox needs Linux with Landlock")
def test_the_author_path_end_to_end(tmp_path: Path) -> None:
    walk = author_walk(tmp_path)
    print("\n" + walk.table())
    # Each step asserted its own exit code; the path itself is all successes.
    assert all(s.code == 0 for s in walk.steps if s.phase != "check")
    assert [s.name for s in walk.steps if s.phase in ("author", "user")] == [
        "keys generate", "new", "test", "validate", "pack #1", "publish", "registry trust",
        "install", "enable", "call greet", "verify", "docs"]
    assert walk.path_commands() == 12  # its seconds are a figure of bench_author_path.py


def test_publish_refuses_an_invalid_directory_before_any_upload(tmp_path: Path) -> None:
    """Validation fails first: exit 3 with the errors, no network, nothing written."""
    walk = Walk(tmp_path)
    made = walk.run("author", "new", "new", "acme.broken", "--json").json
    plugin = Path(made["path"])
    toml = plugin / "corral.toml"
    toml.write_text(toml.read_text().replace("acme_broken.commands:greet",
                                             "acme_broken.nowhere:greet"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: any upload would fail
    res = walk.run("author", "publish", "publish", str(plugin), "--registry", closed, "--json",
                   env={"CORRAL_TOKEN": "crl_x_y"}, expect=3)
    error = res.json["error"]
    assert error["code"] == "invalid"
    assert error["plugin"] == "acme.broken"
    assert any("nowhere" in e["message"] for e in error["errors"])
    text = walk.run("author", "publish (text)", "publish", str(plugin), "--registry", closed,
                    env={"CORRAL_TOKEN": "crl_x_y"}, expect=3)
    assert "nowhere" in text.err
    assert "refusing to pack" in text.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_publish_refusals(tmp_path: Path) -> None:
    walk = Walk(tmp_path)
    plugin = Path(walk.run("author", "new", "new", "acme.refused", "--json").json["path"])
    res = walk.run("author", "publish", "publish", str(plugin), "--json", expect=2)
    assert "CORRAL_TOKEN" in res.json["error"]["message"]
    archive = Path(walk.run("author", "pack", "pack", str(plugin), "--no-sign", "-o",
                            str(tmp_path), "--json").json["path"])
    res = walk.run("author", "publish", "publish", str(archive), "--key", "default", "--json",
                   env={"CORRAL_TOKEN": "crl_x_y"}, expect=2)
    assert "apply to a plugin directory" in res.json["error"]["message"]
    res = walk.run("author", "publish", "publish", str(plugin), "--key", "nobody", "--json",
                   env={"CORRAL_TOKEN": "crl_x_y"}, expect=1)
    assert res.json["error"]["code"] == "not_found"
    assert "nobody" in res.json["error"]["message"]
