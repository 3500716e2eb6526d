"""Transparent network grants: a strict plugin's ordinary HTTP and socket code reaches granted
``host:port`` endpoints (through the broker) and nothing else, over plain TCP, TLS and IPv6.

Real servers on loopback: one HTTP, one HTTPS (a certificate for ``localhost`` and
``127.0.0.1`` from a CA made here), and one HTTP server the plugin is never granted.
"""

from __future__ import annotations

import datetime
import http.server
import importlib.util
import ipaddress
import socket
import ssl
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._errors import PermissionDenied
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=f"no strict sandbox: {sandbox_problem('strict')}"
)

#: The plugin: one export per client library; each answers the body it got.
PLUGIN = r'''
import asyncio
import http.client
import os
import socket
import ssl
import urllib.request
from urllib.parse import urlsplit


def _ctx(inp):
    return ssl.create_default_context(cafile=inp["ca"]) if inp.get("ca") else None


def urllib_get(inp, ctx):
    with urllib.request.urlopen(inp["url"], timeout=5, context=_ctx(inp)) as resp:
        return resp.read().decode()


def urllib_env_ca(inp, ctx):
    # no cafile: the default context trusts SSL_CERT_FILE (a granted env variable)
    assert os.environ["SSL_CERT_FILE"] == inp["ca"]
    with urllib.request.urlopen(inp["url"], timeout=5) as resp:
        return resp.read().decode()


def http_client(inp, ctx):
    u = urlsplit(inp["url"])
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=5, context=_ctx(inp))
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.request("GET", "/")
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def create_connection(inp, ctx):
    u = urlsplit(inp["url"])
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        peer = sock.getpeername()
        stream = sock
        if u.scheme == "https":
            stream = _ctx(inp).wrap_socket(sock, server_hostname=u.hostname)
        stream.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := stream.recv(4096):
            data += chunk
        assert sock.family in (socket.AF_INET, socket.AF_INET6) and peer[1] == u.port
        return data.split(b"\r\n\r\n", 1)[1].decode()


def httpx_get(inp, ctx):
    import httpx

    verify = _ctx(inp) or True
    return httpx.get(inp["url"], verify=verify, timeout=5).text


async def httpx_async(inp, ctx):
    import httpx

    async with httpx.AsyncClient(verify=_ctx(inp) or True, timeout=5) as client:
        return (await client.get(inp["url"])).text


def requests_get(inp, ctx):
    import requests

    return requests.get(inp["url"], verify=inp.get("ca") or True, timeout=5).text


def urllib3_get(inp, ctx):
    import urllib3

    pool = urllib3.PoolManager(ca_certs=inp.get("ca"))
    return pool.request("GET", inp["url"], timeout=5, retries=False).data.decode()


def raw_socket(inp, ctx):
    # options set before connect reach the real socket; connect_ex answers errno
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.settimeout(3)
    code = s.connect_ex(("127.0.0.1", inp["port"]))
    out = [code]
    if code == 0:
        out += [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), s.gettimeout(),
                s.getpeername()[1] == inp["port"]]
    s.close()
    return out


def trust_stores(inp, ctx):
    import certifi

    with open(certifi.where()) as f:
        bundle = f.read().count("BEGIN CERTIFICATE")
    return [ssl.create_default_context().cert_store_stats()["x509_ca"], bundle]


async def asyncio_streams(inp, ctx):
    u = urlsplit(inp["url"])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(u.hostname, u.port, ssl=_ctx(inp)), 5)
    writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()
'''

CLIENTS = ["urllib_get", "http_client", "create_connection", "httpx_get", "httpx_async",
           "requests_get", "urllib3_get", "asyncio_streams"]


def _needs(client: str) -> None:
    module = {"httpx_get": "httpx", "httpx_async": "httpx", "requests_get": "requests",
              "urllib3_get": "urllib3"}.get(client)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.name}".encode()  # type: ignore[attr-defined]
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, host: str, tls: ssl.SSLContext | None = None) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), _Handler)
        self.name = name
        self.hits = 0
        self.port: int = self.server_address[1]
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _make_tls(tmp: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (written to ``ca.pem``) and a server context for ``localhost``/``127.0.0.1``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    return ca_file, ctx


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class _World:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp
        (tmp / "code" / "netplug").mkdir(parents=True)
        (tmp / "code" / "netplug" / "__init__.py").write_text("")
        (tmp / "code" / "netplug" / "clients.py").write_text(textwrap.dedent(PLUGIN))
        (tmp / "certs").mkdir()
        self.ca, tls = _make_tls(tmp / "certs")
        self.http = _Server("http", "127.0.0.1")
        self.https = _Server("https", "127.0.0.1", tls)
        self.other = _Server("other", "127.0.0.1")  # listening, never granted
        self.v6 = _Server("v6", "::1") if _has_ipv6_loopback() else None
        self.sup = Supervisor()

    def spec(self, *grants: str, env: dict[str, str] | None = None) -> SandboxSpec:
        base = self.root / "plugins" / "net.transparent"
        dirs = {}
        for name in ("data", "tmp", "cache"):
            (base / name).mkdir(parents=True, exist_ok=True)
            dirs[f"{name}_dir"] = base / name
        return SandboxSpec(
            plugin_id="net.transparent", isolation="strict", plugin_dir=self.root / "code",
            read_paths=(self.root / "certs" / "ca.pem",), net_connect=grants,
            env=env or {}, memory_mb=1024, timeout_ms=30_000, max_processes=32, **dirs)

    def granted(self) -> SandboxSpec:
        grants = [f"127.0.0.1:{self.http.port}", f"localhost:{self.https.port}",
                  f"127.0.0.1:{self.https.port}"]
        if self.v6 is not None:
            grants.append(f"[::1]:{self.v6.port}")
        return self.spec(*grants)

    def close(self) -> None:
        self.sup.close()
        for server in (self.http, self.https, self.other, self.v6):
            if server is not None:
                server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_World]:
    w = _World(tmp_path_factory.mktemp("net"))
    yield w
    w.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_granted_http(world: _World, client: str) -> None:
    _needs(client)
    url = f"http://127.0.0.1:{world.http.port}/"
    assert world.sup.call(world.granted(), f"netplug.clients:{client}", {"url": url}) \
        == "hello from http"


@pytest.mark.parametrize("client", CLIENTS)
def test_granted_https_verifies_the_name(world: _World, client: str) -> None:
    """``localhost`` reaches the host's resolver as a name: the grant, SNI and the
    certificate check all see ``localhost``."""
    _needs(client)
    url = f"https://localhost:{world.https.port}/"
    assert world.sup.call(world.granted(), f"netplug.clients:{client}",
                          {"url": url, "ca": str(world.ca)}) == "hello from https"


def test_https_without_the_ca_fails_verification(world: _World) -> None:
    url = f"https://localhost:{world.https.port}/"
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        world.sup.call(world.granted(), "netplug.clients:urllib_get", {"url": url})


def test_https_ca_from_a_granted_env_variable(world: _World) -> None:
    grants = world.granted().net_connect
    spec = world.spec(*grants, env={"SSL_CERT_FILE": str(world.ca)})
    url = f"https://localhost:{world.https.port}/"
    assert world.sup.call(spec, "netplug.clients:urllib_env_ca",
                          {"url": url, "ca": str(world.ca)}) == "hello from https"


@pytest.mark.parametrize("client", CLIENTS)
def test_port_not_granted(world: _World, client: str) -> None:
    _needs(client)
    url = f"http://127.0.0.1:{world.other.port}/"
    with pytest.raises(PermissionDenied) as info:
        world.sup.call(world.granted(), f"netplug.clients:{client}", {"url": url})
    assert info.value.code == "permission_denied"
    assert info.value.permission == f"net-connect:127.0.0.1:{world.other.port}"
    assert f"127.0.0.1:{world.other.port}" in info.value.message
    assert world.other.hits == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_host_not_granted(world: _World, client: str) -> None:
    """127.0.0.1 is granted for the HTTP port, but ``localhost`` is not: names are not
    resolved before the check."""
    _needs(client)
    url = f"http://localhost:{world.http.port}/"
    with pytest.raises(PermissionDenied) as info:
        world.sup.call(world.granted(), f"netplug.clients:{client}", {"url": url})
    assert info.value.permission == f"net-connect:localhost:{world.http.port}"


@pytest.mark.parametrize("client", ["urllib_get", "create_connection", "httpx_get",
                                    "asyncio_streams"])
def test_ipv6_loopback(world: _World, client: str) -> None:
    _needs(client)
    if world.v6 is None:
        pytest.skip("this machine has no IPv6 loopback")
    url = f"http://[::1]:{world.v6.port}/"
    assert world.sup.call(world.granted(), f"netplug.clients:{client}", {"url": url}) \
        == "hello from v6"
    denied = world.spec(f"127.0.0.1:{world.v6.port}")
    with pytest.raises(PermissionDenied) as info:
        world.sup.call(denied, f"netplug.clients:{client}", {"url": url})
    assert info.value.permission == f"net-connect:[::1]:{world.v6.port}"


def test_refused_connection_is_an_oserror(world: _World) -> None:
    """A granted endpoint nobody listens on fails as the OSError a real connect gives."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = world.spec(f"127.0.0.1:{port}")
    with pytest.raises(Exception, match=r"ConnectionRefusedError|Connection refused"):
        world.sup.call(spec, "netplug.clients:create_connection",
                       {"url": f"http://127.0.0.1:{port}/"})


def test_trust_stores_are_readable(world: _World) -> None:
    """The system CA store and certifi's bundle, which TLS libraries use by default."""
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    got = world.sup.call(world.granted(), "netplug.clients:trust_stores", None)
    assert got[0] == system
    if importlib.util.find_spec("certifi") is not None:
        assert got[1] > 0


def test_options_and_connect_ex(world: _World) -> None:
    """Options set before the connect apply to the real socket; ``connect_ex`` gives errno."""
    import errno

    got = world.sup.call(world.granted(), "netplug.clients:raw_socket", {"port": world.http.port})
    code, nodelay, keepalive, timeout, peer = got
    assert (code, bool(nodelay), bool(keepalive), timeout, peer) == (0, True, True, 3, True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = world.spec(f"127.0.0.1:{port}")
    assert world.sup.call(spec, "netplug.clients:raw_socket", {"port": port}) \
        == [errno.ECONNREFUSED]
