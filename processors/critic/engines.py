"""The critic's stream engines (``reflux critic --engine``), readable without loading it."""

from __future__ import annotations

__all__ = ["ENGINES"]

ENGINES = frozenset({"kafka", "faust"})
