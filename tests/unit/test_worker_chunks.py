"""A meta.map chunk on the worker (node_workers/chunks.py): the node once per item, in order,
at most ``chunk.concurrency`` at once, per-item outcomes; and its line in ``reflux runs show``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from node_workers.chunks import item_invocation, run_chunk
from node_workers.node import Node, NodeContext, NodeModel, NonRetryableNodeError
from node_workers.nodes.transform import TransformNode
from processors.scheduler.runtime.snapshots import decode_snapshot, encode_entry
from reflux.client import describe_event
from schemas.models import MapChunk, NodeInvocation, StepRef, TraceStatus
from tests.support.scheduler_simulation import Simulation
from tests.unit.test_meta_map_switch import chunk_worker, map_workflow


class _In(NodeModel):
    n: int


class _Out(NodeModel):
    n: int
    key: str


class _Counting(Node[_In, _Out]):
    """Counts how many items run at once; item 3 fails for good."""

    name = "counting"
    version = "1.0.0"
    Input = _In
    Output = _Out

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def execute(self, params: _In, ctx: NodeContext) -> _Out:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.001 * (params.n % 3))  # items overlap: under test, not a wait
            if params.n == 3:
                raise NonRetryableNodeError("three is bad", error_class="Three")
            return _Out(n=params.n, key=ctx.idempotency_key)
        finally:
            self.running -= 1


def chunk_invocation(params: list[Any], concurrency: int, node: str = "counting") -> NodeInvocation:
    return NodeInvocation(
        run_id="r",
        seq=3,
        invocation_id="inv",
        attempt=1,
        workflow_id="w",
        workflow_version=1,
        step=StepRef(step_id="each", node=node, node_version="1.0.0"),
        params=params,
        idempotency_key="r:each:map1",
        chunk=MapChunk(index=0, first_item=10, item_indices=[], concurrency=concurrency),
    )


async def _inline(invocation: NodeInvocation) -> Any:
    return invocation.params


def run(node: Any, invocation: NodeInvocation) -> Any:
    return asyncio.run(
        run_chunk(
            node,
            invocation,
            load_params=_inline,
            default_timeout_s=10,
            secrets=None,
            started_at=datetime.now(UTC),
        )
    )


def test_a_chunk_runs_each_item_in_order_with_its_own_key_and_a_cap() -> None:
    node = _Counting()
    attempt = run(node, chunk_invocation([{"n": n} for n in range(12)], concurrency=3))
    assert attempt.status is TraceStatus.OK
    entries = attempt.output
    assert len(entries) == 12
    assert entries[0] == {"output": {"n": 0, "key": "r:each:map1:10"}}
    assert entries[11] == {"output": {"n": 11, "key": "r:each:map1:21"}}
    assert entries[3]["error"]["error_class"] == "Three"
    assert entries[3]["error"]["retryable"] is False
    assert 2 <= node.peak <= 3
    assert attempt.metrics == {"map_items": 12.0, "map_items_failed": 1.0}


def test_item_validation_errors_fail_only_that_item() -> None:
    params = [
        {"expression": "@", "data": 1},
        {"expression": 5},
        {"expression": "abs(@)", "data": -2},
    ]
    attempt = run(TransformNode(), chunk_invocation(params, 2, node="transform"))
    assert attempt.status is TraceStatus.OK
    assert attempt.output[0] == {"output": {"result": 1}}
    assert "error" in attempt.output[1]
    assert attempt.output[2] == {"output": {"result": 2}}


def test_a_chunk_whose_params_are_not_a_list_fails_as_a_whole() -> None:
    invocation = chunk_invocation([], 1).model_copy(update={"params": {"n": 1}})
    attempt = run(_Counting(), invocation)
    assert attempt.status is TraceStatus.ERROR
    assert attempt.error is not None and attempt.error.error_class == "MapChunkInvalid"


def test_item_invocations_are_ordinary_ones() -> None:
    item = item_invocation(chunk_invocation([{"n": 1}], 1), 7, {"n": 1})
    assert (item.invocation_id, item.idempotency_key, item.chunk) == (
        "inv:7",
        "r:each:map1:7",
        None,
    )
    assert item.params == {"n": 1}


def test_map_state_survives_the_snapshot_record() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=10))
    sim.start({"xs": list(range(50))})
    invocation = next(iter(sim.outstanding.values()))
    sim._answer(invocation, chunk_worker()(invocation))
    assert decode_snapshot(encode_entry(sim.run)) == sim.run


def test_runs_show_describes_chunks() -> None:
    sim = Simulation(map_workflow(concurrency=4, chunk_size=10))
    sim.start({"xs": list(range(25))})
    sim.run_workers(chunk_worker())
    lines = [
        describe_event(
            {
                "event_type": type(e).__name__,
                "seq": e.seq,
                "occurred_at": e.occurred_at.isoformat(),
                "payload": e.model_dump(mode="json"),
            }
        )
        for e in sim.log
    ]
    assert any("25 items, chunks of 10 (4 in flight), fail_fast" in line for line in lines)
    assert any("chunk 2: 5 items from #20" in line for line in lines)
    assert any("chunk 0: 10 ok, 0 failed, 0 to retry" in line for line in lines)
