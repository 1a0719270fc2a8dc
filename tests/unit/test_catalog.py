"""Node catalog, pure parts: lifecycle transitions, the projection's applier, API validation
merge, and the worker registration's artifacts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from api.errors import RequestInvalidError
from api.validation import merged_catalog, parse_definition
from foundation.errors import NonRetryableError
from node_workers.registration import catalog_entry, manifest_key
from node_workers.registry import default_registry
from processors.node_catalog import (
    TransitionError,
    catalog_key,
    check_weight,
    deprecated,
    promoted,
    reweighted,
)
from projections.postgres.appliers import (
    NODE_EVENT_TYPES,
    InvalidCatalogEntryError,
    node_category,
    node_id,
    node_version_id,
    plan,
)
from projections.postgres.migrations import load_migrations
from schemas.models import NodeCatalogEntry, NodeStatus
from workflows.node_catalog import StaticNodeCatalog

P, S, D, X = NodeStatus.PRODUCTION, NodeStatus.STAGING, NodeStatus.DRAFT, NodeStatus.DEPRECATED

# -- transitions ---------------------------------------------------------------------------------


def test_promotion_walks_draft_staging_production() -> None:
    assert promoted("echo@1.0.0", D) is S
    assert promoted("echo@1.0.0", S) is P


@pytest.mark.parametrize("status", [P, X])
def test_promotion_beyond_production_is_refused(status: NodeStatus) -> None:
    with pytest.raises(TransitionError) as caught:
        promoted("echo@1.0.0", status)
    assert str(caught.value) == (
        f"Expected echo@1.0.0 to be draft or staging to promote it, but it is {status.value}"
    )
    assert isinstance(caught.value, NonRetryableError)


@pytest.mark.parametrize("status", [D, S, P])
def test_any_live_version_can_be_deprecated_once(status: NodeStatus) -> None:
    assert deprecated("echo@1.0.0", status) is X
    with pytest.raises(TransitionError, match="but it is deprecated already"):
        deprecated("echo@1.0.0", X)


@pytest.mark.parametrize("weight", [-0.01, 1.01, float("nan"), float("inf")])
def test_weights_outside_zero_one_are_refused(weight: float) -> None:
    with pytest.raises(TransitionError, match="Expected a rollout weight between 0 and 1"):
        check_weight(weight)


def test_weights_of_deprecated_versions_are_frozen() -> None:
    assert reweighted("echo@2.0.0", S, 0.25) == 0.25
    with pytest.raises(TransitionError, match="not to be deprecated"):
        reweighted("echo@1.0.0", X, 0.5)


def test_catalog_key_matches_the_topic_key() -> None:
    assert catalog_key("http.request", "1.2.0") == "http.request@1.2.0"


# -- the projection's applier --------------------------------------------------------------------


def entry(**overrides: Any) -> NodeCatalogEntry:
    fields: dict[str, Any] = {
        "name": "http.request",
        "version": "2.0.0",
        "status": P,
        "rollout_weight": 0.1,
        "manifest": {"cacheable": False},
        "code_uri": "s3://reflux/nodes/http.request/2.0.0/manifest.json",
    }
    fields.update(overrides)
    return NodeCatalogEntry(**fields)


def test_the_nodes_topic_projects_catalog_entries() -> None:
    assert (NodeCatalogEntry,) == NODE_EVENT_TYPES
    record = entry()
    result = plan(record, "cat")
    assert "node_catalog_events" in result.guard.sql
    assert result.guard.params[0] == record.event_id
    for statement in (result.guard, *result.updates):
        assert len(re.findall(r"%s", statement.sql)) == len(statement.params), statement.sql
        assert '"cat".' in statement.sql
    sql = " ".join(s.sql for s in result.updates)
    assert 'INSERT INTO "cat".nodes' in sql and 'INSERT INTO "cat".node_versions' in sql
    assert "latest_version" in sql


def test_ids_are_stable_so_a_rebuild_reproduces_them() -> None:
    assert node_id("echo") == node_id("echo")
    assert node_version_id("echo", "1.0.0") != node_version_id("echo", "2.0.0")
    first = plan(entry(), "cat").updates[1].params[0]
    assert first == node_version_id("http.request", "2.0.0")


def test_category_comes_from_the_manifest_or_the_name() -> None:
    assert node_category("http.request", {"category": "integrations"}) == "integrations"
    assert node_category("http.request", {}) == "http"
    assert node_category("transform", None) == "transform"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Bad Name"}, "dotted lowercase node name"),
        ({"version": "2.0"}, "semver version"),
        ({"rollout_weight": 1.5}, "rollout weight between 0 and 1"),
    ],
)
def test_unusable_entries_are_refused_for_the_dlq(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidCatalogEntryError, match=message):
        plan(entry(**overrides), "cat")


def test_the_catalog_migration_has_the_seed_tables() -> None:
    migration = next(m for m in load_migrations() if m.name == "node_catalog")
    assert migration.version == 2
    for fragment in (
        "CREATE TABLE nodes",
        "name           text        UNIQUE NOT NULL",
        "latest_version",
        "category",
        "CREATE TABLE node_versions",
        "REFERENCES nodes (id)",
        "manifest       jsonb       NOT NULL",
        "code_url",
        "'draft', 'staging', 'production', 'deprecated'",
        "rollout_weight",
        "UNIQUE (node_id, version)",
        "idx_node_versions_status",
    ):
        assert fragment in migration.sql, fragment


# -- API validation against the catalog ---------------------------------------------------------

DEFINITION = {
    "id": "uses-echo",
    "steps": [
        {"id": "a", "node": "echo@^2", "params": {}},
        {"id": "b", "node": "transform@^1", "params": {"expression": "a", "data": {}}},
    ],
}


def test_projected_nodes_override_builtins_and_the_rest_stay() -> None:
    catalog = merged_catalog({"echo": ["1.0.0", "2.0.0"]})
    assert list(catalog.versions("echo")) == ["1.0.0", "2.0.0"]
    assert list(catalog.versions("transform")) == ["1.0.0"]
    assert parse_definition(DEFINITION, catalog).id == "uses-echo"


def test_without_a_catalog_entry_unknown_nodes_are_invalid() -> None:
    with pytest.raises(RequestInvalidError) as caught:
        parse_definition(DEFINITION)  # outside a request: the built-ins only
    assert any("echo" in issue.message for issue in caught.value.issues)


def test_a_constraint_the_catalog_cannot_satisfy_is_invalid() -> None:
    catalog = StaticNodeCatalog({"echo": ["1.0.0"], "transform": ["1.0.0"]})
    with pytest.raises(RequestInvalidError) as caught:
        parse_definition(DEFINITION, catalog)
    assert caught.value.issues[0].path.startswith("steps")


# -- worker registration -------------------------------------------------------------------------


def test_builtin_nodes_register_as_production_with_their_manifest() -> None:
    node = next(iter(default_registry()))
    record = catalog_entry(node, code_uri="s3://b/" + manifest_key(node.name, node.version))
    assert (record.name, record.version, record.status) == (node.name, node.version, P)
    assert record.rollout_weight == 1.0
    assert record.manifest == node.manifest()
    assert record.code_uri == f"s3://b/nodes/{node.name}/{node.version}/manifest.json"
