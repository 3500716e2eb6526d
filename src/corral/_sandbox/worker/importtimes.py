"""How long each module took to import, measured while a worker first imports a plugin.

Like ``python -X importtime``, but switched on for one import only: a finder in front
of ``sys.meta_path`` wraps each module's loader and times its ``exec_module``, keeping
the time of the modules it imports apart from its own.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Final, final

__all__ = ["timed_imports"]

_KEEP: Final = 50


@final
class _Timer:
    """The finder: it asks the finders behind it and times what their loaders run."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, float]] = []
        self._children: list[float] = [0.0]

    def find_spec(self, name: str, path: Any, target: Any = None) -> ModuleSpec | None:
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(name, path, target)
            if spec is not None:
                loader = spec.loader
                if loader is not None and hasattr(loader, "exec_module"):
                    spec.loader = _TimedLoader(loader, self)  # type: ignore[assignment]
                return spec
        return None

    def run(self, loader: Any, module: ModuleType) -> None:
        self._children.append(0.0)
        t0 = time.perf_counter()
        try:
            loader.exec_module(module)
        finally:
            total = (time.perf_counter() - t0) * 1000.0
            inner = self._children.pop()
            self._children[-1] += total
            self.times.append((module.__name__, round(total - inner, 3), round(total, 3)))
            spec = getattr(module, "__spec__", None)
            if spec is not None and isinstance(spec.loader, _TimedLoader):
                spec.loader = loader  # the module keeps its own loader afterwards
            with contextlib.suppress(AttributeError, TypeError):
                if isinstance(module.__loader__, _TimedLoader):
                    module.__loader__ = loader


@final
class _TimedLoader:
    """A loader that times its module's execution and otherwise is the loader it wraps."""

    def __init__(self, loader: Any, timer: _Timer) -> None:
        self._loader = loader
        self._timer = timer

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._timer.run(self._loader, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@contextlib.contextmanager
def timed_imports() -> Iterator[list[tuple[str, float, float]]]:
    """Time the imports made inside the block; the list holds ``(module, self ms, total
    ms)`` of the slowest (by their own time) once the block ends."""
    timer = _Timer()
    out: list[tuple[str, float, float]] = []
    sys.meta_path.insert(0, timer)
    try:
        yield out
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(timer)
        out.extend(sorted(timer.times, key=lambda t: -t[1])[:_KEEP])
