"""Broker faults on a three-broker cluster under load (issue 15, first "Must show"; ADR 0065).

On a KRaft cluster of this test's own (three nodes, replication 3, ``min.insync.replicas=2``),
the engine runs as separate supervised processes (ADR 0018): one scheduler, two workers, one
projector. A local HTTP service answers every step ``200`` and records each call's invocation
id. :data:`RUNS` runs of :data:`STEPS` HTTP steps go in, in :data:`WAVES` waves so that runs
are in flight at every fault:

1. ``kill -9`` of the broker that leads the most partitions of the runs topic; the cluster
   fences it and the load goes on without it (a wave sent meanwhile makes progress); it is
   restarted and the test waits until no partition is under-replicated;
2. the same for the scheduler's transaction coordinator (the leader of its
   ``__transaction_state`` partition), or, when that is the broker of step 1, the leader of
   the most runs partitions among the other two.

Afterwards, counted and asserted: every run terminal (lost 0), no invocation executed twice
(duplicated 0), no run failed (the service has no faults), the projection holds exactly the
log, and no transaction is left hanging: on every topic the last stable offset reaches the
high watermark and a ``read_committed`` consumer reads to the end.

The same cluster (module-scoped: one start) also serves the check of ADR 0065's setup on its own:
a topic created from the catalog's settings gets 3 replicas and ``min.insync.replicas=2``; after
``kill -9`` of a partition's leader, the scheduler's end-offset request
(``processors.scheduler.runtime.recovery``), through an admin client that knew the old leader,
answers every partition's real end (it used to answer -1001 for the killed leader's partitions,
which recovery took as an empty partition); the node comes back in sync; every node serves the
SASL_SSL listener with the local CA and user.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._metadata import PartitionMetadata, TopicMetadata

from foundation.settings import Settings
from infra.services.kafka_cluster import KafkaCluster
from processors.scheduler.runtime.recovery import end_offsets
from projections.postgres import queries
from schemas.models import StartRun, WorkflowRegistered
from schemas.statuses import TERMINAL_RUN_STATUSES
from streams.admin import admin_client, ensure_topics
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import drop_schemas
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.projection_checks import assert_projection_is_log, projected_runs
from tests.support.private_kafka import private_cluster
from tests.support.processes import supervised_engine, wait_for
from tests.support.waiting import eventually
from workflows import parse_workflow

log = logging.getLogger(__name__)

RUNS = 200
STEPS = 3
WAVES = 4
PARTITIONS = 6
TRANSACTION_STATE_PARTITIONS = 12  # transaction.state.log.num.partitions of the template
SCHEDULER_INSTANCE = "cluster"
IN_SYNC_S = 120


@pytest.fixture(scope="module")
def cluster(
    local_services: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster]:
    """One cluster for this module's tests (a start is ~20 s, 50 under load): each test leaves
    it with every node running and in sync, and uses a topic prefix of its own."""
    with private_cluster(
        local_services,
        tmp_path_factory.mktemp("cluster"),
        topic_prefix=f"cluster-{uuid.uuid4().hex[:6]}",
        default_partitions=PARTITIONS,
    ) as started:
        yield started


def _workflow(http: HttpTestServer) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for k in range(STEPS):
        url = f"{http.url}/odds?run={{{{ inputs.index }}}}&step=s{k}&seed=cluster&fail=0&hang=0"
        step: dict[str, Any] = {"id": f"s{k}", "node": "http.request@^1", "params": {"url": url}}
        if k:
            step["needs"] = [f"s{k - 1}"]
        steps.append(step)
    return {
        "id": "cluster",
        "inputs": {"index": {"type": "integer", "required": True}},
        "defaults": {"retry": {"max_attempts": 4, "initial_backoff": "200ms"}, "timeout": "20s"},
        "steps": steps,
    }


def _java_hash(text: str) -> int:
    """Java's ``String.hashCode`` (Kafka places a transactional id by it)."""
    value = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        value = (31 * value + int(unit, 16)) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _transaction_partition(transactional_id: str) -> int:
    # Kafka's TransactionStateManager.partitionFor: Utils.abs(hashCode) % partitions.
    code = _java_hash(transactional_id)
    return (0 if code == -(1 << 31) else abs(code)) % TRANSACTION_STATE_PARTITIONS


def _partitions(
    cluster: KafkaCluster, topic: str, partitions: int = PARTITIONS
) -> dict[int, PartitionMetadata]:
    """``topic``'s partitions as one broker lists them, once every one of its ``partitions``
    has a leader (a broker may not list a topic created a moment ago yet)."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})

    def listed() -> dict[int, PartitionMetadata]:
        metadata = admin.list_topics(topic, timeout=5).topics[topic]
        assert metadata.error is None, metadata.error
        found = dict(metadata.partitions)
        assert len(found) == partitions, found
        assert all(p.leader > 0 for p in found.values()), found
        return found

    return eventually(listed, 30, f"the partitions and leaders of {topic}")


def _leaders(cluster: KafkaCluster, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    """{partition: leader node} of ``topic``."""
    return {p: meta.leader for p, meta in _partitions(cluster, topic, partitions).items()}


def _prefix_topics(cluster: KafkaCluster, prefix: str) -> dict[str, int]:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})
    metadata = admin.list_topics(timeout=10)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if name.startswith(f"{prefix}.")
    }


def _ends(settings: Settings, topics: dict[str, int], isolation: str) -> dict[str, int]:
    """{"topic/partition": end offset} as a consumer of ``isolation`` sees it (the last stable
    offset for read_committed, the high watermark for read_uncommitted)."""
    reader = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.ends-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    try:
        return {
            f"{topic}/{p}": reader.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            for topic, count in topics.items()
            for p in range(count)
        }
    finally:
        reader.close()


def _open_transactions(settings: Settings, topics: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Partitions whose last stable offset is below the high watermark: {tp: (lso, hw)}."""
    committed = _ends(settings, topics, "read_committed")
    written = _ends(settings, topics, "read_uncommitted")
    return {tp: (committed[tp], end) for tp, end in written.items() if committed[tp] != end}


def _read_committed_to_end(settings: Settings, topics: dict[str, int]) -> int:
    """A read_committed consumer reads every partition up to its high watermark; returns the
    records it read (control records are skipped but count towards the position)."""
    ends = _ends(settings, topics, "read_uncommitted")
    reader = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.committed-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    parts = [TopicPartition(t, p) for t, count in topics.items() for p in range(count)]
    read = 0
    try:
        reader.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in parts])

        def behind() -> list[str]:
            nonlocal read
            read += sum(m.error() is None for m in reader.consume(1000, 0.2))
            return [
                f"{tp.topic}/{tp.partition} at {tp.offset} of {ends[f'{tp.topic}/{tp.partition}']}"
                for tp in reader.position(parts)
                if max(tp.offset, 0) < ends[f"{tp.topic}/{tp.partition}"]
            ]

        eventually(behind, 60, "a read_committed consumer at the end", until=lambda left: not left)
        return read
    finally:
        reader.close()


# ~1.5 min alone (a cluster start, two broker faults, the drain); room for a busy machine.
@pytest.mark.timeout(480)
def test_runs_survive_two_broker_kills(
    cluster: KafkaCluster, http: HttpTestServer, tmp_path: Path
) -> None:
    settings = cluster.settings
    catalog = TopicCatalog.from_settings(settings)
    schema = f"cluster_{uuid.uuid4().hex[:10]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    components = supervised_engine(SCHEDULER_INSTANCE, settings, logs, schema)
    producer = Producer(settings, client_id="cluster-test")
    began = time.monotonic()
    try:
        # What `reflux topics create --invoke http.request:1` does, without a second interpreter
        # start (seconds on a loaded box).
        ensure_topics(
            catalog, [*catalog, catalog.invoke_topic("http.request", 1)], settings=settings
        )
        runs_topic = catalog.runs.topic
        replicas = {len(p.replicas) for p in _partitions(cluster, runs_topic).values()}
        assert replicas == {3}, f"runs topic replicas {replicas}"
        producer.send(
            catalog.workflows,
            "cluster@1",
            WorkflowRegistered(
                workflow_id="cluster",
                version=1,
                definition=parse_workflow(_workflow(http)).to_json_dict(),
                registered_at=datetime.now(UTC),
            ),
        )
        # A cluster started moments ago, on a busy machine, can take more than 10 s to elect
        # the leaders of topics it just created.
        producer.flush(60)
        for component in components:
            component.start()

        run_ids = {str(uuid.uuid4()): i for i in range(RUNS)}
        waves = [list(run_ids.items())[w::WAVES] for w in range(WAVES)]
        submitted = 0

        def send_wave() -> None:
            nonlocal submitted
            for run_id, index in waves.pop(0):
                producer.send(
                    catalog.commands,
                    run_id,
                    StartRun(run_id=run_id, workflow_id="cluster", inputs={"index": index}),
                )
                submitted += 1
            producer.flush(60)

        def calls() -> int:
            return len(http.requests_to("/odds"))

        faults: list[str] = []

        def at(threshold: int, what: str) -> int:
            wait_for(
                lambda: calls() >= threshold, 180, f"{threshold} calls before {what}", *components
            )
            seen = calls()
            # Runs in flight: calls still to come for the runs already submitted.
            assert seen < submitted * STEPS, f"{what}: the load ended ({seen} calls) before it"
            faults.append(f"{what} at {seen} calls, {time.monotonic() - began:.1f} s")
            return seen

        def fail_broker(node: int, why: str) -> None:
            pid = cluster.kill9(node)
            faults.append(f"kill -9 broker {node} (pid {pid}, {why})")
            # The cluster notices (the node is fenced, its partitions get other leaders) and
            # the load goes on without it: the next wave makes progress.
            wait_for(lambda: node not in cluster.brokers(), 60, f"broker {node} fenced")
            send_wave()
            seen = calls()
            at(seen + 30, f"restart of broker {node}")
            took = cluster.start_node(node)
            cluster.wait_in_sync(IN_SYNC_S)
            faults.append(f"broker {node} back in {took:.1f} s, in sync at {calls()} calls")

        send_wave()
        at(30, "first kill")
        leaders = collections.Counter(_leaders(cluster, runs_topic).values())
        first = leaders.most_common(1)[0][0]
        fail_broker(first, f"leader of {leaders[first]} of {PARTITIONS} runs partitions")

        send_wave()
        at(calls() + 30, "second kill")
        transactional_id = f"{settings.topic_prefix}.scheduler.{SCHEDULER_INSTANCE}"
        slot = _transaction_partition(transactional_id)
        coordinator = _leaders(cluster, "__transaction_state", TRANSACTION_STATE_PARTITIONS)[slot]
        if coordinator != first:
            second, why = coordinator, f"the scheduler's transaction coordinator ({slot=})"
        else:
            others = collections.Counter(
                n for n in _leaders(cluster, runs_topic).values() if n != first
            )
            second = others.most_common(1)[0][0] if others else first % cluster.size + 1
            why = f"leader of {others[second]} runs partitions (coordinator was broker {first})"
        fail_broker(second, why)
        assert not waves, f"{len(waves)} waves not sent"

        def runs() -> dict[str, queries.RunRow]:
            return projected_runs(settings, schema, run_ids)

        def terminal() -> int:
            return sum(r.status in TERMINAL_RUN_STATUSES for r in runs().values())

        wait_for(lambda: terminal() == RUNS, 240, "every run terminal", *components)
        elapsed = time.monotonic() - began
        restarts = {c.name: c.restarts_logged() for c in components}
        for component in components:
            component.stop()  # nothing writes any more: every transaction must now be closed
        rows = runs()

        # -- lost, duplicated, failed ---------------------------------------------------------
        lost = RUNS - sum(r.status in TERMINAL_RUN_STATUSES for r in rows.values())
        executed = collections.Counter(
            r.header("x-reflux-invocation-id") or "" for r in http.requests_to("/odds")
        )
        duplicated = sorted(k for k, n in executed.items() if n > 1)
        statuses = collections.Counter(r.status for r in rows.values())
        failed = RUNS - statuses.get("succeeded", 0)
        summary = (
            f"{RUNS} runs in {elapsed:.1f} s, {sum(executed.values())} calls for "
            f"{RUNS * STEPS} steps: {dict(statuses)}; lost {lost}; duplicated "
            f"{len(duplicated)}; failed {failed}; restarts logged: {restarts}; faults: {faults}"
        )
        log.warning("cluster faults: %s", summary)
        print(f"\ncluster faults: {summary}")
        assert lost == 0, summary
        assert duplicated == [], (duplicated[:10], summary)
        assert "" not in executed, f"calls without an invocation id; {summary}"
        assert failed == 0, summary

        # -- projection == log ---------------------------------------------------------------
        assert_projection_is_log(settings, catalog, schema, run_ids, rows, PARTITIONS)

        # -- no transaction left hanging ------------------------------------------------------
        topics = _prefix_topics(cluster, settings.topic_prefix)
        assert runs_topic in topics and catalog.scheduler_state.topic in topics, sorted(topics)
        # An open transaction ends within transaction.timeout.ms (15 s) at worst; a hanging
        # one never does.
        eventually(
            lambda: _open_transactions(settings, topics),
            45,
            "every partition's last stable offset at its high watermark",
            until=lambda open_: not open_,
            interval=0.5,
        )
        read = _read_committed_to_end(settings, topics)
        assert read > 0, f"read_committed consumer read nothing from {sorted(topics)}"
    finally:
        producer.close()
        for component in components:
            component.stop()
        drop_schemas(settings, schema)


LEADER_TEST_RECORDS = 60


@pytest.mark.timeout(300)
def test_killed_leader_replication_and_sasl(cluster: KafkaCluster) -> None:
    # A prefix of its own: the module's other test must not find this one's topics.
    settings = cluster.settings.model_copy(update={"topic_prefix": f"kc-{uuid.uuid4().hex[:6]}"})
    assert cluster.brokers() == {1, 2, 3}
    catalog = TopicCatalog.from_settings(settings)
    topic = catalog.runs.topic
    ensure_topics(catalog, [catalog.runs], settings=settings)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})

    def described_with_leaders() -> TopicMetadata:
        # Created a moment ago: another broker's metadata may not list its partitions yet.
        found = admin.list_topics(topic, timeout=10).topics[topic]
        assert len(found.partitions) == PARTITIONS, found.partitions
        assert all(p.leader > 0 for p in found.partitions.values()), found.partitions
        return found

    described = eventually(described_with_leaders, 30, f"{topic}'s partitions and leaders")
    assert {len(p.replicas) for p in described.partitions.values()} == {3}

    def min_insync() -> str:
        configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        try:
            (entries,) = (future.result(timeout=10) for future in configs.values())
        except KafkaException as exc:  # a broker that does not list the topic yet
            raise AssertionError(str(exc)) from exc
        return str(entries["min.insync.replicas"].value)

    assert eventually(min_insync, 30, f"{topic}'s configs") == "2"

    producer = KafkaProducer({**kafka_client_config(settings), "acks": "all"})
    for i in range(LEADER_TEST_RECORDS):
        producer.produce(topic, value=b"x", partition=i % PARTITIONS)
    assert producer.flush(30) == 0
    expected = {p: LEADER_TEST_RECORDS // PARTITIONS for p in range(PARTITIONS)}
    long_lived = admin_client(settings)  # as the scheduler's: it has cached the leaders
    assert end_offsets(long_lived, [topic], range(PARTITIONS), timeout=30)[topic] == expected

    victim = described.partitions[0].leader
    cluster.kill9(victim)
    eventually(lambda: victim not in cluster.brokers(), 60, f"broker {victim} fenced")
    ends = end_offsets(long_lived, [topic], range(PARTITIONS), timeout=60)[topic]
    assert ends == expected, f"end offsets after kill -9 of broker {victim}: {ends}"

    cluster.start_node(victim)
    # Raises unless every partition is fully in sync on every node within 120 s. (No second
    # look right after: under a loaded machine a follower can drop out of the ISR again for a
    # moment, which is Kafka working as designed; that check failed a full run in session 12.)
    cluster.wait_in_sync(120)

    secured = settings.model_copy(
        update={
            "kafka_security_protocol": "SASL_SSL",
            "kafka_bootstrap": ",".join(f"127.0.0.1:{n.sasl_port}" for n in cluster.nodes),
        }
    )
    brokers = AdminClient(kafka_client_config(secured)).list_topics(timeout=20).brokers
    assert {b.port for b in brokers.values()} == {n.sasl_port for n in cluster.nodes}
