"""``Host``: registration, lifecycle, hooks, dependencies and in-process calls."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers.hosts import close_quietly, read_lines, snapshot
from helpers.plugins import ECHO_CODE, HOOKS_CODE, make_plugin, module_name

from corral import (
    Host,
    InvalidPluginError,
    LifecycleError,
    NotFoundError,
    PluginError,
    PluginTimeout,
    PolicyDenied,
    UsageError,
)
from corral._disk.archive import pack_directory
from corral._services.sandboxed import sandbox_problem


def plugins_dir(host: Host) -> set[str]:
    return {p.name for p in (host.home / "plugins").iterdir()}


def hooks_log(host: Host, pid: str) -> list[str]:
    return read_lines(host.home / "data" / pid / "hooks.log")


def state(host: Host, pid: str) -> str:
    return host.info(pid)["state"]


# -- registration ----------------------------------------------------------------


def test_register_directory_copies_it_into_home(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, "acme.demo")
    [info] = host.register(src)
    assert info.id == "acme.demo"
    assert info.state == "registered"
    assert info.source == "directory"
    assert Path(info.path) == host.home / "plugins" / "acme.demo"
    assert (host.home / "plugins" / "acme.demo" / "corral.toml").is_file()
    assert plugins_dir(host) == {"acme.demo"}
    assert [i.id for i in host.list()] == ["acme.demo"]
    # The original is untouched and no longer needed.
    assert (src / "corral.toml").is_file()


def test_register_archive(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, "acme.packed")
    archive = pack_directory(src, tmp_path / "acme.packed.corral")
    [info] = host.register(archive)
    assert info.source == "archive"
    assert plugins_dir(host) == {"acme.packed"}
    host.enable("acme.packed")
    assert host.call("acme.packed", "echo", {"x": [1, 2]}) == {"x": [1, 2]}


def test_register_duplicate_id_refused(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.demo"))
    before = snapshot(host.home / "plugins")
    other = make_plugin(tmp_path / "again", "acme.demo", version="2.0.0")
    with pytest.raises(InvalidPluginError, match=r"'acme\.demo' is already registered"):
        host.register(other)
    assert snapshot(host.home / "plugins") == before
    assert host.info("acme.demo")["version"] == "1.0.0"


def test_register_same_id_twice_in_one_batch(host: Host, tmp_path: Path) -> None:
    a = make_plugin(tmp_path / "a", "acme.twin")
    b = make_plugin(tmp_path / "b", "acme.twin")
    with pytest.raises(InvalidPluginError, match="already registered"):
        host.register(a, b)
    assert plugins_dir(host) == set()
    assert host.list() == []


def test_register_nothing_is_usage(host: Host) -> None:
    with pytest.raises(UsageError):
        host.register()


def test_register_missing_path(host: Host, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        host.register(tmp_path / "nope")
    assert plugins_dir(host) == set()


BAD_PLUGINS: dict[str, dict[str, Any]] = {
    "bad-manifest": {"toml": '[plugin]\nid = "acme.bad"\nname = "B"\nversion = "x.y"\n'},
    "toml-syntax": {"toml": "[plugin\n"},
    "missing-module": {"exports": {"run": "nowhere:run"}},
    "missing-function": {"exports": {"run": "cp_acme_bad:nothing_here"}},
    "syntax-error": {"files": {"cp_acme_bad.py": "def echo(:\n"},
                     "exports": {"echo": "cp_acme_bad:echo"}},
    "entry-missing": {"plugin": {"entry": "cp_acme_bad:Nope"}},
    "micro-missing": {"micro": [{"id": "acme.bad.m", "type": "hook",
                                 "handler": "cp_acme_bad:missing"}]},
    "needs-newer-corral": {"plugin": {"requires-corral": ">=99"}},
    "missing-dependency": {"dependencies": {"acme.absent": ">=1,<2"}},
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_refused_plugins_leave_nothing(host: Host, tmp_path: Path, case: str) -> None:
    src = make_plugin(tmp_path, "acme.bad", **BAD_PLUGINS[case])
    host.register(make_plugin(tmp_path / "ok", "acme.good"))
    before = snapshot(host.home)
    with pytest.raises(InvalidPluginError) as info:
        host.register(src)
    assert info.value.exit_code == 3
    assert plugins_dir(host) == {"acme.good"}
    assert snapshot(host.home) - before <= {"corral.db-wal", "corral.db-shm", ".lock"}
    assert [i.id for i in host.list()] == ["acme.good"]
    # The host keeps working.
    host.enable("acme.good")
    assert host.call("acme.good", "echo", 1) == 1


def test_refusal_messages_name_the_fault(host: Host, tmp_path: Path) -> None:
    def refused(**kw: Any) -> str:
        src = make_plugin(tmp_path / str(len(list(tmp_path.iterdir()))), "acme.bad", **kw)
        with pytest.raises(InvalidPluginError) as info:
            host.register(src)
        return str(info.value)

    assert "exports.run" in refused(exports={"run": "nowhere:run"})
    assert "nowhere" in refused(exports={"run": "nowhere:run"})
    message = refused(exports={"run": "cp_acme_bad:nothing_here"})
    assert "exports.run" in message
    assert "nothing_here" in message
    message = refused(files={"cp_acme_bad.py": "x = 1\ndef echo(:\n"},
                      exports={"echo": "cp_acme_bad:echo"})
    assert "syntax error" in message
    assert "cp_acme_bad.py:2" in message
    assert "acme.absent >=1,<2" in refused(dependencies={"acme.absent": ">=1,<2"})


def test_symlink_in_source_refused(host: Host, tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("def echo(v, ctx):\n    return v\n")
    src = make_plugin(tmp_path, "acme.link", files={}, exports={"echo": "linked:echo"})
    (src / "linked.py").symlink_to(outside)
    with pytest.raises(InvalidPluginError, match="symbolic link"):
        host.register(src)
    assert plugins_dir(host) == set()


def test_export_escaping_plugin_dir_in_place(host: Host, tmp_path: Path) -> None:
    """A directory under home/plugins is registered in place; a link out of it is refused."""
    outside = tmp_path / "outside.py"
    outside.write_text("def echo(v, ctx):\n    return v\n")
    src = make_plugin(host.home / "plugins" / "x", "acme.inplace", files={},
                      exports={"echo": "linked:echo"})
    in_place = host.home / "plugins" / "acme.inplace"
    src.rename(in_place)
    (in_place / "linked.py").symlink_to(outside)
    with pytest.raises(InvalidPluginError, match="outside the plugin directory"):
        host.register(in_place)
    assert host.list(discovered=False) == []


def test_register_in_place_under_home(host: Host, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, "acme.here")
    target = host.home / "plugins" / "acme.here"
    src.rename(target)
    [info] = host.list()
    assert info.state == "discovered"
    [info] = host.register(target)
    assert info.path == str(target)
    assert host.list()[0].state == "registered"


def test_cycle_refused_at_register(host: Host, tmp_path: Path) -> None:
    a = make_plugin(tmp_path, "cyc.a", dependencies={"cyc.b": ""})
    b = make_plugin(tmp_path, "cyc.b", dependencies={"cyc.c": ""})
    c = make_plugin(tmp_path, "cyc.c", dependencies={"cyc.a": ">=1"})
    with pytest.raises(InvalidPluginError) as info:
        host.register(a, b, c)
    for member in ("cyc.a", "cyc.b", "cyc.c"):
        assert member in str(info.value)
    assert plugins_dir(host) == set()


def test_dependencies_registered_in_one_batch(host: Host, tmp_path: Path) -> None:
    app = make_plugin(tmp_path, "dep.app", dependencies={"dep.lib": ">=1,<2"})
    lib = make_plugin(tmp_path, "dep.lib", version="1.5.0")
    host.register(app, lib)
    assert [i.id for i in host.list()] == ["dep.app", "dep.lib"]


def test_incompatible_dependency_version(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "dep.lib", version="2.1.0"))
    with pytest.raises(InvalidPluginError) as info:
        host.register(make_plugin(tmp_path, "dep.app", dependencies={"dep.lib": ">=1,<2"}))
    assert "dep.lib >=1,<2" in str(info.value)
    assert "2.1.0" in str(info.value)


# -- lifecycle and hooks -------------------------------------------------------------


def test_hooks_run_in_order(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.hooks", entry=True))
    assert host.load("acme.hooks").state == "loaded"
    assert host.enable("acme.hooks").state == "enabled"
    assert host.disable("acme.hooks") == ["acme.hooks"]
    assert state(host, "acme.hooks") == "disabled"
    host.unload("acme.hooks")
    assert hooks_log(host, "acme.hooks") == [
        "acme.hooks:on_load", "acme.hooks:on_enable", "acme.hooks:on_disable",
        "acme.hooks:on_unload",
    ]


def test_unload_reports_unloaded(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.hooks", entry=True))
    host.load("acme.hooks")
    assert host.unload("acme.hooks").state == "unloaded"
    with pytest.raises(LifecycleError, match="already unloaded"):
        host.unload("acme.hooks")


def test_enable_loads_first_and_data_dir_is_created(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.demo"))
    data = host.home / "data" / "acme.demo"
    assert not data.exists()
    host.enable("acme.demo")
    where = host.call("acme.demo", "where")
    assert where["data_dir"] == str(data)
    assert where["exists"] is True
    assert where["plugin"] == "acme.demo"
    assert where["workspace"] == str(host.workspace)
    assert where["config"] == {}


def test_config_reaches_ctx(home: Path, workspace: Path, tmp_path: Path) -> None:
    with Host(home=home, workspace=workspace, config={"acme.demo": {"level": 3}}) as h:
        h.register(make_plugin(tmp_path, "acme.demo"))
        h.enable("acme.demo")
        assert h.call("acme.demo", "where")["config"] == {"level": 3}


def test_illegal_host_transitions(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.demo"))
    with pytest.raises(LifecycleError, match=r"cannot disable acme\.demo: it is not enabled"):
        host.disable("acme.demo")
    with pytest.raises(LifecycleError, match="never loaded"):
        host.unload("acme.demo")
    host.enable("acme.demo")
    with pytest.raises(LifecycleError, match="already enabled"):
        host.enable("acme.demo")
    with pytest.raises(LifecycleError, match="disable it first"):
        host.unload("acme.demo")
    host.disable("acme.demo")
    with pytest.raises(LifecycleError, match="already disabled"):
        host.disable("acme.demo")
    with pytest.raises(LifecycleError, match=r"enable it first"):
        host.call("acme.demo", "echo", 1)
    for verb in (host.enable, host.disable, host.unload, host.load, host.unregister):
        with pytest.raises(NotFoundError):
            verb("no.such")


def test_disable_then_enable_again(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.hooks", entry=True))
    host.enable("acme.hooks")
    host.disable("acme.hooks")
    host.enable("acme.hooks")
    assert host.call("acme.hooks", "echo", "x") == "x"
    # Re-enabling a disabled plugin does not load it again.
    assert hooks_log(host, "acme.hooks") == [
        "acme.hooks:on_load", "acme.hooks:on_enable", "acme.hooks:on_disable",
        "acme.hooks:on_enable",
    ]


def test_unregister(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.hooks", entry=True))
    host.enable("acme.hooks")
    host.call("acme.hooks", "echo", 1)
    host.unregister("acme.hooks")
    assert host.list() == []
    assert plugins_dir(host) == set()
    assert hooks_log(host, "acme.hooks")[-2:] == ["acme.hooks:on_disable", "acme.hooks:on_unload"]
    assert (host.home / "data" / "acme.hooks").is_dir()  # kept unless purged
    with pytest.raises(NotFoundError):
        host.info("acme.hooks")
    # Registering again works, and purge removes the data.
    host.register(make_plugin(tmp_path / "again", "acme.hooks", entry=True))
    host.unregister("acme.hooks", purge_data=True)
    assert not (host.home / "data" / "acme.hooks").exists()


def test_unregister_refused_while_needed(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "dep.lib"),
                  make_plugin(tmp_path, "dep.app", dependencies={"dep.lib": ""}))
    with pytest.raises(LifecycleError, match=r"needed by dep\.app"):
        host.unregister("dep.lib")
    assert {i.id for i in host.list()} == {"dep.app", "dep.lib"}


# -- list filters -----------------------------------------------------------------------


def test_list_filters(host: Host, tmp_path: Path) -> None:
    host.register(
        make_plugin(tmp_path, "f.git", plugin={"category": "vcs", "tags": ["git", "stats"]}),
        make_plugin(tmp_path, "f.fmt", plugin={"category": "format", "tags": ["text"]},
                    exports={"pretty": f"{module_name('f.fmt')}:echo"},
                    micro=[{"id": "f.fmt.check", "type": "validator",
                            "handler": f"{module_name('f.fmt')}:echo"}]),
        make_plugin(tmp_path, "f.hooks", entry=True, exports={}),
    )
    host.enable("f.git")

    def ids(**kw: str) -> list[str]:
        return [i.id for i in host.list(**kw)]

    assert ids() == ["f.fmt", "f.git", "f.hooks"]
    assert ids(state="enabled") == ["f.git"]
    assert ids(state="registered") == ["f.fmt", "f.hooks"]
    assert ids(category="vcs") == ["f.git"]
    assert ids(tag="text") == ["f.fmt"]
    assert ids(tag="stats") == ["f.git"]
    assert ids(tag="nope") == []
    assert ids(capability="pretty") == ["f.fmt"]
    assert ids(capability="export:pretty") == ["f.fmt"]
    assert ids(capability="micro:validator") == ["f.fmt"]
    assert ids(capability="hooks") == ["f.hooks"]
    assert ids(capability="echo") == ["f.git"]
    assert ids(state="enabled", category="format") == []


def test_listing_never_imports_plugin_code(host: Host, tmp_path: Path) -> None:
    marker = tmp_path / "imported.txt"
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n" + ECHO_CODE
    mod = module_name("acme.sneaky")
    host.register(make_plugin(tmp_path, "acme.sneaky", files={f"{mod}.py": code}))
    host.list()
    host.list(capability="echo")
    host.info("acme.sneaky")
    host.validate(host.home / "plugins" / "acme.sneaky")
    with Host(home=host.home, workspace=host.workspace) as other:
        other.list()
        other.info("acme.sneaky")
    assert not marker.exists()
    host.enable("acme.sneaky")
    assert marker.exists()  # the probe works: enabling does import it


# -- failing hooks --------------------------------------------------------------------------

FLAKY = HOOKS_CODE.replace(
    '    def on_enable(self, ctx):\n        _log(ctx, "on_enable")\n',
    '    def on_enable(self, ctx):\n        _log(ctx, "on_enable")\n        BROKEN\n',
) + ECHO_CODE


def flaky(tmp_path: Path, pid: str, broken: str) -> Path:
    mod = module_name(pid)
    return make_plugin(tmp_path, pid, files={f"{mod}.py": FLAKY.replace("BROKEN", broken)},
                       plugin={"entry": f"{mod}:Plugin"})


def fix(host: Host, pid: str) -> None:
    path = host.home / "plugins" / pid / f"{module_name(pid)}.py"
    text = path.read_text()
    broken = [line for line in text.splitlines() if "# broken" in line]
    assert broken
    path.write_text(text.replace(broken[0], "        pass  # fixed, and longer than before"))


@pytest.mark.parametrize(
    ("broken", "code"),
    [
        ("raise RuntimeError('kaput')  # broken", "plugin_error"),
        ("import time; time.sleep(1.5)  # broken", "timeout"),
    ],
)
def test_failing_hook_moves_plugin_to_failed(
    home: Path, workspace: Path, tmp_path: Path, broken: str, code: str
) -> None:
    with Host(home=home, workspace=workspace, hook_timeout=0.5) as host:
        host.register(make_plugin(tmp_path, "ok.one"), flaky(tmp_path, "bad.one", broken))
        host.enable("ok.one")
        error_type = PluginError if code == "plugin_error" else PluginTimeout
        with pytest.raises(error_type) as info:
            host.enable("bad.one")
        assert info.value.plugin_id == "bad.one"
        assert info.value.exit_code == 5
        assert info.value.details["hook"] == "on_enable"
        if code == "plugin_error":
            assert "kaput" in str(info.value)
            assert "RuntimeError" in info.value.details["traceback"]
        details = host.info("bad.one")
        assert details["state"] == "failed"
        assert details["error"]["code"] == code
        assert "on_enable" in details["error"]["message"]
        assert hooks_log(host, "bad.one")[-1] == f"bad.one:on_error:{code}"
        # Everything else keeps working.
        assert host.call("ok.one", "echo", [1]) == [1]
        with pytest.raises(LifecycleError, match="enable it again"):
            host.call("bad.one", "echo", 1)
        assert [i.id for i in host.list(state="failed")] == ["bad.one"]
        # Fix the code; enabling again recovers it.
        fix(host, "bad.one")
        assert host.enable("bad.one").state == "enabled"
        assert host.call("bad.one", "echo", "back") == "back"
        assert host.info("bad.one").get("error") is None


def test_failing_load_hook_and_import_error(host: Host, tmp_path: Path) -> None:
    mod = module_name("bad.import")
    code = "def echo(v, c):\n    return v\n\nraise ImportError('no numpy here')\n"
    host.register(
        make_plugin(tmp_path, "bad.import", files={f"{mod}.py": code},
                    exports={"echo": f"{mod}:echo"}),
        make_plugin(tmp_path, "ok.two"),
    )
    with pytest.raises(PluginError, match="no numpy here"):
        host.enable("bad.import")
    assert state(host, "bad.import") == "failed"
    host.enable("ok.two")
    assert host.call("ok.two", "echo", True) is True


def test_entry_constructor_raising(host: Host, tmp_path: Path) -> None:
    mod = module_name("bad.ctor")
    code = "class Plugin:\n    def __init__(self):\n        raise ValueError('ctor')\n" + ECHO_CODE
    host.register(make_plugin(tmp_path, "bad.ctor", files={f"{mod}.py": code},
                              plugin={"entry": f"{mod}:Plugin"}))
    with pytest.raises(PluginError, match="ctor"):
        host.enable("bad.ctor")
    assert state(host, "bad.ctor") == "failed"


# -- dependencies at runtime ---------------------------------------------------------------


def test_enable_in_dependency_order_and_disable_cascade(host: Host, tmp_path: Path) -> None:
    host.register(
        make_plugin(tmp_path, "dep.app", entry=True, dependencies={"dep.mid": ">=1"}),
        make_plugin(tmp_path, "dep.mid", entry=True, dependencies={"dep.base": ""}),
        make_plugin(tmp_path, "dep.base", entry=True),
    )
    host.enable("dep.app")
    order = read_lines(host.workspace / "order.log")
    enables = [line.split(":")[0] for line in order if line.endswith(":on_enable")]
    assert enables == ["dep.base", "dep.mid", "dep.app"]
    assert {i.id for i in host.list(state="enabled")} == {"dep.app", "dep.mid", "dep.base"}

    with pytest.raises(LifecycleError) as info:
        host.disable("dep.base")
    assert "dep.mid" in str(info.value)
    assert "dep.app" in str(info.value)
    assert state(host, "dep.base") == "enabled"

    done = host.disable("dep.base", cascade=True)
    assert done == ["dep.app", "dep.mid", "dep.base"]
    order = read_lines(host.workspace / "order.log")
    disables = [line.split(":")[0] for line in order if line.endswith(":on_disable")]
    assert disables == ["dep.app", "dep.mid", "dep.base"]
    assert host.list(state="enabled") == []


def test_disable_leaf_leaves_dependencies_enabled(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "dep.app", dependencies={"dep.base": ""}),
                  make_plugin(tmp_path, "dep.base"))
    host.enable("dep.app")
    assert host.disable("dep.app") == ["dep.app"]
    assert state(host, "dep.base") == "enabled"


# -- calls ------------------------------------------------------------------------------------


@pytest.fixture
def demo(host: Host, tmp_path: Path) -> Host:
    host.register(make_plugin(tmp_path, "acme.demo"))
    host.enable("acme.demo")
    return host


@pytest.mark.parametrize(
    "value",
    [None, 0, -1, 1.5, "", "ünïcode", True, [], {}, {"a": [1, {"b": None}]}, [[[[1]]]]],
)
def test_call_round_trips_json(demo: Host, value: Any) -> None:
    assert demo.call("acme.demo", "echo", value) == value


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        ({1: "x"}, "key 1 of type int"),
        ({"a": (1, 2)}, "tuple"),
        ({"a": [object()]}, "object"),
        (deep(100), "levels deep"),
    ],
)
def test_call_input_must_be_json(demo: Host, value: Any, expect: str) -> None:
    with pytest.raises(UsageError) as info:
        demo.call("acme.demo", "echo", value)
    assert expect in str(info.value)
    assert "acme.demo" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("export", "expect"), [("nan", "finite"), ("a_set", "set")])
def test_call_output_must_be_json(demo: Host, export: str, expect: str) -> None:
    with pytest.raises(PluginError) as info:
        demo.call("acme.demo", export, None)
    assert expect in str(info.value)
    assert "result" in str(info.value)


def test_echoing_bad_data_back_is_caught_on_output(demo: Host) -> None:
    # 64 levels in is fine as input; the output check uses the same rule.
    assert demo.call("acme.demo", "echo", deep(60)) == deep(60)


def test_exception_becomes_plugin_error_with_traceback(demo: Host) -> None:
    with pytest.raises(PluginError) as info:
        demo.call("acme.demo", "boom", 1)
    err = info.value
    assert err.code == "plugin_error"
    assert err.exit_code == 5
    assert "ZeroDivisionError" in str(err)
    tb = err.details["traceback"]
    assert "Traceback" in tb
    assert "cp_acme_demo.py" in tb
    assert "1 / 0" in tb
    assert err.to_dict()["traceback"] == tb
    # The plugin stays enabled; the host carries on.
    assert demo.call("acme.demo", "echo", 2) == 2
    assert state(demo, "acme.demo") == "enabled"


def test_unknown_export(demo: Host) -> None:
    with pytest.raises(NotFoundError) as info:
        demo.call("acme.demo", "nope", 1)
    assert "echo" in str(info.value)  # it lists what is offered


def test_micro_plugin_call(host: Host, tmp_path: Path) -> None:
    mod = module_name("acme.micro")
    host.register(make_plugin(tmp_path, "acme.micro", micro=[
        {"id": "acme.micro.same", "type": "transformer", "handler": f"{mod}:echo"}]))
    host.enable("acme.micro")
    assert host.call("acme.micro", "acme.micro.same", {"k": 1}) == {"k": 1}


def test_sync_call_of_async_export(demo: Host) -> None:
    assert demo.call("acme.demo", "aecho", [1]) == {"async": [1]}
    with pytest.raises(PluginError, match="async boom") as info:
        demo.call("acme.demo", "aboom", None)
    assert "ValueError" in info.value.details["traceback"]


def test_async_output_must_be_json(demo: Host) -> None:
    with pytest.raises(PluginError, match="finite"):
        demo.call("acme.demo", "anan")
    with pytest.raises(PluginError, match="finite"):
        asyncio.run(demo.acall("acme.demo", "anan"))


ASYNC_HOOKS = """
import asyncio
from pathlib import Path


class Plugin:
    async def on_load(self, ctx):
        await asyncio.sleep(0)
        (Path(ctx.data_dir) / "loaded").write_text("yes")

    async def on_enable(self, ctx):
        mode = (Path(ctx.workspace) / "mode").read_text()
        if mode == "raise":
            raise LookupError("async hook failed")
        if mode == "hang":
            await asyncio.sleep(30)


def echo(value, ctx):
    return value
"""


@pytest.mark.parametrize(
    ("mode", "error", "code"),
    [("raise", PluginError, "plugin_error"), ("hang", PluginTimeout, "timeout")],
)
def test_async_hooks(home: Path, workspace: Path, tmp_path: Path, mode: str,
                     error: type[Exception], code: str) -> None:
    mod = module_name("acme.ahooks")
    (workspace / "mode").write_text(mode)
    h = Host(home=home, workspace=workspace, hook_timeout=0.5)
    try:
        h.register(make_plugin(tmp_path, "acme.ahooks", files={f"{mod}.py": ASYNC_HOOKS},
                               exports={"echo": f"{mod}:echo"},
                               plugin={"entry": f"{mod}:Plugin"}))
        with pytest.raises(error):
            h.enable("acme.ahooks")
        assert (home / "data" / "acme.ahooks" / "loaded").read_text() == "yes"
        assert h.info("acme.ahooks")["state"] == "failed"
        assert h.info("acme.ahooks")["error"]["code"] == code
        (workspace / "mode").write_text("ok")
        assert h.enable("acme.ahooks").state == "enabled"
        assert h.call("acme.ahooks", "echo", 7) == 7
    finally:
        close_quietly(h)


def test_asyncio_usage(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.demo"))

    async def main() -> list[Any]:
        await host.aenable("acme.demo")
        results = await asyncio.gather(
            host.acall("acme.demo", "aecho", 1),
            host.acall("acme.demo", "echo", 2),
            host.acall("acme.demo", "aecho", {"x": 3}),
        )
        with pytest.raises(PluginError, match="async boom"):
            await host.acall("acme.demo", "aboom")
        with pytest.raises(UsageError):
            await host.acall("acme.demo", "aecho", {1, 2})
        # Sync calls from inside a running loop still work, for sync and async exports.
        results.append(host.call("acme.demo", "echo", 4))
        results.append(host.call("acme.demo", "aecho", 5))
        await host.adisable("acme.demo")
        return list(results)

    assert asyncio.run(main()) == [{"async": 1}, 2, {"async": {"x": 3}}, 4, {"async": 5}]
    assert state(host, "acme.demo") == "disabled"


def test_host_as_async_context_manager(home: Path, workspace: Path, tmp_path: Path) -> None:
    async def main() -> Any:
        async with Host(home=home, workspace=workspace) as h:
            await h.aregister(make_plugin(tmp_path, "acme.demo"))
            await h.aenable("acme.demo")
            return await h.acall("acme.demo", "aecho", "x")

    assert asyncio.run(main()) == {"async": "x"}


def test_same_top_level_module_in_two_plugins(host: Host, tmp_path: Path) -> None:
    code = "def echo(v, ctx):\n    return v\n"
    host.register(
        make_plugin(tmp_path, "twin.one", files={"twinmod_x.py": code},
                    exports={"echo": "twinmod_x:echo"}),
        make_plugin(tmp_path, "twin.two", files={"twinmod_x.py": code},
                    exports={"echo": "twinmod_x:echo"}),
    )
    host.enable("twin.one")
    with pytest.raises(InvalidPluginError) as info:
        host.enable("twin.two")
    assert "twinmod_x" in str(info.value)
    assert "twin.two" in str(info.value)
    assert host.call("twin.one", "echo", 1) == 1
    assert state(host, "twin.two") == "failed"


def test_module_shadowing_stdlib_is_refused(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.shadow", files={"json.py": "def echo(v, c): ...\n"},
                              exports={"echo": "json:echo"}))
    with pytest.raises(InvalidPluginError, match="json"):
        host.enable("acme.shadow")


def test_strict_plugin_refused_without_sandbox(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kernel without Landlock, seccomp or network namespaces, faked at the
    # probe so this refusal runs on every machine, confining ones included.
    from corral._sandbox import kernel

    bare = kernel.KernelFeatures(
        machine="riscv64", landlock_abi=0, seccomp_filter=False, user_ns=True, pid_ns=True,
        net_ns=False, mount_ns=True, ipc_ns=True,
    )
    monkeypatch.setattr(kernel, "probe", lambda: bare)
    assert sandbox_problem("strict") == (
        "missing kernel features: landlock, seccomp-bpf, network namespaces")
    host.register(make_plugin(tmp_path, "acme.strict", isolation="strict"))
    with pytest.raises(PolicyDenied) as info:
        host.enable("acme.strict")
    assert info.value.exit_code == 4
    assert info.value.message == (
        "acme.strict asks for sandbox.isolation = 'strict', which this machine cannot "
        "enforce: missing kernel features: landlock, seccomp-bpf, network namespaces; "
        "it will not run with less"
    )
    assert state(host, "acme.strict") != "enabled"


def test_call_metrics_are_recorded(demo: Host) -> None:
    for i in range(3):
        demo.call("acme.demo", "echo", i)
    with pytest.raises(PluginError):
        demo.call("acme.demo", "boom")
    metrics = demo.info("acme.demo")["metrics"]
    assert metrics["calls"] == 4
    assert metrics["outcomes"] == {"ok": 3, "plugin_error": 1}


def test_validate_reports_without_registering(host: Host, tmp_path: Path) -> None:
    good = host.validate(make_plugin(tmp_path, "acme.good"))
    assert good["ok"] is True
    assert good["plugin"] == "acme.good"
    assert any(w["key"] == "sandbox.isolation" for w in good["warnings"])
    bad = host.validate(make_plugin(tmp_path, "acme.bad", exports={"x": "nowhere:x"}))
    assert bad["ok"] is False
    assert bad["errors"][0]["code"] == "invalid"
    assert "exports.x" in bad["errors"][0]["message"]
    assert host.list() == []
    assert plugins_dir(host) == set()


def test_close_closes_private_event_loop(home: Path, workspace: Path, tmp_path: Path) -> None:
    h = Host(home=home, workspace=workspace)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            h.register(make_plugin(tmp_path, "acme.demo"))
            h.enable("acme.demo")
            assert h.call("acme.demo", "aecho", 1) == {"async": 1}  # runs on the private loop
        finally:
            h.close()
        del h
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_close_is_idempotent(home: Path, workspace: Path) -> None:
    h = Host(home=home, workspace=workspace)
    h.close()
    h.close()
    assert (home / "corral.db").is_file()
    assert os.path.isdir(home / "plugins")


def test_batch_refused_late_leaves_no_half_placed_plugin(host: Host, tmp_path: Path) -> None:
    """The second plugin of a batch fails when it is moved into place: the first must go too."""
    blocker = host.home / "plugins" / "acme.second"
    blocker.mkdir()
    (blocker / "stray.txt").write_text("not a plugin")
    first = make_plugin(tmp_path, "acme.first")
    second = make_plugin(tmp_path, "acme.second")
    with pytest.raises(InvalidPluginError, match="already exists"):
        host.register(first, second)
    assert plugins_dir(host) == {"acme.second"}
    assert host.list(discovered=False) == []


def test_reregister_new_version_runs_new_code(host: Host, tmp_path: Path) -> None:
    mod = module_name("acme.upd")
    v1 = make_plugin(tmp_path / "v1", "acme.upd",
                     files={f"{mod}.py": "def ver(v, ctx):\n    return 'one'\n"},
                     exports={"ver": f"{mod}:ver"})
    host.register(v1)
    host.enable("acme.upd")
    assert host.call("acme.upd", "ver") == "one"
    host.unregister("acme.upd")
    v2 = make_plugin(tmp_path / "v2", "acme.upd", version="2.0.0",
                     files={f"{mod}.py": "def ver(v, ctx):\n    return 'two, and longer'\n"},
                     exports={"ver": f"{mod}:ver"})
    host.register(v2)
    host.enable("acme.upd")
    assert host.call("acme.upd", "ver") == "two, and longer"
    assert host.info("acme.upd")["version"] == "2.0.0"


FAILING_DISABLE = '''
class Plugin:
    def on_disable(self, ctx):
        raise RuntimeError("will not stop")


def echo(value, ctx):
    return value
'''


def test_failing_disable_hook_then_unregister(host: Host, tmp_path: Path) -> None:
    mod = module_name("acme.stuck")
    host.register(make_plugin(tmp_path, "acme.stuck", files={f"{mod}.py": FAILING_DISABLE},
                              exports={"echo": f"{mod}:echo"}, plugin={"entry": f"{mod}:Plugin"}))
    host.enable("acme.stuck")
    with pytest.raises(PluginError, match="will not stop"):
        host.disable("acme.stuck")
    assert state(host, "acme.stuck") == "failed"
    with pytest.raises(LifecycleError):
        host.call("acme.stuck", "echo", 1)
    host.unregister("acme.stuck")
    assert host.list() == []
    assert plugins_dir(host) == set()


def test_dependency_failing_to_enable_stops_the_dependent(host: Host, tmp_path: Path) -> None:
    mod = module_name("dep.lib")
    code = "class Plugin:\n    def on_enable(self, ctx):\n        raise RuntimeError('lib down')\n"
    host.register(
        make_plugin(tmp_path, "dep.lib", files={f"{mod}.py": code}, exports={},
                    plugin={"entry": f"{mod}:Plugin"}),
        make_plugin(tmp_path, "dep.app", dependencies={"dep.lib": ""}),
        make_plugin(tmp_path, "dep.other"),
    )
    with pytest.raises(PluginError, match="lib down") as info:
        host.enable("dep.app")
    assert info.value.plugin_id == "dep.lib"
    assert state(host, "dep.lib") == "failed"
    assert state(host, "dep.app") != "enabled"
    with pytest.raises(LifecycleError):
        host.call("dep.app", "echo", 1)
    host.enable("dep.other")
    assert host.call("dep.other", "echo", 1) == 1


def test_manifest_edited_to_need_a_newer_corral(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.old"))
    path = host.home / "plugins" / "acme.old" / "corral.toml"
    text = path.read_text().replace("[plugin]\n", '[plugin]\n"requires-corral" = ">=99"\n')
    path.write_text(text)
    with pytest.raises(InvalidPluginError, match=">=99"):
        host.enable("acme.old")
    assert state(host, "acme.old") != "enabled"


def test_manifest_edited_into_a_cycle(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "cyc.a", dependencies={"cyc.b": ""}),
                  make_plugin(tmp_path, "cyc.b"))
    path = host.home / "plugins" / "cyc.b" / "corral.toml"
    path.write_text(path.read_text() + '\n[dependencies]\n"cyc.a" = ""\n')
    with pytest.raises(InvalidPluginError) as info:
        host.enable("cyc.a")
    assert "cyc.a" in str(info.value)
    assert "cyc.b" in str(info.value)
    assert host.list(state="enabled") == []


def test_manifest_id_changed_on_disk(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.orig"), make_plugin(tmp_path, "acme.fine"))
    path = host.home / "plugins" / "acme.orig" / "corral.toml"
    path.write_text(path.read_text().replace('"acme.orig"', '"acme.renamed"'))
    infos = {i.id: i for i in host.list()}
    assert "acme.fine" in infos
    assert infos["acme.fine"].error is None
    bad = infos.get("acme.orig")
    assert bad is not None
    assert bad.error is not None
    assert "id changed" in bad.error["message"]
    with pytest.raises(InvalidPluginError, match="id changed"):
        host.enable("acme.orig")


def test_manifest_broken_on_disk_enable_names_the_file(host: Host, tmp_path: Path) -> None:
    host.register(make_plugin(tmp_path, "acme.broke"))
    path = host.home / "plugins" / "acme.broke" / "corral.toml"
    text = path.read_text()
    assert '"version" = "1.0.0"' in text
    path.write_text(text.replace('"version" = "1.0.0"', '"version" = "one"'))
    with pytest.raises(InvalidPluginError) as info:
        host.enable("acme.broke")
    assert "corral.toml" in str(info.value)
    assert "plugin.version" in str(info.value)


def test_plugin_directory_deleted_behind_the_hosts_back(host: Host, tmp_path: Path) -> None:
    import shutil

    host.register(make_plugin(tmp_path, "acme.gone"), make_plugin(tmp_path, "acme.here"))
    shutil.rmtree(host.home / "plugins" / "acme.gone")
    infos = {i.id: i for i in host.list()}
    assert infos["acme.gone"].error is not None
    assert "gone" in infos["acme.gone"].error["message"]
    with pytest.raises(InvalidPluginError):
        host.enable("acme.gone")
    # It can still be removed, and the rest is unaffected.
    host.unregister("acme.gone")
    assert [i.id for i in host.list()] == ["acme.here"]
