"""Messages between plugins: request/response with a timeout, and broadcast.

Each receiving plugin has a mailbox: a bounded queue served by its own
thread, so a receiver that hangs or floods makes only its own senders wait
(until their timeout), never anyone else.  A sender needs a
``messages.send:<receiver id>`` grant.

A *remote* receiver (a sandboxed plugin, whose ``on_message`` runs in its
worker process) gets each message with the sender's deadline, so that a
message whose sender already gave up is dropped rather than handled late,
and its handler's corral errors (a crash of the worker, a timeout) reach the
sender as they are.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, final

from corral._errors import CorralError, NotFoundError, PluginError, PluginTimeout, UsageError
from corral._model.permissions import Permissions
from corral._model.topics import check_payload

__all__ = ["Mailbox", "Messenger", "PluginMessages"]

Handler = Callable[[Any, "str | None"], Any]
#: A remote receiver's handler: ``(message, sender, deadline)``; the deadline is
#: ``time.time()`` seconds by which the sender stops waiting (``None``: a broadcast).
RemoteHandler = Callable[[Any, "str | None", "float | None"], Any]
#: Largest message a plugin may send, as encoded JSON.
MAX_MESSAGE_BYTES: Final = 1024 * 1024


@final
class Mailbox:
    """A receiver's bounded queue and the thread that answers from it."""

    __slots__ = ("_cond", "_queue", "_stopped", "_thread", "handler", "maxsize", "plugin_id",
                 "remote")

    def __init__(self, plugin_id: str, handler: Handler | RemoteHandler, maxsize: int, *,
                 remote: bool = False) -> None:
        self.plugin_id: Final = plugin_id
        self.handler: Final = handler
        self.maxsize: Final = maxsize
        #: The handler forwards to another process (see the module docstring).
        self.remote: Final = remote
        self._queue: deque[tuple[Any, str | None, Future[Any] | None, float | None]] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name=f"corral-mailbox-{plugin_id}",
                                        daemon=True)
        self._thread.start()

    def put(self, message: Any, sender: str | None, fut: Future[Any] | None,
            deadline: float | None = None) -> bool:
        """Queue a message; ``False`` when the mailbox is full or closed."""
        with self._cond:
            if self._stopped or len(self._queue) >= self.maxsize:
                return False
            self._queue.append((message, sender, fut, deadline))
            self._cond.notify()
            return True

    def stop(self) -> None:
        """Refuse new messages; fail those still queued."""
        with self._cond:
            self._stopped = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _, _, fut, _ in left:
            if fut is not None and not fut.done():
                fut.set_exception(UsageError(f"{self.plugin_id} stopped receiving messages",
                                             plugin_id=self.plugin_id))

    def _serve(self) -> None:
        loop: asyncio.AbstractEventLoop | None = None
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    break
                message, sender, fut, deadline = self._queue.popleft()
            if fut is not None and not fut.set_running_or_notify_cancel():
                continue  # the sender gave up (timed out) before we started
            try:
                if self.remote:
                    value = self.handler(message, sender, deadline)  # type: ignore[call-arg]
                else:
                    value = self.handler(message, sender)  # type: ignore[call-arg]
                if asyncio.iscoroutine(value):
                    if loop is None:
                        loop = asyncio.new_event_loop()
                    value = loop.run_until_complete(value)
            except CorralError as exc:
                if fut is not None:
                    fut.set_exception(exc if self.remote else _handler_error(
                        self.plugin_id, sender, exc))
            except Exception as exc:
                if fut is not None:
                    fut.set_exception(_handler_error(self.plugin_id, sender, exc))
            else:
                if fut is not None:
                    fut.set_result(value)
        if loop is not None:
            loop.close()


def _handler_error(plugin_id: str, sender: str | None, exc: BaseException) -> PluginError:
    return PluginError(
        f"{plugin_id} failed handling a message from {sender or 'the host'}:"
        f" {type(exc).__name__}: {exc}",
        plugin_id=plugin_id,
        traceback="".join(traceback.format_exception(exc)),
    )


@final
class Messenger:
    """Routes messages to plugins' mailboxes.

    :param status: tells the state of a plugin id (``"enabled"``, ``"disabled"``,
        ...) or ``None`` for an unknown id, so that errors can say which it is.
    """

    def __init__(self, *, status: Callable[[str], str | None] | None = None) -> None:
        self._status = status
        self._boxes: dict[str, Mailbox] = {}
        self._lock = threading.Lock()

    def serve(self, plugin_id: str, handler: Handler | RemoteHandler, *, max_queue: int = 1000,
              remote: bool = False) -> Mailbox:
        """Make ``plugin_id`` a receiver: ``handler(message, sender)`` returns the reply.

        ``remote=True``: ``handler(message, sender, deadline)`` forwards to another
        process and raises corral errors that already say what went wrong.
        """
        if not callable(handler):
            raise UsageError(f"the message handler of {plugin_id} is not callable")
        with self._lock:
            if plugin_id in self._boxes:
                raise UsageError(f"{plugin_id} already receives messages", plugin_id=plugin_id)
            box = Mailbox(plugin_id, handler, max_queue, remote=remote)
            self._boxes[plugin_id] = box
        return box

    def stop_serving(self, plugin_id: str) -> None:
        """Stop delivering to ``plugin_id`` (when it is disabled); queued senders fail."""
        with self._lock:
            box = self._boxes.pop(plugin_id, None)
        if box is not None:
            box.stop()

    def serving(self, plugin_id: str) -> bool:
        """Whether ``plugin_id`` receives messages now."""
        return plugin_id in self._boxes

    def receivers(self) -> list[str]:
        """Ids that receive messages now."""
        with self._lock:
            return sorted(self._boxes)

    def _box(self, to: str, sender: str | None) -> Mailbox:
        box = self._boxes.get(to)
        if box is not None:
            return box
        state = self._status(to) if self._status is not None else None
        if state is None:
            raise NotFoundError(f"no plugin {to!r} to send a message to", plugin_id=sender,
                                receiver=to)
        if state != "enabled":
            raise UsageError(f"plugin {to} is {state}; it receives messages only when enabled",
                             plugin_id=sender, receiver=to)
        raise UsageError(f"plugin {to} does not receive messages (it has no message handler)",
                         plugin_id=sender, receiver=to)

    def send(
        self,
        to: str,
        message: Any,
        *,
        timeout: float = 5.0,
        perms: Permissions | None = None,
        sender: str | None = None,
    ) -> Any:
        """Deliver ``message`` to ``to`` and return its reply.

        Raises :class:`NotFoundError` for an unknown receiver, :class:`UsageError`
        for one that is disabled or does not receive, :class:`PluginTimeout`
        when no reply comes within ``timeout`` seconds, :class:`PluginError`
        when the receiver's handler raised.
        """
        if type(to) is not str or not to:
            raise UsageError(f"a message needs a receiver id, got {to!r}")
        if perms is not None:
            perms.check_api("messages.send", to, plugin_id=sender)
            check_payload(message, max_bytes=MAX_MESSAGE_BYTES, topic=f"message to {to}")
        box = self._box(to, sender)
        if box.remote and sender == to:
            raise UsageError(
                f"{to} cannot send a message to itself: it runs sandboxed, one call at a time, "
                "so its on_message could only run after this send had timed out",
                plugin_id=sender, receiver=to)
        fut: Future[Any] = Future()
        if not box.put(message, sender, fut, time.time() + timeout):
            raise PluginTimeout(
                f"{to} has {box.maxsize} messages waiting; it is not keeping up",
                plugin_id=to, receiver=to,
            )
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise PluginTimeout(f"{to} did not answer within {timeout} s", plugin_id=to,
                                receiver=to) from None

    async def asend(self, to: str, message: Any, *, timeout: float = 5.0,
                    perms: Permissions | None = None, sender: str | None = None) -> Any:
        """Async twin of :meth:`send`."""
        return await asyncio.to_thread(self.send, to, message, timeout=timeout, perms=perms,
                                       sender=sender)

    def broadcast(
        self, message: Any, *, perms: Permissions | None = None, sender: str | None = None
    ) -> list[str]:
        """Queue ``message`` for every receiver the sender may message (not itself).

        Returns the receivers it was queued for; a full mailbox is skipped.
        """
        if perms is not None:
            check_payload(message, max_bytes=MAX_MESSAGE_BYTES, topic="broadcast")
        with self._lock:
            boxes = list(self._boxes.values())
        out = []
        for box in boxes:
            if box.plugin_id == sender:
                continue
            if perms is not None and not perms.allows_api("messages.send", box.plugin_id):
                continue
            if box.put(message, sender, None):
                out.append(box.plugin_id)
        return out

    def close(self) -> None:
        """Stop every mailbox."""
        with self._lock:
            boxes = list(self._boxes.values())
            self._boxes.clear()
        for box in boxes:
            box.stop()

    def for_plugin(self, plugin_id: str, perms: Permissions) -> PluginMessages:
        """``ctx.messages`` for one plugin."""
        return PluginMessages(self, plugin_id, perms)


@final
class PluginMessages:
    """``ctx.messages``: send and broadcast as one plugin, under its grants."""

    __slots__ = ("_messenger", "_perms", "plugin_id")

    def __init__(self, messenger: Messenger, plugin_id: str, perms: Permissions) -> None:
        self._messenger = messenger
        self.plugin_id: Final = plugin_id
        self._perms = perms

    def send(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Send and wait for the reply (needs ``messages.send:<to>``)."""
        return self._messenger.send(to, message, timeout=timeout, perms=self._perms,
                                    sender=self.plugin_id)

    async def asend(self, to: str, message: Any, *, timeout: float = 5.0) -> Any:
        """Async twin of :meth:`send`."""
        return await self._messenger.asend(to, message, timeout=timeout, perms=self._perms,
                                           sender=self.plugin_id)

    def broadcast(self, message: Any) -> list[str]:
        """Queue ``message`` for every receiver this plugin may message."""
        return self._messenger.broadcast(message, perms=self._perms, sender=self.plugin_id)
