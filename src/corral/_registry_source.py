"""A registry read through TUF: the :class:`~corral._release.Source` installers use.

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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._errors import NotFoundError, SignatureInvalid, TransferError
from ._release import Release

if TYPE_CHECKING:
    import httpx
    from tuf.api._payload import TargetFile
    from tuf.ngclient.updater import Updater

__all__ = ["RegistrySource", "cache_dir", "trust_registry"]

_CHUNK: Final = 64 * 1024


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
    """The httpx :class:`~tuf.ngclient.FetcherInterface` (built on first use: tuf is heavy)."""
    from tuf.api.exceptions import DownloadHTTPError
    from tuf.ngclient.fetcher import FetcherInterface

    class HttpxFetcher(FetcherInterface):
        """Streams with connect/read timeouts; never reads past the announced length."""

        def __init__(self, client: httpx.Client) -> None:
            self.client = client
            self.limit: int | None = None
            self.progress: Callable[[int, int], None] | None = None
            self.last_url = ""

        def download_file(self, url: str, max_length: int) -> Any:
            self.limit = max_length
            return super().download_file(url, max_length)

        def _fetch(self, url: str) -> Iterator[bytes]:
            self.last_url = url
            limit, progress = self.limit, self.progress
            stream = self.client.stream("GET", url, headers={"Accept-Encoding": "identity"})
            response = stream.__enter__()
            try:
                if response.status_code != 200:
                    raise DownloadHTTPError(f"{url}: HTTP {response.status_code}",
                                            response.status_code)
            except BaseException:
                stream.__exit__(None, None, None)
                raise
            return self._chunks(stream, response, limit, progress)

        @staticmethod
        def _chunks(stream: Any, response: httpx.Response, limit: int | None,
                    progress: Callable[[int, int], None] | None) -> Iterator[bytes]:
            done = 0
            closed = False
            try:
                for chunk in response.iter_raw(_CHUNK):
                    done += len(chunk)
                    if limit is not None and done > limit:
                        # hang up first: the caller raises on these extra bytes
                        closed = True
                        stream.__exit__(None, None, None)
                        yield chunk
                        return
                    if progress is not None and limit is not None:
                        progress(done, limit)
                    yield chunk
            finally:
                if not closed:
                    stream.__exit__(None, None, None)

    return HttpxFetcher


class RegistrySource:
    """Releases and archives of a TUF-publishing corral registry.

    :param url: the registry's base URL (metadata under ``/tuf/metadata/``).
    :param home: the corral home (the metadata cache lives under it).
    :param timeout: seconds to connect, and between two reads.
    """

    def __init__(self, url: str, home: Path, *, timeout: float = 10.0) -> None:
        self.location = url.rstrip("/")
        self.home = Path(home)
        self.timeout = timeout
        self._dir = cache_dir(self.home, self.location)
        if not (self._dir / "root.json").exists():
            raise SignatureInvalid(
                f"no trusted TUF root for {self.location}; get the registry's root.json "
                f"out of band and run: corral registry trust {self.location} --root FILE",
                role="root", url=self.location)
        self._client: httpx.Client | None = None
        self._fetcher: Any = None
        self._updater: Updater | None = None

    def close(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RegistrySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> Updater:
        """The updater, refreshed once per instance."""
        if self._updater is not None:
            return self._updater
        import httpx
        from tuf.ngclient.updater import Updater

        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=self.timeout),
            follow_redirects=False, headers={"User-Agent": "corral-tuf"})
        self._fetcher = _fetcher_class()(self._client)
        with self._errors("the registry metadata"):
            updater = Updater(
                str(self._dir), f"{self.location}/tuf/metadata/",
                target_base_url=f"{self.location}/tuf/targets/",
                fetcher=self._fetcher, bootstrap=None)
            updater.refresh()
        self._updater = updater
        return updater

    def _role_of(self, url: str) -> str:
        """``3.snapshot.json`` -> ``snapshot``; a target URL -> its path."""
        if "/tuf/targets/" in url:
            return "target " + url.split("/tuf/targets/", 1)[1]
        name = url.rsplit("/", 1)[-1].removesuffix(".json")
        return name.split(".", 1)[1] if name[:1].isdigit() else name

    def _errors(self, what: str, plugin_id: str | None = None) -> Any:
        """Map ngclient and httpx errors to corral's (a context manager)."""
        import contextlib

        import httpx
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
            except (tx.DownloadError, httpx.HTTPError) as exc:
                url = source._fetcher.last_url if source._fetcher else source.location
                cause = exc.__cause__ or exc
                raise TransferError(
                    f"registry {url or source.location} is unavailable while reading {what}: "
                    f"{type(cause).__name__}: {cause}", plugin_id=plugin_id,
                    url=url or source.location) from exc
        return mapping()

    def _target(self, path: str, plugin_id: str) -> TargetFile:
        updater = self._open()
        with self._errors(f"the target {path}", plugin_id):
            info = updater.get_targetinfo(path)
        if info is None:
            raise NotFoundError(f"{self.location} has no plugin {plugin_id!r} (no TUF target "
                                f"{path})", plugin_id=plugin_id, url=self.location)
        return info

    def releases(self, plugin_id: str) -> Sequence[Release]:
        """Every release of ``plugin_id`` from its verified index, yanked ones included.

        Raises:
            NotFoundError: no index for that plugin.
            SignatureInvalid: metadata or index failed verification.
            TransferError: the registry could not be read.
        """
        plugin_id = plugin_id.strip().lower()
        info = self._target(f"index/{plugin_id}.json", plugin_id)
        updater = self._open()
        with tempfile.TemporaryDirectory(prefix="corral-index-") as tmp:
            with self._errors(f"the index of {plugin_id}", plugin_id):
                path = updater.download_target(info, str(Path(tmp) / "index.json"))
            doc = json.loads(Path(path).read_bytes())
        if doc.get("id") != plugin_id:
            raise SignatureInvalid(f"{self.location}: index/{plugin_id}.json describes "
                                   f"{doc.get('id')!r}", plugin_id=plugin_id)
        return [_release(r) for r in doc.get("releases", [])]

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


def _release(doc: dict[str, Any]) -> Release:
    """A :class:`Release` from its ``to_dict`` form."""
    return Release(
        id=doc["id"], version=doc["version"], dependencies=doc.get("dependencies") or {},
        requires_corral=doc.get("requires-corral") or "", yanked=bool(doc.get("yanked")),
        sha256=doc.get("sha256"), size=doc.get("size"),
        permissions=doc.get("permissions") or {}, publisher=doc.get("publisher"),
        signer=doc.get("signer"), publisher_verified=bool(doc.get("publisher-verified")),
    )

