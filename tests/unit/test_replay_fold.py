"""Fold mode of the A/B replay (processors/replay/fold.py, ADR 0036), without Kafka: runs folded
with the scheduler's pure core, pure nodes executed in-process, side effects from the record,
retries fired on a virtual clock, cache answered in memory, parts folded in forked processes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import pytest

from foundation.settings import Settings
from node_workers.node import Node, NodeContext, NodeModel
from node_workers.nodes import builtin_nodes
from node_workers.registry import NodeRegistry
from processors.replay.fold import (
    FoldReplay,
    catalog_resolver,
    default_processes,
    fold_partitioned,
    fold_unsupported,
)
from processors.replay.recorded import RecordedResults, ServedLog, shadow_registry
from processors.replay.shadow import run_outcome
from processors.scheduler.decide import RegisteredWorkflow
from schemas.models import StartRun, StepDispatched, StepSucceeded
from streams.topics import TopicCatalog
from workflows import parse_workflow
from workflows.model import WorkflowDefinition

SETTINGS = Settings(topic_prefix="fold-unit")
CATALOG = TopicCatalog.from_settings(SETTINGS)


class FlakyInput(NodeModel):
    key: str = ""


class FlakyOutput(NodeModel):
    value: int


_CALLS: dict[str, int] = {}


class FlakyNode(Node[FlakyInput, FlakyOutput]):
    """Pure, fails its first attempt per key (retryable), then answers how often it was called."""

    name = "test.flaky"
    version = "1.0.0"
    Input = FlakyInput
    Output = FlakyOutput

    async def execute(self, params: FlakyInput, ctx: NodeContext) -> FlakyOutput:
        _CALLS[params.key] = _CALLS.get(params.key, 0) + 1
        if ctx.attempt == 1:
            from node_workers.errors import RetryableNodeError

            raise RetryableNodeError("not yet", error_class="Flaky")
        return FlakyOutput(value=_CALLS[params.key])


_COUNTER = itertools.count(1)


class CountNode(Node[FlakyInput, FlakyOutput]):
    """Pure and cacheable: a new number per call (so a cache hit shows)."""

    name = "test.count"
    version = "1.0.0"
    Input = FlakyInput
    Output = FlakyOutput
    cacheable = True

    async def execute(self, params: FlakyInput, ctx: NodeContext) -> FlakyOutput:
        return FlakyOutput(value=next(_COUNTER))


def nodes() -> NodeRegistry:
    return NodeRegistry([*builtin_nodes(), FlakyNode(), CountNode()])


def definition(steps: list[dict[str, Any]], **extra: Any) -> WorkflowDefinition:
    return parse_workflow(
        {"id": "wf", "inputs": {"k": {"type": "string"}}, "steps": steps, **extra}
    )


def folder(parsed: WorkflowDefinition, served: ServedLog | None = None) -> FoldReplay:
    registry = shadow_registry(nodes(), RecordedResults(), served or ServedLog())
    return FoldReplay(
        settings=SETTINGS,
        nodes=registry,
        workflow=RegisteredWorkflow(1, parsed),
        workflow_id=parsed.id,
        invoke_topic=lambda node, major: CATALOG.invoke_topic(node, major).topic,
        resolve_node_version=catalog_resolver(registry),
        blobs=lambda: pytest.fail("no claim check expected"),
    )


def starts(n: int, key: str = "k") -> list[StartRun]:
    return [
        StartRun(run_id=f"run-{i}", workflow_id="wf", workflow_version=1, inputs={"k": f"{key}{i}"})
        for i in range(n)
    ]


def names(events: Sequence[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_a_retry_is_fired_at_once_on_the_runs_virtual_clock() -> None:
    parsed = definition(
        [
            {
                "id": "flaky",
                "node": "test.flaky@^1",
                "params": {"key": "{{ inputs.k }}"},
                # 60 s of backoff: a replay that waited for it would time out below.
                "retry": {
                    "max_attempts": 3,
                    "initial_backoff": 60_000,
                    "max_backoff": 60_000,
                    "jitter": 0,
                },
            }
        ]
    )
    written: list[Any] = []
    began = time.monotonic()
    logs = asyncio.run(folder(parsed).run(starts(1, "retry"), 10.0, written.extend))
    assert time.monotonic() - began < 5
    log = logs["run-0"]
    # Each attempt scheduled and dispatched in one event (ADR 0075).
    assert names(log) == [
        "RunStarted",
        "StepDispatched",
        "StepFailed",
        "StepRetryScheduled",
        "StepDispatched",
        "StepSucceeded",
        "RunSucceeded",
    ]
    assert [e.scheduled for e in log if isinstance(e, StepDispatched)] == [True, True]
    assert written == log  # every event went to the sink, in order
    assert [e.seq for e in log] == list(range(len(log)))
    retry = log[3]
    # The retry's attempt ran a minute "later" on the run's clock.
    assert (log[4].occurred_at - retry.occurred_at).total_seconds() >= 59.9
    outcome = run_outcome("run-0", log)
    assert outcome.status == "succeeded"
    assert outcome.steps["flaky"].attempts == 2
    assert outcome.steps["flaky"].output == {"value": 2}


def test_the_step_cache_is_the_replays_own_and_answers_later_runs() -> None:
    parsed = definition(
        [
            {
                "id": "count",
                "node": "test.count@^1",
                "params": {"key": "same"},
                "cache": {"enabled": True},
            }
        ]
    )
    logs = asyncio.run(folder(parsed).run(starts(3), 10.0, lambda events: None))
    outputs = [run_outcome(r, log).steps["count"].output for r, log in sorted(logs.items())]
    hits = [bool(e.cache_hit) for log in logs.values() for e in log if isinstance(e, StepSucceeded)]
    # Runs are folded concurrently: whichever ran first executed it, the others hit its entry.
    assert len({o["value"] for o in outputs}) == 1
    assert sorted(hits) == [False, True, True]


def test_runs_needing_child_runs_or_chunks_are_not_folded() -> None:
    child = definition([{"id": "sub", "node": "meta.workflow@^1", "params": {"workflow_id": "x"}}])
    assert "meta.workflow" in (fold_unsupported(child) or "")
    plain = definition([{"id": "t", "node": "transform@^1", "params": {"expression": "`1`"}}])
    assert fold_unsupported(plain) is None


def test_processes_one_per_core_with_enough_runs_each() -> None:
    assert default_processes(1) == 1
    assert default_processes(99) == 1
    assert default_processes(10_000) >= 1


class ListSink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed = False

    def write(self, events: Sequence[Any]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("processes", [1, 2])
def test_parts_fold_in_processes_and_hand_back_what_finish_returns(processes: int) -> None:
    parsed = definition(
        [
            {
                "id": "a",
                "node": "transform@^1",
                "params": {"expression": "k", "data": {"k": "{{ inputs.k }}"}},
            },
            {
                "id": "b",
                "node": "transform@^1",
                "params": {"expression": "[v, v]", "data": {"v": "{{ steps.a.output.result }}"}},
                "needs": ["a"],
            },
        ],
        outputs={"b": "{{ steps.b.output.result }}"},
    )
    served = ServedLog()
    fold = folder(parsed, served)
    seen: list[tuple[int, int]] = []

    def prepare(part: Sequence[StartRun]) -> list[str]:
        return [s.run_id for s in part]

    def finish(ids: list[str], logs: dict[str, list[Any]], sink: Any) -> dict[str, Any]:
        assert sink.closed and len(sink.events) == sum(len(log) for log in logs.values())
        assert sorted(ids) == sorted(logs)
        return {
            "outputs": {r: run_outcome(r, log).outputs for r, log in logs.items()},
            "served": dict(served.served),
        }

    parts = fold_partitioned(
        fold,
        starts(6),
        timeout_s=30.0,
        processes=processes,
        new_sink=ListSink,
        prepare=prepare,
        finish=finish,
        progress=lambda done, total: seen.append((done, total)),
        alongside=lambda: seen.append((-1, -1)),  # the caller's own work, once, meanwhile
    )
    assert seen.count((-1, -1)) == 1
    assert len(parts) == processes
    outputs = {r: o for part in parts for r, o in part["outputs"].items()}
    assert outputs == {f"run-{i}": {"b": [f"k{i}", f"k{i}"]} for i in range(6)}
    served_steps = {key for part in parts for key in part["served"]}
    assert served_steps == {(f"run-{i}", s) for i in range(6) for s in ("a", "b")}
    assert seen[-1] == (6, 6)


def test_a_failing_part_raises_its_error_in_the_caller() -> None:
    parsed = definition([{"id": "a", "node": "transform@^1", "params": {"expression": "`1`"}}])

    def prepare(part: Sequence[StartRun]) -> None:
        raise ValueError(f"cannot read {len(part)} runs")

    with pytest.raises(ValueError, match="cannot read 3 runs"):
        fold_partitioned(
            folder(parsed),
            starts(6),
            timeout_s=30.0,
            processes=2,
            new_sink=ListSink,
            prepare=prepare,
            finish=lambda p, logs, sink: None,
        )
