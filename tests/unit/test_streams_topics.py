"""The topic catalog: naming, configs and the co-partitioning invariant (no broker needed)."""

from __future__ import annotations

import pytest

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from streams.topics import TopicCatalog, TopicCatalogError, TopicSpec, invoke_topic

FIXED = [
    "workflows",
    "nodes",
    "commands",
    "runs",
    "results",
    "scheduler-state",
    "traces",
    "mutations",
    "replays",
    "triggers",
    "dlq",
    "diagnoses",
    "alerts",
    "audit",
    "run-outcomes",
    "schedules",
    "schedule-state",
]


@pytest.fixture
def settings() -> Settings:
    return Settings(topic_prefix="acme", default_partitions=4, replication_factor=1)


def test_every_fixed_topic_is_prefixed(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(settings)
    assert [s.logical for s in catalog] == FIXED
    assert [s.topic for s in catalog] == [f"acme.{name}" for name in FIXED]
    assert catalog.runs.topic == "acme.runs"
    assert catalog["dlq"] is catalog.dlq
    assert len(catalog) == len(FIXED)


def test_default_prefix_matches_design() -> None:
    catalog = TopicCatalog.from_settings(Settings())
    assert catalog.commands.topic == "reflux.commands"
    assert catalog.invoke_topic("http.request", 1).topic == "reflux.invoke.http.request.v1"


def test_cleanup_policies(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(settings)
    compacted = {s.logical for s in catalog if s.compacted}
    assert compacted == {"workflows", "nodes", "scheduler-state", "schedules", "schedule-state"}
    assert catalog.runs.cleanup_policy == "delete"
    # The run log is the source of truth: never expired by time.
    assert catalog.runs.configs["retention.ms"] == "-1"
    for spec in catalog:
        if not spec.compacted:
            assert int(spec.configs["retention.ms"]) == -1 or int(spec.configs["retention.ms"]) > 0


def test_partitions_and_replication_come_from_settings(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(settings)
    assert {s.partitions for s in catalog} == {4}
    assert {s.replication for s in catalog} == {1}


def test_run_group_is_copartitioned_and_keyed_by_run_id(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(settings)
    group = catalog.copartitioned()
    assert {s.logical for s in group} == {"commands", "runs", "results", "scheduler-state"}
    assert {(s.partitions, s.key) for s in group} == {(4, "run_id")}


def test_broken_copartitioning_is_refused(settings: Settings) -> None:
    with pytest.raises(TopicCatalogError, match="co-partitioned group 'run'") as info:
        TopicCatalog.from_settings(settings, partitions={"runs": 12})
    assert "acme.runs=12" in str(info.value) and "acme.commands=4" in str(info.value)
    assert isinstance(info.value, ConfigurationError)


def test_copartitioned_override_of_the_whole_group_is_fine(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(
        settings,
        partitions={"commands": 12, "runs": 12, "results": 12, "scheduler-state": 12},
    )
    assert catalog.runs.partitions == 12
    assert catalog.scheduler_state.partitions == 12
    assert catalog.traces.partitions == 4


def test_unknown_override_is_refused(settings: Settings) -> None:
    with pytest.raises(TopicCatalogError, match="runz"):
        TopicCatalog.from_settings(settings, partitions={"runz": 3})


def test_invoke_topics(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(settings)
    spec = catalog.invoke_topic("http.request", 2)
    assert spec.topic == "acme.invoke.http.request.v2"
    assert spec.logical == "invoke.http.request.v2"
    assert spec.key == "run_id"
    assert spec.partitions == 4
    assert spec.cleanup_policy == "delete"
    assert catalog.worker_group("http.request", 2) == "acme.workers.http.request.v2"
    assert catalog.by_topic("acme.invoke.code.run.v0") == catalog.invoke_topic("code.run", 0)
    assert catalog.by_topic("acme.runs") is catalog.runs
    assert invoke_topic("email.send", 1, settings).topic == "acme.invoke.email.send.v1"


@pytest.mark.parametrize("node", ["", "Http", "http..request", ".http", "http/request", "a b"])
def test_invalid_node_names_are_refused(settings: Settings, node: str) -> None:
    with pytest.raises(TopicCatalogError, match="node name"):
        TopicCatalog.from_settings(settings).invoke_topic(node, 1)


@pytest.mark.parametrize("major", [-1, True, 1.0])
def test_invalid_majors_are_refused(settings: Settings, major: object) -> None:
    with pytest.raises(TopicCatalogError, match="major"):
        TopicCatalog.from_settings(settings).invoke_topic("http.request", major)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["bad prefix", "x" * 250, "a/b", ""])
def test_invalid_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(TopicCatalogError, match="topic name"):
        TopicCatalog.from_settings(Settings(topic_prefix=prefix))


def test_by_topic_rejects_foreign_topics(settings: Settings) -> None:
    with pytest.raises(TopicCatalogError, match=r"other\.runs"):
        TopicCatalog.from_settings(settings).by_topic("other.runs")
    with pytest.raises(TopicCatalogError, match="nope"):
        TopicCatalog.from_settings(settings)["nope"]


def test_spec_is_frozen_including_configs(settings: Settings) -> None:
    spec = TopicCatalog.from_settings(settings).runs
    with pytest.raises(AttributeError):
        spec.partitions = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.configs["retention.ms"] = "1"  # type: ignore[index]
    assert hash(spec) == hash(TopicCatalog.from_settings(settings).runs)


def test_spec_validation() -> None:
    with pytest.raises(TopicCatalogError, match="at least 1 partition"):
        TopicSpec("x", "p.x", 0, 1, "k", "d")
    with pytest.raises(TopicCatalogError, match="replication"):
        TopicSpec("x", "p.x", 1, 0, "k", "d")


def test_schedule_topics_are_copartitioned_by_schedule_id(settings: Settings) -> None:
    catalog = TopicCatalog.from_settings(settings)
    group = catalog.copartitioned("schedule")
    assert {s.logical for s in group} == {"schedules", "schedule-state"}
    assert {(s.partitions, s.key) for s in group} == {(4, "schedule_id")}
