"""Plugins that use ``ctx.cache``, at any isolation level, written as real plugin folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.plugins import make_plugin, module_name

#: Exports over ctx.cache; computations are counted in a file under {data}, which
#: survives reloads and worker restarts and is read by the test from outside.
CODE = '''
import os
import threading
import time
from pathlib import Path

GATE = threading.Event()


def _count(ctx, what):
    with open(Path(ctx.data_dir) / "computed", "a") as f:
        f.write(what + "\\n")


def _view(ctx, inp):
    ns = inp.get("ns") if isinstance(inp, dict) else None
    return ctx.cache.namespace(ns) if ns else ctx.cache


def put(inp, ctx):
    return _view(ctx, inp).set(inp["key"], inp["value"], ttl=inp.get("ttl"),
                               tags=inp.get("tags", ()), stale=inp.get("stale", 0.0))


def put_bytes(inp, ctx):
    return ctx.cache.set(inp["key"], inp["value"].encode() * inp.get("times", 1),
                         ttl=inp.get("ttl"))


def get(inp, ctx):
    return _view(ctx, inp).get(inp["key"], "MISSING")


def get_bytes_len(inp, ctx):
    value = ctx.cache.get(inp["key"])
    return None if value is None else [type(value).__name__, len(value)]


def get_twice_mutating(inp, ctx):
    first = ctx.cache.get(inp["key"])
    first["changed"] = True
    return ctx.cache.get(inp["key"])


def delete(inp, ctx):
    return _view(ctx, inp).delete(inp["key"])


def invalidate(inp, ctx):
    return _view(ctx, inp).invalidate(*inp["tags"])


def compute(inp, ctx):
    def fn():
        _count(ctx, inp["key"])
        if inp.get("sleep"):
            time.sleep(inp["sleep"])
        if inp.get("gate"):
            GATE.wait(30)
        if inp.get("fail"):
            raise RuntimeError("no value today")
        return {"value": inp.get("value", 42), "pid": os.getpid()}
    return _view(ctx, inp).get_or_compute(inp["key"], fn, ttl=inp.get("ttl"),
                                          stale=inp.get("stale", 0.0))


def open_gate(inp, ctx):
    GATE.set()
    return True


def computed(inp, ctx):
    path = Path(ctx.data_dir) / "computed"
    return path.read_text().split() if path.exists() else []


def raw(inp, ctx):
    """What an attacker in a worker sends past the proxy (in process: straight to the service)."""
    try:
        ch = ctx.cache._ch
    except AttributeError:
        return "in-process"
    try:
        return {"ok": ch.request(inp["op"], inp["args"])[0]}
    except Exception as exc:
        return {"error": type(exc).__name__, "code": getattr(exc, "code", None),
                "details": getattr(exc, "details", {}), "message": str(exc)}


def raw_set(inp, ctx):
    """A forged cache.set past the proxy: any bytes, any kind, any namespace."""
    args = dict(inp["args"])
    args["value"] = inp.get("fill", "x").encode() * inp["size"]
    return raw({"op": "cache.set", "args": args}, ctx)


def try_(inp, ctx):
    """Run one cache call and report its error as data."""
    try:
        view = _view(ctx, inp)
        return {"ok": getattr(view, inp["method"])(*inp.get("args", []), **inp.get("kwargs", {}))}
    except Exception as exc:
        return {"error": type(exc).__name__, "code": getattr(exc, "code", None),
                "details": getattr(exc, "details", {}), "message": str(exc)}


def bad_value(inp, ctx):
    try:
        ctx.cache.set("k", {"n": float("nan"), "s": {1, 2}})
    except Exception as exc:
        return getattr(exc, "code", None)
    return "kept"


def square(inp, ctx):
    _count(ctx, "square")
    return {"square": inp["n"] * inp["n"], "config": dict(ctx.config)}


def fails(inp, ctx):
    _count(ctx, "fails")
    raise ValueError("never kept")
'''

EXPORTS = ("put", "put_bytes", "get", "get_bytes_len", "get_twice_mutating", "delete",
           "invalidate", "compute", "open_gate", "computed", "raw", "try_", "fails", "bad_value",
           "raw_set")


@pytest.fixture
def cache_plugin(tmp_path: Path) -> Callable[..., Path]:
    """``cache_plugin(id, isolation=..., ttl=..., grants=[...], sandbox={...})``: a plugin
    folder whose ``square`` export is memoised for ``ttl`` (``None``: not memoised)."""

    def make(plugin_id: str, isolation: str = "none", *, ttl: Any = "10m",
             grants: list[str] | None = None, version: str = "1.0.0",
             sandbox: dict[str, Any] | None = None, root: Path | None = None) -> Path:
        mod = module_name(plugin_id)
        exports: dict[str, Any] = {name: f"{mod}:{name}" for name in EXPORTS}
        exports["square"] = ({"target": f"{mod}:square", "cache": {"ttl": ttl}}
                             if ttl is not None else f"{mod}:square")
        extra: dict[str, Any] = {}
        if grants:
            extra["permissions"] = {"host-api": grants}
        return make_plugin(root or tmp_path / plugin_id, plugin_id, {f"{mod}.py": CODE},
                           isolation=isolation, version=version, exports=exports,
                           sandbox={"timeout-ms": 30_000, **(sandbox or {})}, **extra)

    return make
