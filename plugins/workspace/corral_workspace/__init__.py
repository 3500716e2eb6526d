"""``corral.workspace``: find and summarise the files of the workspace.

Every path is read only beneath ``ctx.workspace``; a path that escapes it is
refused with a :class:`ValueError` that names it.
"""

from __future__ import annotations
