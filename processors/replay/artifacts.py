"""Node pins to artifact versions: the shadow serves a catalogued artifact (e.g. a forge draft).

A replay candidate's ``node_pins`` name exact versions. A pin no compiled node serves is looked
up in the production node catalog (the compacted ``nodes`` topic, read as the artifact worker
reads it): when the catalog has that version as an artifact (its manifest names a digest), the
shadow serves it with the artifact worker's own node -- :class:`ArtifactVersionNode` over an
:class:`ArtifactService`: load by digest and verify, input/output schema checks, the manifest's
secrets only, the ``code.run`` sandbox, the egress proxy -- the code path of
``reflux worker --artifacts``. So the candidate's steps of that node run the draft's code, while
the baseline is the recorded run. The replay's effect policy applies as to any node: a draft
that declares side effects is answered from the record unless the caller asks ``live``
(:func:`processors.replay.recorded.shadow_registry` wraps it like a compiled node).
docs/replay.md, docs/decisions/0071-forge.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from foundation.tenancy import PLATFORM_TENANT
from node_workers.artifacts.publish import manifest_digest
from node_workers.artifacts.worker import ArtifactService, ArtifactVersionNode
from node_workers.node import AnyNode
from node_workers.registration import read_catalog_entries
from node_workers.registry import NodeRegistry
from schemas.models import NodeCatalogEntry
from streams.topics import TopicCatalog

__all__ = [
    "PinnedArtifactNode",
    "PinnedArtifacts",
    "UnservedPinError",
    "pinned_artifacts",
    "unserved_pins",
]


class UnservedPinError(NonRetryableError):
    """A pin neither a compiled node nor a catalogued artifact version serves."""

    error_class = "InvalidReplay"


def unserved_pins(nodes: NodeRegistry, pins: Mapping[str, str]) -> dict[str, str]:
    """The pins no node of ``nodes`` serves at that exact version (pure)."""
    served = {(node.name, node.version) for node in nodes}
    return {name: version for name, version in pins.items() if (name, version) not in served}


class PinnedArtifactNode(ArtifactVersionNode):
    """The artifact worker's node for one version, publishing the artifact's own catalog
    manifest (its schemas, side-effect flag and digest) to the shadow catalog rather than the
    generic any-object one of :class:`ArtifactVersionNode`."""

    def __init__(self, entry: NodeCatalogEntry, service: ArtifactService) -> None:
        super().__init__(entry.name, entry.version, entry, service)
        self.catalog_manifest = dict(entry.manifest)

    def manifest(self) -> dict[str, Any]:
        return dict(self.catalog_manifest)


class PinnedArtifacts:
    """The artifact nodes serving a candidate's pins, and the one service they share (its
    sandbox runner and thread pool: :meth:`close` when the replay round is over)."""

    def __init__(
        self, entries: Mapping[str, NodeCatalogEntry], service: ArtifactService | None
    ) -> None:
        self.entries = dict(entries)
        self.service = service
        self.nodes: list[AnyNode] = []
        if service is not None:
            for entry in self.entries.values():
                self.nodes.append(PinnedArtifactNode(entry, service))

    def registry(self, nodes: NodeRegistry) -> NodeRegistry:
        """``nodes`` with each pinned artifact version in place of whatever served its major."""
        mine = {(node.name, node.major) for node in self.nodes}
        return NodeRegistry(
            [
                *(node for node in nodes if (node.name, node.major) not in mine),
                *self.nodes,
            ]
        )

    def preload(self) -> None:
        """Fetch and verify every pinned artifact now: a tampered or missing one fails the
        replay before anything runs, and the attempts (maybe in forked fold processes) read the
        service's cache instead of the object store."""
        if self.service is None:
            return
        for entry in self.entries.values():
            digest = manifest_digest(entry.manifest)
            assert digest is not None  # pinned_artifacts keeps artifact entries only
            self.service.load(digest, entry.code_uri)

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
            self.service = None


def pinned_artifacts(
    settings: Settings,
    nodes: NodeRegistry,
    pins: Mapping[str, str],
    *,
    tenant: str | None = None,
) -> PinnedArtifacts:
    """The catalogued artifact versions serving the pins ``nodes`` does not serve; raises
    :class:`UnservedPinError` (naming the pin and what is served) for a pin nothing serves.
    ``tenant``: the recorded runs' tenant; only its artifacts and the platform's are served
    (what the API lets that tenant see and use). Reads the catalog only when a pin needs it."""
    wanted = unserved_pins(nodes, pins)
    if not wanted:
        return PinnedArtifacts({}, None)
    visible = None if tenant is None else {tenant, PLATFORM_TENANT}
    entries = read_catalog_entries(settings, TopicCatalog.from_settings(settings))
    catalog = {
        key: entry
        for key, entry in entries.items()
        if manifest_digest(entry.manifest) is not None
        and (visible is None or entry.tenant in visible)
    }
    found: dict[str, NodeCatalogEntry] = {}
    for name, version in sorted(wanted.items()):
        entry = catalog.get(f"{name}@{version}")
        if entry is None:
            compiled = sorted(node.key for node in nodes if node.name == name)
            artifacts = sorted(key for key, e in catalog.items() if e.name == name)
            raise UnservedPinError(
                f"candidate.node_pins.{name}: expected a version the shadow workers serve "
                f"({compiled}) or an artifact version in the node catalog ({artifacts}), but "
                f"got {version!r}"
            )
        found[f"{name}@{version}"] = entry
    return PinnedArtifacts(found, ArtifactService.from_settings(settings))
