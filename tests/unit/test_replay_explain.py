"""``processors.replay.explain`` over the golden run logs (tests/fixtures/runs/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.replay.explain import (
    UnknownEventError,
    describe_state,
    event_from_json,
    replay,
)
from processors.scheduler.evolve import fold
from schemas.run_log import RunEvent

RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
GOLDEN = sorted(p.stem for p in RUNS.glob("*.jsonl"))


def _load(name: str) -> list[RunEvent]:
    lines = (RUNS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [event_from_json(r["type"], r["event"]) for r in map(json.loads, lines) if r]


def _text(name: str, until: int | None = None) -> str:
    return "\n".join(line for step in replay(_load(name), until) for line in step.lines)


@pytest.mark.parametrize("name", GOLDEN)
def test_every_golden_log_is_explained_and_folds_to_its_summary(name: str) -> None:
    events = _load(name)
    steps = list(replay(events))
    assert [s.seq for s in steps] == [e.seq for e in events]
    assert all(s.lines for s in steps)
    expected = json.loads((RUNS / f"{name}.summary.json").read_text(encoding="utf-8"))
    assert steps[-1].state.summary() == expected
    state = fold(events)
    assert state is not None
    assert steps[-1].state == state
    assert describe_state(state)[0].startswith(f"run {state.run_id}")


def test_condition_skip_says_which_expression_and_its_value() -> None:
    text = _text("condition_skip")
    assert (
        "step approve skipped: condition 'steps.check.output.params.amount > `100`' was false"
        in text
    )
    assert (
        "why: condition `steps.check.output.params.amount > `100`` -> false = false (falsy)" in text
    )
    assert "step notify skipped: upstream step 'approve' was skipped" in text
    assert "why: its need(s) approve were skipped" in text
    assert "step auto became ready and was scheduled (attempt 1)" in text
    assert "why: its needs are done (check succeeded)" in text


def test_retry_says_which_attempt_backoff_and_error() -> None:
    text = _text("retry_then_success")
    assert (
        "retry of step flaky fired after [HttpStatus503] attempt 1 failed: attempt 2 at "
        "2025-01-01T12:00:00.089000+00:00 (backoff 84 ms)"
    ) in text
    assert "retry policy: max 3 attempts" in text
    assert "step flaky scheduled again: attempt 2" in text
    assert "  step flaky: failed -> retry_wait" in text


def test_mutations_say_who_and_why() -> None:
    assert "mutation update_params on step b applied by alice: b needs a's value" in _text(
        "graph_mutation"
    )


def test_map_chunks_child_runs_and_pauses_are_described() -> None:
    assert "map step each: chunk 0 finished, 2 ok, 0 failed, 1 to retry" in _text("map_chunks")
    assert "child run" in _text("map_children")
    assert "run paused by" in _text("pause_resume")
    assert "run resumed by" in _text("pause_resume")


def test_until_stops_at_that_seq_with_the_state_there() -> None:
    steps = list(replay(_load("retry_then_success"), until=4))
    assert steps[-1].seq == 4
    state_lines = describe_state(steps[-1].state)
    assert "status running  after seq 4" in state_lines[0]
    assert any("flaky" in line and "retry_wait" in line for line in state_lines)
    assert any(line.startswith("  timer backoff flaky") for line in state_lines)


def test_unknown_event_type_is_refused_with_its_name() -> None:
    with pytest.raises(UnknownEventError, match="'NotAnEvent'"):
        event_from_json("NotAnEvent", {})


def test_inline_steps_are_described_as_evaluated_by_the_scheduler() -> None:
    text = _text("inline_steps")
    assert "step pick attempt 1 evaluated inline by the scheduler (no worker)" in text
    assert "step fetch attempt 1 started on worker sim-worker" in text
