"""Run events -> outcome CloudEvents (processors.scheduler.outcomes), on the golden scenarios'
decisions, each record checked against the published JSON Schema (schemas/json/outcome)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from processors.scheduler.outcomes import (
    Outcome,
    OutcomeType,
    outcome_source,
    outcomes_for,
)
from processors.scheduler.runtime.outcomes import OutcomeWriter
from processors.scheduler.state import RunState
from processors.triggers.formats import TriggerFormatError, cloud_event_from_json, plain_trigger
from schemas.json_schemas import check, load_schema, schema_names
from schemas.models import PayloadRef, RunCancelled, RunSucceeded
from schemas.run_log import RunEvent
from tests.support.scheduler_golden import SCENARIOS
from tests.support.scheduler_simulation import Simulation

SOURCE = outcome_source("acme")
OUTCOME = jsonschema.Draft202012Validator(
    load_schema("outcome"), format_checker=jsonschema.FormatChecker()
)
RUN_TYPES = {
    "RunStarted": OutcomeType.RUN_STARTED,
    "RunSucceeded": OutcomeType.RUN_SUCCEEDED,
    "RunFailed": OutcomeType.RUN_FAILED,
    "RunCancelled": OutcomeType.RUN_CANCELLED,
    "StepFailed": OutcomeType.STEP_FAILED,
    "StepTimedOut": OutcomeType.STEP_FAILED,
}


def _outcomes(
    sim: Simulation, store: Callable[[Any], PayloadRef | None] | None = None
) -> list[Outcome]:
    out: list[Outcome] = []
    for decision in sim.decisions:
        if decision.state is not None and decision.events:
            out += outcomes_for(decision.events, decision.state, source=SOURCE, store_outputs=store)
    return out


def _valid(outcome: Outcome) -> dict[str, Any]:
    """The record as a consumer reads it (the JSON bytes), after the schema accepted it."""
    event: dict[str, Any] = json.loads(outcome.to_json())
    errors = sorted(OUTCOME.iter_errors(event), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert event["subject"] == event["data"]["run_id"] == outcome.key
    return event


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_maps_exactly_its_outcome_events(name: str) -> None:
    sim = SCENARIOS[name]()
    outcomes = _outcomes(sim)
    expected = [
        (event.event_id, RUN_TYPES[type(event).__name__].value)
        for event in sim.log
        if type(event).__name__ in RUN_TYPES
    ]
    assert [(o.event["id"], o.type) for o in outcomes] == expected
    for outcome in outcomes:
        _valid(outcome)


def test_succeeded_run_carries_its_outputs_and_the_log_positions() -> None:
    sim = SCENARIOS["linear"]()
    events = [_valid(o) for o in _outcomes(sim)]
    assert [e["type"] for e in events] == ["reflux.run.started", "reflux.run.succeeded"]
    started, succeeded = events
    assert started["source"] == "reflux://acme"
    assert started["data"]["status"] == "running"
    assert started["data"]["started_by"]["source"] == "api"
    assert started["data"]["workflow_id"] == sim.run.workflow_id
    assert succeeded["data"]["outputs"] == sim.run.outputs
    assert succeeded["data"]["status"] == "succeeded"
    final = sim.log[-1]
    assert isinstance(final, RunSucceeded)
    assert succeeded["data"]["seq"] == final.seq
    assert succeeded["time"].endswith("Z")
    assert succeeded["time"].startswith(final.occurred_at.strftime("%Y-%m-%dT%H:%M:%S."))


def test_step_failures_say_whether_the_step_is_retried_then_the_run_fails() -> None:
    sim = SCENARIOS["retries_exhausted"]()
    events = [_valid(o) for o in _outcomes(sim)]
    steps = [e for e in events if e["type"] == "reflux.step.failed"]
    assert len(steps) >= 2
    assert [s["data"]["retrying"] for s in steps] == [True] * (len(steps) - 1) + [False]
    assert [s["data"]["attempt"] for s in steps] == list(range(1, len(steps) + 1))
    failed = events[-1]
    assert failed["type"] == "reflux.run.failed"
    assert failed["data"]["error"] == steps[-1]["data"]["error"]
    assert failed["data"]["step_id"] == steps[-1]["data"]["step_id"]


def test_a_timed_out_attempt_is_a_step_failure_with_the_timeout_error() -> None:
    events = [_valid(o) for o in _outcomes(SCENARIOS["step_timeout"]())]
    timed_out = [e for e in events if e["data"].get("status") == "timed_out"]
    assert timed_out, events
    assert timed_out[0]["data"]["error"]["error_class"] == "StepTimeout"


def test_a_cancelled_run_names_the_reason() -> None:
    sim = SCENARIOS["cancel"]()
    events = [_valid(o) for o in _outcomes(sim)]
    assert events[-1]["type"] == "reflux.run.cancelled"
    data = events[-1]["data"]
    assert data["reason"] == "no longer needed"
    assert data["error"]["error_class"] == "RunCancelled"
    assert "no longer needed" in data["error"]["message"]
    assert isinstance(next(e for e in sim.log if isinstance(e, RunCancelled)), RunCancelled)


def test_large_outputs_are_a_reference_not_bytes() -> None:
    ref = PayloadRef(
        uri="s3://reflux/outputs/" + "a" * 64,
        size_bytes=300_000,
        sha256="a" * 64,
        content_type="application/json",
    )
    seen: list[Any] = []

    def store(outputs: Any) -> PayloadRef | None:
        seen.append(outputs)
        return ref

    sim = SCENARIOS["linear"]()
    succeeded = _valid(_outcomes(sim, store)[-1])
    assert seen == [sim.run.outputs]
    assert "outputs" not in succeeded["data"]
    assert succeeded["data"]["outputs_ref"] == ref.model_dump(mode="json")


def test_a_schema_refuses_what_the_contract_forbids() -> None:
    good = _valid(_outcomes(SCENARIOS["linear"]())[-1])
    for broken in (
        {**good, "specversion": "0.3"},
        {**good, "type": "reflux.run.exploded"},
        {**good, "data": {**good["data"], "status": "failed"}},
        {**good, "data": {k: v for k, v in good["data"].items() if k != "outputs"}},
        {**good, "time": "yesterday"},
    ):
        assert list(OUTCOME.iter_errors(broken)), broken


def test_other_events_make_no_outcome() -> None:
    sim = SCENARIOS["pause_resume"]()
    quiet: list[RunEvent] = [e for e in sim.log if type(e).__name__ not in RUN_TYPES]
    assert quiet
    state: RunState = sim.run
    assert outcomes_for(quiet, state, source=SOURCE) == []


def test_the_published_schema_files_are_generated_and_valid() -> None:
    assert check() == [], "run: python -m schemas.json_schemas"
    for name in schema_names():
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:reflux:schema:{name}"
        # Self-contained: every $ref points into the file's own $defs.
        refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))
        assert all(r.startswith("#/$defs/") for r in refs), (name, refs)


PLAIN_OK: dict[str, Any] = {
    "source": "erp",
    "source_key": "orders",
    "workflow_id": "order-placed",
    "payload": {"order": 7},
    "idempotency_key": "erp-7",
}
PLAIN_CASES: list[Any] = [
    PLAIN_OK,
    {**PLAIN_OK, "workflow_version": 2},
    {**PLAIN_OK, "workflow_version": None, "source_key": None},
    {k: v for k, v in PLAIN_OK.items() if k not in ("payload", "source_key")},
    {**PLAIN_OK, "payload": [1, "two"]},
    {k: v for k, v in PLAIN_OK.items() if k != "workflow_id"},
    {k: v for k, v in PLAIN_OK.items() if k != "idempotency_key"},
    {**PLAIN_OK, "workflow": "typo"},
    {**PLAIN_OK, "workflow_version": 0},
    {**PLAIN_OK, "workflow_version": "2"},
    {**PLAIN_OK, "source": ""},
    {**PLAIN_OK, "source": 7},
    {**PLAIN_OK, "idempotency_key": "a\nb"},
    {**PLAIN_OK, "source_key": ""},
    ["not", "an", "object"],
]
CE_OK: dict[str, Any] = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "erp",
    "type": "com.example.order.placed",
    "subject": "order-placed",
    "time": "2026-12-06T17:00:00Z",
    "datacontenttype": "application/json",
    "data": {"order": 7},
}
CE_CASES: list[Any] = [
    CE_OK,
    {**CE_OK, "traceparent": "00-abc"},
    {k: v for k, v in CE_OK.items() if k not in ("data", "time", "datacontenttype")},
    {**CE_OK, "subject": None},
    {k: v for k, v in CE_OK.items() if k != "data"} | {"data_base64": "eyJhIjoxfQ=="},
    {k: v for k, v in CE_OK.items() if k != "id"},
    {**CE_OK, "id": ""},
    {**CE_OK, "source": 3},
    {**CE_OK, "specversion": "0.3"},
    {**CE_OK, "subject": ""},
    {**CE_OK, "time": "yesterday"},
    {**CE_OK, "type": "a\u0001b"},
    {**CE_OK, "data_base64": "AA=="},
]


def _accepted(parse: Callable[[], object]) -> bool:
    try:
        parse()
    except TriggerFormatError:
        return False
    return True


@pytest.mark.parametrize("index", range(len(PLAIN_CASES)))
def test_the_plain_trigger_schema_accepts_what_the_trigger_router_accepts(index: int) -> None:
    document = PLAIN_CASES[index]
    schema = jsonschema.Draft202012Validator(load_schema("trigger"))
    parsed = _accepted(
        lambda: plain_trigger(document, source_key="k", received_at=datetime.now(UTC))
    )
    assert schema.is_valid(document) == parsed, document


@pytest.mark.parametrize("index", range(len(CE_CASES)))
def test_the_cloudevent_trigger_schema_accepts_what_the_trigger_router_accepts(
    index: int,
) -> None:
    document = CE_CASES[index]
    schema = jsonschema.Draft202012Validator(load_schema("trigger.cloudevent"))
    assert schema.is_valid(document) == _accepted(lambda: cloud_event_from_json(document)), document


def test_the_runtime_records_point_at_their_run_events_and_carry_the_content_type() -> None:
    sim = SCENARIOS["retries_exhausted"]()
    writer = OutcomeWriter("acme", "acme.run-outcomes", lambda outputs: None)
    seen = 0
    for decision in sim.decisions:
        for record in writer.records(decision):
            event = decision.events[record.event_index]
            value = json.loads(record.value)
            assert value["id"] == event.event_id and value["data"]["seq"] == event.seq
            assert record.key == event.run_id.encode()
            assert record.headers == [("content-type", b"application/cloudevents+json")]
            seen += 1
    assert seen == sum(1 for e in sim.log if type(e).__name__ in RUN_TYPES)
