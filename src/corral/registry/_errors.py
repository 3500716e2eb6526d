"""Registry errors: subclasses of the corral tree, each with its HTTP status.

::

    UsageError            400  usage               (malformed query, bad field)
    ├── VersionExists     409  usage               (a version is never replaced)
    NotFoundError         404  not_found
    InvalidPluginError    422  invalid             (fails ``corral validate``)
    ├── UploadTooLarge    413  invalid
    PermissionDenied      403  permission_denied   (wrong namespace, missing scope)
    ├── Unauthenticated   401  permission_denied   (no, bad, expired or revoked token)
    PolicyDenied          403  policy_denied       (confusable with another's id)
    ServerUnavailable     503  unavailable         (database busy or down: retry later)
    ├── StorageFull       507  unavailable         (no space left on the data disk)
    RateLimited           429  unavailable         (too many attempts, posts or reports:
                                               Retry-After)
    CorralError           500  error               (the server's fault)

The JSON error codes stay those of the CLI contract, so that a client maps an
HTTP error back to the same exception class and exit code.
"""

from __future__ import annotations

from typing import Any

from corral._errors import (
    CorralError,
    InvalidPluginError,
    NotFoundError,
    PermissionDenied,
    PolicyDenied,
    SignatureInvalid,
    TransferError,
    UnavailableError,
    UsageError,
)

__all__ = [
    "RateLimited",
    "ServerUnavailable",
    "StorageFull",
    "Unauthenticated",
    "UploadTooLarge",
    "VersionExists",
    "error_from_dict",
    "http_status",
]


class VersionExists(UsageError):
    """That version of that plugin is already published; versions are immutable."""

    reason = "version_exists"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, reason="version_exists", **details)


class UploadTooLarge(InvalidPluginError):
    """The upload is over the server's size cap."""

    reason = "too_large"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, reason="too_large", **details)


class Unauthenticated(PermissionDenied):
    """No token, or a token that is unknown, expired or revoked."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, permission="token", **details)


class ServerUnavailable(TransferError):
    """The server cannot serve this now (database locked or unreachable): retry later."""

    reason = None  # the document says so by its HTTP status


class StorageFull(ServerUnavailable):
    """The registry's data disk (artifacts, temporary files or database) is full."""

    def __init__(self, message: str = "no space left on the registry's data disk",
                 **details: Any) -> None:
        super().__init__(message, reason="no_space", **details)


class RateLimited(UnavailableError):
    """Too many sign-in failures, reviews, posts or flags in a window; ``retry_after`` seconds."""

    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(message, reason="rate_limited", retry_after=self.retry_after,
                         **details)


_STATUS: tuple[tuple[type[CorralError], int], ...] = (
    (VersionExists, 409),
    (UsageError, 400),
    (NotFoundError, 404),
    (UploadTooLarge, 413),
    (InvalidPluginError, 422),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (PolicyDenied, 403),
    (SignatureInvalid, 403),
    (RateLimited, 429),
    (StorageFull, 507),
    (ServerUnavailable, 503),
)


def http_status(exc: CorralError) -> int:
    """The HTTP status that reports ``exc``."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


_BY_CODE: dict[str, type[CorralError]] = {
    "usage": UsageError,
    "not_found": NotFoundError,
    "invalid": InvalidPluginError,
    "policy_denied": PolicyDenied,
    "signature_invalid": SignatureInvalid,
    "unavailable": ServerUnavailable,
}


def error_from_dict(error: dict[str, Any], status: int) -> CorralError:
    """Rebuild the exception a server error document reports (client side)."""
    code = str(error.get("code", "error"))
    message = str(error.get("message", f"registry answered HTTP {status}"))
    details = {k: v for k, v in error.items() if k not in ("code", "message", "plugin")}
    plugin = error.get("plugin")
    plugin_id = str(plugin) if plugin is not None else None
    if code == "permission_denied":
        permission = str(details.pop("permission", "registry"))
        if status == 401:
            details.pop("permission", None)
            return Unauthenticated(message, plugin_id=plugin_id, **details)
        return PermissionDenied(message, permission=permission, plugin_id=plugin_id, **details)
    if status == 507:
        details.pop("reason", None)
        return StorageFull(message, plugin_id=plugin_id, **details)
    if status == 409:
        details.pop("reason", None)
        return VersionExists(message, plugin_id=plugin_id, **details)
    cls = _BY_CODE.get(code, CorralError)
    return cls(message, plugin_id=plugin_id, **details)
