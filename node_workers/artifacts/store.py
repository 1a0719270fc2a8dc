"""Artifacts in the object store, content-addressed: ``artifacts/sha256/<hex>.json``.

``put`` writes the canonical bytes under their own digest; a key already holding other bytes
is refused (nothing overwrites an artifact). ``get`` verifies the SHA-256 of the bytes it read
before anything parses or runs them: a tampered or corrupted object fails with
``ArtifactDigestMismatch``, never runs (ADR 0070).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from foundation.errors import NonRetryableError
from foundation.objectstore import BlobNotFoundError, BlobStore, S3BlobStore
from foundation.settings import Settings
from node_workers.artifacts.bundle import (
    DIGEST_PREFIX,
    NodeArtifact,
    artifact_bytes,
    artifact_digest,
    artifact_key,
    parse_artifact,
)

__all__ = [
    "ArtifactDigestMismatchError",
    "ArtifactStore",
    "StoredArtifact",
    "verify_digest",
]


class ArtifactDigestMismatchError(NonRetryableError):
    """Stored bytes that are not what their digest names (tampered, corrupted, overwritten)."""

    error_class = "ArtifactDigestMismatch"


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    digest: str
    uri: str
    """Where the object store has it (``s3://bucket/artifacts/sha256/<hex>.json``)."""
    created: bool
    """False when the same bytes were already stored."""


def verify_digest(data: bytes, digest: str, *, where: str) -> None:
    """Refuse ``data`` unless its SHA-256 is ``digest`` (pure)."""
    actual = DIGEST_PREFIX + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ArtifactDigestMismatchError(
            f"Expected the artifact at {where} to have digest {digest}, but its bytes have "
            f"{actual}; it was changed after it was stored and will not be run"
        )


class ArtifactStore:
    """Put and get artifacts by digest in ``blobs`` (URIs are ``uri_prefix`` + key)."""

    def __init__(self, blobs: BlobStore, uri_prefix: str) -> None:
        self.blobs = blobs
        self.uri_prefix = uri_prefix.rstrip("/") + "/"

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(S3BlobStore(settings), f"s3://{settings.s3_bucket}/")

    def uri(self, digest: str) -> str:
        return self.uri_prefix + artifact_key(digest)

    def _read(self, uri: str) -> bytes | None:
        try:
            return self.blobs.get(uri)
        except BlobNotFoundError:
            return None

    def put(self, artifact: NodeArtifact) -> StoredArtifact:
        data = artifact_bytes(artifact)
        digest = artifact_digest(artifact)
        uri = self.uri(digest)
        existing = self._read(uri)
        if existing is not None:
            if existing != data:
                raise ArtifactDigestMismatchError(
                    f"Expected {uri} to hold the artifact {digest} or nothing, but it holds "
                    "other bytes; refusing to overwrite a content-addressed object (check the "
                    "store for tampering)"
                )
            return StoredArtifact(digest, uri, created=False)
        stored = self.blobs.put(artifact_key(digest), data, "application/json")
        return StoredArtifact(digest, stored, created=True)

    def get(self, digest: str, uri: str | None = None) -> NodeArtifact:
        """The artifact with ``digest`` (from ``uri`` when given, e.g. the catalog's
        ``code_uri``), its bytes verified first."""
        where = uri or self.uri(digest)
        data = self.blobs.get(where)
        verify_digest(data, digest, where=where)
        artifact = parse_artifact(data)
        if artifact_digest(artifact) != digest:  # bytes that hash right but are not canonical
            raise ArtifactDigestMismatchError(
                f"Expected the artifact at {where} in canonical form with digest {digest}, but "
                f"it re-encodes to {artifact_digest(artifact)}"
            )
        return artifact
