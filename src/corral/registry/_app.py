"""The HTTP API: FastAPI routes over :class:`~._service.Registry`.

Every error is ``{"error": {"code", "message", ...}}`` with the status of
:func:`~._errors.http_status`; FastAPI's own validation errors and unknown
routes are translated to the same shape.  The OpenAPI document is served at
``/openapi.json``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from corral._errors import CorralError, NotFoundError, PermissionDenied, UsageError
from corral._version import __version__

from ._accounts import Principal
from ._errors import UploadTooLarge, http_status
from ._search import SearchParams
from ._service import Registry

__all__ = ["API_PREFIX", "app_from_env", "create_app", "open_server"]

API_PREFIX: Final = "/v1"
#: Multipart framing allowed on top of the archive itself.
_FORM_OVERHEAD: Final = 64 * 1024


class YankRequest(BaseModel):
    """Why a version is yanked (shown to whoever pins it)."""

    reason: str = Field(default="", max_length=500)


class RatingRequest(BaseModel):
    """A 1-5 star rating."""

    stars: int = Field(ge=1, le=5)


class PublisherKeyRequest(BaseModel):
    """A signing key to register: base64 of the raw 32-byte Ed25519 key, or PEM."""

    public_key: str = Field(min_length=1, max_length=1000)


def _error(exc: CorralError) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=http_status(exc))


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def create_app(registry: Registry) -> FastAPI:
    """The FastAPI application serving ``registry`` (its name index is loaded first)."""
    registry.warm()
    app = FastAPI(
        title="corral registry",
        version=__version__,
        description="Publish, find and download corral plugins.",
    )

    @app.exception_handler(CorralError)
    async def _corral_error(_request: Request, exc: CorralError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        return _error(UsageError(f"{first['field']}: {first['message']}", problems=problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "usage"
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": "error", "message": f"internal error: {type(exc).__name__}"}},
            status_code=500,
        )

    def principal(request: Request) -> Principal:
        return registry.authenticate(_bearer(request))

    @app.get(f"{API_PREFIX}/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness and versions."""
        return {"status": "ok", "version": __version__, "database": registry.engine.dialect.name}

    @app.get(f"{API_PREFIX}/search", tags=["catalogue"], response_class=JSONResponse)
    def search_plugins(
        q: str = Query("", max_length=200, description="keywords, a name or an id"),
        category: str | None = Query(None, max_length=64),
        tag: str | None = Query(None, max_length=64),
        author: str | None = Query(None, max_length=200),
        min_rating: float | None = Query(None, ge=0, le=5),
        verified: bool | None = None,
        sort: str = Query("relevance", description="relevance | downloads | rating | updated"),
        page: int = Query(1, ge=1, le=10_000),
        per_page: int = Query(20, ge=1, le=100),
    ) -> JSONResponse:
        """Search plugins; results in rank order with ``total`` matches."""
        # a plain JSONResponse: the document is already JSON-ready, skip re-validation
        return JSONResponse(registry.search(
            SearchParams(
                q=q, category=category, tag=tag, author=author, min_rating=min_rating,
                verified=verified, sort=sort, page=page, per_page=per_page,
            )
        ))

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}", tags=["catalogue"],
             response_class=JSONResponse)
    def plugin_info(plugin_id: str) -> JSONResponse:
        """A plugin with every version: manifest, permissions, checksum, signature state."""
        return JSONResponse(registry.info(plugin_id))

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}", tags=["catalogue"])
    def version_info(plugin_id: str, version: str) -> dict[str, Any]:
        """One version (yanked ones too: an exact pin still sees them)."""
        return registry.version_info(plugin_id, version)

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/resolve", tags=["catalogue"])
    def resolve(plugin_id: str, spec: str = Query("", max_length=200)) -> dict[str, Any]:
        """The version to install for a PEP 440 specifier; yanked only when pinned exactly."""
        return registry.resolve(plugin_id, spec)

    def _send(plugin_id: str, version: str | None) -> FileResponse:
        found = registry.download(plugin_id, version)
        return FileResponse(
            found.path,
            media_type="application/zip",
            filename=found.filename,
            headers={"X-Corral-Sha256": found.sha256, "X-Corral-Version": found.version},
        )

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/download", tags=["artifacts"])
    def download_latest(plugin_id: str) -> FileResponse:
        """The newest non-yanked archive (counted as a download)."""
        return _send(plugin_id, None)

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}/download",
             tags=["artifacts"])
    def download_version(plugin_id: str, version: str) -> FileResponse:
        """One version's archive, yanked or not (counted as a download)."""
        return _send(plugin_id, version)

    @app.post(
        f"{API_PREFIX}/publish",
        tags=["publishing"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["archive"],
                            "properties": {"archive": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def publish(request: Request) -> dict[str, Any]:
        """Publish a ``.corral`` archive (multipart field ``archive``; bearer token)."""
        who = await run_in_threadpool(principal, request)
        who.require("publish")
        cap = registry.max_upload_bytes
        length = request.headers.get("content-length")
        if length is None:
            raise UsageError("uploads need a Content-Length header", field="content-length")
        if not length.isdigit():
            raise UsageError(f"bad Content-Length {length!r}", field="content-length")
        if int(length) > cap + _FORM_OVERHEAD:
            raise UploadTooLarge(f"upload is {length} bytes, the limit is {cap}", limit=cap)
        try:
            form = await request.form(max_files=1, max_fields=4)
        except Exception as exc:  # the client's malformed multipart body
            raise UsageError(f"malformed multipart body: {exc}") from exc
        try:
            upload = form.get("archive")
            if not isinstance(upload, UploadFile):
                raise UsageError("multipart field 'archive' (a file) is missing", field="archive")
            with _spooled(registry.tmp_dir) as path:
                size = 0
                with path.open("wb") as out:
                    while chunk := await upload.read(1024 * 1024):
                        size += len(chunk)
                        if size > cap:
                            raise UploadTooLarge(
                                f"upload is over the limit of {cap} bytes", limit=cap
                            )
                        out.write(chunk)
                return await run_in_threadpool(registry.publish, path, who)
        finally:
            await form.close()

    @app.post(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}/yank",
              tags=["publishing"])
    def yank(
        plugin_id: str, version: str, request: Request, body: YankRequest | None = None
    ) -> dict[str, Any]:
        """Yank a version: hidden from resolution and ``latest`` unless pinned exactly."""
        return registry.set_yanked(
            plugin_id, version, principal(request), yanked=True,
            reason=body.reason if body else "",
        )

    @app.delete(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}/yank",
                tags=["publishing"])
    def unyank(plugin_id: str, version: str, request: Request) -> dict[str, Any]:
        """Undo a yank."""
        return registry.set_yanked(plugin_id, version, principal(request), yanked=False)

    @app.post(f"{API_PREFIX}/plugins/{{plugin_id}}/rating", tags=["catalogue"])
    def rate(plugin_id: str, body: RatingRequest, request: Request) -> dict[str, Any]:
        """Rate a plugin 1-5 (one rating per publisher; a new one replaces it)."""
        return registry.rate(plugin_id, principal(request), body.stars)

    def key_owner(request: Request, publisher: str) -> None:
        """Only the publisher itself (a publish token) or an admin token manages its keys."""
        who = principal(request)
        who.require("publish")
        if who.publisher != publisher and "admin" not in who.scopes:
            raise PermissionDenied(
                f"publisher {who.publisher!r} may not manage the keys of {publisher!r}",
                permission=f"publisher:{publisher}",
            )

    @app.post(f"{API_PREFIX}/publishers/{{publisher}}/keys", tags=["signing"], status_code=201)
    def add_key(publisher: str, body: PublisherKeyRequest, request: Request) -> dict[str, Any]:
        """Register a signing key (base64 of the raw Ed25519 key, or PEM) for a publisher."""
        key_owner(request, publisher)
        return {"publisher": publisher, **registry.add_publisher_key(publisher, body.public_key)}

    @app.get(f"{API_PREFIX}/publishers/{{publisher}}/keys", tags=["signing"])
    def list_keys(publisher: str) -> dict[str, Any]:
        """A publisher's signing keys, revoked ones included (public information)."""
        return {"publisher": publisher, "keys": registry.list_publisher_keys(publisher)}

    @app.delete(f"{API_PREFIX}/publishers/{{publisher}}/keys/{{keyid}}", tags=["signing"])
    def revoke_key(publisher: str, keyid: str, request: Request) -> dict[str, Any]:
        """Revoke a publisher's key: its signatures no longer count as the publisher's."""
        key_owner(request, publisher)
        return {"publisher": publisher, **registry.revoke_publisher_key(publisher, keyid)}

    tuf_repo: list[Any] = []  # the TufRepository, opened on first use

    def _tuf() -> Any:
        from ._tuf import TufRepository

        if not tuf_repo:
            if registry.data_dir is None or not TufRepository.exists(registry.data_dir):
                raise NotFoundError("this registry publishes no TUF metadata (an admin runs: "
                                    "corral registry tuf init --offline-keys DIR)")
            tuf_repo.append(TufRepository.open(registry.data_dir))
        return tuf_repo[0]

    def _send_tuf(repo: Any, path: Path, media_type: str, name: str) -> Response:
        """Small files from the repository's stat-checked memory cache, big ones streamed."""
        try:
            data = repo.served.read(path)
        except FileNotFoundError:
            raise NotFoundError(f"no TUF file {name!r}", file=name) from None
        if data is None:
            return FileResponse(path, media_type=media_type)
        return Response(data, media_type=media_type)

    # async on purpose: a cache hit is one stat, cheaper than a threadpool hop;
    # the rare re-signing (file lock, fsync) still runs in the threadpool
    @app.get("/tuf/metadata/{name}", tags=["tuf"], response_class=Response)
    async def tuf_metadata(name: str) -> Response:
        """TUF metadata: ``N.root.json``, ``timestamp.json``, ``N.snapshot.json``, bins."""
        repo = _tuf()
        if name == "timestamp.json" and repo.refresh_due():
            await run_in_threadpool(repo.refresh_if_due)
        return _send_tuf(repo, repo.metadata_path(name), "application/json", name)

    @app.get("/tuf/targets/{path:path}", tags=["tuf"], response_class=Response)
    async def tuf_target(path: str) -> Response:
        """A TUF target by its consistent name ``{dir}/{sha256}.{basename}``."""
        repo = _tuf()
        return _send_tuf(repo, repo.target_path(registry, path), "application/octet-stream",
                         path)

    return app


@contextlib.contextmanager
def _spooled(tmp_dir: Path | None) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".corral", dir=tmp_dir)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


@contextlib.contextmanager
def open_server(registry: Registry, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the API in a background thread; yield its base URL (for tests and benchmarks)."""

    import uvicorn

    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto is
    # IPPROTO_TCP, and without it every response (headers, then body: two writes)
    # stalls ~40 ms on Nagle + the client's delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        create_app(registry), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("registry server failed to start")
            threading.Event().wait(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def app_from_env() -> FastAPI:
    """An app over ``$CORRAL_REGISTRY_DATA`` / ``$CORRAL_REGISTRY_DB`` (uvicorn workers)."""
    data = os.environ.get("CORRAL_REGISTRY_DATA") or None
    db = os.environ.get("CORRAL_REGISTRY_DB") or None
    return create_app(Registry.open(data, db))



class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY set on each TCP connection.

    ``uvicorn --workers N`` binds its socket without ``IPPROTO_TCP``, so asyncio
    does not set TCP_NODELAY and each response waits ~40 ms on a delayed ACK.
    """

    def connection_made(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
