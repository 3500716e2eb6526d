"""The HTTP API: FastAPI routes over :class:`~._service.Registry`.

Every error is ``{"error": {"code", "message", ...}}`` with the status of
:func:`~._errors.http_status`; FastAPI's own validation errors and unknown
routes are translated to the same shape.  Server trouble is named, not hidden:
a full data disk answers 507, a busy or unreachable database 503, and no error
(not even an unexpected 500) closes a keep-alive connection or shows a server
path.  Control characters are refused in every path parameter, query parameter
and body field with 400 naming the field.  The OpenAPI document at
``/openapi.json`` lists every status each route answers; ``/docs`` and ``/redoc``
show it with no request leaving the registry (:mod:`._docs_ui`).  The community's
routes (accounts, reviews, discussions, moderation) come from :mod:`._community.api`.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import errno
import os
import re
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from corral._errors import CorralError, NotFoundError, PermissionDenied, UsageError
from corral._model.exposition import CONTENT_TYPE
from corral._version import __version__

from ._accounts import Principal
from ._community.api import add_community_routes
from ._community.service import Community
from ._docs_ui import add_docs_pages
from ._errors import RateLimited, ServerUnavailable, StorageFull, UploadTooLarge, http_status
from ._insights import Insights
from ._insights.routes import add_insights_routes
from ._metrics import RequestMetrics, RequestRecorder
from ._names import control_char_error
from ._search import SORTS, SearchParams
from ._service import Registry
from ._web import add_web_pages
from ._workers import die_with_parent

__all__ = ["API_PREFIX", "app_from_env", "create_app", "open_server"]

API_PREFIX: Final = "/v1"
#: Archives up to this size are read and sent in one go (bigger ones stream).
_SEND_INLINE: Final = 1024 * 1024
#: How long a search answer is reused (seconds).
SEARCH_TTL: Final = 1.0
#: Multipart framing allowed on top of the archive itself.
_FORM_OVERHEAD: Final = 64 * 1024


def _no_controls(value: str) -> str:
    bad = control_char_error(value, "value")
    if bad is not None:
        raise ValueError("control characters are not allowed")
    return value


def _no_controls_text(value: str) -> str:
    bad = control_char_error(value, "value", free_text=True)
    if bad is not None:
        raise ValueError("control characters (other than tab and newline) are not allowed")
    return value


#: Text without control characters (the OpenAPI document says so, the server enforces it).
_NO_CONTROLS: Final = r"^[^\x00-\x1f\x7f]*$"
_FREE_TEXT: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
#: One path segment naming a plugin, a version, a publisher, a key or a TUF file.
_SEGMENT: Final = r"^[A-Za-z0-9_][A-Za-z0-9._+!-]*$"
PluginId = Annotated[str, PathParam(pattern=_SEGMENT, max_length=128,
                                    description="namespace.name")]
VersionStr = Annotated[str, PathParam(pattern=_SEGMENT, max_length=64,
                                      description="a PEP 440 version")]
Publisher = Annotated[str, PathParam(pattern=_SEGMENT, max_length=64)]
KeyId = Annotated[str, PathParam(pattern=_SEGMENT, max_length=64)]
TufName = Annotated[str, PathParam(pattern=_SEGMENT, max_length=200)]
TufPath = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/+-]*$",
                                   max_length=400)]


class YankRequest(BaseModel):
    """Why a version is yanked (shown to whoever pins it)."""

    reason: Annotated[str, AfterValidator(_no_controls_text)] = Field(
        default="", max_length=500, json_schema_extra={"pattern": _FREE_TEXT})


class RatingRequest(BaseModel):
    """A 1-5 star rating."""

    stars: int = Field(ge=1, le=5)


class PublisherKeyRequest(BaseModel):
    """A signing key to register: base64 of the raw 32-byte Ed25519 key, or PEM."""

    public_key: Annotated[str, AfterValidator(_no_controls_text)] = Field(
        min_length=1, max_length=1000, json_schema_extra={"pattern": _FREE_TEXT})


class ErrorDetail(BaseModel):
    """What went wrong: a contract code, a sentence, and details such as ``field``."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


_MEANING: Final = {
    400: "Bad request: a malformed or invalid parameter, or a control character "
         "(`field` names it)",
    401: "No token, or an unknown, expired or revoked one",
    403: "Not allowed: scope, namespace membership, look-alike policy or signature",
    404: "No such plugin, version, publisher, key or file",
    409: "That version is already published (versions are immutable)",
    413: "The upload is over the registry's size limit",
    422: "The archive fails validation (as `corral validate` reports)",
    429: "Too many attempts or posts in a window: retry after `Retry-After` seconds",
    503: "The registry's database is busy or unreachable: retry later",
    507: "No space left on the registry's data disk",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the one error model."""
    return {code: {"model": ErrorResponse, "description": _MEANING[code]} for code in codes}


_READ: Final = (400, 404, 503)
_WRITE: Final = (400, 401, 403, 404, 503, 507)
_BINARY: Final = {"schema": {"type": "string", "format": "binary"}}


class _SearchCache:
    """Search responses kept for :data:`SEARCH_TTL` seconds (bounded, thread-safe).

    Under load the same popular queries repeat; answering them from memory keeps
    CPU for the rest.  Any write through this process's registry empties it at
    once; changes made through another worker or process show within the TTL.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple[Any, ...], tuple[float, bytes]] = (
            collections.OrderedDict())

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or time.monotonic() - hit[0] > SEARCH_TTL:
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), body)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class _TooLarge(MultiPartException):
    """Raised inside the multipart parser so that it closes its spooled files."""


def _server_fault(exc: BaseException) -> CorralError | None:
    """The named server-side cause of ``exc`` (disk full, database down), if known."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull()
        if isinstance(cur, (sa.exc.DBAPIError, sqlite3.Error)):
            text = str(cur).lower()
            state = getattr(getattr(cur, "orig", cur), "sqlstate", None)
            if ("disk is full" in text or "no space left" in text or state == "53100"
                    or "could not extend file" in text):
                return StorageFull()
            if isinstance(cur, sa.exc.DataError) or state in ("22021", "22P05"):
                return UsageError("a value the database cannot store "
                                  "(a NUL byte or invalid text)")
            if "database is locked" in text or "database is busy" in text:
                return ServerUnavailable("the registry's database is busy; retry shortly")
            if isinstance(cur, (sa.exc.OperationalError, sa.exc.InterfaceError)):
                return ServerUnavailable("the registry's database is unavailable; retry later")
        if isinstance(cur, sa.exc.TimeoutError):
            return ServerUnavailable("the registry is overloaded (no database connection "
                                     "free); retry shortly")
        cur = cur.__cause__ or cur.__context__
    return None


class _Guard:
    """Answer any exception the routes let through, without closing the connection.

    Starlette's last-resort handler re-raises after answering, and uvicorn then
    drops the keep-alive connection; this middleware answers and returns instead.
    """

    def __init__(self, app: ASGIApp, report: Any) -> None:
        self.app = app
        self.report = report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            await self.report(exc)(scope, receive, send)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def create_app(registry: Registry) -> FastAPI:
    """The FastAPI application serving ``registry`` (its name index is loaded first)."""
    registry.warm()
    roots = _private_roots(registry)

    def report(exc: BaseException) -> JSONResponse:
        """The error document and status for ``exc``, server paths removed."""
        err: CorralError
        if isinstance(exc, CorralError) and http_status(exc) != 500:
            err = exc
        else:
            err = _server_fault(exc) or CorralError("internal error in the registry")
        headers = {"Retry-After": "5"} if http_status(err) == 503 else None
        if isinstance(err, RateLimited):
            headers = {"Retry-After": str(err.retry_after)}
        doc = _scrub({"error": err.to_dict()}, roots)
        return JSONResponse(doc, status_code=http_status(err), headers=headers)

    async def no_controls(request: Request) -> None:
        """Refuse control characters in path and query parameters (400 naming them)."""
        for name, value in request.path_params.items():
            bad = control_char_error(str(value), name)
            if bad is not None:
                raise UsageError(bad[1], field=bad[0])
        for name, value in request.query_params.multi_items():
            bad = control_char_error(value, name) or control_char_error(name, "query")
            if bad is not None:
                raise UsageError(bad[1], field=bad[0])

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncGenerator[None, None]:
        yield
        # the server is stopping: write the download counts still in memory
        await run_in_threadpool(registry.downloads.flush)

    app = FastAPI(
        title="corral registry",
        version=__version__,
        description="Publish, find and download corral plugins.",
        dependencies=[Depends(no_controls)],
        lifespan=lifespan,
        docs_url=None,  # add_docs_pages: the same pages with their scripts served from here
        redoc_url=None,
    )
    add_docs_pages(app)
    app.add_middleware(_Guard, report=report)
    requests = RequestRecorder()
    app.add_middleware(RequestMetrics, recorder=requests)

    @app.get("/metrics", include_in_schema=False)
    def _metrics() -> Response:
        """Request counts and latencies per route template (Prometheus text)."""
        return Response(requests.exposition(), media_type=CONTENT_TYPE)
    searches = _SearchCache()
    plain_write = registry.write
    community = Community(registry)
    app.state.community = community  # the web pages call it too

    @contextlib.contextmanager
    def write_then_forget() -> Iterator[Any]:
        """Every committed write through this registry empties the search cache."""
        with plain_write() as conn:
            yield conn
        searches.clear()

    registry.write = write_then_forget  # type: ignore[method-assign]

    @app.exception_handler(CorralError)
    async def _corral_error(_request: Request, exc: CorralError) -> JSONResponse:
        return report(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        return report(UsageError(f"{first['field']}: {first['message']}",
                                 field=first["field"], problems=problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "usage"
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
            headers=exc.headers,  # 405 carries Allow
        )

    def principal(request: Request) -> Principal:
        return registry.authenticate(_bearer(request))

    @app.get(f"{API_PREFIX}/health", tags=["meta"], responses=_errors(400))
    def health() -> dict[str, Any]:
        """Liveness and versions."""
        return {"status": "ok", "version": __version__, "database": registry.engine.dialect.name}

    @app.get(f"{API_PREFIX}/search", tags=["catalogue"], response_class=JSONResponse,
             responses=_errors(400, 503))
    async def search_plugins(
        q: str = Query("", max_length=200, description="keywords, a name or an id",
                       pattern=_NO_CONTROLS),
        category: str | None = Query(None, max_length=64, pattern=_NO_CONTROLS),
        tag: str | None = Query(None, max_length=64, pattern=_NO_CONTROLS),
        author: str | None = Query(None, max_length=200, pattern=_NO_CONTROLS),
        min_rating: float | None = Query(None, ge=0, le=5),
        verified: bool | None = None,
        sort: Literal[SORTS] = Query("relevance", description="result order"),  # type: ignore[valid-type]
        page: int = Query(1, ge=1, le=10_000),
        per_page: int = Query(20, ge=1, le=100),
        updated_since: Annotated[dt.date | None,
                                 Query(description="updated on or after")] = None,
        corral: str | None = Query(None, max_length=32, pattern=_NO_CONTROLS,
                                   description="compatible with this corral version"),
    ) -> Response:
        """Search plugins; results in rank order with ``total`` matches."""
        since = (dt.datetime.combine(updated_since, dt.time(), dt.UTC)
                 if updated_since is not None else None)
        params = SearchParams(
            q=q, category=category, tag=tag, author=author, min_rating=min_rating,
            verified=verified, sort=sort, page=page, per_page=per_page,
            updated_since=since, corral=corral,
        )
        key = (q, category, tag, author, min_rating, verified, sort, page, per_page,
               updated_since, corral)
        # async on purpose: a cache hit is answered on the event loop, no thread hop
        body = searches.get(key)
        if body is None:
            body = await run_in_threadpool(search_body, params)
            searches.put(key, body)
        return Response(body, media_type="application/json")

    def search_body(params: SearchParams) -> bytes:
        # a plain JSONResponse: the document is already JSON-ready, skip re-validation
        return bytes(JSONResponse(registry.search(params)).body)

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}", tags=["catalogue"],
             response_class=JSONResponse, responses=_errors(*_READ))
    def plugin_info(plugin_id: PluginId) -> JSONResponse:
        """A plugin with every version: manifest, permissions, checksum, signature state."""
        return JSONResponse(registry.info(plugin_id))

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}", tags=["catalogue"],
             responses=_errors(*_READ))
    def version_info(plugin_id: PluginId, version: VersionStr) -> dict[str, Any]:
        """One version (yanked ones too: an exact pin still sees them)."""
        return registry.version_info(plugin_id, version)

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/resolve", tags=["catalogue"],
             responses=_errors(*_READ))
    def resolve(
        plugin_id: PluginId, spec: str = Query("", max_length=200, pattern=_NO_CONTROLS),
    ) -> dict[str, Any]:
        """The version to install for a PEP 440 specifier; yanked only when pinned exactly."""
        return registry.resolve(plugin_id, spec)

    def _send(plugin_id: str, version: str | None, request: Request) -> Response:
        found = registry.download(plugin_id, version)
        headers = {"X-Corral-Sha256": found.sha256, "X-Corral-Version": found.version}
        # a download with a user's token is that user's install (the proof a review needs)
        if community.record_download(_bearer(request), found.plugin_id, found.version):
            headers["X-Corral-Install-Recorded"] = "true"
        if found.size <= _SEND_INLINE:
            # small archives in this one thread hop: FileResponse's stat, open and
            # reads are each a hop through the shared thread pool, slow under load
            try:
                data = found.path.read_bytes()
            except FileNotFoundError:
                raise NotFoundError(f"artifact of {found.plugin_id} {found.version} "
                                    "is missing", plugin_id=found.plugin_id) from None
            headers["Content-Disposition"] = f'attachment; filename="{found.filename}"'
            return Response(data, media_type="application/zip", headers=headers)
        return FileResponse(found.path, media_type="application/zip",
                            filename=found.filename, headers=headers)

    download_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/zip": _BINARY}, "description": "The archive"},
        **_errors(*_READ),
    }

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/download", tags=["artifacts"],
             response_class=FileResponse, responses=download_responses)
    def download_latest(plugin_id: PluginId, request: Request) -> Response:
        """The newest non-yanked archive (counted as a download).

        With a user's bearer token (``cru_...``) the download is also recorded
        as that user's install (header ``X-Corral-Install-Recorded: true``).
        """
        return _send(plugin_id, None, request)

    @app.get(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}/download",
             tags=["artifacts"], response_class=FileResponse, responses=download_responses)
    def download_version(plugin_id: PluginId, version: VersionStr, request: Request) -> Response:
        """One version's archive, yanked or not (counted; with a user's token, an install)."""
        return _send(plugin_id, version, request)

    @app.post(
        f"{API_PREFIX}/publish",
        tags=["publishing"],
        status_code=201,
        responses={200: {"description": "These exact bytes are that version already (a "
                         "retry): the stored version, `created: false`"},
                   **_errors(400, 401, 403, 409, 413, 422, 503, 507)},
        openapi_extra={
            "security": [{"bearer": []}],
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
    async def publish(request: Request, response: Response) -> dict[str, Any]:
        """Publish a ``.corral`` archive (multipart field ``archive``; bearer token).

        201 for a new version; 200 when the same bytes were published before (a retry).
        """
        who = await run_in_threadpool(principal, request)
        who.require("publish")
        cap = registry.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise UsageError(f"bad Content-Length {length!r}", field="content-length")
        if length is not None and int(length) > cap + _FORM_OVERHEAD:
            raise UploadTooLarge(f"upload is {length} bytes, the limit is {cap}", limit=cap)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UsageError("publish takes a multipart/form-data body with the field "
                             "'archive'", field="content-type")

        async def capped() -> AsyncGenerator[bytes, None]:
            # the cap holds while streaming, chunked or not: never read past it
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > cap + _FORM_OVERHEAD:
                    raise _TooLarge("over the limit")
                yield chunk

        try:
            form = await MultiPartParser(request.headers, capped(), max_files=1,
                                         max_fields=4).parse()
        except _TooLarge:
            raise UploadTooLarge(f"upload is over the limit of {cap} bytes",
                                 limit=cap) from None
        except MultiPartException as exc:  # the client's malformed multipart body
            raise UsageError(f"malformed multipart body: {exc.message}") from None
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
                published = await run_in_threadpool(registry.publish, path, who)
                if not published.get("created", True):
                    response.status_code = 200
                return published
        finally:
            await form.close()

    auth: dict[str, Any] = {"security": [{"bearer": []}]}

    @app.post(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}/yank",
              tags=["publishing"], responses=_errors(*_WRITE), openapi_extra=auth)
    def yank(
        plugin_id: PluginId, version: VersionStr, request: Request, body: YankRequest | None = None
    ) -> dict[str, Any]:
        """Yank a version: hidden from resolution and ``latest`` unless pinned exactly."""
        return registry.set_yanked(
            plugin_id, version, principal(request), yanked=True,
            reason=body.reason if body else "",
        )

    @app.delete(f"{API_PREFIX}/plugins/{{plugin_id}}/versions/{{version}}/yank",
                tags=["publishing"], responses=_errors(*_WRITE), openapi_extra=auth)
    def unyank(plugin_id: PluginId, version: VersionStr, request: Request) -> dict[str, Any]:
        """Undo a yank."""
        return registry.set_yanked(plugin_id, version, principal(request), yanked=False)

    @app.post(f"{API_PREFIX}/plugins/{{plugin_id}}/rating", tags=["catalogue"],
              responses=_errors(*_WRITE), openapi_extra=auth)
    def rate(plugin_id: PluginId, body: RatingRequest, request: Request) -> dict[str, Any]:
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

    @app.post(f"{API_PREFIX}/publishers/{{publisher}}/keys", tags=["signing"], status_code=201,
              responses=_errors(*_WRITE), openapi_extra=auth)
    def add_key(
        publisher: Publisher, body: PublisherKeyRequest, request: Request,
    ) -> dict[str, Any]:
        """Register a signing key (base64 of the raw Ed25519 key, or PEM) for a publisher."""
        key_owner(request, publisher)
        return {"publisher": publisher, **registry.add_publisher_key(publisher, body.public_key)}

    @app.get(f"{API_PREFIX}/publishers/{{publisher}}/keys", tags=["signing"],
             responses=_errors(*_READ))
    def list_keys(publisher: Publisher) -> dict[str, Any]:
        """A publisher's signing keys, revoked ones included (public information)."""
        return {"publisher": publisher, "keys": registry.list_publisher_keys(publisher)}

    @app.delete(f"{API_PREFIX}/publishers/{{publisher}}/keys/{{keyid}}", tags=["signing"],
                responses=_errors(*_WRITE), openapi_extra=auth)
    def revoke_key(publisher: Publisher, keyid: KeyId, request: Request) -> dict[str, Any]:
        """Revoke a publisher's key: its signatures no longer count as the publisher's."""
        key_owner(request, publisher)
        return {"publisher": publisher, **registry.revoke_publisher_key(publisher, keyid)}

    add_community_routes(app, community, prefix=API_PREFIX, errors=_errors)

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
    @app.get("/tuf/metadata/{name}", tags=["tuf"], response_class=Response, responses={
        200: {"content": {"application/json": {"schema": {"type": "object"}}},
              "description": "A signed TUF metadata file"},
        **_errors(400, 404)})
    async def tuf_metadata(name: TufName) -> Response:
        """TUF metadata: ``N.root.json``, ``timestamp.json``, ``N.snapshot.json``, bins."""
        repo = _tuf()
        if name == "timestamp.json" and repo.refresh_due():
            await run_in_threadpool(repo.refresh_if_due)
        return _send_tuf(repo, repo.metadata_path(name), "application/json", name)

    @app.get("/tuf/targets/{path:path}", tags=["tuf"], response_class=Response, responses={
        200: {"content": {"application/octet-stream": _BINARY}, "description": "A target"},
        **_errors(400, 404)})
    async def tuf_target(path: TufPath) -> Response:
        """A TUF target by its consistent name ``{dir}/{sha256}.{basename}``."""
        repo = _tuf()
        return _send_tuf(repo, repo.target_path(registry, path), "application/octet-stream",
                         path)

    add_insights_routes(app, Insights(registry), API_PREFIX, _errors)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, made true: no 422 where none occurs, bearer auth declared."""
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version,
                              description=app.description, routes=app.routes)
            for ops in doc.get("paths", {}).values():
                for op in ops.values():
                    unprocessable = op.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(unprocessable):
                        del op["responses"]["422"]
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            doc["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.web = add_web_pages(app, registry)
    return app


def _private_roots(registry: Registry) -> list[str]:
    """Server directories that no error message may show, longest first."""
    roots = {tempfile.gettempdir()}
    for d in (registry.data_dir, registry.tmp_dir):
        if d is not None:
            roots.update({str(d), str(Path(d).absolute()), str(Path(d).resolve())})
    return sorted((r.rstrip("/") for r in roots if len(r) > 1), key=len, reverse=True)


def _scrub(doc: Any, roots: list[str]) -> Any:
    """``doc`` with server paths cut: a publish's unpacked file keeps its plugin path."""
    if isinstance(doc, str):
        for root in roots:
            if root in doc:
                doc = re.sub(re.escape(root) + r"(/[^\s'\",)]*)?", _relative, doc)
        return doc
    if isinstance(doc, dict):
        return {k: _scrub(v, roots) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_scrub(v, roots) for v in doc]
    return doc


def _relative(match: re.Match[str]) -> str:
    rest = match.group(1) or ""
    _, sep, inside = rest.partition("/plugin/")
    return inside if sep and inside else "<registry data>"


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
    """An app over ``$CORRAL_REGISTRY_DATA`` / ``$CORRAL_REGISTRY_DB`` (uvicorn workers).

    ``$CORRAL_REGISTRY_MAX_UPLOAD`` (bytes) carries ``serve --max-upload-mb`` to them.
    """
    die_with_parent()
    data = os.environ.get("CORRAL_REGISTRY_DATA") or None
    db = os.environ.get("CORRAL_REGISTRY_DB") or None
    cap = os.environ.get("CORRAL_REGISTRY_MAX_UPLOAD", "")
    registry = Registry.open(
        data, db, **({"max_upload_bytes": int(cap)} if cap.isdigit() else {}))
    registry.claim()  # the parent ``serve`` did the start-up repair
    registry.start_housekeeping()
    app = create_app(registry)
    app.state.insights.start_warming()  # the recommender, built before the first request
    return app



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
