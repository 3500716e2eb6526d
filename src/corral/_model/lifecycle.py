"""The plugin lifecycle as an explicit, I/O-free state machine.

The host asks :func:`check_transition` before acting; an illegal transition
raises :class:`LifecycleError` with a message of its own.
"""

from __future__ import annotations

import enum
from typing import Final

from corral._errors import LifecycleError

__all__ = ["DURABLE_STATES", "State", "check_transition"]


class State(enum.Enum):
    """Where a plugin is in its life."""

    #: Found on disk or as an entry point, not yet registered with this host.
    DISCOVERED = "discovered"
    #: Recorded in the host database; none of its code has run.
    REGISTERED = "registered"
    #: Code imported (or worker ready) and ``on_load`` has run.
    LOADED = "loaded"
    #: ``on_enable`` has run; its exports may be called.
    ENABLED = "enabled"
    #: ``on_disable`` has run; calls are refused, code stays loaded.
    DISABLED = "disabled"
    #: ``on_unload`` has run and the code is released.
    UNLOADED = "unloaded"
    #: A hook or load failed; the error is recorded.  Enabling again recovers.
    FAILED = "failed"


#: States written to the host database; the others live only in one process.
DURABLE_STATES: Final = frozenset({State.REGISTERED, State.ENABLED, State.DISABLED, State.FAILED})

_ALLOWED: Final[dict[str, frozenset[State]]] = {
    "register": frozenset({State.DISCOVERED}),
    "load": frozenset({State.REGISTERED, State.UNLOADED, State.DISABLED, State.FAILED}),
    "enable": frozenset({State.LOADED, State.DISABLED}),
    "disable": frozenset({State.ENABLED}),
    "unload": frozenset({State.LOADED, State.DISABLED, State.FAILED}),
    "unregister": frozenset(
        {State.REGISTERED, State.LOADED, State.DISABLED, State.UNLOADED, State.FAILED}
    ),
}

_TARGET: Final = {
    "register": State.REGISTERED,
    "load": State.LOADED,
    "enable": State.ENABLED,
    "disable": State.DISABLED,
    "unload": State.UNLOADED,
    "unregister": State.DISCOVERED,
}

_WHY: Final[dict[tuple[str, State], str]] = {
    ("register", State.REGISTERED): "it is already registered",
    ("register", State.ENABLED): "it is already registered and enabled",
    ("disable", State.DISABLED): "it is already disabled",
    ("disable", State.REGISTERED): "it is not enabled",
    ("disable", State.LOADED): "it is loaded but not enabled",
    ("disable", State.FAILED): "it has failed; unload or enable it again",
    ("disable", State.UNLOADED): "it is unloaded",
    ("unload", State.ENABLED): "it is enabled; disable it first",
    ("unload", State.REGISTERED): "it was never loaded",
    ("unload", State.UNLOADED): "it is already unloaded",
    ("unregister", State.ENABLED): "it is enabled; disable it first",
    ("enable", State.ENABLED): "it is already enabled",
}


def check_transition(plugin_id: str, current: State, action: str) -> State:
    """Return the state ``action`` leads to from ``current``, or raise :class:`LifecycleError`."""
    allowed = _ALLOWED[action]
    if current in allowed:
        return _TARGET[action]
    if current is State.DISCOVERED:
        why = "it is not registered"
    else:
        why = _WHY.get((action, current), f"it is {current.value}")
    raise LifecycleError(
        f"cannot {action} {plugin_id}: {why}", plugin_id=plugin_id, state=current.value
    )
