"""The host's end of one worker process: its socket, framing and lifetime accounting.

Sends and receives whole frames under a deadline; the :class:`~.supervisor.Supervisor`
decides what each message means.
"""

from __future__ import annotations

import collections
import socket
import struct
import time
from collections.abc import Sequence
from typing import Final, final

import msgspec

from corral._sandbox.rpc import HEADER as _HEADER
from corral._sandbox.rpc import FrameReader, WorkerMessage, decode_worker, encode
from corral._sandbox.spec import SandboxSpec

__all__ = ["WorkerGone", "WorkerProcess"]

_FRAME_OVERHEAD: Final = 64 * 1024
_RECV_CHUNK: Final = 1 << 18
_HEADER_SIZE: Final = _HEADER.size
#: How long one blocking send or recv may wait before the deadline is looked at again.
_SLICE_US: Final = 20_000


class WorkerGone(Exception):
    """The worker's socket closed: it exited or was killed."""



@final
class WorkerProcess:
    """The host's end of one worker: its socket, framing and lifetime accounting."""

    def __init__(self, spec: SandboxSpec, pid: int, sock: socket.socket) -> None:
        self.spec: Final = spec
        self.pid: Final = pid
        self.sock: Final = sock
        _set_slices(sock)
        # A preallocated buffer: a fresh 256 KiB one per recv would be an mmap each time.
        self._buf = bytearray(_RECV_CHUNK)
        self._view = memoryview(self._buf)
        self.reader: Final = FrameReader(spec.max_result_bytes + _FRAME_OVERHEAD)
        self.frames: collections.deque[bytes] = collections.deque()
        self.cpu_ms = 0.0
        self.last_used = time.monotonic()
        self.next_call_id = 1
        #: Whether its Hello arrived (the first call is sent before, to save a round trip).
        self.greeted = False

    def send(self, msg: msgspec.Struct, deadline: float, fds: Sequence[int] = ()) -> None:
        """Send one frame (with ``fds`` via SCM_RIGHTS); raises TimeoutError or WorkerGone."""
        view = memoryview(encode(msg))
        try:
            if fds:
                while True:
                    try:
                        sent = socket.send_fds(self.sock, [view], list(fds))
                        break
                    except BlockingIOError:
                        _check_deadline(deadline)
                view = view[sent:]
            while view:  # usually once: the whole frame fits the socket buffer
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    _check_deadline(deadline)
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise WorkerGone(str(exc)) from exc

    def recv(self, deadline: float) -> WorkerMessage:
        """The next message; raises TimeoutError, WorkerGone or ProtocolError."""
        if not self.frames and not self.reader.pending:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                n = -1  # SO_RCVTIMEO slice over: the loop below looks at the clock
            except OSError as exc:
                raise WorkerGone(str(exc)) from exc
            if not n:
                raise WorkerGone("EOF")
            if n >= _HEADER_SIZE:
                (size,) = _HEADER.unpack_from(self._buf)
                if size + _HEADER_SIZE == n and size <= self.reader.max_frame:
                    # The common case: exactly one frame, decoded from the buffer (no copy).
                    return decode_worker(self._view[_HEADER_SIZE:n])
            if n > 0:
                self.frames.extend(self.reader.feed(self._view[:n]))
            else:
                _check_deadline(deadline)
        while not self.frames:
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:  # SO_RCVTIMEO slice over: look at the clock, go on
                _check_deadline(deadline)
                continue
            except OSError as exc:
                raise WorkerGone(str(exc)) from exc
            if not n:
                raise WorkerGone("EOF")
            self.frames.extend(self.reader.feed(self._view[:n]))
        return decode_worker(self.frames.popleft())


def _check_deadline(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise TimeoutError


def _set_slices(sock: socket.socket) -> None:
    """Block in the kernel, but never longer than one slice, so deadlines cost no syscall."""
    sock.setblocking(True)
    tv = struct.pack("ll", 0, _SLICE_US)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

