"""``corral.git``: status, log and author statistics by running ``git``.

``git`` runs in ``ctx.workspace`` with an argument list (never a shell), a
timeout, ``LC_ALL=C`` and no terminal prompts.
"""

from __future__ import annotations
