"""``corral.testing``: the pytest plugin for testing corral plugins in a throwaway host.

Loaded into every pytest session through the ``pytest11`` entry point (and by
``corral test``), so importing it costs nothing: the host is imported only
when a fixture is used.  Fixtures:

- ``corral_home``, ``corral_workspace``: empty temporary directories;
- ``corral_host``: a :class:`~corral.Host` on them, closed after the test;
- ``plugin_under_test``: the plugin directory, from ``--corral-plugin PATH``,
  else ``$CORRAL_PLUGIN``, else the nearest ``corral.toml`` above the test file;
- ``load_plugin(path=None, *, config=None)``: register and enable a plugin in
  ``corral_host`` at its own isolation level and return a :class:`PluginHandle`;
- ``plugin``: ``load_plugin()`` of the plugin under test;
- ``assert_denied(permission)``: a context manager that fails unless the
  block was refused that permission;
- ``events``: publish as the host and see every event (:class:`EventRecorder`);
- ``state``: read and seed shared state (:class:`StateView`);
- ``perf_budget(ms=...)``: a context manager that fails when its block took
  longer than ``ms`` milliseconds (:class:`PerfBudget`).

Example::

    def test_greet(plugin, perf_budget):
        with perf_budget(ms=100):
            assert plugin.call("greet", {"name": "Ada"}) == {"greeting": "Hello, Ada!"}
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import pytest

if TYPE_CHECKING:
    from corral._errors import CorralError
    from corral._host import Host
    from corral._model.manifest import Manifest
    from corral._services.events.subscriptions import Event

__all__ = [
    "AssertDenied",
    "Denied",
    "EventRecorder",
    "PerfBudget",
    "PluginHandle",
    "StateView",
    "LoadPlugin",
    "find_plugin_dir",
]

#: Environment variable naming the plugin under test (``corral test`` sets it).
PLUGIN_ENV: Final = "CORRAL_PLUGIN"
_MANIFEST: Final = "corral.toml"
#: Permission kinds the kernel enforces inside a sandbox: a refusal there is an OSError.
_KERNEL_KINDS: Final = ("fs-read", "fs-write", "net-connect", "spawn")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--corral-plugin PATH``: the plugin directory the ``plugin`` fixture loads."""
    group = parser.getgroup("corral", "corral plugin testing")
    group.addoption(
        "--corral-plugin",
        dest="corral_plugin",
        default=None,
        metavar="PATH",
        help=f"plugin directory under test (default: ${PLUGIN_ENV}, "
        f"else the nearest {_MANIFEST} above each test file)",
    )


def find_plugin_dir(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` that holds a ``corral.toml``."""
    start = start.absolute()
    for folder in (start, *start.parents):
        if (folder / _MANIFEST).is_file():
            return folder
    return None


@final
class PluginHandle:
    """A plugin registered and enabled in a test's host: call its exports and micro-plugins."""

    __slots__ = ("host", "id", "manifest", "path")

    def __init__(self, host: Host, manifest: Manifest, path: Path) -> None:
        #: The throwaway host the plugin lives in.
        self.host: Final = host
        #: The plugin id.
        self.id: Final = manifest.id
        #: The validated manifest.
        self.manifest: Final = manifest
        #: The plugin's source directory (the host runs a copy in its home).
        self.path: Final = path

    @property
    def isolation(self) -> str:
        """The isolation level it runs at: ``none``, ``limited`` or ``strict``."""
        return self.manifest.sandbox.isolation

    def call(self, export: str, input: Any = None) -> Any:
        """Run an export (or a micro-plugin by id) through the host, as ``corral call`` does."""
        return self.host.call(self.id, export, input)

    def micro(self, micro_id: str, input: Any = None) -> Any:
        """Run a ``[[micro]]`` through the host's micro-plugin manager (shapes and max-ms checked).

        ``micro_id`` may be the full id or its part after the plugin id.
        """
        if not micro_id.startswith(self.id + "."):
            micro_id = f"{self.id}.{micro_id}"
        return self.host.micro.execute(micro_id, input)

    def pipeline(self, pipeline_id: str, input: Any = None) -> Any:
        """Run a ``[[pipeline]]`` of the plugin (full id or the part after the plugin id)."""
        if not pipeline_id.startswith(self.id + "."):
            pipeline_id = f"{self.id}.{pipeline_id}"
        return self.host.run_pipeline(pipeline_id, input)

    def disable(self) -> None:
        """Disable it (runs ``on_disable``); :meth:`enable` brings it back."""
        self.host.disable(self.id)

    def enable(self) -> None:
        """Enable it again after :meth:`disable`."""
        self.host.enable(self.id)

    def __repr__(self) -> str:
        return f"<PluginHandle {self.id} ({self.isolation})>"


@final
class Denied:
    """What :func:`assert_denied` caught: the error, once the block has run."""

    __slots__ = ("error", "permission")

    def __init__(self, permission: str) -> None:
        self.permission = permission
        self.error: CorralError | None = None


def _denial_matches(exc: BaseException, permission: str) -> bool:
    """Whether ``exc`` (or its cause) refuses ``permission`` (a grant, or a prefix of one).

    In the host process a refusal inside plugin code reaches the caller as a
    ``PluginError`` caused by the ``PermissionDenied``; from a sandbox it comes as is.
    """
    from corral._errors import PermissionDenied, PluginError

    cause = exc.__cause__
    if isinstance(exc, PluginError) and isinstance(cause, PermissionDenied):
        exc = cause
    if isinstance(exc, PermissionDenied):
        granted = exc.permission
        return granted == permission or granted.startswith(permission + ":")
    if isinstance(exc, PluginError) and permission.split(":", 1)[0] in _KERNEL_KINDS:
        # Inside a sandbox the kernel (Landlock, seccomp) refuses: the plugin sees EACCES/EPERM.
        return exc.details.get("exception") == "PermissionError"
    return False


@contextlib.contextmanager
def _assert_denied(permission: str) -> Iterator[Denied]:
    from corral._errors import CorralError

    caught = Denied(permission)
    try:
        yield caught
    except CorralError as exc:
        if not _denial_matches(exc, permission):
            pytest.fail(
                f"expected {permission!r} to be denied, got {type(exc).__name__}: {exc}",
                pytrace=False,
            )
        caught.error = exc
        return
    pytest.fail(f"expected {permission!r} to be denied, but the block succeeded", pytrace=False)


@final
class EventRecorder:
    """Every event on the host's bus since the test began; publish as the host."""

    __slots__ = ("_events", "_host", "_sub")

    def __init__(self, host: Host) -> None:
        self._host = host
        self._events: list[Event] = []
        self._sub = host.bus.subscribe(">", self._events.append)

    def publish(self, topic: str, data: Any = None) -> Event | None:
        """Publish ``data`` on ``topic`` as the host (no grant needed)."""
        return self._host.bus.publish(topic, data)

    def captured(self, pattern: str = ">") -> list[Event]:
        """The events seen so far whose topic matches ``pattern`` (``*``, ``>`` as on the bus)."""
        from corral._model.permissions import pattern_matches

        return [ev for ev in self._events if pattern_matches(pattern, ev.topic)]

    def data(self, pattern: str = ">") -> list[Any]:
        """The payloads of :meth:`captured`."""
        return [ev.data for ev in self.captured(pattern)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 5.0) -> list[Event]:
        """Wait until ``count`` matching events were seen; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.captured(pattern)
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                pytest.fail(
                    f"expected {count} event(s) matching {pattern!r} within {timeout:g} s, "
                    f"saw {len(seen)}",
                    pytrace=False,
                )
            time.sleep(0.005)

    def clear(self) -> None:
        """Forget what was captured so far."""
        self._events.clear()

    def close(self) -> None:
        """Stop capturing."""
        self._sub.cancel()


@final
class StateView:
    """Shared state of the test's host, read (and seeded) as the host itself."""

    __slots__ = ("_host",)

    def __init__(self, host: Host) -> None:
        self._host = host

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` when it was never written."""
        found = self._host.shared_state.get(key)
        return default if found is None else found.value

    def version(self, key: str) -> int:
        """The version of ``key`` (0 when absent): it grows by one per write."""
        found = self._host.shared_state.get(key)
        return 0 if found is None else found.version

    def writer(self, key: str) -> str | None:
        """The plugin id that wrote ``key`` last (``None``: the host, or absent)."""
        found = self._host.shared_state.get(key)
        return None if found is None else found.updated_by

    def keys(self, pattern: str = ">") -> list[str]:
        """The keys matching ``pattern``, sorted."""
        return self._host.shared_state.keys(pattern)

    def set(self, key: str, value: Any) -> int:
        """Seed ``key`` as the host; returns the new version."""
        return self._host.shared_state.set(key, value)


@final
class PerfBudget:
    """``with perf_budget(ms=50): ...`` fails the test if the block took longer than 50 ms.

    Wall-clock time, measured with ``time.perf_counter``; :attr:`last_ms` keeps
    the last measurement.  :meth:`median` runs a function several times and
    holds the median to the budget, which is steadier on a busy machine.
    """

    __slots__ = ("last_ms",)

    def __init__(self) -> None:
        self.last_ms: float | None = None

    @contextlib.contextmanager
    def __call__(self, ms: float, *, label: str = "block") -> Iterator[PerfBudget]:
        """Time the block; fail with the measured time when it is over ``ms``."""
        start = time.perf_counter()
        yield self
        took = (time.perf_counter() - start) * 1000
        self.last_ms = took
        if took > ms:
            pytest.fail(f"{label} took {took:.1f} ms, over its budget of {ms:g} ms",
                        pytrace=False)

    def median(self, fn: Callable[[], Any], *, ms: float, runs: int = 5,
               label: str | None = None) -> float:
        """Run ``fn`` ``runs`` times; fail unless the median time is within ``ms``."""
        if runs < 1:
            raise ValueError("runs must be at least 1")
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        took = times[len(times) // 2]
        self.last_ms = took
        if took > ms:
            name = label or getattr(fn, "__name__", "function")
            pytest.fail(f"{name} took {took:.1f} ms (median of {runs}), over its budget of "
                        f"{ms:g} ms", pytrace=False)
        return took


#: The type of the ``assert_denied`` fixture, for annotating tests.
AssertDenied = Callable[[str], contextlib.AbstractContextManager[Denied]]
#: The type of the ``load_plugin`` fixture.
LoadPlugin = Callable[..., PluginHandle]


def _close_host(host: Host) -> None:
    """Close quietly: a leaked event loop must not fail an unrelated test with a warning."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        host.close()
        gc.collect()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def corral_home(tmp_path: Path) -> Path:
    """An empty host home for this test."""
    home = tmp_path / "corral-home"
    home.mkdir()
    return home


@pytest.fixture
def corral_workspace(tmp_path: Path) -> Path:
    """An empty workspace (what ``{workspace}`` means) for this test."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


@pytest.fixture
def corral_host(corral_home: Path, corral_workspace: Path) -> Iterator[Host]:
    """A :class:`~corral.Host` on ``corral_home`` and ``corral_workspace``, closed after."""
    from corral._host import Host

    host = Host(home=corral_home, workspace=corral_workspace, hook_timeout=10.0)
    try:
        yield host
    finally:
        _close_host(host)


@pytest.fixture
def plugin_under_test(request: pytest.FixtureRequest) -> Path:
    """The plugin directory: ``--corral-plugin``, ``$CORRAL_PLUGIN``, or above the test file."""
    chosen = request.config.getoption("corral_plugin", None) or os.environ.get(PLUGIN_ENV)
    if chosen:
        path = Path(chosen).expanduser().absolute()
        if not (path / _MANIFEST).is_file():
            pytest.fail(f"plugin under test {path} has no {_MANIFEST}", pytrace=False)
        return path
    found = find_plugin_dir(Path(request.path).parent)
    if found is None:
        pytest.fail(
            f"no {_MANIFEST} above {request.path}; pass --corral-plugin PATH or set "
            f"${PLUGIN_ENV}",
            pytrace=False,
        )
    return found




@pytest.fixture
def load_plugin(corral_host: Host, request: pytest.FixtureRequest) -> LoadPlugin:
    """``load_plugin(path=None, *, config=None)``: register and enable, return a handle.

    ``config`` overrides the plugin's configuration (on top of its schema's
    defaults) in this host.
    """

    def load(path: str | os.PathLike[str] | None = None, *,
             config: Mapping[str, Any] | None = None) -> PluginHandle:
        from corral._model.manifest import load_manifest

        if path is not None:
            source = Path(path).absolute()
        else:  # resolved only when needed: a test may load plugins of its own
            source = request.getfixturevalue("plugin_under_test")
        manifest = load_manifest(source)
        if config is not None:
            # Host(config=...) overrides, set before the plugin loads (the host reads them then).
            corral_host.attachments.config_overrides[manifest.id] = dict(config)
        corral_host.register(source)
        corral_host.enable(manifest.id)
        return PluginHandle(corral_host, manifest, source)

    return load


@pytest.fixture
def plugin(load_plugin: LoadPlugin) -> PluginHandle:
    """The plugin under test, registered and enabled at its own isolation level."""
    return load_plugin()


@pytest.fixture
def assert_denied() -> AssertDenied:
    """``with assert_denied("fs-read"): ...`` fails unless the block was refused that permission.

    ``permission`` is a kind (``fs-read``, ``host-api``), a kind and service
    (``host-api:events.publish``) or a whole grant as a manifest writes it;
    the refusal must be a ``PermissionDenied`` naming a grant that starts with
    it, or, for file, network and process permissions in a sandbox, the
    kernel's ``PermissionError`` inside the plugin.
    """
    return _assert_denied


@pytest.fixture
def events(corral_host: Host) -> Iterator[EventRecorder]:
    """Capture every event published on the host's bus during the test."""
    recorder = EventRecorder(corral_host)
    try:
        yield recorder
    finally:
        recorder.close()


@pytest.fixture
def state(corral_host: Host) -> StateView:
    """Shared state of the host, as the plugins wrote it."""
    return StateView(corral_host)


@pytest.fixture
def perf_budget() -> PerfBudget:
    """``with perf_budget(ms=50): plugin.call(...)`` fails with the measured time when over."""
    return PerfBudget()
