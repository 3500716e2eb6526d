"""corral: a secure plugin platform for Python applications.

Names are imported on first use, so that ``import corral`` costs next to
nothing on the host application's start-up path.
"""

from __future__ import annotations

from corral._version import __version__

# Not ``typing.TYPE_CHECKING``: importing typing would double the cost of ``import corral``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from corral._errors import CorralError as CorralError
    from corral._errors import DeniedError as DeniedError
    from corral._errors import InvalidPluginError as InvalidPluginError
    from corral._errors import LifecycleError as LifecycleError
    from corral._errors import ManifestError as ManifestError
    from corral._errors import MissingExtra as MissingExtra
    from corral._errors import NotFoundError as NotFoundError
    from corral._errors import PermissionDenied as PermissionDenied
    from corral._errors import PluginError as PluginError
    from corral._errors import PluginFailedError as PluginFailedError
    from corral._errors import PluginTimeout as PluginTimeout
    from corral._errors import PolicyDenied as PolicyDenied
    from corral._errors import QuotaExceeded as QuotaExceeded
    from corral._errors import ResourceLimitExceeded as ResourceLimitExceeded
    from corral._errors import SignatureInvalid as SignatureInvalid
    from corral._errors import UsageError as UsageError
    from corral._errors import WorkerCrashed as WorkerCrashed
    from corral._host import Host as Host
    from corral._model.info import PluginInfo as PluginInfo
    from corral._model.lifecycle import State as State
    from corral._model.manifest import Manifest as Manifest
    from corral._model.manifest import load_manifest as load_manifest
    from corral._model.manifest import parse_manifest as parse_manifest
    from corral._model.permissions import Permissions as Permissions
    from corral._services.context import PluginContext as PluginContext

__all__ = [
    "CorralError",
    "DeniedError",
    "Host",
    "InvalidPluginError",
    "LifecycleError",
    "Manifest",
    "ManifestError",
    "MissingExtra",
    "NotFoundError",
    "PermissionDenied",
    "Permissions",
    "PluginContext",
    "PluginError",
    "PluginFailedError",
    "PluginInfo",
    "PluginTimeout",
    "PolicyDenied",
    "QuotaExceeded",
    "ResourceLimitExceeded",
    "SignatureInvalid",
    "State",
    "UnavailableError",
    "UnsupportedError",
    "UsageError",
    "WorkerCrashed",
    "__version__",
    "load_manifest",
    "parse_manifest",
]

_WHERE = {
    "PluginContext": "_services.context",
    "Host": "_host",
    "PluginInfo": "_model.info",
    "State": "_model.lifecycle",
    "Manifest": "_model.manifest",
    "load_manifest": "_model.manifest",
    "parse_manifest": "_model.manifest",
    "Permissions": "_model.permissions",
}


def __getattr__(name: str) -> Any:
    import importlib

    module = _WHERE.get(name)
    if module is None:
        if name in __all__:
            module = "_errors"
        else:
            raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"corral.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
