"""``corral.updater``: compare installed plugin versions against a source of versions.

Today the source is given inline or as a JSON file in the workspace or the
plugin's data folder; the registry becomes one more source later.
"""

from __future__ import annotations
