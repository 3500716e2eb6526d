"""The corral version: the host API version that ``requires-corral`` is checked against."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
