"""Register an artifact as a node version: store it by digest, publish its catalog entry.

The catalog manifest is the one every node has (``Node.manifest()``: name, version,
description, flags, input/output JSON Schemas) plus what the artifact worker needs without
fetching the code -- ``idempotent``, ``egress``, ``secrets``, ``limits`` -- and
``"artifact": {"digest", "format"}``; ``code_uri`` is the stored object. The digest in the
manifest is what the worker loads and verifies, so a catalog entry names exactly one code.

Immutability (ADR 0070): a (name, version) the catalog has with another digest -- or as a
compiled node -- is refused (``ArtifactImmutable``: ship a new version). The same artifact
again is accepted and changes nothing (its status, promoted or not, stays).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.artifacts.bundle import ARTIFACT_FORMAT, NodeArtifact, artifact_digest
from node_workers.artifacts.store import ArtifactStore
from node_workers.registration import read_catalog_entries
from schemas.models import NodeCatalogEntry, NodeStatus
from streams.admin import create_missing_topics
from streams.producer import Producer
from streams.topics import TopicCatalog
from workflows.semver import Version

__all__ = [
    "ArtifactImmutableError",
    "PublishedArtifact",
    "artifact_catalog_entry",
    "catalog_manifest",
    "check_immutable",
    "manifest_digest",
    "publish_artifact",
]

log = logging.getLogger(__name__)


class ArtifactImmutableError(NonRetryableError):
    error_class = "ArtifactImmutable"


@dataclass(frozen=True, slots=True)
class PublishedArtifact:
    digest: str
    code_uri: str
    name: str
    version: str
    status: str = NodeStatus.DRAFT.value
    created: bool = True
    """False when the catalog already had this very artifact (nothing was published)."""


def catalog_manifest(artifact: NodeArtifact, digest: str | None = None) -> dict[str, Any]:
    """The catalog manifest of an artifact node (pure; see the module docstring)."""
    m = artifact.manifest
    return {
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "cacheable": False,  # code may read the clock or call out: never served from a cache
        "side_effects": m.side_effects,
        "pure": False,
        "idempotent": m.idempotent,
        "input_schema": m.input_schema,
        "output_schema": m.output_schema,
        "egress": list(m.egress),
        "secrets": list(m.secrets),
        "limits": m.limits.model_dump(mode="json"),
        "artifact": {"digest": digest or artifact_digest(artifact), "format": ARTIFACT_FORMAT},
    }


def manifest_digest(manifest: Any) -> str | None:
    """The artifact digest a catalog manifest names, or None for a compiled node."""
    if not isinstance(manifest, dict):
        return None
    artifact = manifest.get("artifact")
    if not isinstance(artifact, dict):
        return None
    digest = artifact.get("digest")
    return digest if isinstance(digest, str) else None


def check_immutable(key: str, existing_manifest: Any, digest: str) -> bool:
    """True when the catalog already has this artifact under ``key``; raises
    :class:`ArtifactImmutableError` when it has something else there (pure)."""
    registered = manifest_digest(existing_manifest)
    if registered == digest:
        return True
    what = f"artifact {registered}" if registered else "a compiled node"
    raise ArtifactImmutableError(
        f"Expected {key} to be new or the same artifact {digest}, but the catalog has {what} "
        "there; a registered version never changes: supersede with a new version"
    )


def artifact_catalog_entry(
    artifact: NodeArtifact,
    *,
    digest: str,
    code_uri: str,
    tenant: str = DEFAULT_TENANT,
    status: NodeStatus = NodeStatus.DRAFT,
    rollout_weight: float = 0.0,
) -> NodeCatalogEntry:
    return NodeCatalogEntry(
        name=artifact.manifest.name,
        version=artifact.manifest.version,
        status=status,
        rollout_weight=rollout_weight,
        manifest=catalog_manifest(artifact, digest),
        code_uri=code_uri,
        tenant=tenant,
    )


def publish_artifact(
    settings: Settings,
    artifact: NodeArtifact,
    *,
    tenant: str = DEFAULT_TENANT,
    status: NodeStatus = NodeStatus.DRAFT,
    rollout_weight: float = 0.0,
    store: ArtifactStore | None = None,
    producer: Producer | None = None,
    catalog: TopicCatalog | None = None,
) -> PublishedArtifact:
    """Store ``artifact`` by digest, create its major's invoke topic, publish its catalog
    entry (blocking). Does not run its tests: callers do (the API, the forge)."""
    catalog = catalog or TopicCatalog.from_settings(settings)
    store = store or ArtifactStore.from_settings(settings)
    m = artifact.manifest
    digest = artifact_digest(artifact)
    existing = read_catalog_entries(settings, catalog).get(artifact.node_key)
    if existing is not None and check_immutable(artifact.node_key, existing.manifest, digest):
        return PublishedArtifact(
            digest,
            existing.code_uri or store.uri(digest),
            m.name,
            m.version,
            existing.status.value,
            created=False,
        )
    stored = store.put(artifact)
    create_missing_topics(
        [catalog.invoke_topic(m.name, Version.parse(m.version).major)], settings=settings
    )
    entry = artifact_catalog_entry(
        artifact,
        digest=digest,
        code_uri=stored.uri,
        tenant=tenant,
        status=status,
        rollout_weight=rollout_weight,
    )
    own = producer is None
    producer = producer or Producer(settings, client_id="reflux-artifact-publish")
    try:
        producer.send(catalog.nodes, artifact.node_key, entry)
        producer.flush(30)
    finally:
        if own:
            producer.close()
    log.info("registered artifact %s (%s) as %s", artifact.node_key, digest, status.value)
    return PublishedArtifact(digest, stored.uri, m.name, m.version, status.value)
