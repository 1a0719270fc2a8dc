"""Step cache keys: ``sha256(node, version, canonical params)``.

The key names *what would run*, not where: two runs (or two workflows) calling the same node
version with the same params share a cache entry. The runtime stores entries in Redis.
"""

from __future__ import annotations

import hashlib
from typing import Any

from schemas.base import canonical_json

__all__ = ["cache_key", "params_digest"]


def cache_key(node: str, version: str, params: Any) -> str:
    """Hex sha256 over canonical JSON of ``[node, version, params]`` (unambiguous framing)."""
    payload = canonical_json([node, version, params]).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def params_digest(params: Any) -> str:
    """Hex sha256 of canonical params (``Trace.inputs_hash`` style, idempotency keys)."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()
