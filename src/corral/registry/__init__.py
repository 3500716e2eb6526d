"""The corral plugin registry: a server application and its client.

A separate application over corral's model layer (manifest, archive,
validation); it never imports the host runtime.  Names are imported on first
use, so that ``import corral.registry`` does not pull in FastAPI, SQLAlchemy
or httpx.

- :class:`Registry` — storage, accounts, publish/yank/search (``_service``);
- :func:`create_app` — the FastAPI application (``_app``);
- :class:`RegistryClient` — the HTTP client (``client``);
- :func:`registry_main`, :func:`client_main` — CLI entry points (``corral._cli.registry``);
- :func:`seed` — load a catalogue TSV (``_seed``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral._cli.registry import client_main as client_main
    from corral._cli.registry import registry_main as registry_main

    from ._app import create_app as create_app
    from ._seed import seed as seed
    from ._service import Registry as Registry
    from .client import RegistryClient as RegistryClient

__all__ = [
    "Registry",
    "RegistryClient",
    "client_main",
    "create_app",
    "registry_main",
    "seed",
]

_WHERE = {
    "Registry": "._service",
    "RegistryClient": ".client",
    "client_main": "corral._cli.registry",
    "create_app": "._app",
    "registry_main": "corral._cli.registry",
    "seed": "._seed",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
