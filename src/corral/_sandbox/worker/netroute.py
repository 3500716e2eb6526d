"""Transparent network grants: a strict worker's TCP connects go through the host broker.

A strict worker has its own network namespace and may not make inet sockets, so
plain ``socket``/``urllib``/``requests``/``httpx``/asyncio code could not reach a
granted ``net-connect HOST:PORT``.  :func:`install` patches the ``socket`` module:

- ``socket.getaddrinfo`` resolves nothing: a name comes back as itself
  (``("api.example.com", 443)``), an address literal as that address;
- an inet stream socket starts as a stand-in (a unix socket that reports the
  inet family); the options set on it are kept for later;
- its ``connect``/``connect_ex`` (which ``socket.create_connection`` and
  asyncio's ``sock_connect`` use) ask the broker for ``net.connect`` with the
  name as written: the host checks the grant, resolves, connects and passes the
  connected descriptor, which is ``dup2``-ed over the stand-in's.

The name thus reaches the permission check unchanged, and TLS (done here, in
the worker) still verifies it.  A connect the grants refuse raises
:class:`~corral.PermissionDenied` (``permission="net-connect:HOST:PORT"``); one
the host could not make raises the ``OSError`` it got (``ConnectionRefusedError``,
``TimeoutError``, ``socket.gaierror``).  A connect blocks for the broker's round
trip, also on a non-blocking socket (an event loop waits for it).
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import os
import socket
import weakref
from typing import Any, Final

from corral._errors import CorralError, PermissionDenied
from corral._sandbox.worker.channel import Channel

__all__ = ["install"]

_INET: Final = (socket.AF_INET, socket.AF_INET6)
#: Service names a URL library may hand to getaddrinfo (``/etc/services`` is not readable).
_SERVICES: Final = {"http": 80, "https": 443}
_TYPE_FLAGS: Final = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)

_real_init: Final = socket.socket.__init__
_real_connect: Final = socket.socket.connect
_real_connect_ex: Final = socket.socket.connect_ex
_real_setsockopt: Final = socket.socket.setsockopt

#: Stand-in sockets not connected yet, with the options set on them meanwhile.
_pending: weakref.WeakKeyDictionary[socket.socket, list[tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)


class _Route:
    """The channel the patched socket methods ask the broker through."""

    ch: Channel | None = None


def install(ch: Channel) -> None:
    """Route this (strict) worker's inet stream connects through the broker on ``ch``."""
    _Route.ch = ch
    socket.getaddrinfo = _getaddrinfo
    cls: Any = socket.socket
    cls.__init__ = _init
    cls.connect = _connect
    cls.connect_ex = _connect_ex
    cls.setsockopt = _setsockopt


def _getaddrinfo(
    host: bytes | str | None,
    port: bytes | str | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo`` without resolving: the host resolves at connect."""
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if host is not None and not host.isascii():
        host = host.encode("idna").decode("ascii")
    number = _port(port)
    kind = type or socket.SOCK_STREAM
    proto = proto or (socket.IPPROTO_UDP if kind == socket.SOCK_DGRAM else socket.IPPROTO_TCP)
    if host is None or host == "":
        passive = bool(flags & socket.AI_PASSIVE)
        v6 = "::" if passive else "::1"
        # what getaddrinfo answers for a passive lookup; nothing binds here
        v4 = "0.0.0.0" if passive else "127.0.0.1"  # noqa: S104
        wanted = [socket.AF_INET6, socket.AF_INET] if family == 0 else [family]
        return [(f, kind, proto, "", (v6, number, 0, 0) if f == socket.AF_INET6 else (v4, number))
                for f in wanted if f in _INET]
    literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        literal = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        literal = None
    if literal is None:
        if flags & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        af = socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET
    else:
        af = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        if family not in (0, af):
            raise socket.gaierror(socket.EAI_ADDRFAMILY,
                                  "Address family for hostname not supported")
    canon = host if flags & socket.AI_CANONNAME else ""
    addr: tuple[Any, ...] = (host, number, 0, 0) if af == socket.AF_INET6 else (host, number)
    return [(socket.AddressFamily(af), socket.SocketKind(kind), proto, canon, addr)]


def _port(port: bytes | str | int | None) -> int:
    if port is None:
        return 0
    if isinstance(port, bytes):
        port = port.decode("ascii")
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    if port in _SERVICES:
        return _SERVICES[port]
    raise socket.gaierror(socket.EAI_SERVICE, "Servname not supported for ai_socktype")


def _init(self: socket.socket, family: int = -1, type: int = -1, proto: int = -1,
          fileno: int | None = None) -> None:
    kind = socket.SOCK_STREAM if type == -1 else type
    if fileno is None and (family == -1 or family in _INET) and (
            kind & ~_TYPE_FLAGS) == socket.SOCK_STREAM:
        # The kernel refuses inet sockets here: a unix socket stands in until connect.
        stand_in = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | (kind & _TYPE_FLAGS))
        fd = stand_in.detach()
        _real_init(self, socket.AF_INET if family == -1 else family, kind,
                   0 if proto == -1 else proto, fd)
        _pending[self] = []
        return
    _real_init(self, family, type, proto, fileno)


def _setsockopt(self: socket.socket, level: int, optname: int, value: Any,
                optlen: int | None = None) -> None:
    options = _pending.get(self)
    if options is None:
        if optlen is None:
            _real_setsockopt(self, level, optname, value)
        else:
            _real_setsockopt(self, level, optname, value, optlen)
        return
    options.append((level, optname, value) if optlen is None else (level, optname, value, optlen))


def _connect(self: socket.socket, address: Any) -> None:
    if self in _pending:
        _route(self, address)
    else:
        _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    if self not in _pending:
        return _real_connect_ex(self, address)
    try:
        _route(self, address)
    except socket.gaierror:
        raise
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def _route(sock: socket.socket, address: Any) -> None:
    """Ask the broker for a connection to ``address`` and put it in ``sock``'s place."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"an inet address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if not isinstance(host, str) or not isinstance(port, int):
        raise TypeError(f"an inet address must be a (host, port) tuple, not {address!r}")
    ch = _Route.ch
    if ch is None:  # pragma: no cover - install() sets it before any plugin code runs
        raise OSError(errno.ENETUNREACH, "this worker has no broker")
    timeout = sock.gettimeout()
    args: dict[str, Any] = {"host": host.partition("%")[0], "port": port}
    if timeout:
        args["timeout"] = timeout
    try:
        _value, fd = ch.request("net.connect", args)
    except PermissionDenied:
        raise
    except CorralError as exc:
        code = exc.details.get("errno")
        if type(code) is int:
            if code < 0:
                raise socket.gaierror(code, exc.message) from None
            raise OSError(code, exc.message) from None
        raise
    if fd is None:
        raise OSError(errno.EIO, "the host passed no connection")
    try:
        os.dup2(fd, sock.fileno(), inheritable=False)
    finally:
        os.close(fd)
    options = _pending.pop(sock, [])
    # Now the descriptor is a TCP socket: take its real family (the host may have
    # reached a name over IPv6), then the blocking mode and the options set before.
    _socket.socket.__init__(sock, -1, -1, -1, sock.fileno())
    sock.settimeout(timeout)
    for option in options:
        _real_setsockopt(sock, *option)
