"""Speed work on the TUF path, checked for behaviour: no Nagle stalls, a stat-checked cache,
each metadata file fetched once, background index prefetch, thread-safe concurrent fetches."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from corral._distribution.install import Installer
from corral._distribution.registry_source import RegistrySource, cache_dir, trust_registry
from corral._errors import NotFoundError, SignatureInvalid, TransferError
from corral.registry._tuf import FileCache

from .tuf_fixtures import Proxy, TufApi, proxy_fixture, tuf_api_fixture  # noqa: F401


def _source(api: TufApi, home: Path, url: str, parallel: int = 4) -> RegistrySource:
    if not cache_dir(home, url).exists():
        trust_registry(home, url, (api.repo.metadata_dir / "1.root.json").read_bytes())
    return RegistrySource(url, home, timeout=5, parallel=parallel)


def _deps(*ids: str) -> str:
    """``extra`` for make_plugin: a [dependencies] table."""
    return "\n[dependencies]\n" + "\n".join(f'"{i}" = ">=1"' for i in ids)


def _wait_for(cond: object, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_keep_alive_requests_do_not_stall(tuf_api: TufApi) -> None:
    # headers and body are two writes: without TCP_NODELAY each response waited ~40 ms
    # for the client's delayed ACK (20 requests took ~0.9 s)
    with httpx.Client(base_url=tuf_api.url) as c:
        c.get("/tuf/metadata/1.root.json")
        for _ in range(20):
            assert c.get("/tuf/metadata/1.root.json").status_code == 200
    # Their speed (no delayed-ACK stall) is a figure of benchmarks/bench_registry.py.


def test_served_bytes_follow_the_files(tuf_api: TufApi) -> None:
    http = tuf_api.http
    before = http.get("/tuf/metadata/timestamp.json").content
    assert before == (tuf_api.repo.metadata_dir / "timestamp.json").read_bytes()
    tuf_api.publish("acme.alpha")  # rewrites bins, snapshot, timestamp (renamed into place)
    after = http.get("/tuf/metadata/timestamp.json")
    assert after.content == (tuf_api.repo.metadata_dir / "timestamp.json").read_bytes()
    assert after.content != before
    assert after.headers["content-type"] == "application/json"
    assert int(after.headers["content-length"]) == len(after.content)
    assert http.get("/tuf/metadata/99.snapshot.json").status_code == 404
    assert http.get("/tuf/metadata/../config.json").status_code == 404


def test_file_cache_rereads_changed_files_and_stays_bounded(tmp_path: Path) -> None:
    cache = FileCache(total=3000, per_file=1000)
    a = tmp_path / "a.json"
    a.write_bytes(b"1" * 500)
    assert cache.read(a) == b"1" * 500
    # same size, same mtime, new inode (how the repository writes): new bytes
    st = a.stat()
    new = tmp_path / "new"
    new.write_bytes(b"2" * 500)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, a)
    assert cache.read(a) == b"2" * 500
    # rewritten in place with other content and size: new bytes
    a.write_bytes(b"3" * 700)
    assert cache.read(a) == b"3" * 700
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1001)
    assert cache.read(big) is None  # streamed by the caller instead
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * 900)
        assert cache.read(tmp_path / f"f{i}") == bytes([i]) * 900
    assert cache._size <= 3000
    assert len(cache._entries) == 3
    a.unlink()
    with pytest.raises(FileNotFoundError):
        cache.read(a)


def test_each_metadata_file_fetched_once(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    for i in range(6):
        tuf_api.publish(f"acme.dep{i}")
    tuf_api.publish("acme.app", extra=_deps(*(f"acme.dep{i}" for i in range(6))))  # type: ignore[arg-type]
    home = tmp_path / "home"
    with _source(tuf_api, home, proxy.url) as src:
        Installer(home, src, allow_unsigned=True).install(["acme.app"])
    paths = proxy.requests
    assert len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)
    metadata = [p for p in paths if p.startswith("/tuf/metadata/")]
    targets = [p for p in paths if p.startswith("/tuf/targets/")]
    assert len([p for p in targets if p.startswith("/tuf/targets/index/")]) == 7
    assert len([p for p in targets if p.startswith("/tuf/targets/plugins/")]) == 7
    bins = [p for p in metadata if ".bin-" in p]
    assert 1 <= len(bins) <= 14  # at most one per bin the 14 target paths fall in
    assert len(metadata) == len(bins) + 4  # next-root probe, timestamp, snapshot, targets
    # a new source over the same home reads no bin again (ngclient's metadata cache)
    proxy.requests.clear()
    with _source(tuf_api, home, proxy.url) as src:
        assert [r.version for r in src.releases("acme.dep0")] == ["1.0.0"]
    assert not [p for p in proxy.requests if ".bin-" in p]


def test_dependency_indexes_are_prefetched(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    tuf_api.publish("acme.lib1")
    tuf_api.publish("acme.lib2")
    tuf_api.publish("acme.app", extra=_deps("acme.lib1", "acme.lib2", "acme.gone"))  # type: ignore[arg-type]
    with _source(tuf_api, tmp_path / "home", proxy.url) as src:
        assert [r.id for r in src.releases("acme.app")] == ["acme.app"]

        def fetched() -> bool:
            idx = [p for p in proxy.requests if p.startswith("/tuf/targets/index/")]
            return len(idx) == 3  # app, lib1, lib2 (acme.gone has no target: no request)

        assert _wait_for(fetched), proxy.requests
        time.sleep(0.05)
        count = len(proxy.requests)
        assert [r.id for r in src.releases("acme.lib1")] == ["acme.lib1"]
        assert [r.id for r in src.releases("ACME.lib2 ")] == ["acme.lib2"]
        assert len(proxy.requests) == count  # served from the prefetch
        # the prefetch's failure reaches whoever asks, and only them
        with pytest.raises(NotFoundError, match=r"acme\.gone"):
            src.releases("acme.gone")
    with _source(tuf_api, tmp_path / "home2", proxy.url, parallel=1) as src:
        proxy.requests.clear()
        src.releases("acme.app")
        time.sleep(0.2)
        assert len([p for p in proxy.requests if "/index/" in p]) == 1  # no prefetch


def test_concurrent_fetches_each_verified(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    pubs = {f"acme.p{i}": tuf_api.publish(f"acme.p{i}", payload=os.urandom(150_000 + i))
            for i in range(6)}
    bad = "acme.p3"
    url = (f"/tuf/targets/plugins/{bad}/{pubs[bad]['sha256']}.{bad}-1.0.0.corral")
    body = bytearray(httpx.get(tuf_api.url + url).content)
    body[len(body) // 2] ^= 0xFF
    proxy.overrides[url] = bytes(body)
    seen: dict[str, list[tuple[int, int, str]]] = {pid: [] for pid in pubs}
    with _source(tuf_api, tmp_path / "home", proxy.url) as src:
        rels = {pid: src.releases(pid)[0] for pid in pubs}

        def one(pid: str) -> Path:
            def progress(done: int, total: int) -> None:
                seen[pid].append((done, total, threading.current_thread().name))
            return src.fetch(rels[pid], tmp_path / pid, progress)

        with ThreadPoolExecutor(6) as pool:
            futures = {pid: pool.submit(one, pid) for pid in pubs}
        for pid, fut in futures.items():
            if pid == bad:
                with pytest.raises(SignatureInvalid, match="LengthOrHashMismatchError") as err:
                    fut.result()
                assert err.value.plugin_id == bad
                assert bad in str(err.value.details.get("url", ""))  # this thread's URL
                assert list((tmp_path / pid).iterdir()) == []
                continue
            out = fut.result()
            assert hashlib.sha256(out.read_bytes()).hexdigest() == pubs[pid]["sha256"]
            size = int(pubs[pid]["size"])  # type: ignore[call-overload]
            assert seen[pid][-1][:2] == (size, size)
            assert seen[pid]  # all() below must not pass on nothing
            assert all(total == size for _, total, _ in seen[pid])  # never another's total
            assert len({name for _, _, name in seen[pid]}) == 1


def test_source_loads_no_second_http_stack(tuf_api: TufApi, tmp_path: Path) -> None:
    # ngclient brings urllib3; the source uses it rather than also importing httpx
    tuf_api.publish("acme.alpha")
    home = tmp_path / "home"
    trust_registry(home, tuf_api.url, (tuf_api.repo.metadata_dir / "1.root.json").read_bytes())
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from corral._distribution.registry_source import RegistrySource
        with RegistrySource({tuf_api.url!r}, Path({str(home)!r})) as src:
            rel = src.releases("acme.alpha")[0]
            src.fetch(rel, Path({str(tmp_path / "dl")!r}))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("httpx", "httpcore")))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "dl" / "acme.alpha-1.0.0.corral").is_file()


def test_close_cuts_background_reads_short(tuf_api: TufApi, proxy: Proxy, tmp_path: Path) -> None:
    for i in range(7):
        tuf_api.publish(f"acme.lib{i}")
    src = _source(tuf_api, tmp_path / "home", proxy.url)
    src.releases("acme.lib0")  # metadata refreshed; no dependencies, so no prefetch
    proxy.requests.clear()
    ids = [f"acme.lib{i}" for i in range(1, 7)]
    with src._lock:  # the prefetches queue up behind the lock, as behind a hung bin fetch
        src._prefetch(ids)
        closer = threading.Thread(target=src.close)
        closer.start()
        assert _wait_for(src._stopping.is_set)
    closer.join(timeout=10)
    assert not closer.is_alive()
    for pid in ids:
        fut = src._indexes[pid]
        assert fut.cancelled() or isinstance(fut.exception(), TransferError), pid
    assert not [p for p in proxy.requests if "/index/" in p]
    assert not src._stopping.is_set()
