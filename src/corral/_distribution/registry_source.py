"""A registry read through TUF: the :class:`~corral._model.release.Source` installers use.

Every byte comes through python-tuf's ``ngclient.Updater``: the timestamp,
snapshot, targets and hash-bin metadata are verified (signatures, versions,
expiry, lengths, hashes) before a plugin's release index or archive is
trusted.  The trusted root is installed once with :func:`trust_registry`
(``corral registry trust URL --root FILE``); after that, root rotations are
followed automatically.  Metadata is cached in ``<home>/tuf/<sha256(url)[:16]>/``.

Errors are mapped at this edge: what the repository served wrong
(``RepositoryError``, more bytes than announced) is :class:`SignatureInvalid`
naming the role or target; what the transport did (refused, timed out, cut
short) is :class:`TransferError` naming the URL.

Speed: one keep-alive connection pool per source; the delegated hash bins are
walked under one lock (ngclient keeps each loaded bin, so each is fetched at
most once per refresh) while target downloads run concurrently; reading a
plugin's index starts fetching the indexes of the plugins its releases depend
on in the background (a resolver is about to ask for them), and
:attr:`RegistrySource.max_parallel_fetches` lets the installer download
archives concurrently.  Every byte still goes through ``Updater`` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from corral._errors import NotFoundError, SignatureInvalid, TransferError
from corral._model.release import Release

if TYPE_CHECKING:
    from tuf.api._payload import TargetFile
    from tuf.ngclient.updater import Updater

__all__ = ["RegistrySource", "cache_dir", "trust_registry"]

_CHUNK: Final = 64 * 1024
#: Concurrent downloads (index prefetches, or archives through the installer).
PARALLEL: Final = 4


def cache_dir(home: Path, url: str) -> Path:
    """Where the TUF metadata of the registry at ``url`` is cached."""
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return Path(home) / "tuf" / key


def trust_registry(home: Path, url: str, root_json: bytes) -> dict[str, Any]:
    """Install ``root_json`` as the trusted root of the registry at ``url``.

    The root must be valid metadata signed by a threshold of its own root
    keys.  Any earlier cache for that registry is replaced in one rename.

    Raises:
        SignatureInvalid: not a root, or not signed by its own keys.
    """
    from tuf.api.exceptions import RepositoryError
    from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
    from tuf.ngclient.config import EnvelopeType

    try:
        trusted = TrustedMetadataSet(root_json, EnvelopeType.METADATA)
    except (RepositoryError, ValueError, KeyError, TypeError) as exc:
        raise SignatureInvalid(
            f"the root for {url} is not a valid self-signed TUF root: {exc}", role="root",
            url=url) from exc
    target = cache_dir(home, url)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trust-", dir=target.parent))
    try:
        (staging / "root.json").write_bytes(root_json)
        (staging / "url").write_text(url.rstrip("/") + "\n")
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"url": url.rstrip("/"), "root_version": trusted.root.version,
            "cache": str(target)}


def _fetcher_class() -> type[Any]:
    """The urllib3 :class:`~tuf.ngclient.FetcherInterface` (built on first use: tuf is heavy).

    urllib3, not httpx: ngclient imports it anyway, so a command does not load
    a second HTTP stack (~40 ms), and TLS contexts are only made for https.
    """
    import urllib3
    from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
    from tuf.ngclient._internal.proxy import ProxyEnvironment
    from tuf.ngclient.fetcher import FetcherInterface

    class PoolFetcher(FetcherInterface):
        """Streams with connect/read timeouts; never reads past the announced length.

        One keep-alive connection pool for the registry (or the proxy the
        ``*_proxy`` variables name).  Thread-safe: the length limit, progress
        callback and last URL are per thread; urllib3's pools are shared.
        """

        def __init__(self, base_url: str, timeout: float, connections: int) -> None:
            options: dict[str, Any] = {
                "timeout": urllib3.Timeout(connect=timeout, read=timeout),
                "retries": False, "maxsize": connections,
                "headers": {"User-Agent": "corral-tuf", "Accept-Encoding": "identity"},
            }
            if base_url.lower().startswith("https:"):
                options["ca_certs"] = _ca_bundle()
            url = urllib3.util.parse_url(base_url)
            self.pools = ProxyEnvironment(**options).get_pool_manager(url.scheme, url.host)
            self._local = threading.local()

        @property
        def limit(self) -> int | None:
            """The announced length of this thread's current download."""
            return getattr(self._local, "limit", None)

        @property
        def progress(self) -> Callable[[int, int], None] | None:
            """This thread's ``progress(done, total)`` callback."""
            return getattr(self._local, "progress", None)

        @progress.setter
        def progress(self, value: Callable[[int, int], None] | None) -> None:
            self._local.progress = value

        @property
        def last_url(self) -> str:
            """The URL this thread fetched last (named in errors)."""
            return str(getattr(self._local, "last_url", ""))

        def download_file(self, url: str, max_length: int) -> Any:
            self._local.limit = max_length
            return super().download_file(url, max_length)

        def _fetch(self, url: str) -> Iterator[bytes]:
            # urllib3's own errors are wrapped in DownloadError by fetch()
            self._local.last_url = url
            limit, progress = self.limit, self.progress
            response = self.pools.request("GET", url, preload_content=False,
                                          decode_content=False, redirect=False)
            if response.status != 200:
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) <= _CHUNK:
                    response.drain_conn()  # a small error body: keep the connection
                    response.release_conn()
                else:
                    response.close()
                raise DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
            return self._chunks(response, limit, progress)

        @staticmethod
        def _chunks(response: Any, limit: int | None,
                    progress: Callable[[int, int], None] | None) -> Iterator[bytes]:
            done = 0
            finished = False
            try:
                for chunk in response.stream(_CHUNK, decode_content=False):
                    done += len(chunk)
                    if limit is not None and done > limit:
                        response.close()  # hang up first: the caller raises on these bytes
                        yield chunk
                        return
                    if progress is not None and limit is not None:
                        progress(done, limit)
                    yield chunk
                finished = True
            except urllib3.exceptions.TimeoutError as exc:
                raise SlowRetrievalError(f"{type(exc).__name__}: {exc}") from exc
            except urllib3.exceptions.HTTPError as exc:  # reset, cut short
                raise DownloadError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                if finished:
                    response.release_conn()  # read to the end: reuse the connection
                else:
                    response.close()

    return PoolFetcher


def _ca_bundle() -> str | None:
    """``$SSL_CERT_FILE``, else certifi's bundle if installed, else the system store."""
    env = os.environ.get("SSL_CERT_FILE")
    if env:
        return env
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


class RegistrySource:
    """Releases and archives of a TUF-publishing corral registry.

    :param url: the registry's base URL (metadata under ``/tuf/metadata/``).
    :param home: the corral home (the metadata cache lives under it).
    :param timeout: seconds to connect, and between two reads.
    :param parallel: downloads at once (1: no background prefetch).
    """

    def __init__(self, url: str, home: Path, *, timeout: float = 10.0,
                 parallel: int = PARALLEL) -> None:
        self.location = url.rstrip("/")
        self.home = Path(home)
        self.timeout = timeout
        self._dir = cache_dir(self.home, self.location)
        if not (self._dir / "root.json").exists():
            raise SignatureInvalid(
                f"no trusted TUF root for {self.location}; get the registry's root.json "
                f"out of band and run: corral registry trust {self.location} --root FILE",
                role="root", url=self.location)
        self._fetcher: Any = None
        self._updater: Updater | None = None
        #: How many :meth:`fetch` calls may run at once (read by the installer).
        self.max_parallel_fetches = max(1, parallel)
        #: The updater's trusted metadata set is walked by one thread at a time.
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        #: Release lists read or being read, by plugin id (prefetches included).
        self._indexes: dict[str, Future[list[Release]]] = {}
        #: Set while closing: background reads still waiting for the lock give up.
        self._stopping = threading.Event()
        self._background = threading.local()

    def close(self) -> None:
        """Stop background prefetches, then close the HTTP connections."""
        pool, self._pool = self._pool, None
        if pool is not None:
            self._stopping.set()
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            finally:
                self._stopping.clear()
        if self._fetcher is not None:
            self._fetcher.pools.clear()

    def __enter__(self) -> RegistrySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> Updater:
        """The updater, refreshed once per instance."""
        if self._updater is not None:
            return self._updater
        with self._lock:
            if self._updater is None:
                self._updater = self._refresh()
            return self._updater

    def _refresh(self) -> Updater:
        """A new updater over the cache, with timestamp, snapshot and targets refreshed."""
        from tuf.ngclient.updater import Updater

        self._fetcher = _fetcher_class()(self.location, self.timeout,
                                         self.max_parallel_fetches + 1)
        with self._errors("the registry metadata"):
            updater = Updater(
                str(self._dir), f"{self.location}/tuf/metadata/",
                target_base_url=f"{self.location}/tuf/targets/",
                fetcher=self._fetcher, bootstrap=None)
            updater.refresh()
        return updater

    def _role_of(self, url: str) -> str:
        """``3.snapshot.json`` -> ``snapshot``; a target URL -> its path."""
        if "/tuf/targets/" in url:
            return "target " + url.split("/tuf/targets/", 1)[1]
        name = url.rsplit("/", 1)[-1].removesuffix(".json")
        return name.split(".", 1)[1] if name[:1].isdigit() else name

    def _errors(self, what: str, plugin_id: str | None = None) -> Any:
        """Map ngclient and urllib3 errors to corral's (a context manager)."""
        import contextlib

        import urllib3
        from tuf.api import exceptions as tx

        source = self

        @contextlib.contextmanager
        def mapping() -> Iterator[None]:
            try:
                yield
            except tx.DownloadLengthMismatchError as exc:
                url = source._fetcher.last_url if source._fetcher else source.location
                raise SignatureInvalid(
                    f"{source.location}: {source._role_of(url)} is longer than its signed "
                    f"length; transfer stopped ({exc})", plugin_id=plugin_id,
                    role=source._role_of(url), url=url) from exc
            except tx.RepositoryError as exc:
                url = source._fetcher.last_url if source._fetcher else source.location
                role = source._role_of(url) if url else "root"
                raise SignatureInvalid(
                    f"{source.location}: {role} rejected while reading {what}: "
                    f"{type(exc).__name__}: {exc}", plugin_id=plugin_id, role=role,
                    url=url) from exc
            except (tx.DownloadError, urllib3.exceptions.HTTPError) as exc:
                url = source._fetcher.last_url if source._fetcher else source.location
                cause = exc.__cause__ or exc
                raise TransferError(
                    f"registry {url or source.location} is unavailable while reading {what}: "
                    f"{type(cause).__name__}: {cause}", plugin_id=plugin_id,
                    url=url or source.location) from exc
        return mapping()

    def _target(self, path: str, plugin_id: str) -> TargetFile:
        updater = self._open()
        with self._lock, self._errors(f"the target {path}", plugin_id):
            if self._stopping.is_set() and getattr(self._background, "on", False):
                raise TransferError(f"{self.location}: closed before {path} was read",
                                    plugin_id=plugin_id, url=self.location)
            info = updater.get_targetinfo(path)
        if info is None:
            raise NotFoundError(f"{self.location} has no plugin {plugin_id!r} (no TUF target "
                                f"{path})", plugin_id=plugin_id, url=self.location)
        return info

    def releases(self, plugin_id: str) -> Sequence[Release]:
        """Every release of ``plugin_id`` from its verified index, yanked ones included.

        Also starts reading, in the background, the indexes of the plugins
        those releases depend on.

        Raises:
            NotFoundError: no index for that plugin.
            SignatureInvalid: metadata or index failed verification.
            TransferError: the registry could not be read.
        """
        plugin_id = plugin_id.strip().lower()
        with self._lock:
            pending = self._indexes.get(plugin_id)
        if pending is not None and not pending.cancelled():
            found = pending.result()  # a prefetch's error is raised here, to the asker
        else:
            found = self._read_index(plugin_id)
            done: Future[list[Release]] = Future()
            done.set_result(found)
            with self._lock:
                self._indexes[plugin_id] = done
        self._prefetch(d for r in found if not r.yanked for d in r.dependencies)
        return list(found)

    def _prefetch(self, plugin_ids: Iterable[str]) -> None:
        """Start reading the indexes of ``plugin_ids`` not read yet (errors kept for the asker)."""
        if self.max_parallel_fetches < 2:
            return
        with self._lock:
            for pid in sorted({p.strip().lower() for p in plugin_ids}):
                if pid in self._indexes:
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.max_parallel_fetches,
                                                    thread_name_prefix="corral-tuf")
                self._indexes[pid] = self._pool.submit(self._read_in_background, pid)

    def _read_in_background(self, plugin_id: str) -> list[Release]:
        """:meth:`_read_index` on a pool thread (cut short when the source closes)."""
        self._background.on = True
        return self._read_index(plugin_id)

    def _read_index(self, plugin_id: str) -> list[Release]:
        """Download and parse ``index/<plugin_id>.json`` through the updater."""
        info = self._target(f"index/{plugin_id}.json", plugin_id)
        updater = self._open()
        with tempfile.TemporaryDirectory(prefix="corral-index-") as tmp:
            with self._errors(f"the index of {plugin_id}", plugin_id):
                path = updater.download_target(info, str(Path(tmp) / "index.json"))
            doc = json.loads(Path(path).read_bytes())
        if doc.get("id") != plugin_id:
            raise SignatureInvalid(f"{self.location}: index/{plugin_id}.json describes "
                                   f"{doc.get('id')!r}", plugin_id=plugin_id)
        return [Release.from_dict(r) for r in doc.get("releases", [])]

    def fetch(
        self,
        release: Release,
        dest_dir: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download ``release``'s archive (verified by TUF) into ``dest_dir``.

        Raises:
            SignatureInvalid: length/hash differ from the signed ones or from ``release``.
            TransferError: the registry failed, stalled or cut the transfer.
        """
        path = f"plugins/{release.id}/{release.id}-{release.version}.corral"
        info = self._target(path, release.id)
        signed_sha = info.hashes.get("sha256")
        if (release.sha256 is not None and signed_sha != release.sha256) or (
                release.size is not None and info.length != release.size):
            raise SignatureInvalid(
                f"{release.id} {release.version}: the registry signed sha256 {signed_sha} "
                f"({info.length} bytes) but the release says {release.sha256} "
                f"({release.size} bytes)", plugin_id=release.id, target=path)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / f"{release.id}-{release.version}.corral"
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=dest_dir)
        os.close(fd)
        updater = self._open()
        self._fetcher.progress = progress
        try:
            with self._errors(f"the archive of {release.id} {release.version}", release.id):
                updater.download_target(info, tmp)
            os.replace(tmp, final)
        finally:
            self._fetcher.progress = None
            Path(tmp).unlink(missing_ok=True)
        return final
