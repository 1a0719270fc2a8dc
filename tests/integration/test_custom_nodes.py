"""Custom nodes as code on real services: ``reflux worker --module tests.support.custom_nodes``
as a real process discovers the module's ``@node`` functions, registers both majors of
``acme.greet`` in the catalog (the platform's, tenant default), serves each major in its own
worker group, and workflows pinned to ``@^1`` / ``@^2`` get each version's output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition

from foundation.settings import PROJECT_ROOT
from projections.postgres import queries
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client
from tests.support.kafka_log import record_offsets
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def greet_workflow(workflow_id: str, constraint: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [{"id": "greet", "node": f"acme.greet@{constraint}", "params": params}],
        "outputs": {
            "greeting": "{{ steps.greet.output.greeting }}",
            "version": "{{ steps.greet.output.version }}",
        },
    }


@pytest.fixture
def custom_worker(engine_harness: HarnessFactory) -> Any:
    """The engine (built-in nodes only) and a custom-node worker process beside it."""
    harness = engine_harness(client_id="custom-nodes-e2e")
    settings = harness.settings
    env = {
        **os.environ,
        "REFLUX_TOPIC_PREFIX": settings.topic_prefix,
        "REFLUX_DEFAULT_PARTITIONS": str(settings.default_partitions),
        "NODES_FILTER": "",  # the module's nodes only
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reflux.cli",
            "worker",
            "--module",
            "tests.support.custom_nodes",
            "--client-id",
            "custom-nodes-worker",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield harness, process
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        print(output)


def test_a_module_node_is_discovered_registered_versioned_and_called(
    custom_worker: tuple[Harness, subprocess.Popen[str]],
) -> None:
    h, process = custom_worker

    def catalogued() -> dict[str, queries.NodeVersionRow]:
        if process.poll() is not None:
            output = process.stdout.read()  # type: ignore[union-attr]
            pytest.fail(f"the custom-node worker exited:\n{output}")
        with h.conn() as conn:
            rows = queries.list_node_versions(conn, "acme.greet", schema=h.schema)
        return {row.version: row for row in rows}

    rows = eventually(
        catalogued,
        60,
        "the worker to register acme.greet 1.0.0 and 2.0.0",
        until=lambda found: set(found) == {"1.0.0", "2.0.0"},
        interval=0.2,
    )
    for version, row in rows.items():
        assert (row.status, row.rollout_weight, row.tenant) == ("production", 1.0, "default")
        assert row.manifest["version"] == version
        assert row.manifest["idempotent"] is True
        assert row.manifest["input_schema"]["required"] == ["name"]
        assert row.code_url and row.code_url.endswith(f"nodes/acme.greet/{version}/manifest.json")
    assert rows["1.0.0"].manifest["cacheable"] is True
    assert rows["2.0.0"].manifest["source"] == "tests.support.custom_nodes.greet_v2"

    # The public API shows them as platform nodes and accepts workflows using them.
    with api_client(h) as api:
        versions = api.get("/v1/nodes/acme.greet/versions")
        assert versions.status_code == 200, versions.text
        assert [v["version"] for v in versions.json()["data"]] == ["1.0.0", "2.0.0"]
        listed = {n["name"]: n for n in api.get("/v1/nodes").json()["data"]}
        assert listed["acme.greet"]["production_versions"] == ["1.0.0", "2.0.0"]
        created = api.post(
            "/v1/workflows", json=greet_workflow("greet-v2", "^2", {"name": "ada", "times": 2})
        )
        assert created.status_code == 201, created.text
        unknown = api.post("/v1/workflows", json=greet_workflow("greet-v9", "^9", {"name": "x"}))
        assert unknown.status_code == 422, unknown.text

    h.register(greet_workflow("greet-v1", "^1", {"name": "ada"}))
    h.register(greet_workflow("greet-bad", "^2", {"name": "ada", "times": "often"}))
    v1, bad = h.start("greet-v1"), h.start("greet-bad")
    v2 = h.start("greet-v2")  # registered through the API, on the same workflows topic

    run = h.wait(v1, timeout=60)
    assert run.status == "succeeded", run
    assert run.outputs == {"greeting": "hello ada", "version": "1.0.0"}
    assert h.steps(v1)["greet"].node_version == "1.0.0"

    run = h.wait(v2, timeout=60)
    assert run.status == "succeeded", run
    assert run.outputs == {"greeting": "HELLO ADA HELLO ADA", "version": "2.0.0"}
    assert h.steps(v2)["greet"].node_version == "2.0.0"
    prefix = h.settings.topic_prefix
    dispatched = [e for e in h.events(v2) if e.event_type == "StepDispatched"]
    assert [e.payload["invoke_topic"] for e in dispatched] == [f"{prefix}.invoke.acme.greet.v2"]

    # Bad params fail the step at once, for good, naming the field path.
    run = h.wait(bad, timeout=60)
    assert run.status == "failed", run
    assert run.error is not None
    assert run.error["retryable"] is False
    assert "params.times: Input should be a valid integer" in run.error["message"]
    kinds = [e.event_type for e in h.events(bad)]
    assert "StepRetryScheduled" not in kinds

    # Each major was consumed by its own worker group: v1 took one invocation, v2 two.
    for major, taken in ((1, 1), (2, 2)):
        eventually(
            lambda major=major: committed(h, major),  # type: ignore[misc]
            30,
            f"worker group {h.engine.catalog.worker_group('acme.greet', major)} to commit",
            until=lambda n, taken=taken: n == taken,  # type: ignore[misc]
        )


def committed(h: Harness, major: int) -> int:
    """Invocations of the major's invoke topic that its worker group has committed past.

    Counted from the records, not by summing offsets: the scheduler writes invocations in
    transactions, and each commit marker takes an offset of its own, which a consumer's
    committed position may or may not have passed yet."""
    topic = h.engine.catalog.invoke_topic("acme.greet", major).topic
    group = h.engine.catalog.worker_group("acme.greet", major)
    probe = RawConsumer({**kafka_client_config(h.settings), "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(h.settings.default_partitions)]
        positions = {tp.partition: tp.offset for tp in probe.committed(parts, timeout=10)}
    finally:
        probe.close()
    records = record_offsets(h.settings, topic, h.settings.default_partitions)
    return sum(1 for partition, offset in records if offset < positions.get(partition, -1))
