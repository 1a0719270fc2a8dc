"""Scheduler snapshots without a broker: the record format, the run table and its markers.

The markers are only safe if ``decide`` answers a late input for a finished run the same way
whether it holds the full state or the marker's minimal state: checked here for every golden
scenario that finishes, and every kind of input.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest

from processors.scheduler.decide import CacheHit, CacheMiss, SchedulerInput, decide
from processors.scheduler.runtime.run_table import FinishedRun, RunTable
from processors.scheduler.runtime.snapshots import (
    SNAPSHOT_VERSION,
    SnapshotCheckpoint,
    SnapshotFormatError,
    decode_snapshot,
    encode_checkpoint,
    encode_entry,
)
from processors.scheduler.state import RunState, RunStatus
from schemas.models import (
    CancelRun,
    FireTimer,
    GraphMutation,
    GraphMutationType,
    MutateGraph,
    NodeResult,
    PauseRun,
    RedriveStep,
    ResumeRun,
    StartRun,
    StepRef,
    TimerKind,
    TraceStatus,
)
from tests.support.scheduler_golden import SCENARIOS
from tests.support.scheduler_simulation import T0, Simulation

FINAL = {name: scenario().run for name, scenario in SCENARIOS.items()}
FINISHED = {name: state for name, state in FINAL.items() if state.is_finished}


def test_the_golden_scenarios_include_finished_and_open_runs() -> None:
    # Both kinds must be covered below; a scenario change that loses one fails here.
    assert {s.status for s in FINISHED.values()} == {RunStatus.SUCCEEDED, RunStatus.CANCELLED}
    assert len(FINISHED) >= 10
    assert any(not s.is_finished for s in FINAL.values())


# -- the record format ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FINAL))
def test_every_state_round_trips_through_its_snapshot_record(name: str) -> None:
    state = FINAL[name]
    assert decode_snapshot(encode_entry(state)) == state
    if state.is_finished:
        marker = FinishedRun.of(state)
        assert decode_snapshot(encode_entry(marker)) == marker


def test_records_carry_their_version_and_kind() -> None:
    state = FINAL["linear"]
    data = json.loads(encode_entry(state))
    assert (data["v"], data["kind"]) == (SNAPSHOT_VERSION, "run")
    assert data["state"] == state.to_snapshot()
    marker = json.loads(encode_entry(FinishedRun.of(state)))
    assert marker == {
        "v": SNAPSHOT_VERSION,
        "kind": "finished",
        "status": "succeeded",
        "last_seq": state.last_seq,
        "idempotency_key": None,
    }
    assert decode_snapshot(encode_checkpoint(1234)) == SnapshotCheckpoint(1234)


@pytest.mark.parametrize("key", [None, "order-17", 'with "quotes" and \\ and \u00e9'])
@pytest.mark.parametrize("status", [RunStatus.SUCCEEDED, RunStatus.CANCELLED])
def test_markers_round_trip_with_and_without_an_idempotency_key(
    status: RunStatus, key: str | None
) -> None:
    marker = FinishedRun(status, 41, key)
    encoded = encode_entry(marker)
    assert decode_snapshot(encoded) == marker
    # The fast path (no key) and the JSON path read the same thing.
    data = json.loads(encoded)
    assert FinishedRun(RunStatus(data["status"]), data["last_seq"], data["idempotency_key"]) == (
        marker
    )


def test_a_marker_is_a_small_fraction_of_the_full_state() -> None:
    state = FINAL["fan_out_fan_in"]
    full, small = len(encode_entry(state)), len(encode_entry(FinishedRun.of(state)))
    assert small < 120 < 10 * small < full, (small, full)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"v":2,"kind":"finished","status":"succeeded","last_seq":3}', "version 1, but got 2"),
        (b'{"kind":"checkpoint","runs_offset":3}', "version 1, but got None"),
        (b'{"v":1,"kind":"diff"}', "record kind, but got 'diff'"),
        (b'{"v":1,"kind":"finished","status":"exploded","last_seq":3}', "valid 'finished'"),
        (
            b'{"v":1,"kind":"finished","status":"exploded","last_seq":3,"idempotency_key":null}',
            "valid 'finished'",
        ),
        (b'{"v":1,"kind":"run","state":{"status":"running"}}', "valid 'run'"),
        (b'{"v":1,"kind":"checkpoint"}', "valid 'checkpoint'"),
        # An end-offset answer of -1001 (a killed leader) once became a checkpoint.
        (b'{"v":1,"kind":"checkpoint","runs_offset":-1001}', "-1001 is not an offset"),
        (b"[1, 2]", "JSON object, but got list"),
        (b"\x00\x01not json", "JSON snapshot record"),
    ],
)
def test_unknown_versions_and_damaged_records_are_refused(value: bytes, reason: str) -> None:
    with pytest.raises(SnapshotFormatError, match=reason) as info:
        decode_snapshot(value)
    assert info.value.error_class == "SnapshotFormat" and not info.value.retryable


# A snapshot written by one scheduler version is read by the next one. So a change to RunState
# (or to what evolve derives into it) needs a decision, and this test asks for it: either a
# snapshot written before the change still means what a fold by the new code gives (a new field
# with a default that old events would not set either): update the fingerprint; or it does not:
# raise SNAPSHOT_VERSION too (after the upgrade every partition is folded once from offset 0,
# logged as an error). Golden logs (test_scheduler_golden.py) catch evolve changes that keep the
# schema.
# ADR 0020 changed RetrySpec.jitter's default (0.2 -> 0.5): snapshots and RunStarted both hold
# the definition with every default applied, so old snapshots still mean what a fold gives.
# Child runs (ADR 0025) added RunState.parent and StepState.child_run_id/iteration/
# iteration_output; ADR 0024 added RunState.maps (meta.map progress, default empty): all
# default to what a fold of a log without those events gives, so old snapshots still mean
# what a fold gives. The map over a sub-workflow (ADR 0024 addendum) added MapState.workflow_id/
# workflow_version/children_running and MapChunkState.ended: defaults a map over a node (the only
# kind old logs have) folds to. ADR 0035 added StepDefinition.checker (default false: what every
# definition written before it means). Tenancy (ADR 0051) added RunState.tenant, default
# "default": the tenant a fold of a RunStarted written before it gives. Durable waits (ADR 0057)
# added StepState.wait (default None: no log before it has a StepWaitStarted) and the timer kind
# "wait" (no old state holds one): old snapshots still mean what a fold gives. Concurrent-run
# limits (ADR 0052) added WorkflowDefinition.max_concurrent_runs (default None, left out of the
# canonical form: what every definition written before it means). Tracing (ADR 0062) added
# RunState.trace_context (default {}: what a fold of a RunStarted written before it gives).
# Inline pure steps (ADR 0064) added StepDefinition.inline (default true, left out of the
# canonical form: no definition written before it opted out): old snapshots still mean what a
# fold gives.
RUN_STATE_FINGERPRINT = "485d2b213964a224"


def test_the_snapshot_format_changes_only_deliberately() -> None:
    schema = json.dumps(RunState.model_json_schema(), sort_keys=True).encode()
    fingerprint = hashlib.sha256(schema).hexdigest()[:16]
    assert (SNAPSHOT_VERSION, fingerprint) == (1, RUN_STATE_FINGERPRINT), (
        "RunState changed: decide whether snapshots written before the change are still right "
        "(see the comment above this test), then update RUN_STATE_FINGERPRINT "
        f"to {fingerprint!r} -- and SNAPSHOT_VERSION if they are not"
    )


# -- the run table ---------------------------------------------------------------------------------


def _finished(run_id: str, seq: int = 5, key: str | None = None) -> RunState:
    return RunState(run_id=run_id, status=RunStatus.SUCCEEDED, last_seq=seq, idempotency_key=key)


def test_finished_runs_beyond_the_kept_ones_shrink_to_markers_oldest_first() -> None:
    table = RunTable(kept=2)
    running = RunState(run_id="r", status=RunStatus.RUNNING, last_seq=1)
    assert table.put(running) == []
    assert table.put(_finished("a", 3)) == []
    assert table.put(_finished("b", 4)) == []
    assert table.put(_finished("c", 5, "key-c")) == ["a"]
    assert table.put(_finished("d", 6)) == ["b"]
    assert (list(table.active), list(table.recent), list(table.finished)) == (
        ["r"],
        ["c", "d"],
        ["a", "b"],
    )
    assert len(table) == 5 and set(table) == {"r", "a", "b", "c", "d"} and "a" in table
    assert table.get("a") == RunState(run_id="a", status=RunStatus.SUCCEEDED, last_seq=3)
    assert table.get("c") == _finished("c", 5, "key-c")  # still in full
    assert table.get("nope") is None
    assert (table.last_seq("a"), table.last_seq("c"), table.last_seq("r")) == (3, 5, 1)
    assert table.dirty == {"r", "a", "b", "c", "d"}
    # What snapshots record: full state while active, markers for every finished run.
    assert table.view() == {
        "r": running,
        "a": FinishedRun(RunStatus.SUCCEEDED, 3, None),
        "b": FinishedRun(RunStatus.SUCCEEDED, 4, None),
        "c": FinishedRun(RunStatus.SUCCEEDED, 5, "key-c"),
        "d": FinishedRun(RunStatus.SUCCEEDED, 6, None),
    }
    assert [s.run_id for s in table.active_states()] == ["r"]


def test_a_run_that_finishes_moves_out_of_the_active_runs() -> None:
    table = RunTable(kept=0)
    table.put(RunState(run_id="r", status=RunStatus.RUNNING, last_seq=1))
    assert table.put(_finished("r", 2)) == ["r"]
    assert (table.active, dict(table.recent)) == ({}, {})
    assert table.finished == {"r": FinishedRun(RunStatus.SUCCEEDED, 2, None)}
    # A late rejection moves a marker's position on; it stays a marker.
    assert table.put(_finished("r", 3)) == ["r"]
    assert table.finished == {"r": FinishedRun(RunStatus.SUCCEEDED, 3, None)}
    assert len(table) == 1


def test_entries_from_a_snapshot_are_not_dirty() -> None:
    table = RunTable(kept=4)
    table.put_entry("a", FinishedRun(RunStatus.CANCELLED, 7, None))
    table.put_entry("b", RunState(run_id="b", status=RunStatus.PAUSED, last_seq=2))
    table.put_entry("c", _finished("c"))  # a full finished state (older writer): kept as marker
    assert table.dirty == set()
    assert set(table.active) == {"b"} and set(table.finished) == {"a", "c"}
    assert not table.held_in_full("a") and table.held_in_full("b")


# -- markers answer like the full state ------------------------------------------------------------


def _inputs(state: RunState) -> list[SchedulerInput]:
    run_id, now = state.run_id, T0 + timedelta(hours=1)
    fields: dict[str, Any] = {"run_id": run_id, "occurred_at": now}
    # The step's own ids, so only the run's status can make these inputs no-ops.
    step = max(state.steps.values(), key=lambda s: (s.invocation_id is not None, s.attempt))
    step_id, attempt = step.step_id, max(step.attempt, 1)
    invocation_id, key = step.invocation_id or "late-invocation", step.cache_key or "cache-key"
    ref = StepRef(step_id=step_id, node="http.request", node_version="1.0.0")
    return [
        CancelRun(command_id="late-cancel", **fields),
        PauseRun(command_id="late-pause", **fields),
        ResumeRun(command_id="late-resume", **fields),
        RedriveStep(command_id="late-redrive", step_id=step_id, **fields),
        MutateGraph(
            command_id="late-mutate",
            mutation_id="m-1",
            mutation=GraphMutation(
                type=GraphMutationType.UPDATE_PARAMS, step_id=step_id, data={"params": {}}
            ),
            **fields,
        ),
        StartRun(command_id="start-again", workflow_id=state.workflow_id, inputs={}, **fields),
        StartRun(
            command_id="start-same-key",
            workflow_id=state.workflow_id,
            inputs={},
            idempotency_key=state.idempotency_key or "some-key",
            **fields,
        ),
        FireTimer(
            command_id="late-timer",
            timer_id="t-1",
            kind=TimerKind.STEP_TIMEOUT,
            due_at=now,
            step_id=step_id,
            attempt=attempt,
            **fields,
        ),
        NodeResult(
            run_id=run_id,
            seq=0,
            invocation_id=invocation_id,
            attempt=attempt,
            step=ref,
            status=TraceStatus.OK,
            output={"late": True},
            started_at=now,
            finished_at=now,
            occurred_at=now,
        ),
        CacheHit(run_id, step_id, attempt, key, output=1),
        CacheMiss(run_id, step_id, attempt, key),
    ]


def _answer(state: RunState, input: SchedulerInput) -> tuple[Any, ...]:
    sim = Simulation({"id": "unused", "steps": [{"id": "x", "node": "transform@^1"}]})
    decision = decide(state, input, sim.context())
    assert decision.state is not None
    events = [(type(e).__name__, e.seq, getattr(e, "reason", None)) for e in decision.events]
    return (
        events,
        decision.rejection,
        decision.invocations,
        decision.cache_lookups,
        decision.cache_writes,
        FinishedRun.of(decision.state),
    )


@pytest.mark.parametrize("name", sorted(FINISHED))
def test_a_marker_answers_every_late_input_like_the_full_state(name: str) -> None:
    full = FINISHED[name]
    small = FinishedRun.of(full).state(full.run_id)
    answers = []
    for input in _inputs(full):
        expected = _answer(full, input)
        assert _answer(small, input) == expected, type(input).__name__
        answers.append(expected)
    # The inputs really are late ones: commands are rejected with the run's status, the rest
    # (results, timers, cache answers) change nothing.
    rejected = [a for a in answers if a[1] is not None]
    assert len(rejected) >= 6, answers
    assert all(f"it is {full.status}" in a[1] for a in rejected if "exist" not in a[1]), rejected
    assert all(not a[2] and not a[3] and not a[4] for a in answers)


def test_with_an_idempotency_key_a_start_sent_again_is_a_silent_no_op_for_a_marker() -> None:
    full = FINISHED["linear"].model_copy(update={"idempotency_key": "order-17"})
    small = FinishedRun.of(full).state(full.run_id)
    again = StartRun(
        run_id=full.run_id,
        command_id="again",
        workflow_id="linear",
        inputs={},
        idempotency_key="order-17",
    )
    assert _answer(small, again) == _answer(full, again)
    assert _answer(small, again)[:2] == ([], None)


def test_the_one_difference_a_command_id_seen_before_is_rejected_not_deduplicated() -> None:
    # Documented in run_table: the marker does not keep the processed ids.
    full = FINISHED["cancel"]
    cancel_id = full.processed_ids[-1]
    again = CancelRun(run_id=full.run_id, command_id=cancel_id)
    assert _answer(full, again)[:2] == ([], None)
    events, rejection, *_ = _answer(FinishedRun.of(full).state(full.run_id), again)
    assert [e[0] for e in events] == ["CommandRejected"]
    assert rejection == "Expected run to be running, paused or failed, but it is cancelled"
