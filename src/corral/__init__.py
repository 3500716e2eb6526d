"""corral: a secure plugin platform for Python applications.

Names are imported on first use, so that ``import corral`` costs next to
nothing on the host application's start-up path.
"""

from __future__ import annotations

from ._version import __version__

# Not ``typing.TYPE_CHECKING``: importing typing would double the cost of ``import corral``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._context import PluginContext as PluginContext
    from ._errors import CorralError as CorralError
    from ._errors import DeniedError as DeniedError
    from ._errors import InvalidPluginError as InvalidPluginError
    from ._errors import LifecycleError as LifecycleError
    from ._errors import ManifestError as ManifestError
    from ._errors import NotFoundError as NotFoundError
    from ._errors import PermissionDenied as PermissionDenied
    from ._errors import PluginError as PluginError
    from ._errors import PluginFailedError as PluginFailedError
    from ._errors import PluginTimeout as PluginTimeout
    from ._errors import PolicyDenied as PolicyDenied
    from ._errors import ResourceLimitExceeded as ResourceLimitExceeded
    from ._errors import SignatureInvalid as SignatureInvalid
    from ._errors import UsageError as UsageError
    from ._errors import WorkerCrashed as WorkerCrashed
    from ._host import Host as Host
    from ._info import PluginInfo as PluginInfo
    from ._lifecycle import State as State
    from ._manifest import Manifest as Manifest
    from ._manifest import load_manifest as load_manifest
    from ._manifest import parse_manifest as parse_manifest
    from ._permissions import Permissions as Permissions

__all__ = [
    "CorralError",
    "DeniedError",
    "Host",
    "InvalidPluginError",
    "LifecycleError",
    "Manifest",
    "ManifestError",
    "NotFoundError",
    "PermissionDenied",
    "Permissions",
    "PluginContext",
    "PluginError",
    "PluginFailedError",
    "PluginInfo",
    "PluginTimeout",
    "PolicyDenied",
    "ResourceLimitExceeded",
    "SignatureInvalid",
    "State",
    "UsageError",
    "WorkerCrashed",
    "__version__",
    "load_manifest",
    "parse_manifest",
]

_WHERE = {
    "PluginContext": "_context",
    "Host": "_host",
    "PluginInfo": "_info",
    "State": "_lifecycle",
    "Manifest": "_manifest",
    "load_manifest": "_manifest",
    "parse_manifest": "_manifest",
    "Permissions": "_permissions",
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
