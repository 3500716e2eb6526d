"""The worker's end of the RPC socket: frames in (with passed descriptors), frames out.

Both the serve loop and every ``ctx`` proxy talk to the host through one :class:`Channel`.
"""

from __future__ import annotations

import array
import collections
import socket
import threading
from typing import Any, Final, final

import msgspec

from corral._sandbox.rpc import (
    FrameReader,
    ProtocolError,
    Reply,
    Request,
    decode_host,
    encode,
    error_from_info,
)

__all__ = ["RPC_FD", "Channel"]

#: The descriptor number of the RPC socket in every worker.
RPC_FD: Final = 3
_HOST_FRAME_CAP: Final = 1 << 30
_RECV_CHUNK: Final = 1 << 16
_ANC_SIZE: Final = socket.CMSG_SPACE(4 * array.array("i").itemsize)


@final
class Channel:
    """The worker's end of the RPC socket: frames in (with passed fds), frames out."""

    __slots__ = ("_buf", "_fds", "_frames", "_lock", "_next_id", "_reader", "_view", "op",
                 "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = FrameReader(_HOST_FRAME_CAP)
        self._frames: collections.deque[bytes] = collections.deque()
        self._fds: collections.deque[int] = collections.deque()
        self._next_id = 0
        self._buf = bytearray(_RECV_CHUNK)
        self._view = memoryview(self._buf)
        #: One request/reply pair at a time, if plugin threads share ``ctx``.
        self._lock = threading.Lock()
        #: The broker request in flight (what a profile's ``[broker]`` frame names).
        self.op: str | None = None

    def send(self, msg: msgspec.Struct) -> None:
        self.sock.sendall(encode(msg))

    def recv(self, with_fds: bool = True) -> Any:
        """The next host message; ``with_fds=False`` (between calls: a Call carries none)
        saves the ancillary-data parsing of ``recvmsg``."""
        while not self._frames:
            if not with_fds:
                n = self.sock.recv_into(self._buf)
                if not n:
                    raise EOFError
                self._frames.extend(self._reader.feed(self._view[:n]))
                continue
            n, ancdata, _flags, _addr = self.sock.recvmsg_into([self._buf], _ANC_SIZE)
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                    self._fds.extend(fds)
            if not n:
                raise EOFError
            self._frames.extend(self._reader.feed(self._view[:n]))
        return decode_host(self._frames.popleft())

    def request(self, op: str, args: dict[str, Any]) -> tuple[Any, int | None]:
        """Ask the host broker; return its value and the passed descriptor, or raise."""
        with self._lock:
            self._next_id += 1
            rid = self._next_id
            self.op = op
            try:
                self.send(Request(id=rid, op=op, args=args))
                msg = self.recv()
            finally:
                self.op = None
            if not isinstance(msg, Reply) or msg.id != rid:
                raise ProtocolError(f"expected the reply to request {rid}, got {msg!r}")
            if msg.error is not None:
                raise error_from_info(msg.error, None)
            fd = self._fds.popleft() if msg.fd and self._fds else None
            return msg.value, fd

