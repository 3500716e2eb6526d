"""The corral version: the host API version that ``requires-corral`` is checked against."""

from __future__ import annotations

from typing import Final

__all__ = ["__version__"]

__version__: Final = "0.1.0"
