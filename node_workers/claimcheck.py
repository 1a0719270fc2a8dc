"""Claim checks for node params and outputs: large JSON payloads live in the object store.

Kafka records stay small (fast, under the broker's message limit); the record carries a
:class:`~schemas.models.PayloadRef` with the URI, size and SHA-256, and the reader verifies both
so a truncated or swapped blob fails loudly instead of feeding wrong data to a step.
These functions block (boto3); the runtime calls them in a thread.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from foundation.errors import NonRetryableError
from foundation.objectstore import BlobStore
from schemas.base import canonical_json
from schemas.models import NodeInvocation, PayloadRef

__all__ = [
    "JSON_CONTENT_TYPE",
    "PayloadCorruptError",
    "encode_json",
    "load_json",
    "output_key",
    "store_json",
]

JSON_CONTENT_TYPE: Final = "application/json"


class PayloadCorruptError(NonRetryableError):
    error_class = "PayloadCorrupt"


def encode_json(value: Any) -> bytes:
    """Canonical JSON bytes: the size that decides inlining and the bytes that get stored."""
    return canonical_json(value).encode()


def output_key(invocation: NodeInvocation) -> str:
    """One object per attempt, so a re-delivered invocation overwrites its own output only."""
    return (
        f"results/{invocation.run_id}/{invocation.step.step_id}/"
        f"{invocation.attempt}-{invocation.invocation_id}.json"
    )


def store_json(store: BlobStore, key: str, data: bytes) -> PayloadRef:
    uri = store.put(key, data, JSON_CONTENT_TYPE)
    return PayloadRef(
        uri=uri,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=JSON_CONTENT_TYPE,
    )


def load_json(store: BlobStore, ref: PayloadRef) -> Any:
    """The JSON value behind ``ref``, after checking its size and SHA-256."""
    data = store.get(ref.uri)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != ref.size_bytes or digest != ref.sha256:
        raise PayloadCorruptError(
            f"Expected {ref.uri} to hold {ref.size_bytes} bytes with sha256 {ref.sha256}, "
            f"but it holds {len(data)} bytes with sha256 {digest}"
        )
    try:
        return json.loads(data)
    except ValueError as exc:
        raise PayloadCorruptError(f"Expected JSON at {ref.uri}, but: {exc}") from exc
