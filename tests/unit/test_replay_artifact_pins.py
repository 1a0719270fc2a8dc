"""Node pins served by catalogued artifact versions in a replay (processors/replay/artifacts.py)."""

from __future__ import annotations

from typing import Any, cast

from foundation.settings import Settings
from node_workers.artifacts.publish import artifact_catalog_entry, manifest_digest
from node_workers.artifacts.worker import ArtifactService, ArtifactVersionNode
from node_workers.registry import default_registry
from processors.replay.artifacts import PinnedArtifacts, pinned_artifacts, unserved_pins
from processors.replay.recorded import (
    RecordedNode,
    RecordedResults,
    ServedLog,
    shadow_registry,
)
from schemas.models import NodeCatalogEntry
from tests.support.artifacts import make_artifact


class _Service:
    """Counts what the replay asks of the artifact service."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str | None]] = []
        self.closed = 0

    def load(self, digest: str, uri: str | None) -> Any:
        self.loads.append((digest, uri))

    def close(self) -> None:
        self.closed += 1


def _entry(name: str, version: str, **manifest: Any) -> NodeCatalogEntry:
    artifact = make_artifact(name, version, tests=None, **manifest)
    return artifact_catalog_entry(
        artifact, digest="sha256:" + "a" * 64, code_uri=f"s3://bucket/{name}-{version}.json"
    )


def test_only_pins_no_compiled_node_serves_need_the_catalog() -> None:
    nodes = default_registry()
    transform = next(node for node in nodes if node.name == "transform")
    pins = {"transform": transform.version, "acme.quote": "0.2.0", "http.request": "9.9.9"}
    assert unserved_pins(nodes, pins) == {"acme.quote": "0.2.0", "http.request": "9.9.9"}
    # Nothing to serve: no catalog read, no service (these settings reach no broker).
    pinned = pinned_artifacts(
        Settings(kafka_bootstrap="127.0.0.1:1"), nodes, {"transform": transform.version}
    )
    assert (pinned.nodes, pinned.service) == ([], None)
    assert pinned.registry(nodes).names() == nodes.names()


def test_pinned_artifact_versions_join_the_shadow_registry_with_their_manifests() -> None:
    service = _Service()
    draft = _entry("acme.quote", "0.2.0")
    effects = _entry("acme.notify", "1.3.0", side_effects=True)
    pinned = PinnedArtifacts(
        {"acme.quote@0.2.0": draft, "acme.notify@1.3.0": effects},
        cast(ArtifactService, service),
    )
    registry = pinned.registry(default_registry())
    quote = registry.get("acme.quote", 0)
    assert isinstance(quote, ArtifactVersionNode)  # the artifact worker's own node
    assert (quote.version, quote.entry) == ("0.2.0", draft)
    assert quote.manifest() == draft.manifest  # the shadow catalog gets the artifact's
    assert "transform" in {node.name for node in registry}

    # Effect modes as for compiled nodes: a side-effecting draft is answered from the record.
    shadow = shadow_registry(registry, RecordedResults(), ServedLog())
    assert isinstance(shadow.get("acme.notify", 1), RecordedNode)
    assert not isinstance(shadow.get("acme.quote", 0), RecordedNode)

    pinned.preload()
    assert sorted(service.loads) == sorted(
        (manifest_digest(e.manifest), e.code_uri) for e in (draft, effects)
    )
    pinned.close()
    pinned.close()
    assert service.closed == 1


def test_a_pinned_artifact_takes_the_place_of_the_node_serving_its_major() -> None:
    nodes = default_registry()
    http = next(node for node in nodes if node.name == "http.request")
    major = http.major
    other = _entry("http.request", f"{major}.99.0")
    registry = PinnedArtifacts({other.name: other}, cast(ArtifactService, _Service())).registry(
        nodes
    )
    assert registry.get("http.request", major).version == f"{major}.99.0"
    assert len(registry) == len(nodes)
