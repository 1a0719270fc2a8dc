"""The historian's projector alone on the real Kafka and Postgres (ADR 0034): what it stores
from ``diagnoses`` and ``reflux.mutations``, poison records, a restart, a rebuild.

The records are what the critic and the mutation processor publish, produced here directly so
each case (a proposal before its diagnosis, a keep request before its transition, garbage on
the topic) is exact; the full lifecycle through the real mutation processor is in
test_historian.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from foundation.settings import Settings
from processors.historian import queries as hq
from processors.historian.runtime import HistorianProjector, rebuild_history
from schemas.models import (
    DeadLetter,
    Diagnosis,
    DiagnosisKind,
    DiagnosisSeverity,
    GraphMutation,
    GraphMutationType,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationStatus,
)
from streams.consumer import Consumer
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import admin, catalog, drain, kafka_settings, topics  # noqa: F401
from tests.integration.test_projection_scenarios import pg_schema  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg(kafka_settings: Settings) -> Iterator[psycopg.Connection[Any]]:  # noqa: F811
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        yield conn


def finding(n: int, step: str = "fetch") -> Diagnosis:
    subject = f"workflow:wf/step:{step}"
    return Diagnosis(
        diagnosis_id=f"latency_drift/{subject}/{n}",
        subject=subject,
        kind=DiagnosisKind.LATENCY_DRIFT,
        severity=DiagnosisSeverity.WARNING,
        detector="adwin",
        workflow_id="wf",
        step_id=step,
        node="http.request",
        detected_at=T0 + timedelta(minutes=n),
        traces_seen=100 + n,
        evidence=json.dumps({"window": 32}),
        explanation=f"{step} got slower ({n})",
    )


def proposal(status: MutationStatus, diagnosis_id: str, request_id: str, **extra: Any) -> Mutation:
    return Mutation(
        mutation_id="m1",
        workflow_id="wf",
        base_version=1,
        status=status,
        changes=[
            GraphMutation(
                type=GraphMutationType.UPDATE_PARAMS, step_id="fetch", data={"timeout": "2s"}
            )
        ],
        rationale="time out at the p99",
        proposed_by="optimizer:timeout",
        evidence={"diagnosis_id": diagnosis_id, "strategy": "timeout"},
        request_id=request_id,
        **extra,
    )


def catch_up(settings: Settings, schema: str) -> HistorianProjector:
    with HistorianProjector(settings, schema, assignment="manual") as historian:
        historian.run_until_caught_up(timeout=60)
    return historian


def test_stores_links_survives_poison_and_restarts_and_rebuilds(
    kafka_settings: Settings,  # noqa: F811
    topics: TopicCatalog,  # noqa: F811
    pg_schema: str,  # noqa: F811
    pg: psycopg.Connection[Any],
) -> None:
    first = finding(1)
    rollback = MutationRequest(
        workflow_id="wf",
        mutation_id="m1",
        action=MutationAction.ROLLBACK,
        actor="canary",
        evidence={"effect": {"success_rate_delta": -0.2}},
    )
    with Producer(kafka_settings) as producer:
        # The proposal is projected before its diagnosis: the link is the join, not an order.
        producer.send(
            topics.mutations, "wf", proposal(MutationStatus.PROPOSED, first.diagnosis_id, "r0")
        )
        producer.send(topics.diagnoses, first.subject, b"not a diagnosis")
        producer.send(topics.diagnoses, first.subject, first)
        producer.send(topics.mutations, "wf", rollback)
        producer.send(
            topics.mutations,
            "wf",
            proposal(
                MutationStatus.ROLLED_BACK,
                first.diagnosis_id,
                rollback.event_id,
                report={"replay": {"verdict": "better"}},
                applied_version=2,
            ),
        )

    historian = catch_up(kafka_settings, pg_schema)
    assert historian.stats.dead_lettered == 1
    row = hq.get_diagnosis(pg, first.diagnosis_id, schema=pg_schema)
    assert row is not None and row.embedding_model == "wordllama/l2_supercat_256"
    [linked] = hq.proposals_for(pg, [first.diagnosis_id], schema=pg_schema)[first.diagnosis_id]
    assert (linked.status, linked.strategy, linked.replay_verdict, linked.applied_version) == (
        "rolled_back",
        "timeout",
        "better",
        2,
    )
    assert linked.effect == {"effect": {"success_rate_delta": -0.2}}
    assert linked.past().effect == {
        "effect": {"success_rate_delta": -0.2},
        "replay_verdict": "better",
    }

    with Consumer([topics.dlq], f"test-dlq-{uuid.uuid4().hex[:6]}", kafka_settings,
                  expected=DeadLetter) as dlq:  # fmt: skip
        [letter] = [r.value for r in drain(dlq, lambda rs: len(rs) >= 1)]
    assert isinstance(letter, DeadLetter)
    assert (
        letter.error_class == "MalformedRecord" and letter.original_topic == topics.diagnoses.topic
    )

    # A restart resumes at the stored offsets: nothing is read twice, new records are stored.
    second = finding(2)
    with Producer(kafka_settings) as producer:
        producer.send(topics.diagnoses, second.subject, second)
    again = catch_up(kafka_settings, pg_schema)
    assert (again.stats.records, again.stats.applied) == (1, 1)

    def count() -> int:
        found = pg.execute(f'SELECT count(*) FROM "{pg_schema}".diagnoses').fetchone()
        assert found is not None
        return int(found[0])

    assert count() == 2
    # A rebuild empties the tables and reads both topics again: the same rows.
    before = {r.diagnosis_id: r.context for r in hq.list_diagnoses(pg, schema=pg_schema)}
    # Six records: three on each topic (the poison one is read again, and dead-lettered again).
    assert rebuild_history(kafka_settings, pg_schema, timeout=60) == 6
    assert {r.diagnosis_id: r.context for r in hq.list_diagnoses(pg, schema=pg_schema)} == before
    [relinked] = hq.proposals_for(pg, [first.diagnosis_id], schema=pg_schema)[first.diagnosis_id]
    assert relinked == linked
