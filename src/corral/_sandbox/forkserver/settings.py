"""The fork server's environment variables, ``CORRAL_FORKSERVER_*``, read in one place.

An older spelling of a name still works, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import os
import warnings
from typing import Final

__all__ = ["forkserver_env"]

#: Old names of the variables, by their current name.
_OLD_NAMES: Final = {"CORRAL_FORKSERVER_SHARED": "CORRAL_SHARED_FORKSERVER"}


def forkserver_env(setting: str) -> str | None:
    """The value of ``CORRAL_FORKSERVER_<setting>`` (``SHARED``, ``IDLE``, ``ACCOUNTING``:
    ``0``: the host measures workers by their rusage only), or None.

    When only the variable's old name is set, its value counts, with a warning.
    """
    name = f"CORRAL_FORKSERVER_{setting}"
    value = os.environ.get(name)
    old = _OLD_NAMES.get(name)
    if value is None and old is not None and old in os.environ:
        warnings.warn(
            f"{old} is deprecated; set {name} instead", DeprecationWarning, stacklevel=2
        )
        value = os.environ[old]
    return value
