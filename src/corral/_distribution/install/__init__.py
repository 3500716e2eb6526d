"""Installing plugins into a home: sources of archives, the store, checks, generations, updates.

The public face is :class:`Installer`; ``corral._cli.install`` drives it.
"""

from corral._distribution.install.installer import (
    Change,
    DirectorySource,
    Installer,
    Progress,
    UpdateResult,
    full_grants,
    open_source,
    permission_changes,
)

__all__ = [
    "Change",
    "DirectorySource",
    "Installer",
    "Progress",
    "UpdateResult",
    "full_grants",
    "open_source",
    "permission_changes",
]
