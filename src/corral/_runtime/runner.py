"""Running plugin code for the host: a private event loop, and calls under a time limit.

Async plugin code called from sync host code runs on one private loop in a
daemon thread.  A sync hook runs in its own daemon thread so that a hang can
be timed out; a hung thread cannot be killed inside the process, so it is
abandoned and its plugin marked failed by the caller.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeVar, final

from corral._runtime.blame import thread_stack

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
    from collections.abc import Callable, Coroutine

__all__ = ["Runner"]

T = TypeVar("T")


@final
class Runner:
    """Owns the host's private event loop (started on first use)."""

    __slots__ = ("_lock", "_loop", "_thread")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the private loop; the future is safe to wait on from any thread."""
        import asyncio

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="corral-host-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def run_async(self, fn: Callable[[Any], Coroutine[Any, Any, T]], arg: Any,
                  timeout: float) -> T:
        """Await ``fn(arg)`` on the private loop; ``TimeoutError`` past ``timeout`` (cancelled)."""
        import asyncio

        return self.submit(asyncio.wait_for(fn(arg), timeout)).result(timeout + 1)

    @staticmethod
    def run_sync(fn: Callable[[Any], T], arg: Any, timeout: float, name: str) -> T:
        """Call ``fn(arg)`` in a daemon thread; ``TimeoutError`` if it outlives ``timeout``."""
        result: list[T] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                result.append(fn(arg))
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            hung = TimeoutError(name)
            #: Where the abandoned thread was, innermost first (for hang blame).
            hung.stack = thread_stack(thread.ident)  # type: ignore[attr-defined]
            raise hung
        if error:
            raise error[0]
        return result[0]

    def close(self) -> None:
        """Stop the loop (if it was started) and wait briefly for its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=2)
        if loop is not None and not loop.is_running():
            loop.close()
