"""Budgets of a strict plugin, judged from outside: bytes on disk, refused calls, wiped scratch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hosts import close_quietly
from helpers.plugins import make_plugin, module_name

from corral import Host
from corral._errors import ResourceLimitExceeded
from corral._runtime.budgets import tree_bytes
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

MIB = 1024 * 1024

CODE = '''
import os
from pathlib import Path


def fill(inp, ctx):
    where = {"data": ctx.data_dir, "tmp": ctx.tmp_dir, "cache": ctx.cache_dir}[inp["dir"]]
    block = b"x" * (1024 * 1024)
    for i in range(inp["count"]):
        with open(Path(where) / f"{inp.get('name', 'f')}{i}", "wb") as f:
            for _ in range(inp["mb"]):
                f.write(block)
    return sorted(os.listdir(where))


def big_file(inp, ctx):
    """One file past disk-mb: the kernel's per-file cap stops it."""
    block = b"x" * (1024 * 1024)
    try:
        with open(Path(ctx.data_dir) / "big", "wb") as f:
            for _ in range(inp):
                f.write(block)
    except OSError as exc:
        return f"refused: {exc.strerror}"
    return "written"


def noop(inp, ctx):
    return inp


def chatter(inp, ctx):
    for i in range(inp):
        print("line", i)
    return inp
'''


def plugin(root: Path, plugin_id: str, **sandbox: object) -> Path:
    mod = module_name(plugin_id)
    return make_plugin(
        root, plugin_id, {f"{mod}.py": CODE}, isolation="strict",
        exports={name: f"{mod}:{name}" for name in ("fill", "big_file", "noop", "chatter")},
        sandbox={"timeout-ms": 20_000, **sandbox},
    )


@pytest.fixture
def host(home: Path, workspace: Path) -> Iterator[Host]:
    h = Host(home=home, workspace=workspace, hook_timeout=5.0)
    try:
        yield h
    finally:
        close_quietly(h)


def test_strict_data_total_is_bounded_and_calls_refused(
    tmp_path: Path, home: Path, host: Host
) -> None:
    for d in (plugin(tmp_path, "evil.strict", **{"disk-mb": 4}), plugin(tmp_path, "good.strict")):
        host.enable(host.register(d)[0].id)
    data = home / "data" / "evil.strict"
    # one file past disk-mb: the kernel stops the write itself
    assert host.call("evil.strict", "big_file", 6) == "refused: File too large"
    assert (data / "big").stat().st_size <= 4 * MIB
    (data / "big").unlink()
    # many files each under it: the host measures the total and fails the call
    with pytest.raises(ResourceLimitExceeded) as err:
        host.call("evil.strict", "fill", {"dir": "data", "count": 4, "mb": 2})
    assert err.value.details["limit"] == "disk-mb"
    assert "{data} holds 8.0 MiB of 4.0 MiB" in err.value.message
    held = tree_bytes(data)
    with pytest.raises(ResourceLimitExceeded):
        host.call("evil.strict", "fill", {"dir": "data", "count": 4, "mb": 2, "name": "g"})
    assert tree_bytes(data) == held  # refused before the worker ran
    assert host.call("good.strict", "noop", {"ok": True}) == {"ok": True}
    for f in data.iterdir():
        f.unlink()
    assert host.call("evil.strict", "fill", {"dir": "data", "count": 1, "mb": 1}) == ["f0"]


def test_strict_tmp_and_cache_are_bounded_and_wiped_on_disable(
    tmp_path: Path, home: Path, host: Host
) -> None:
    host.enable(host.register(plugin(tmp_path, "acme.scratch", **{"tmp-mb": 3}))[0].id)
    assert host.call("acme.scratch", "fill", {"dir": "tmp", "count": 2, "mb": 1}) == ["f0", "f1"]
    assert host.call("acme.scratch", "fill", {"dir": "cache", "count": 1, "mb": 1}) == ["f0"]
    assert host.call("acme.scratch", "fill", {"dir": "data", "count": 1, "mb": 1}) == ["f0"]
    with pytest.raises(ResourceLimitExceeded) as err:
        host.call("acme.scratch", "fill", {"dir": "tmp", "count": 2, "mb": 1, "name": "more"})
    assert err.value.details["limit"] == "tmp-mb"
    host.disable("acme.scratch")
    assert list((home / "tmp" / "acme.scratch").iterdir()) == []
    assert list((home / "cache" / "acme.scratch").iterdir()) == []
    assert [p.name for p in (home / "data" / "acme.scratch").iterdir()] == ["f0"]
    # enabled again, it starts with empty scratch and works
    host.enable("acme.scratch")
    assert host.call("acme.scratch", "fill", {"dir": "tmp", "count": 1, "mb": 1}) == ["f0"]


def test_strict_output_lines_past_log_lines_fail_the_call(tmp_path: Path, host: Host) -> None:
    host.enable(host.register(plugin(tmp_path, "evil.print", **{"log-lines": 50}))[0].id)
    assert host.call("evil.print", "chatter", 10) == 10
    with pytest.raises(ResourceLimitExceeded) as err:
        host.call("evil.print", "chatter", 10_000)
    assert err.value.details["limit"] == "log-lines"
    assert host.call("evil.print", "chatter", 10) == 10
