"""evolve: one event at a time, positions enforced, GraphMutated applied like any event."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from processors.scheduler import EvolveError, RunState, RunStatus, StepStatus, evolve, fold
from schemas.models import (
    CommandRejected,
    GraphMutated,
    GraphMutation,
    GraphMutationType,
    PauseRun,
    RunPaused,
)
from tests.support.scheduler_golden import SCENARIOS
from tests.support.scheduler_simulation import T0

ROOT = Path(__file__).resolve().parents[2]


def started() -> RunState:
    """A running run with steps a, b, c, d (a dispatched)."""
    sim = SCENARIOS["graph_mutation"]()
    state = fold(sim.log[:3])  # RunStarted, StepScheduled a, StepDispatched a
    assert state is not None
    return state


def mutated(state: RunState, kind: GraphMutationType, step_id: str, data: object) -> RunState:
    event = GraphMutated(
        run_id=state.run_id,
        seq=state.last_seq + 1,
        occurred_at=T0,
        mutation=GraphMutation(type=kind, step_id=step_id, data=data),
    )
    return evolve(state, event)


def test_graph_mutated_add_step() -> None:
    state = started()
    new = mutated(state, GraphMutationType.ADD_STEP, "z", {"node": "transform@^1", "needs": ["a"]})
    assert new.graph.step_ids[-1] == "z"
    assert new.steps["z"].status is StepStatus.PENDING
    assert new.last_seq == state.last_seq + 1
    assert "z" not in state.graph.step_ids  # the old state is untouched


def test_graph_mutated_remove_step() -> None:
    new = mutated(started(), GraphMutationType.REMOVE_STEP, "d", {})
    assert "d" not in new.graph.step_ids and "d" not in new.steps


def test_graph_mutated_update_params() -> None:
    new = mutated(started(), GraphMutationType.UPDATE_PARAMS, "b", {"v": 99})
    assert new.graph.step("b").params == {"v": 99}
    assert new.steps["b"] == started().steps["b"]


def test_graph_mutated_replace_node() -> None:
    new = mutated(
        started(),
        GraphMutationType.REPLACE_NODE,
        "c",
        {"node": "http.request", "node_version": "^2"},
    )
    assert new.graph.step("c").node == "http.request@^2"


def test_command_rejected_only_advances_seq() -> None:
    state = started()
    event = CommandRejected(
        run_id=state.run_id,
        seq=state.last_seq + 1,
        command_id="c-1",
        command_type=PauseRun.AVRO_NAME,
        reason="Expected X, but Y",
    )
    new = evolve(state, event)
    assert new.model_copy(update={"last_seq": state.last_seq, "processed_ids": ()}) == (
        state.model_copy(update={"processed_ids": ()})
    )
    assert "c-1" in new.processed_ids


def test_redelivered_event_is_ignored_and_a_gap_raises() -> None:
    sim = SCENARIOS["linear"]()
    state = fold(sim.log)
    assert state is not None
    assert evolve(state, sim.log[3]) is state
    gap = RunPaused(run_id=state.run_id, seq=state.last_seq + 2)
    with pytest.raises(EvolveError, match=f"Expected seq {len(sim.log)} "):
        evolve(state, gap)
    with pytest.raises(EvolveError, match="at seq 0"):
        evolve(None, RunPaused(run_id="r", seq=3))
    with pytest.raises(EvolveError, match="to have started"):
        evolve(None, RunPaused(run_id="r", seq=0))


def test_fold_continues_from_a_snapshot() -> None:
    sim = SCENARIOS["retry_then_success"]()
    middle = fold(sim.log[:7])
    assert fold(sim.log[7:], middle) == fold(sim.log)
    assert fold(sim.log, None) == sim.state


def test_time_travel_to_any_seq() -> None:
    sim = SCENARIOS["redrive"]()
    failed = next(i for i, e in enumerate(sim.log) if type(e).__name__ == "RunFailed")
    at_failure = fold(sim.log[: failed + 1])
    assert at_failure is not None and at_failure.status is RunStatus.FAILED
    assert type(sim.log[failed + 2]).__name__ == "RunResumed"  # after the fix (GraphMutated)
    assert fold(sim.log[: failed + 3]).status is RunStatus.RUNNING  # type: ignore[union-attr]


CORE = [
    *sorted((ROOT / "processors" / "workflow").glob("*.py")),
    *[
        p
        for p in sorted((ROOT / "processors" / "scheduler").glob("*.py"))
        if not p.name.startswith("runtime") and p.name != "app.py"
    ],
]
FORBIDDEN = {
    "confluent_kafka",
    "faust",
    "aiokafka",
    "redis",
    "psycopg",
    "httpx",
    "streams",
    "boto3",
}


@pytest.mark.parametrize("path", CORE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_does_not_import_the_transport(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {imported & FORBIDDEN}"
