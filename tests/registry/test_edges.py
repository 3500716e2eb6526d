"""Hostile edges of the HTTP API against a real server, on SQLite and PostgreSQL.

Control characters in every field, errors that must not cost the connection, a
full data disk, an endless chunked upload, and real typosquats of popular names.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.registry._app import open_server
from corral.registry._service import Registry

from .conftest import Api, _accounts, make_plugin

REPO = Path(__file__).resolve().parents[2]
CONTROLS = ("\x00", "\x01", "\x1b", "\x7f")


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    doc = response.json()["error"]
    assert doc["message"]
    return dict(doc)


def artifacts(api: Api) -> list[Path]:
    return sorted(p for p in (api.data / "artifacts").rglob("*") if p.is_file())


def test_control_characters_are_400_naming_the_field(api: Api, tmp_path: Path) -> None:
    assert api.publish(make_plugin(tmp_path, "acme.ctl", "1.0.0")).status_code == 201
    for c in CONTROLS:
        for field in ("q", "category", "tag", "author", "sort"):
            e = error(api.http.get("/v1/search", params={field: f"ab{c}cd"}), 400)
            assert e["code"] == "usage", e
            assert e["field"] == field, e
        q = urllib.parse.quote(c)
        cases = [
            ("GET", f"/v1/plugins/acme.ctl{q}", "plugin_id"),
            ("GET", f"/v1/plugins/acme{q}ctl/versions/1.0.0", "plugin_id"),
            ("GET", f"/v1/plugins/acme.ctl/versions/1.0{q}", "version"),
            ("GET", f"/v1/plugins/acme.ctl/download{''}?x={q}", "x"),
            ("GET", f"/v1/plugins/acme.ctl/versions/1{q}/download", "version"),
            ("GET", f"/v1/plugins/acme.ctl/resolve?spec=%3E%3D1{q}", "spec"),
            ("GET", f"/v1/publishers/ac{q}me/keys", "publisher"),
            ("DELETE", f"/v1/publishers/acme/keys/k{q}", "keyid"),
            ("POST", f"/v1/plugins/acme.ctl/versions/1.0.0{q}/yank", "version"),
            ("GET", f"/tuf/metadata/{q}timestamp.json", "name"),
        ]
        for method, url, field in cases:
            e = error(api.http.request(method, url, headers=api.auth()), 400)
            assert e["field"] == field, (url, e)
        e = error(api.http.post("/v1/plugins/acme.ctl/versions/1.0.0/yank", headers=api.auth(),
                                json={"reason": f"bad{c}build"}), 400)
        assert e["field"] == "body.reason", e
        e = error(api.http.post("/v1/publishers/acme/keys", headers=api.auth(),
                                json={"public_key": f"AAAA{c}"}), 400)
        assert e["field"] == "body.public_key", e
    # positive controls: the same requests without the control character
    assert api.http.get("/v1/search", params={"q": "ctl", "author": "Test"}).status_code == 200
    yank = api.http.post("/v1/plugins/acme.ctl/versions/1.0.0/yank", headers=api.auth(),
                         json={"reason": "line one\nline two\tand a tab"})
    assert yank.status_code == 200, yank.text
    assert yank.json()["yanked_reason"] == "line one\nline two\tand a tab"
    assert api.http.get("/v1/plugins/acme.ctl").json()["versions"][0]["yanked"] is True


def test_control_characters_in_an_archive_are_refused(api: Api, tmp_path: Path) -> None:
    before = artifacts(api)
    for n, text in enumerate(("a\\u0000b", "esc\\u001b[31m", "del\\u007f")):
        bad = make_plugin(tmp_path, f"acme.manifest-ctl{n}", description=text)
        e = error(api.publish(bad), 422)
        assert e["code"] == "invalid", e
    # a NUL in a zip entry name (zipfile would cut the name at it)
    good = make_plugin(tmp_path, "acme.zipname")
    raw = good.read_bytes()
    buf = io.BytesIO(raw)
    with zipfile.ZipFile(buf) as zf:
        name = next(n for n in zf.namelist() if n.endswith("hello_mod.py"))
    forged = raw.replace(name.encode(), name.encode()[:-3] + b"\x00sh")
    assert forged != raw
    (tmp_path / "forged.corral").write_bytes(forged)
    e = error(api.publish(tmp_path / "forged.corral"), 422)
    assert e["code"] == "invalid", e
    assert "NUL" in e["message"], e
    assert artifacts(api) == before
    assert api.http.get("/v1/plugins/acme.zipname").status_code == 404


def _leaky_server(tmp_path: Path) -> tuple[Registry, Any]:
    reg = Registry.open(tmp_path / "leaky")

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError(f"boom in {tmp_path}/leaky/secret")

    reg.search = broken  # type: ignore[method-assign]
    return reg, open_server(reg)


def test_errors_keep_the_connection_and_hide_server_paths(tmp_path: Path) -> None:
    reg, server = _leaky_server(tmp_path)
    with server as url:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        requests = [
            ("GET", "/v1/search?q=x", 500),  # an unexpected exception in the route
            ("GET", "/v1/health", 200),
            ("GET", "/v1/plugins/nope.nope", 404),
            ("GET", "/v1/search?page=0", 400),
            ("PUT", "/v1/health", 405),
            ("GET", "/v1/search?q=%00", 400),
            ("POST", "/v1/publish", 401),
            ("GET", "/v1/search?q=y", 500),
            ("GET", "/v1/health", 200),
        ] * 3
        conn.connect()
        sock = conn.sock
        for method, path, status in requests:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == status, (path, body)
            assert (resp.getheader("connection") or "").lower() != "close", path
            assert conn.sock is sock, f"the connection was dropped after {method} {path}"
            assert str(tmp_path) not in body.decode(), body
            if status == 405:
                assert resp.getheader("allow") == "GET", resp.getheaders()
            if status == 500:
                assert json.loads(body)["error"]["message"] == "internal error in the registry"
        conn.close()
    reg.close()


def test_error_messages_carry_no_server_path(api: Api, tmp_path: Path) -> None:
    # an archive that is no zip at all: the unpacker's message names the upload
    junk = tmp_path / "junk.corral"
    junk.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    e = error(api.publish(junk), 422)
    text = json.dumps(e)
    for root in (str(api.data), str(api.data.resolve()), "/tmp/"):
        assert root not in text, text


def test_chunked_upload_is_refused_at_the_cap(api: Api) -> None:
    """An endless chunked body gets 413 after about the cap, and nothing is stored."""
    cap = api.registry.max_upload_bytes
    before = artifacts(api)
    host, port = api.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    head = (f"POST /v1/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.token}\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    part = (b'--XyZ\r\nContent-Disposition: form-data; name="archive"; filename="a.corral"\r\n'
            b"Content-Type: application/zip\r\n\r\n")
    sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    chunk = os.urandom(64 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, offered = 0, 256 * 1024 * 1024
    answered = False
    while sent < offered:
        readable, writable, _ = select.select([sock], [sock], [], 10)
        if readable:
            answered = True
            break
        if not writable:
            break
        try:
            sent += sock.send(frame)
        except (BrokenPipeError, ConnectionResetError):
            break
    reply = b""
    sock.settimeout(10)
    try:
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert answered or reply, "the server never answered"
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # the cap plus what the kernel's loopback buffers hold, far below what was offered
    assert sent < cap + 24 * 1024 * 1024, (sent, cap)
    assert sent < offered // 4
    assert artifacts(api) == before
    assert not list((api.data / "tmp").glob("upload-*"))


_FULL_DISK = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import httpx
from corral.registry._app import open_server
from corral.registry._service import Registry
from tests.registry.conftest import _accounts, make_plugin

data, work = Path({data!r}), Path({work!r})
reg = Registry.open(data)
token, _ = _accounts(reg)
auth = {{"Authorization": "Bearer " + token}}
out = {{}}

def publish(http, archive):
    with archive.open("rb") as fp:
        return http.post("/v1/publish", files={{"archive": fp}}, headers=auth)

with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
    small = make_plugin(work, "acme.small", "1.0.0")
    out["first"] = publish(http, small).status_code
    filler = data / "filler"
    # unbuffered: nothing is left to flush (and fail again) when the file closes
    with filler.open("wb", buffering=0) as fp:
        try:
            while True:
                fp.write(b"\\0" * 65536)
        except OSError as exc:
            out["fill_errno"] = exc.errno
    big = make_plugin(work, "acme.small", "2.0.0", payload=os.urandom(200_000))
    r = publish(http, big)
    out["full"] = [r.status_code, r.json()]
    out["after_full"] = [http.get("/v1/health").status_code]
    got = http.get("/v1/plugins/acme.small/download")
    out["download"] = [got.status_code, got.content == small.read_bytes()]
    out["download_pinned"] = http.get("/v1/plugins/acme.small/versions/1.0.0/download").status_code
    out["search"] = http.get("/v1/search", params={{"q": "small"}}).status_code
    out["info"] = http.get("/v1/plugins/acme.small").json()["version"]
    filler.unlink()
    r = publish(http, big)
    out["freed"] = [r.status_code, r.text]
    reg.downloads.flush()
    out["downloads"] = http.get("/v1/plugins/acme.small").json()["downloads"]
reg.close()
print(json.dumps(out))
"""


def test_full_disk_is_507_and_downloads_still_work(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user+mount namespaces are not permitted here: {probe.stderr!r}")
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    work.mkdir()
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent(_FULL_DISK).format(repo=str(REPO), data=str(data),
                                                         work=str(work)))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=4m tmpfs {data} && exec {sys.executable} {script}"],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"] == 201, out
    assert out["fill_errno"] == 28, out
    status, body = out["full"]
    assert status == 507, out
    assert body["error"]["message"] == "no space left on the registry's data disk", body
    assert body["error"]["reason"] == "no_space"
    assert str(data) not in json.dumps(body)
    assert out["download"] == [200, True], out
    assert out["download_pinned"] == 200, out
    assert out["search"] == 200, out
    assert out["after_full"] == [200], out
    assert out["info"] == "1.0.0", out  # the refused version left no trace
    assert out["freed"][0] == 201, out  # room again: the same publish goes through
    assert out["downloads"] == 2, out  # counted while full, written once there was room


#: Real typosquats seen on PyPI (and the rn/m, 1/l folds) with the name each imitates.
TYPOSQUATS = {
    "reqeusts": "requests", "requets": "requests", "requestss": "requests",
    "urlib3": "urllib3", "urllib4": "urllib3",
    "nurnpy": "numpy", "numpi": "numpy",
    "djanga": "django", "diango": "django", "djago": "django",
    "colourama": "colorama", "colorarna": "colorama", "colorama1": "colorama",
    "c1ick": "click", "pyyarnl": "pyyaml", "rnypy": "mypy", "victirn": "victim",
    "jeilyfish": "jellyfish", "python3-dateutil": "python-dateutil",
    "setup-tools": "setuptools", "beautifulsoup": "beautifulsoup4",
    "crypt0graphy": "cryptography", "pyt0rch": "pytorch",
}
REAL = sorted(set(TYPOSQUATS.values()) | {"dask", "numba", "clicker", "flask", "pandas"})


def test_real_typosquats_are_flagged(api: Api, tmp_path: Path) -> None:
    for name in REAL:
        r = api.publish(make_plugin(tmp_path, f"acme.{name}"))
        assert r.status_code == 201, r.text
    for squat, target in TYPOSQUATS.items():
        r = api.publish(make_plugin(tmp_path, f"evil.{squat}"), api.other_token)
        assert r.status_code == 201, (squat, r.text)
        # earlier squats may read alike too; of the real names, exactly the imitated one
        real = [c for c in r.json()["confusable_with"] if c.startswith("acme.")]
        assert real == [f"acme.{target}"], (squat, r.json()["confusable_with"])
        info = api.http.get(f"/v1/plugins/evil.{squat}").json()
        assert f"acme.{target}" in info["confusable_with"]
    # negative controls: real, different names are not look-alikes of each other
    for name in ("numba", "clicker", "dask", "flask", "pandas"):
        assert api.http.get(f"/v1/plugins/acme.{name}").json()["confusable_with"] == []


def test_serve_workers_count_downloads_and_write_them_on_stop(tmp_path: Path) -> None:
    """``registry serve`` (default workers: one per core) counts downloads and keeps them."""
    data = tmp_path / "data"
    with Registry.open(data) as reg:
        token, _ = _accounts(reg)
    archive = make_plugin(tmp_path, "acme.counted")
    log = (tmp_path / "serve.log").open("wb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from corral.registry import registry_main; "
         "sys.exit(registry_main(sys.argv[1:]))", "serve", "--data", str(data),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/v1/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as http, archive.open("rb") as fp:
            r = http.post("/v1/publish", files={"archive": fp},
                          headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 201, r.text
            for _ in range(7):  # spread over the workers by the kernel
                with httpx.Client(base_url=url, timeout=30) as fresh:
                    got = fresh.get("/v1/plugins/acme.counted/download")
                    assert got.status_code == 200
                    assert got.content == archive.read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    with Registry.open(data) as reg:
        assert reg.info("acme.counted")["downloads"] == 7, (tmp_path / "serve.log").read_text()
