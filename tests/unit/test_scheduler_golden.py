"""Golden run logs: committed event logs must replay to their committed state summaries.

An ``evolve`` change that replays old logs differently fails here. If the change is deliberate,
regenerate with ``python -m tests.support.scheduler_golden``, review the diff, and commit both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.scheduler_golden import SCENARIOS, dump_events, load_events, replay_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
BEFORE_STEP_STARTED = FIXTURES / "before-step-started"
"""The logs as schedulers wrote them before StepStarted existed (step timeout armed at dispatch,
no queue timeout): runs in flight at an upgrade have such logs, and they must replay unchanged."""
BEFORE_MERGED_DISPATCH = FIXTURES / "before-merged-dispatch"
"""The logs as schedulers wrote them before a dispatch could schedule its step in the same event
(ADR 0075: a StepScheduled before every StepDispatched); they must replay to the same summaries
as today's logs of the same scenarios, but for ``last_seq`` (one event fewer per dispatch)."""


def logs() -> list[Path]:
    return sorted(FIXTURES.glob("*.jsonl"))


def test_every_scenario_has_a_committed_log() -> None:
    assert {p.stem for p in logs()} == set(SCENARIOS)


@pytest.mark.parametrize("path", logs(), ids=lambda p: p.stem)
def test_committed_log_replays_to_its_summary(path: Path) -> None:
    expected = json.loads(path.with_suffix(".summary.json").read_text(encoding="utf-8"))
    state = replay_file(path)
    assert state.summary() == expected


@pytest.mark.parametrize("path", logs(), ids=lambda p: p.stem)
def test_committed_log_is_gap_free_and_round_trips(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    events = load_events(text)
    assert [e.seq for e in events] == list(range(len(events)))
    assert dump_events(events) == text


def legacy_logs() -> list[Path]:
    return sorted(BEFORE_STEP_STARTED.glob("*.jsonl"))


def test_the_logs_from_before_step_started_are_kept() -> None:
    assert len(legacy_logs()) == 17


@pytest.mark.parametrize("path", legacy_logs(), ids=lambda p: p.stem)
def test_logs_from_before_step_started_replay_to_their_summaries(path: Path) -> None:
    expected = json.loads(path.with_suffix(".summary.json").read_text(encoding="utf-8"))
    events = load_events(path.read_text(encoding="utf-8"))
    assert not any(type(e).__name__ in ("StepStarted", "StepTimeoutExtended") for e in events)
    assert [e.seq for e in events] == list(range(len(events)))
    state = replay_file(path)
    assert state.summary() == expected


def test_load_events_rejects_non_run_records() -> None:
    line = json.dumps({"type": "reflux.commands.PauseRun", "event": {"run_id": "r"}})
    with pytest.raises(ValueError, match="Expected a run event type"):
        load_events(line)


@pytest.mark.parametrize(
    "path", sorted(BEFORE_MERGED_DISPATCH.glob("*.jsonl")), ids=lambda p: p.stem
)
def test_logs_from_before_merged_dispatches_replay_to_todays_summaries(path: Path) -> None:
    old = json.loads(path.with_suffix(".summary.json").read_text(encoding="utf-8"))
    today = json.loads((FIXTURES / path.name).with_suffix(".summary.json").read_text("utf-8"))
    events = load_events(path.read_text(encoding="utf-8"))
    assert not any(getattr(e, "scheduled", False) for e in events)
    assert [e.seq for e in events] == list(range(len(events)))
    state = replay_file(path)
    assert state.summary() == old
    merged = sum(
        1
        for e in load_events((FIXTURES / path.name).read_text("utf-8"))
        if getattr(e, "scheduled", False)
    )
    assert {**old, "last_seq": old["last_seq"] - merged} == today


def test_every_scenario_has_a_log_from_before_merged_dispatches() -> None:
    assert {p.stem for p in BEFORE_MERGED_DISPATCH.glob("*.jsonl")} == set(SCENARIOS)
