"""The historian on the real services (ADR 0034): Kafka in, Postgres + pgvector out.

- diagnoses published on the ``diagnoses`` topic are stored with their embeddings and listed,
  filtered and shown by ``/v1/diagnoses`` (404 naming an unknown id, 422 naming a bad filter);
- a proposal that answered a diagnosis goes through the real mutation processor (proposed ->
  validated -> applied -> kept, the keep carrying the canary's evidence) and is linked to it;
  for a new, similar diagnosis the incident with the kept fix comes first (``PostgresHistorian``
  and ``/v1/diagnoses/{id}/similar``), an unrelated incident below it;
- the migration created the pgvector extension, the vector column and its HNSW index.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from processors.historian.postgres import PostgresHistorian
from reflux.cli import main
from schemas.models import (
    Diagnosis,
    DiagnosisKind,
    DiagnosisSeverity,
    MutationAction,
    MutationRequest,
)
from tests.integration.engine_fixtures import Harness, HarnessFactory, transform
from tests.integration.test_cli_client import api_url  # noqa: F401  the fixture
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WAIT = 20_000
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def historian(engine_harness: HarnessFactory) -> Harness:
    """Only what these tests need: the historian, and the mutation processor (no replay)."""
    return engine_harness(
        scheduler=False,
        workers=False,
        trigger_router=False,
        replay_runner=False,
        projector=True,  # the API's mutation routes read the proposals' read model
        historian=True,
    )


@pytest.fixture
def harness(historian: Harness) -> Harness:
    """The engine of ``api_url`` (the CLI tests' API server): this module's lighter one."""
    return historian


@pytest.fixture
def api(historian: Harness) -> Iterator[TestClient]:
    settings = ApiSettings(
        read_schema=historian.schema,
        api_schema=f"{historian.schema}_api",
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    headers = key_headers(historian.settings, settings)
    with TestClient(create_app(historian.settings, settings), headers=headers) as client:
        yield client


def diagnosis(
    workflow_id: str,
    step_id: str,
    kind: DiagnosisKind,
    *,
    node: str = "http.request",
    error_class: str | None = None,
    explanation: str,
    severity: DiagnosisSeverity = DiagnosisSeverity.WARNING,
    minutes: int = 0,
    evidence: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> Diagnosis:
    detected = T0 + timedelta(minutes=minutes)
    subject = f"workflow:{workflow_id}/step:{step_id}"
    return Diagnosis(
        diagnosis_id=f"{kind.value}/{subject}/{int(detected.timestamp() * 1000)}",
        subject=subject,
        kind=kind,
        severity=severity,
        detector="adwin",
        workflow_id=workflow_id,
        workflow_version=1,
        step_id=step_id,
        node=node,
        node_version="1.0.0",
        error_class=error_class,
        detected_at=detected,
        traces_seen=400,
        metrics=metrics or {},
        example_run_ids=[str(uuid.uuid4())],
        evidence=json.dumps(evidence or {}, sort_keys=True),
        explanation=explanation,
    )


def publish(h: Harness, *diagnoses: Diagnosis) -> None:
    for d in diagnoses:
        h.producer.send(h.engine.catalog.diagnoses.topic, d.subject, d)
    h.producer.flush(10)


def listed(api: TestClient, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/diagnoses", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def wait_listed(api: TestClient, count: int, **params: Any) -> list[dict[str, Any]]:
    found = eventually(
        lambda: listed(api, **params),
        30,
        f"{count} diagnoses stored by the historian ({params})",
        until=lambda rows: len(rows) >= count,
    )
    return found


def test_diagnoses_on_the_topic_are_stored_and_served(historian: Harness, api: TestClient) -> None:
    wf = f"orders-{uuid.uuid4().hex[:6]}"
    slow = diagnosis(
        wf,
        "fetch_price",
        DiagnosisKind.LATENCY_DRIFT,
        explanation="fetch_price got slower: mean 120 ms -> 260 ms",
        metrics={"mean_before": 120.0, "mean_after": 260.0},
        evidence={"window": 64, "p95_ms": 410.0},
    )
    failing = diagnosis(
        wf,
        "charge",
        DiagnosisKind.FAILURE_DRIFT,
        error_class="HTTPStatusError",
        severity=DiagnosisSeverity.CRITICAL,
        explanation="charge fails: 2% -> 31% of attempts",
        evidence={"error_message": "503 Service Unavailable from payments"},
        minutes=5,
    )
    other = diagnosis(
        f"other-{uuid.uuid4().hex[:6]}",
        "s",
        DiagnosisKind.COST,
        node="openai.chat",
        explanation="a run costs $0.40",
        minutes=10,
    )
    publish(historian, slow, failing, other)
    # Twice: a redelivered (or re-published) finding is stored once.
    publish(historian, slow)

    rows = wait_listed(api, 2, workflow_id=wf)
    assert [r["diagnosis_id"] for r in rows] == [failing.diagnosis_id, slow.diagnosis_id]
    assert len(wait_listed(api, 3)) == 3
    assert [r["diagnosis_id"] for r in listed(api, workflow_id=wf, kind="failure_drift")] == [
        failing.diagnosis_id
    ]
    assert [r["diagnosis_id"] for r in listed(api, severity="critical")] == [failing.diagnosis_id]
    since = (T0 + timedelta(minutes=5)).isoformat()
    assert {r["diagnosis_id"] for r in listed(api, since=since)} == {
        failing.diagnosis_id,
        other.diagnosis_id,
    }
    assert len(listed(api, limit=1)) == 1

    detail = api.get(f"/v1/diagnoses/{failing.diagnosis_id}")
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["error_class"] == "HTTPStatusError" and body["severity"] == "critical"
    assert body["evidence"] == {"error_message": "503 Service Unavailable from payments"}
    assert "503 Service Unavailable from payments" in body["context"]
    assert body["embedding_model"] == "wordllama/l2_supercat_256"
    assert body["proposals"] == []

    missing = api.get("/v1/diagnoses/latency_drift/workflow:nope/step:x/1")
    assert missing.status_code == 404
    assert "latency_drift/workflow:nope/step:x/1" in missing.json()["detail"]
    assert api.get("/v1/diagnoses/nope/similar").status_code == 404

    for params, field in (
        ({"kind": "slowness"}, "kind"),
        ({"severity": "huge"}, "severity"),
        ({"since": "yesterday"}, "since"),
        ({"limit": 0}, "limit"),
    ):
        bad = api.get("/v1/diagnoses", params=params)
        assert bad.status_code == 422, (params, bad.text)
        assert bad.json()["detail"][0]["loc"] == ["query", field]

    with psycopg.connect(historian.settings.postgres_dsn, autocommit=True) as conn:
        count = conn.execute(
            f'SELECT count(*) FROM "{historian.schema}".diagnoses WHERE diagnosis_id = %s',
            (slow.diagnosis_id,),
        ).fetchone()
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s "
            "AND indexname = 'diagnoses_embedding_idx'",
            (historian.schema,),
        ).fetchone()
    assert count == (1,)
    assert index is not None and "hnsw" in index[0] and "vector_cosine_ops" in index[0]


def _register(api: TestClient, workflow_id: str) -> None:
    definition = {
        "id": workflow_id,
        "steps": [transform("fetch_quote", "word", {"word": "base"})],
        "outputs": {"said": "{{ steps.fetch_quote.output.result }}"},
    }
    response = api.post("/v1/workflows", json=definition)
    assert response.status_code == 201, response.text
    eventually(
        lambda: api.get(f"/v1/workflows/{workflow_id}").status_code,
        15,
        f"workflow {workflow_id} in the projection",
        until=lambda status: status == 200,
    )


def _kept_fix(h: Harness, api: TestClient, workflow_id: str, diagnosis_id: str) -> str:
    """A proposal answering ``diagnosis_id`` taken to ``kept`` by the real mutation processor;
    the keep carries the canary's evidence (the measured effect)."""
    proposed = api.post(
        "/v1/mutations",
        json={
            "workflow_id": workflow_id,
            "changes": [
                {
                    "type": "update_params",
                    "step_id": "fetch_quote",
                    "data": {"expression": "word", "data": {"word": "fixed"}},
                }
            ],
            "rationale": "time out the supplier call at the p99 and retry it",
            "author": "optimizer:timeout",
            "evidence": {
                "diagnosis_id": diagnosis_id,
                "strategy": "timeout",
                "predicted_effect": {"p95_ms": -300},
                "similar_incidents": [],
            },
            "wait_ms": WAIT,
        },
    )
    assert proposed.status_code == 200, proposed.text
    mutation_id = str(proposed.json()["mutation_id"])
    approved = api.post(f"/v1/mutations/{mutation_id}/approve", json={"wait_ms": WAIT})
    assert approved.status_code == 200, approved.text
    # As the canary decides: a keep request with its statistics.
    keep = MutationRequest(
        workflow_id=workflow_id,
        mutation_id=mutation_id,
        action=MutationAction.KEEP,
        actor="canary",
        reason="success 99.6% vs 88.0% (p < 0.01)",
        evidence={"effect": {"success_rate_delta": 0.116, "p95_ms_delta": -310.0}, "runs": 240},
    )
    h.producer.send(h.engine.catalog.mutations.topic, workflow_id, keep)
    h.producer.flush(10)
    return mutation_id


def test_a_past_incident_with_a_kept_fix_comes_first(historian: Harness, api: TestClient) -> None:
    wf = f"quotes-{uuid.uuid4().hex[:6]}"
    _register(api, wf)
    past = diagnosis(
        wf,
        "fetch_quote",
        DiagnosisKind.TIMEOUT_DRIFT,
        error_class="StepTimedOut",
        explanation="fetch_quote calls to the supplier API time out: 1% -> 18% of attempts",
        evidence={"error_message": "supplier API did not answer within 5 s"},
    )
    unrelated = diagnosis(
        f"mail-{uuid.uuid4().hex[:6]}",
        "render",
        DiagnosisKind.REPEATED_INPUTS,
        node="transform",
        severity=DiagnosisSeverity.INFO,
        explanation="render ran 40 times on identical inputs: a cache candidate",
        evidence={"repeats": 40},
        minutes=1,
    )
    publish(historian, past, unrelated)
    wait_listed(api, 2)
    mutation_id = _kept_fix(historian, api, wf, past.diagnosis_id)

    def proposals() -> list[dict[str, Any]]:
        return list(api.get(f"/v1/diagnoses/{past.diagnosis_id}").json()["proposals"])

    linked = eventually(
        proposals,
        30,
        f"mutation {mutation_id} linked to {past.diagnosis_id} as kept",
        until=lambda ps: bool(ps) and ps[0]["status"] == "kept",
    )
    assert linked[0]["mutation_id"] == mutation_id
    assert linked[0]["strategy"] == "timeout"
    assert linked[0]["predicted_effect"] == {"p95_ms": -300}
    assert linked[0]["effect"]["effect"] == {"success_rate_delta": 0.116, "p95_ms_delta": -310.0}

    new = diagnosis(
        wf,
        "fetch_quote",
        DiagnosisKind.TIMEOUT_DRIFT,
        error_class="StepTimedOut",
        explanation="fetch_quote: the supplier API times out again, 2% -> 25% of attempts",
        evidence={"error_message": "supplier API did not answer within 5 s"},
        minutes=60 * 24,
    )
    # Told exactly like the new one, but nothing was tried for it: the kept fix of a slightly
    # less similar incident is still the better precedent.
    twin = diagnosis(
        wf,
        "fetch_quote",
        DiagnosisKind.TIMEOUT_DRIFT,
        error_class="StepTimedOut",
        explanation=new.explanation,
        evidence={"error_message": "supplier API did not answer within 5 s"},
        minutes=30,
    )
    publish(historian, twin)
    wait_listed(api, 3)
    lookup = PostgresHistorian(historian.settings, schema=historian.schema)
    try:
        found = lookup.similar(new, k=5)
    finally:
        lookup.close()
    assert [i.diagnosis_id for i in found] == [
        past.diagnosis_id,
        twin.diagnosis_id,
        unrelated.diagnosis_id,
    ]
    first, second, third = found
    assert first.kept and not second.kept and not third.kept
    # The twin is the closer match; the kept fix wins by the bonus, the unrelated one is far.
    assert second.similarity > first.similarity > third.similarity + 0.3
    assert first.proposals[0].mutation_id == mutation_id
    assert first.proposals[0].status == "kept" and first.proposals[0].strategy == "timeout"
    assert first.proposals[0].effect is not None
    assert first.proposals[0].effect["effect"]["success_rate_delta"] == 0.116
    assert first.proposals[0].changes[0]["step_id"] == "fetch_quote"

    # The same through the API, once the new diagnosis is stored too.
    publish(historian, new)
    wait_listed(api, 4)
    similar = api.get(f"/v1/diagnoses/{new.diagnosis_id}/similar", params={"k": 5})
    assert similar.status_code == 200, similar.text
    data = similar.json()["data"]
    assert [d["diagnosis_id"] for d in data] == [
        past.diagnosis_id,
        twin.diagnosis_id,
        unrelated.diagnosis_id,
    ]
    assert data[0]["kept"] and data[0]["score"] > data[0]["similarity"]
    assert data[0]["proposals"][0]["mutation_id"] == mutation_id
    assert not data[1]["kept"] and data[1]["score"] == data[1]["similarity"]
    assert data[1]["similarity"] == pytest.approx(1.0, abs=1e-4)
    bad = api.get(f"/v1/diagnoses/{new.diagnosis_id}/similar", params={"k": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "k"]


def test_the_diagnoses_cli(
    historian: Harness,
    api_url: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = f"cli-{uuid.uuid4().hex[:6]}"
    slow = diagnosis(
        wf,
        "fetch_price",
        DiagnosisKind.LATENCY_DRIFT,
        explanation="fetch_price got slower: mean 120 ms -> 260 ms",
        evidence={"p95_ms": 410.0},
    )
    slower = diagnosis(
        wf,
        "fetch_price",
        DiagnosisKind.LATENCY_DRIFT,
        explanation="fetch_price got slower again: mean 130 ms -> 300 ms",
        minutes=60,
    )
    publish(historian, slow, slower)

    def listing() -> str:
        assert main(["diagnoses", "list", "--workflow", wf, "--api", api_url]) == 0
        return capsys.readouterr().out

    out = eventually(listing, 30, "two diagnoses listed", until=lambda o: o.count("\n  ") == 2)
    assert out.index(slower.diagnosis_id) < out.index(slow.diagnosis_id)
    assert "warning  latency_drift" in out

    assert main(["diagnoses", "show", slow.diagnosis_id, "--api", api_url]) == 0
    shown = capsys.readouterr().out
    assert f"diagnosis {slow.diagnosis_id}" in shown
    assert "latency_drift (warning) by adwin" in shown and "proposals: 0" in shown
    assert "embedded (wordllama/l2_supercat_256): latency drift (warning)" in shown
    # --json: the API's body as one JSON document, nothing else on stdout.
    assert main(["diagnoses", "show", slow.diagnosis_id, "--json", "--api", api_url]) == 0
    assert json.loads(capsys.readouterr().out)["diagnosis_id"] == slow.diagnosis_id
    assert main(["diagnoses", "list", "--workflow", wf, "--json", "--api", api_url]) == 0
    listed = [d["diagnosis_id"] for d in json.loads(capsys.readouterr().out)["data"]]
    assert listed == [slower.diagnosis_id, slow.diagnosis_id]

    assert main(["diagnoses", "similar", slower.diagnosis_id, "-k", "3", "--api", api_url]) == 0
    similar = capsys.readouterr().out
    assert "1. similarity 0.9" in similar and slow.diagnosis_id in similar
    assert "nothing tried" in similar

    assert main(["diagnoses", "show", "latency_drift/nope/1", "--api", api_url]) == 2
    assert "404: diagnosis 'latency_drift/nope/1' not found" in capsys.readouterr().err
    assert main(["diagnoses", "list", "--kind", "slowness", "--api", api_url]) == 2
    assert "422: kind:" in capsys.readouterr().err
