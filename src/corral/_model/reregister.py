"""Registering a plugin id that is already registered: nothing to do, an upgrade, or a refusal.

Pure rules, so that an application may call ``register`` on every start: the
same id, version and files from the same source are a no-op, a newer version
from the same source upgrades in place, anything else is refused with the
command that resolves it.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from corral._errors import InvalidPluginError

__all__ = ["Again", "Registration", "judge_again"]


class Again(Enum):
    """What registering a registered plugin again does."""

    SAME = "same"  # nothing: return the existing record
    UPGRADE = "upgrade"  # replace its code in place, keep its state


class Registration(NamedTuple):
    """Where a plugin comes from and what it holds: the facts compared."""

    version: str
    origin: str  # the folder or archive the user named, absolute
    digest: str  # the content hash of its tree ("" if not known)
    linked: bool  # runs from ``origin`` itself (``add --link``)


def judge_again(plugin_id: str, old: Registration, new: Registration, *, live: bool) -> Again:
    """What registering ``new`` over the registered ``old`` means, or the refusal.

    ``live``: the plugin runs from its origin itself (linked, or registered in place),
    so at the same version its files are its current code whatever they hold.

    Raises:
        InvalidPluginError: another source, another way (linked or copied), an older
            version, or the same version with different files; its message says
            exactly what to run.
    """
    from packaging.version import Version  # deferred: ~2 ms that `import corral` need not pay

    add = f"corral add {'--link ' if new.linked else ''}{new.origin}"
    remove = f"`corral remove {plugin_id}` (or Host.unregister({plugin_id!r}))"
    if new.origin != old.origin:
        raise InvalidPluginError(
            f"a plugin with id {plugin_id!r} is already registered from {old.origin} "
            f"(version {old.version}); "
            f"to register it from {new.origin} instead, run {remove} first, then `{add}`",
            plugin_id=plugin_id, path=new.origin, registered_from=old.origin,
        )
    if new.linked != old.linked:
        how = "linked" if old.linked else "copied"
        raise InvalidPluginError(
            f"{plugin_id!r} is already registered from {new.origin} ({how}); to register it "
            f"{'linked' if new.linked else 'as a copy'}, run {remove} first, then `{add}`",
            plugin_id=plugin_id, path=new.origin, registered_from=old.origin,
        )
    old_v, new_v = Version(old.version), Version(new.version)
    if new_v > old_v:
        return Again.UPGRADE
    if new_v < old_v:
        raise InvalidPluginError(
            f"{plugin_id} {old.version} is registered; {new.origin} holds the older "
            f"{new.version}; to go back, run {remove} first, then `{add}`",
            plugin_id=plugin_id, path=new.origin, version=new.version,
            registered_version=old.version,
        )
    if live or not old.digest or new.digest == old.digest:
        return Again.SAME
    raise InvalidPluginError(
        f"{plugin_id!r} {old.version} is already registered from {new.origin} with other files; "
        f"bump plugin.version in its corral.toml to upgrade it in place, or run {remove} "
        f"first, then `{add}`",
        plugin_id=plugin_id, path=new.origin, version=new.version,
    )
