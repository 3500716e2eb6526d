"""The corral error tree: every error carries its JSON error code and CLI exit code.

::

    CorralError                      error             exit 1
    ├── UsageError                   usage             exit 2
    │   └── LifecycleError           usage             exit 2  (illegal transition)
    ├── NotFoundError                not_found         exit 1
    ├── UnavailableError             unavailable       exit 1  (disk full, a service gone)
    │   ├── TransferError            unavailable       exit 1  (registry down, slow, cut off)
    │   └── MissingExtra             unavailable       exit 1  (an optional package not installed)
    ├── UnsupportedError             unsupported       exit 1  (the kernel cannot enforce it)
    ├── InvalidPluginError           invalid           exit 3
    │   ├── ManifestError            invalid           exit 3  (file, key path)
    │   └── ConflictError            invalid           exit 3  (unsatisfiable dependencies)
    ├── DeniedError                                    exit 4
    │   ├── PermissionDenied         permission_denied
    │   ├── PolicyDenied             policy_denied
    │   └── SignatureInvalid         signature_invalid
    └── PluginFailedError                              exit 5  (the plugin's fault)
        ├── PluginError              plugin_error      (an exception, with traceback)
        ├── PluginTimeout            timeout
        ├── ResourceLimitExceeded    resource_limit
        │   └── QuotaExceeded        resource_limit    (a quota over time, reason quota)
        └── WorkerCrashed            crashed

The CLI maps these to exit codes and ``{"error": {...}}`` documents; it never
invents codes of its own.  Foreign errors are chained with ``raise ... from``.
A class that shares its parent's code has a ``reason`` (written into the
document), so that :meth:`CorralError.from_dict` rebuilds the same class.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConflictError",
    "CorralError",
    "DeniedError",
    "InvalidPluginError",
    "LifecycleError",
    "ManifestError",
    "MissingExtra",
    "NotFoundError",
    "PermissionDenied",
    "PluginError",
    "PluginFailedError",
    "PluginTimeout",
    "PolicyDenied",
    "QuotaExceeded",
    "ResourceLimitExceeded",
    "SignatureInvalid",
    "TransferError",
    "UnavailableError",
    "UnsupportedError",
    "UsageError",
    "WorkerCrashed",
]


class CorralError(Exception):
    """Base of every error corral raises on purpose.

    :param message: a sentence naming what is wrong and where.
    :param plugin_id: the plugin concerned, when there is one.
    :param details: extra JSON-compatible fields for the ``--json`` error document.
    """

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1
    #: Tells this class from its parent of the same code in the JSON form.
    reason: ClassVar[str | None] = None
    #: Detail fields that are also attributes of the exception (restored by ``from_dict``).
    _attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, message: str, *, plugin_id: str | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.plugin_id = plugin_id
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the JSON error contract."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.plugin_id is not None:
            out["plugin"] = self.plugin_id
        for key, value in self.details.items():
            if value is not None:
                out[key] = value
        if self.reason is not None:
            out.setdefault("reason", self.reason)
        return out

    @classmethod
    def from_dict(cls, error: dict[str, Any]) -> CorralError:
        """The exception an ``error`` object reports: the class of its code and reason.

        The message is taken as it is (no prefix added again); an unknown code
        gives a plain :class:`CorralError` that keeps it.
        """
        code = str(error.get("code", "error"))
        reason = error.get("reason")
        chosen = _class_for(code, reason if isinstance(reason, str) else None)
        details = {k: v for k, v in error.items() if k not in ("code", "message", "plugin")}
        if chosen.reason is not None and details.get("reason") == chosen.reason:
            del details["reason"]
        plugin = error.get("plugin")
        exc = chosen.__new__(chosen)
        CorralError.__init__(exc, str(error.get("message", "")),
                             plugin_id=None if plugin is None else str(plugin), **details)
        for name in chosen._attributes:
            setattr(exc, name, details.get(name))
        if chosen is CorralError and code != CorralError.code:
            exc.details = {"code": code, **details}  # an unknown code is kept, not lost
        return exc


def _family(cls: type[CorralError]) -> list[type[CorralError]]:
    """``cls`` and every subclass loaded so far, parents before children."""
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(c for c in _family(sub) if c not in out)
    return out


def _class_for(code: str, reason: str | None) -> type[CorralError]:
    """The shallowest class of ``code`` with ``reason`` (or with none), core classes first."""
    candidates = [c for c in _family(CorralError) if c.code == code]
    candidates.sort(key=lambda c: (c.__module__ != __name__, len(c.__mro__)))
    for wanted in (reason, None):
        for c in candidates:
            if c.reason == wanted:
                return c
    return CorralError


class UsageError(CorralError):
    """The caller asked for something that makes no sense as asked."""

    code = "usage"
    exit_code = 2


class LifecycleError(UsageError):
    """An illegal lifecycle transition (enable a removed plugin, disable a needed one)."""

    reason = "lifecycle"


class NotFoundError(CorralError):
    """No plugin, export or file by that name."""

    code = "not_found"
    exit_code = 1


class InvalidPluginError(CorralError):
    """A plugin that cannot be accepted: bad archive, missing module, cycle, ..."""

    code = "invalid"
    exit_code = 3


class ManifestError(InvalidPluginError):
    """A ``corral.toml`` that breaks the manifest contract.

    The message reads ``FILE: KEY.PATH: what was expected, got what`` so that the
    author can go straight to the line.
    """

    reason = "manifest"
    _attributes = ("file", "key")

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        plugin_id: str | None = None,
        **details: Any,
    ) -> None:
        self.file = file
        self.key = key
        prefix = ""
        if file:
            prefix += f"{file}: "
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message, plugin_id=plugin_id, file=file, key=key, **details)


class ConflictError(InvalidPluginError):
    """No set of versions satisfies every requirement.

    ``conflicts`` lists, per clashing plugin, every requirer with its range and
    the chain of requirers back to what the user asked for.
    """

    reason = "conflict"


class UnavailableError(CorralError):
    """Something corral needs is full, gone or unreadable now: a disk, a server, a store."""

    code = "unavailable"


class TransferError(UnavailableError):
    """A registry could not be reached, was too slow, or cut the transfer short."""

    reason: ClassVar[str | None] = "transfer"  # a subclass may say it by other means


#: The extra of ``corral`` that installs each optional top-level package a verb may need.
EXTRA_OF: dict[str, str] = {
    "pytest": "pdk",
    "fastapi": "registry", "uvicorn": "registry", "sqlalchemy": "registry",
    "multipart": "registry", "psycopg": "registry", "rapidfuzz": "registry",
    "httpx": "registry",
    "keyring": "keyring",
    "rich": "monitor", "opentelemetry": "monitor",
}


class MissingExtra(UnavailableError):
    """An optional package a verb needs is not installed; ``extra`` names what installs it.

    The message ends with the command to run: ``pip install 'corral[pdk]'``.
    """

    reason = "missing_extra"
    _attributes = ("module", "extra")

    def __init__(self, message: str, *, module: str, extra: str,
                 plugin_id: str | None = None, **details: Any) -> None:
        self.module = module
        self.extra = extra
        super().__init__(message, plugin_id=plugin_id, module=module, extra=extra, **details)

    @classmethod
    def of(cls, module: str, extra: str, *, needed_by: str | None = None) -> MissingExtra:
        """The error saying ``module`` is missing and ``extra`` installs it."""
        what = f"{needed_by} needs the Python package {module!r}, which" if needed_by else (
            f"the Python package {module!r}")
        return cls(f"{what} is not installed: pip install 'corral[{extra}]'",
                   module=module, extra=extra)

    @classmethod
    def from_import(cls, exc: ImportError, *, needed_by: str | None = None) -> MissingExtra | None:
        """The error for a failed import of an optional package, or ``None`` for any other."""
        top = (exc.name or "").partition(".")[0]
        extra = EXTRA_OF.get(top)
        return None if extra is None else cls.of(top, extra, needed_by=needed_by)


class UnsupportedError(CorralError):
    """This machine cannot do what was asked: the kernel cannot enforce a sandbox feature.

    ``feature`` names it (``landlock``, ``seccomp-bpf``) or ``missing`` lists them.
    """

    code = "unsupported"


class DeniedError(CorralError):
    """Refused by a rule: a permission, a policy or a signature check."""

    exit_code = 4


class PermissionDenied(DeniedError):
    """A plugin used something its ``[permissions]`` do not grant.

    ``permission`` names the grant that was missing, as written in a manifest
    (``fs-write:/etc/passwd``, ``host-api:events.publish:git.push``).
    """

    code = "permission_denied"
    _attributes = ("permission",)

    def __init__(
        self, message: str, *, permission: str, plugin_id: str | None = None, **details: Any
    ) -> None:
        self.permission = permission
        super().__init__(message, plugin_id=plugin_id, permission=permission, **details)


class PolicyDenied(DeniedError):
    """A host or organisation policy refused the operation."""

    code = "policy_denied"


class SignatureInvalid(DeniedError):
    """A signature or integrity check failed."""

    code = "signature_invalid"


class PluginFailedError(CorralError):
    """The plugin itself failed; the host is fine."""

    exit_code = 5


class PluginError(PluginFailedError):
    """The plugin raised an exception; ``traceback`` holds its formatted traceback."""

    code = "plugin_error"


class PluginTimeout(PluginFailedError):
    """A call or hook ran past its wall-clock limit."""

    code = "timeout"


class ResourceLimitExceeded(PluginFailedError):
    """A resource limit was hit; ``limit`` names it, ``measured`` says how much was used."""

    code = "resource_limit"


class QuotaExceeded(ResourceLimitExceeded):
    """A quota over time is spent (docs/quotas.md): ``limit`` names it, ``quota`` is its cap,
    ``measured`` what its sliding ``window`` (seconds) holds, in ``unit``.

    Raised by the host before the plugin's code runs (or before its event is published).
    """

    reason = "quota"


class WorkerCrashed(PluginFailedError):
    """The plugin's worker process died (a signal or an unexpected exit)."""

    code = "crashed"
