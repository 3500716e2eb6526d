"""A plugin's activation in this process: its record, its code imported in process, its hooks.

What needs the host services (its ``ctx``, its worker) is handed in; this module
knows only the runtime: the loader, the runner and the directory budgets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, final

from corral._errors import CorralError, InvalidPluginError, PluginError, PluginTimeout
from corral._model.lifecycle import State
from corral._runtime.blame import plugin_frames
from corral._runtime.budgets import DirBudget, DirWatch
from corral._runtime.runner import Runner

if TYPE_CHECKING:
    from corral._model.manifest import Manifest
    from corral._runtime.loader import ModuleScope

__all__ = ["HOOKS", "Active", "Context", "HookRunner", "format_tb", "import_in_process"]

HOOKS: Final = ("on_load", "on_enable", "on_disable", "on_unload", "on_error")


class Context(Protocol):
    """What the runtime needs of a plugin's ``ctx``: its paths and its configuration."""

    paths: Mapping[str, str]
    config: Mapping[str, Any]


@final
class Active:
    """A plugin's life in this process: state, imported code, context, entry object."""

    __slots__ = ("budget", "ctx", "entry", "exports", "manifest", "quota", "scope", "spec",
                 "state")

    def __init__(self, manifest: Manifest, ctx: Context,
                 watch_from: Callable[[], DirWatch] | None = None) -> None:
        self.manifest = manifest
        self.ctx = ctx
        #: The host-side check of its {data}, {tmp} and {cache} totals.
        self.budget = DirBudget(manifest.id, ctx.paths, manifest.sandbox, watch_from)
        self.state = State.REGISTERED
        self.scope: ModuleScope | None = None
        self.entry: Any = None
        self.exports: dict[str, Callable[..., Any]] = {}
        #: A sandboxed plugin's SandboxSpec, built on its first call in this activation.
        self.spec: Any = None
        #: Its quotas over time (``_runtime/quotas.py``'s ``Meter``), set when it loads.
        self.quota: Any = None

    @property
    def sandboxed_entry(self) -> bool:
        """Whether its entry object lives in a worker (its hooks run there)."""
        manifest = self.manifest
        return manifest.entry is not None and manifest.sandbox.isolation != "none"


def import_in_process(active: Active, plugin_dir: Path) -> set[str]:
    """Import an in-process plugin's code, make its entry object, resolve its exports.

    Returns the names of its exports that are coroutine functions.
    """
    import inspect

    from corral._disk.targets import check_targets, targets_of
    from corral._runtime.loader import ModuleScope

    manifest = active.manifest
    check_targets(plugin_dir, manifest)
    scope = ModuleScope(manifest.id, manifest.version, plugin_dir)
    scope.claim({t.partition(":")[0].split(".")[0] for _, t in targets_of(manifest)})
    active.scope = scope
    if manifest.entry:
        entry = scope.resolve(manifest.entry)
        if isinstance(entry, type):
            try:
                entry = entry()
            except Exception as exc:
                raise PluginError(
                    f"{manifest.id}: creating {manifest.entry} raised "
                    f"{type(exc).__name__}: {exc}",
                    plugin_id=manifest.id,
                    traceback=format_tb(exc),
                ) from exc
        active.entry = entry
    for name, target in manifest.exports.items():
        fn = scope.resolve(target)
        if not callable(fn):
            raise InvalidPluginError(
                f"{manifest.id}: exports.{name}: {target} is not callable",
                plugin_id=manifest.id,
                key=f"exports.{name}",
            )
        active.exports[name] = fn
    for i, micro in enumerate(manifest.micro):
        fn = scope.resolve(micro.handler)
        if not callable(fn):
            raise InvalidPluginError(
                f"{manifest.id}: micro[{i}].handler ({micro.id}): {micro.handler} is not "
                "callable",
                plugin_id=manifest.id,
                key=f"micro[{i}].handler",
                micro=micro.id,
            )
        active.exports[micro.id] = fn
    return {name for name, fn in active.exports.items() if inspect.iscoroutinefunction(fn)}


@final
class HookRunner:
    """Runs in-process hooks under the host's ``hook_timeout``, on the host's runner."""

    def __init__(self, runner: Runner, timeout: float) -> None:
        self.runner = runner
        self.timeout = timeout

    def call(self, active: Active, name: str, fn: Callable[..., Any], arg: Any) -> Any:
        """Run a hook under the timeout; a hang or an exception is the plugin's error."""
        import inspect

        plugin_id = active.manifest.id
        timeout = self.timeout
        try:
            if inspect.iscoroutinefunction(fn):
                return self.runner.run_async(fn, arg, timeout)
            return self.runner.run_sync(fn, arg, timeout, f"corral-hook-{plugin_id}-{name}")
        except TimeoutError as hung:
            blame = plugin_frames(getattr(hung, "stack", ()), active.ctx.paths["plugin"])
            raise PluginTimeout(
                f"{plugin_id}: {name} did not finish within {timeout:g} s"
                + (f" (in {blame[0]['function']}, {blame[0]['file']}:{blame[0]['line']})"
                   if blame else ""),
                plugin_id=plugin_id,
                hook=name,
                limit="hook-timeout",
                limit_seconds=timeout,
                blame=blame,
            ) from None
        except CorralError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{plugin_id}: {name} raised {type(exc).__name__}: {exc}",
                plugin_id=plugin_id,
                hook=name,
                traceback=format_tb(exc),
            ) from exc

    def run(self, active: Active, name: str) -> None:
        """Run the in-process entry object's hook ``name`` with its ``ctx``, if it has one."""
        if active.entry is None:
            return
        hook = getattr(active.entry, name, None)
        if hook is None:
            return
        self.call(active, name, hook, active.ctx)


def format_tb(exc: BaseException) -> str:
    """The traceback of ``exc`` as text (traceback is imported only when needed)."""
    import traceback

    return "".join(traceback.format_exception(exc))
