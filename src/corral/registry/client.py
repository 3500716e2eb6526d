"""``RegistryClient``: talk to a corral registry over HTTP (httpx).

Server errors come back as the same :class:`~corral.CorralError` subclasses
the server raised (by their JSON ``code`` and HTTP status), so a caller and
the CLI handle a remote failure exactly like a local one.  Transport failures
(connection refused, timeouts) raise a plain :class:`~corral.CorralError`
naming the registry URL, chained from the httpx error.

Example::

    with RegistryClient("http://127.0.0.1:8470") as reg:
        hits = reg.search("run tests in parallel")["results"]
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Final, final
from urllib.parse import quote

import httpx

from corral._errors import SignatureInvalid, TransferError

from ._errors import error_from_dict

__all__ = ["DEFAULT_REGISTRY", "RegistryClient", "registry_url"]

DEFAULT_REGISTRY: Final = "http://127.0.0.1:8470"


def registry_url(url: str | None = None) -> str:
    """``url``, else ``$CORRAL_REGISTRY``, else :data:`DEFAULT_REGISTRY`."""
    return (url or os.environ.get("CORRAL_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def _q(part: str) -> str:
    return quote(part, safe="")


@final
class RegistryClient:
    """A synchronous client; use it as a context manager or call :meth:`close`."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 *, timeout: float = 30.0) -> None:
        self.url = registry_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/v1", headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise TransferError(f"cannot reach the registry at {self.url}: {exc}",
                              registry=self.url) from exc
        if response.is_error:
            try:
                doc = response.json()
                error = doc["error"]
                if not isinstance(error, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise TransferError(
                    f"registry at {self.url} answered HTTP {response.status_code}",
                    status=response.status_code,
                ) from None
            raise error_from_dict(error, response.status_code)
        return response

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        doc = self._request(method, path, **kw).json()
        if not isinstance(doc, dict):
            raise TransferError(f"registry at {self.url} sent a non-object JSON document")
        return doc

    def search(self, query: str = "", *, category: str | None = None, tag: str | None = None,
               author: str | None = None, min_rating: float | None = None,
               verified: bool | None = None, sort: str = "relevance", page: int = 1,
               per_page: int = 20) -> dict[str, Any]:
        """``{"results": [...], "total": N, ...}`` in rank order."""
        params: dict[str, Any] = {"q": query, "sort": sort, "page": page, "per_page": per_page}
        for key, value in (("category", category), ("tag", tag), ("author", author),
                           ("min_rating", min_rating)):
            if value is not None:
                params[key] = value
        if verified is not None:
            params["verified"] = "true" if verified else "false"
        return self._json("GET", "/search", params=params)

    def show(self, plugin_id: str) -> dict[str, Any]:
        """A plugin with all its versions."""
        return self._json("GET", f"/plugins/{_q(plugin_id)}")

    def resolve(self, plugin_id: str, spec: str = "") -> dict[str, Any]:
        """The version to install for ``spec`` (PEP 592: yanked only if pinned)."""
        return self._json("GET", f"/plugins/{_q(plugin_id)}/resolve", params={"spec": spec})

    def download(self, plugin_id: str, dest: Path, version: str | None = None) -> Path:
        """Download an archive into ``dest`` (a directory or a file path), checking sha256."""
        path = (f"/plugins/{_q(plugin_id)}/versions/{_q(version)}/download" if version
                else f"/plugins/{_q(plugin_id)}/download")
        response = self._request("GET", path)
        dest = Path(dest)
        if dest.is_dir():
            name = response.headers.get("content-disposition", "").rpartition("filename=")[2]
            name = name.strip('"') or f"{plugin_id}.corral"
            dest = dest / Path(name).name
        expected = response.headers.get("x-corral-sha256")
        data = response.content
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise SignatureInvalid(f"{plugin_id}: downloaded archive does not match its sha256",
                                   plugin_id=plugin_id)
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.write_bytes(data)
        tmp.replace(dest)
        return dest

    def publish(self, archive: Path) -> dict[str, Any]:
        """Upload an archive; returns the published version (and warnings)."""
        archive = Path(archive)
        try:
            fp = archive.open("rb")
        except OSError as exc:
            from corral._errors import NotFoundError

            raise NotFoundError(f"{archive}: cannot open ({exc.strerror})") from exc
        with fp:
            files = {"archive": (archive.name, fp, "application/zip")}
            return self._json("POST", "/publish", files=files)

    def yank(self, plugin_id: str, version: str, reason: str = "") -> dict[str, Any]:
        """Yank a version (PEP 592)."""
        return self._json("POST", f"/plugins/{_q(plugin_id)}/versions/{_q(version)}/yank",
                          json={"reason": reason})

    def unyank(self, plugin_id: str, version: str) -> dict[str, Any]:
        """Undo a yank."""
        return self._json("DELETE", f"/plugins/{_q(plugin_id)}/versions/{_q(version)}/yank")

    def rate(self, plugin_id: str, stars: int) -> dict[str, Any]:
        """Rate a plugin 1-5."""
        return self._json("POST", f"/plugins/{_q(plugin_id)}/rating", json={"stars": stars})

    def add_key(self, publisher: str, public_key: str) -> dict[str, Any]:
        """Register a signing key (base64 raw or PEM) for ``publisher`` (its token or admin)."""
        return self._json("POST", f"/publishers/{_q(publisher)}/keys",
                          json={"public_key": public_key})

    def list_keys(self, publisher: str) -> list[dict[str, Any]]:
        """``publisher``'s signing keys, revoked ones included."""
        keys = self._json("GET", f"/publishers/{_q(publisher)}/keys").get("keys", [])
        return [k for k in keys if isinstance(k, dict)]

    def revoke_key(self, publisher: str, keyid: str) -> dict[str, Any]:
        """Revoke one of ``publisher``'s signing keys."""
        return self._json("DELETE", f"/publishers/{_q(publisher)}/keys/{_q(keyid)}")

    def recommend(self, with_ids: list[str], *, limit: int = 10,
                  corral_version: str | None = None) -> dict[str, Any]:
        """``{"recommendations": [{"id", "score", "reasons"}]}`` for a set of plugin ids."""
        params: dict[str, Any] = {"with": ",".join(with_ids), "limit": limit}
        if corral_version:
            params["corral"] = corral_version
        return self._json("GET", "/recommendations", params=params)

    def send_report(self, body: bytes) -> dict[str, Any]:
        """Post an opt-in usage report, these exact bytes (``corral analytics send``)."""
        return self._json("POST", "/reports", content=body,
                          headers={"Content-Type": "application/json"})
