"""processors.replay.pace and the spec's ``policy.pace``: the originals' peak of runs in flight,
the pace a proposal's replay keeps to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processors.mutations.validation import ReplayValidation, replay_spec
from processors.replay.pace import peak_in_flight
from processors.replay.runner import SpecError, parse_spec
from workflows import parse_workflow

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def test_waves_of_eight_are_eight_in_flight() -> None:
    # Three waves of 8 runs, each wave starting when the previous one ended.
    runs = [(at(1000 * w + i), at(1000 * w + 900 + i)) for w in range(3) for i in range(8)]
    assert peak_in_flight(runs) == 8


def test_one_after_the_other_is_one_and_a_touching_end_does_not_overlap() -> None:
    assert peak_in_flight([(at(0), at(100)), (at(100), at(200)), (at(200), at(300))]) == 1
    assert peak_in_flight([(at(0), at(100)), (at(99), at(200))]) == 2


def test_nothing_is_zero_and_an_unfinished_run_stays_open() -> None:
    assert peak_in_flight([]) == 0
    assert peak_in_flight([(at(0), None), (at(500), at(600)), (at(700), at(800))]) == 2


def test_the_spec_carries_the_pace_and_a_bad_one_is_named() -> None:
    body = {
        "selection": {"workflow_id": "wf", "workflow_version": 1},
        "candidate": {"workflow_version": 2},
    }
    assert parse_spec(body)[2].pace == "free"  # the API's replays: as fast as they go
    assert parse_spec({**body, "policy": {"pace": "recorded"}})[2].pace == "recorded"
    with pytest.raises(SpecError) as caught:
        parse_spec({**body, "policy": {"pace": "slow"}})
    assert caught.value.path == "policy.pace"


def test_a_proposal_is_replayed_at_the_recorded_pace() -> None:
    candidate = parse_workflow({"id": "wf", "steps": [{"id": "a", "node": "transform"}]})
    spec = replay_spec("wf", 1, "m1", candidate, ReplayValidation())
    assert spec["policy"]["pace"] == "recorded"
    assert parse_spec(spec)[2].pace == "recorded"
