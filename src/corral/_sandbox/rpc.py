"""The worker wire protocol: length-prefixed msgpack frames with a hard size cap.

Every frame is a 4-byte big-endian length and a msgpack body.  Host messages are
:data:`HostMessage`, worker messages :data:`WorkerMessage`, both tagged unions of
msgspec Structs.  Everything a worker sends is untrusted: it is decoded against
the schema, and anything else (garbage, an oversized frame, an unknown tag, a
value of the wrong type, nesting deeper than :data:`MAX_DEPTH`) is a
:class:`ProtocolError`, after which the host kills that worker.

Depth is checked before any decoder recurses: msgspec recurses once per level
(also when it skips an unknown field), so a frame of 100 000 nested arrays
would raise ``RecursionError`` in the host.  A frame with at most
:data:`MAX_DEPTH` bytes that could open a container cannot be deeper, which
settles almost every frame with one C-speed ``translate``; the rest are walked
iteratively (:func:`_msgpack_too_deep`).  A result's JSON text is checked the
same way (:func:`decode_result`).

The framing here is I/O-free; the supervisor and the worker own the sockets.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final, Literal, final

import msgspec

from corral._errors import (
    CorralError,
    InvalidPluginError,
    NotFoundError,
    PermissionDenied,
    PluginError,
    PluginTimeout,
    PolicyDenied,
    ResourceLimitExceeded,
    SignatureInvalid,
    UsageError,
    WorkerCrashed,
)

__all__ = [
    "Assign",
    "HEADER",
    "MAX_DEPTH",
    "Call",
    "ErrorInfo",
    "Failure",
    "ForkServerReply",
    "ForkServerRequest",
    "FrameReader",
    "Hello",
    "HostMessage",
    "Log",
    "Output",
    "Profile",
    "ProtocolError",
    "Reap",
    "Reaped",
    "Refused",
    "Reply",
    "Request",
    "Result",
    "Spawn",
    "Spawned",
    "Stop",
    "Usage",
    "WorkerInit",
    "WorkerMessage",
    "decode_host",
    "decode_result",
    "decode_worker",
    "encode",
    "error_from_info",
    "frame",
    "info_from_error",
]

#: Frame header: the body length, unsigned 32-bit big-endian.
HEADER: Final = struct.Struct(">I")
#: How deeply a worker's frame (the message map itself is level 1) or result may nest.
MAX_DEPTH: Final = 64


class ProtocolError(Exception):
    """A peer broke the wire protocol (the worker's fault when raised on the host)."""


# -- shared -----------------------------------------------------------------


class ErrorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """A corral error on the wire: its code and the fields needed to rebuild it."""

    code: str
    message: str
    type: str | None = None
    traceback: str | None = None
    permission: str | None = None
    limit: str | None = None
    measured: float | None = None
    #: The ``OSError`` number behind a failed connect (a transparent connect raises it again).
    errno: int | None = None


class Usage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one call cost the worker, as its own ``getrusage`` saw it."""

    cpu_user_ms: float
    cpu_system_ms: float
    peak_rss_kb: int


# -- host -> worker -----------------------------------------------------------


class Call(msgspec.Struct, frozen=True, tag="call", omit_defaults=True):
    """Run ``target(input, ctx)``; the worker answers with Result or Failure of ``id``."""

    id: int
    target: str
    input: Any
    config: dict[str, Any]
    #: The generation of the plugin's ``ctx.cache`` namespace: a worker whose L1 was
    #: filled under another one drops it before the call.
    cache_gen: int = 0
    #: Seconds between samples of the call's stack, sent in a :class:`Profile` before its
    #: answer; 0: not sampled.
    profile: float = 0.0


class Reply(msgspec.Struct, frozen=True, tag="reply", omit_defaults=True):
    """The host's answer to a worker :class:`Request` (``fd`` rides along via SCM_RIGHTS)."""

    id: int
    value: Any = None
    error: ErrorInfo | None = None
    fd: bool = False


class Stop(msgspec.Struct, frozen=True, tag="stop"):
    """Exit now, cleanly."""


HostMessage = Call | Reply | Stop


# -- worker -> host (untrusted) -------------------------------------------------


class Hello(msgspec.Struct, frozen=True, tag="hello"):
    """The worker is confined and ready."""

    pid: int


class Result(msgspec.Struct, frozen=True, tag="result", forbid_unknown_fields=True):
    """Call ``id`` returned; ``value`` is the JSON text of the result."""

    id: int
    value: bytes
    usage: Usage


class Failure(msgspec.Struct, frozen=True, tag="failure"):
    """Call ``id`` failed inside the worker."""

    id: int
    error: ErrorInfo
    usage: Usage


class Request(msgspec.Struct, frozen=True, tag="request"):
    """A broker request ``op`` (``state.get``, ``net.connect``, ...) made by the plugin."""

    id: int
    op: str
    args: dict[str, Any]


class Log(msgspec.Struct, frozen=True, tag="log"):
    """A log record from ``ctx.log``."""

    level: int
    name: str
    message: str


class Output(msgspec.Struct, frozen=True, tag="output"):
    """Text the plugin wrote to stdout or stderr."""

    stream: Literal["stdout", "stderr"]
    text: str


class Refused(msgspec.Struct, frozen=True, tag="refused"):
    """The worker could not confine itself (a missing kernel feature, ...) and exits."""

    message: str
    feature: str | None = None


class Profile(msgspec.Struct, frozen=True, tag="profile", forbid_unknown_fields=True):
    """What call ``id`` was measured doing, sent before its answer: stack samples (when the
    call asked for them) and the modules its first import loaded, with their times."""

    id: int
    #: ``(name, file, line)`` of every frame the samples name; files relative to the plugin.
    frames: list[tuple[str, str, int]] = []
    #: ``(frame indexes root first, milliseconds)`` per distinct stack.
    samples: list[tuple[list[int], float]] = []
    #: ``(module, self ms, total ms)`` of each module imported during the call.
    imports: list[tuple[str, float, float]] = []
    #: How many samples were taken.
    count: int = 0


WorkerMessage = Hello | Result | Failure | Request | Log | Output | Refused | Profile


# -- host <-> fork server (control channel, SOCK_SEQPACKET, one message per packet)


class WorkerInit(msgspec.Struct, frozen=True):
    """How to confine one worker; built by the host from a SandboxSpec."""

    plugin_id: str
    isolation: str
    plugin_dir: str
    data_dir: str
    tmp_dir: str
    cache_dir: str
    read_paths: list[str]
    write_paths: list[str]
    env: dict[str, str]
    allow_exec: bool
    memory_mb: int
    cpu_seconds: int
    cpu_budget_seconds: int
    disk_mb: int
    max_processes: int
    max_result_bytes: int
    max_output_bytes: int
    workspace: str = ""
    #: Strict only: the only files that may be executed (granted programs, their loaders).
    exec_paths: list[str] = []
    #: The ``net-connect`` and ``spawn`` grants as written, to name a refusal's missing grant.
    net_connect: list[str] = []
    spawn: list[str] = []


class Spawn(msgspec.Struct, frozen=True, tag="spawn"):
    """Fork a worker; its end of the RPC socketpair rides along via SCM_RIGHTS."""

    init: WorkerInit


class Assign(msgspec.Struct, frozen=True, tag="assign"):
    """Fork server to a spare process: become this worker (RPC and ruleset fds ride along)."""

    init: WorkerInit
    seccomp: bytes | None = None


class Reap(msgspec.Struct, frozen=True, tag="reap"):
    """SIGKILL worker ``pid`` (and its process group) and wait for it."""

    pid: int


ForkServerRequest = Spawn | Reap


class Spawned(msgspec.Struct, frozen=True, tag="spawned"):
    """The worker's pid as the host sees it, or why it could not be forked."""

    pid: int = 0
    error: str | None = None
    #: Its cgroups by controller (``pids``, ``cpuacct``, ``memory``, ... or ``unified``), to
    #: measure it by.
    cgroups: dict[str, str] = {}


class Reaped(msgspec.Struct, frozen=True, tag="reaped"):
    """How worker ``pid`` ended, with its lifetime resource usage."""

    pid: int
    exit_code: int | None
    signal: int | None
    cpu_user_ms: float
    cpu_system_ms: float
    peak_rss_kb: int
    error: str | None = None


ForkServerReply = Spawned | Reaped

_encoder: Final = msgspec.msgpack.Encoder()
_host_decoder: Final = msgspec.msgpack.Decoder(HostMessage)
_worker_decoder: Final = msgspec.msgpack.Decoder(WorkerMessage)


def encode(msg: msgspec.Struct) -> bytes:
    """Encode ``msg`` as one frame, header included."""
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body


def frame(body: bytes) -> bytes:
    """Wrap an already encoded body in a frame."""
    return HEADER.pack(len(body)) + body


def decode_worker(body: bytes | memoryview) -> WorkerMessage:
    """Decode an untrusted worker frame body, or raise :class:`ProtocolError`.

    Nothing a worker sends can make this raise anything else: a frame nested
    deeper than :data:`MAX_DEPTH` is refused before msgspec recurses into it.
    """
    if len(body) > MAX_DEPTH and body[:_RESULT_HEAD_SIZE] != _RESULT_HEAD:
        raw = bytes(body)
        if len(raw) - len(raw.translate(None, _MSGPACK_OPENERS)) > MAX_DEPTH and (
            _msgpack_too_deep(raw)
        ):
            raise ProtocolError(f"worker sent a frame nested deeper than {MAX_DEPTH} levels")
    try:
        msg: WorkerMessage = _worker_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"malformed worker message: {exc}") from None
    except Exception as exc:  # RecursionError on a deep host stack, MemoryError, ...
        raise ProtocolError(
            f"worker message could not be decoded: {type(exc).__name__}: {exc}"
        ) from None
    return msg


def decode_result(text: bytes) -> Any:
    """Decode a worker's result (JSON text), or raise :class:`ProtocolError`."""
    if (
        len(text) > MAX_DEPTH
        and text.count(b"[") + text.count(b"{") > MAX_DEPTH
        and _json_too_deep(text)
    ):
        raise ProtocolError(f"worker sent a result nested deeper than {MAX_DEPTH} levels")
    try:
        return msgspec.json.decode(text)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"result is not JSON: {exc}") from None
    except Exception as exc:
        raise ProtocolError(f"result could not be decoded: {type(exc).__name__}: {exc}") from None


#: How every Result frame from an honest worker begins: a 4-entry map, its tag first.
#: After it, the schema leaves nothing to recurse into: ``id`` and ``value`` are scalars,
#: ``usage`` a map of scalars, and an unknown field (which msgspec would skip,
#: recursively) is refused on sight in both.  So the warm path skips the depth scan.
_RESULT_HEAD: Final = b"\x84\xa4type\xa6result"
_RESULT_HEAD_SIZE: Final = len(_RESULT_HEAD)
#: Every byte that opens a msgpack container (fixmap, fixarray, array16/32, map16/32).
_MSGPACK_OPENERS: Final = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"


def _fixed_sizes() -> tuple[int, ...]:
    """How many bytes follow each msgpack lead byte, for those where that is fixed."""
    sizes = [0] * 256
    for b in range(0xA0, 0xC0):  # fixstr
        sizes[b] = b & 0x1F
    for b, n in {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2,
                 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}.items():
        sizes[b] = n
    return tuple(sizes)


_FIXED: Final = _fixed_sizes()
#: Lead bytes followed by a big-endian length: (length bytes, extra bytes, is a container).
_SIZED: Final = {
    0xC4: (1, 0, 0), 0xC5: (2, 0, 0), 0xC6: (4, 0, 0),  # bin
    0xC7: (1, 1, 0), 0xC8: (2, 1, 0), 0xC9: (4, 1, 0),  # ext (a type byte)
    0xD9: (1, 0, 0), 0xDA: (2, 0, 0), 0xDB: (4, 0, 0),  # str
    0xDC: (2, 0, 1), 0xDD: (4, 0, 1),  # array
    0xDE: (2, 0, 2), 0xDF: (4, 0, 2),  # map: two items an entry
}  # fmt: skip


def _msgpack_too_deep(buf: bytes) -> bool:
    """Whether the msgpack value in ``buf`` opens more than :data:`MAX_DEPTH` containers
    inside one another; iterative, and over malformed input it just stops (the decoder
    then says what is wrong)."""
    open_items: list[int] = []  # items still to come in each container entered
    fixed, sized = _FIXED, _SIZED
    i, n = 0, len(buf)
    while i < n:
        b = buf[i]
        i += 1
        items = -1  # not a container
        if 0x80 <= b <= 0x9F:
            items = b & 0x0F if b >= 0x90 else (b & 0x0F) * 2
        elif b in sized:
            width, extra, kind = sized[b]
            length = int.from_bytes(buf[i : i + width], "big")
            i += width
            if kind:
                items = length * kind
            else:
                i += extra + length
        else:
            i += fixed[b]
        if open_items:
            open_items[-1] -= 1
        if items >= 0 and len(open_items) >= MAX_DEPTH:
            return True  # even an empty container this deep is one level too many
        if items > 0:
            open_items.append(items)
        while open_items and open_items[-1] == 0:
            open_items.pop()
        if not open_items and items <= 0:
            break  # the value is complete
    return False


_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_INNERMOST: Final = re.compile(rb"\[\]|\{\}|\[\}|\{\]")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")


def _json_too_deep(text: bytes) -> bool:
    """Whether JSON ``text`` nests deeper than :data:`MAX_DEPTH`, at C speed for honest text:
    strings dropped, only brackets kept, then innermost pairs removed, one level a pass."""
    # Without an escaped quote, every other piece between quotes is a string's content.
    escaped = b'\\"' in text
    outside = _JSON_STRING.sub(b"", text) if escaped else b"".join(text.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    rest = brackets
    for _ in range(MAX_DEPTH):
        if not rest:
            return False
        rest = _JSON_INNERMOST.sub(b"", rest)
    if not rest:
        return False
    depth = 0  # deep or unbalanced: count what a recursive decoder would enter
    for b in brackets:
        if b in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
            if depth < 0:
                return False
    return False


def decode_host(body: bytes | memoryview) -> HostMessage:
    """Decode a host frame body (in the worker)."""
    try:
        msg: HostMessage = _host_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ProtocolError(f"malformed host message: {exc}") from None
    return msg


@final
class FrameReader:
    """Split a byte stream into frame bodies, refusing any frame over ``max_frame``."""

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame: Final = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Add ``data``; return the complete frame bodies now available, in order."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.max_frame:
                raise ProtocolError(
                    f"frame of {size} bytes exceeds the {self.max_frame}-byte frame cap"
                )
            end = pos + HEADER.size + size
            if end > n:
                break
            out.append(bytes(buf[pos + HEADER.size : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)


def info_from_error(exc: CorralError) -> ErrorInfo:
    """The wire form of a corral error."""
    d = exc.details
    measured = d.get("measured")
    return ErrorInfo(
        code=exc.code,
        message=exc.message,
        type=d.get("type") if isinstance(d.get("type"), str) else None,
        traceback=d.get("traceback") if isinstance(d.get("traceback"), str) else None,
        permission=getattr(exc, "permission", None),
        limit=d.get("limit") if isinstance(d.get("limit"), str) else None,
        measured=float(measured) if isinstance(measured, int | float) else None,
        errno=d.get("errno") if type(d.get("errno")) is int else None,
    )


def error_from_info(info: ErrorInfo, plugin_id: str | None) -> CorralError:
    """Rebuild the corral error an :class:`ErrorInfo` describes (unknown codes: PluginError)."""
    if info.code == "permission_denied":
        return PermissionDenied(
            info.message, permission=info.permission or "?", plugin_id=plugin_id,
            exception=info.type, traceback=info.traceback,
        )
    if info.code in ("resource_limit", "timeout"):
        cls = ResourceLimitExceeded if info.code == "resource_limit" else PluginTimeout
        return cls(info.message, plugin_id=plugin_id, limit=info.limit, measured=info.measured)
    simple = _SIMPLE_ERRORS.get(info.code)
    if simple is not None:
        return simple(info.message, plugin_id=plugin_id)
    error = PluginError(info.message, plugin_id=plugin_id, exception=info.type,
                        traceback=info.traceback)
    if info.errno is not None:
        error.details["errno"] = info.errno
    return error


_SIMPLE_ERRORS: Final[dict[str, type[CorralError]]] = {
    "error": CorralError,
    "usage": UsageError,
    "not_found": NotFoundError,
    "invalid": InvalidPluginError,
    "policy_denied": PolicyDenied,
    "signature_invalid": SignatureInvalid,
    "crashed": WorkerCrashed,
}
