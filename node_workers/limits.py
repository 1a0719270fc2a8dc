"""Worker limits the command line shows as defaults without loading the worker runtime."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_INLINE_OUTPUT_BYTES"]

DEFAULT_MAX_INLINE_OUTPUT_BYTES: Final = 256 * 1024
"""Outputs larger than this go to the object store, the result carries a reference."""
