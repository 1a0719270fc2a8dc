"""Inline pure steps (ADR 0064): decide evaluates transform/condition steps itself.

Pure tests through :class:`Simulation` (every send also checks live state == fold(log)); the
worker path is the real node classes run by ``node_workers.attempt.run_attempt``, so the
equivalence tests compare the two implementations a deployment would use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from node_workers.attempt import run_attempt
from node_workers.node import AnyNode, Node, NodeContext
from node_workers.nodes.condition import ConditionNode
from node_workers.nodes.transform import TransformNode
from processors.node_catalog.rollout import CatalogVersion
from processors.scheduler import DecisionContext, RunStatus, StepStatus, decide
from processors.scheduler.decide import RegisteredWorkflow
from processors.scheduler.inline import INLINE_WORKER, InlinePolicy
from processors.scheduler.runtime.traces import traces_for
from schemas.models import (
    ErrorInfo,
    NodeInvocation,
    NodeStatus,
    PayloadRef,
    RunFailed,
    RunStarted,
    RunSucceeded,
    StartRun,
    StepDispatched,
    StepFailed,
    StepScheduled,
    StepStarted,
    StepSucceeded,
    TraceStatus,
)
from tests.support.scheduler_simulation import T0, Simulation
from workflows.node_catalog import StaticNodeCatalog
from workflows.pure_nodes import PURE_NODES, TransformInput, TransformOutput
from workflows.validation import parse_workflow

ON = InlinePolicy(enabled=True)
OFF = InlinePolicy(enabled=False)

CHAIN = """
id: chain
inputs:
  items: {type: array, required: true}
steps:
  - id: pick
    node: transform@1.0.0
    params: {expression: "[?price > `10`]", data: "{{ inputs.items }}"}
  - id: names
    node: transform@1.0.0
    needs: [pick]
    params: {expression: "[].name", data: "{{ steps.pick.output.result }}"}
  - id: many
    node: condition@1.0.0
    needs: [names]
    params: {expression: "length(@) > `1`", data: "{{ steps.names.output.result }}"}
  - id: zero
    node: condition@1.0.0
    needs: [pick]
    params: {value: 0}
outputs:
  names: "{{ steps.names.output.result }}"
  many: "{{ steps.many.output.result }}"
  zero: "{{ steps.zero.output.result }}"
"""

ITEMS = [{"name": "a", "price": 5}, {"name": "b", "price": 15}, {"name": "c", "price": 25}]


def _node_for(name: str) -> AnyNode:
    nodes: dict[str, AnyNode] = {"transform": TransformNode(), "condition": ConditionNode()}
    return nodes[name]


def real_worker(invocation: NodeInvocation) -> Any:
    """The worker path: the node classes under the worker's attempt runner."""
    attempt = asyncio.run(run_attempt(_node_for(invocation.step.node), invocation))
    if attempt.status is TraceStatus.OK:
        return attempt.output
    assert attempt.error is not None
    return attempt.error


def _kinds(sim: Simulation, step_id: str) -> list[str]:
    kinds = []
    for event in sim.log:
        step = getattr(event, "step", None)
        if step is not None and step.step_id == step_id:
            kinds.append(type(event).__name__)
    return kinds


def one_step(node: str, params: Any, **step: Any) -> dict[str, Any]:
    return {"id": "one", "steps": [{"id": "s", "node": node, "params": params, **step}]}


def test_a_chain_of_pure_steps_finishes_in_the_start_decision() -> None:
    sim = Simulation(CHAIN, inline_node=ON)
    decision = sim.start({"items": ITEMS})
    assert decision.invocations == () and decision.cache_lookups == ()
    assert sim.run.status is RunStatus.SUCCEEDED
    assert isinstance(decision.events[0], RunStarted)
    assert isinstance(decision.events[-1], RunSucceeded)
    assert decision.events[-1].outputs == {"names": ["b", "c"], "many": True, "zero": True}
    for step_id in ("pick", "names", "many", "zero"):
        assert _kinds(sim, step_id) == ["StepScheduled", "StepStarted", "StepSucceeded"]
        step = sim.run.steps[step_id]
        assert (step.status, step.attempt, step.cache_hit) == (StepStatus.SUCCEEDED, 1, False)
        assert step.started_at == T0 and step.finished_at == T0
    started = [e for e in sim.log if isinstance(e, StepStarted)]
    succeeded = [e for e in sim.log if isinstance(e, StepSucceeded)]
    assert {e.worker for e in started} == {INLINE_WORKER}
    # The attempt id of the start is the success's (and the trace's) invocation id.
    assert [e.invocation_id for e in started] == [e.invocation_id for e in succeeded]
    assert not any(isinstance(e, StepDispatched) for e in sim.log)


def test_inline_outputs_equal_the_worker_paths() -> None:
    inline = Simulation(CHAIN, inline_node=ON)
    inline.start({"items": ITEMS})
    remote = Simulation(CHAIN, inline_node=OFF)
    remote.start({"items": ITEMS})
    assert len(remote.sent) == 1  # pick goes out first; everything else needs it
    remote.run_workers(real_worker)
    assert remote.run.status is inline.run.status is RunStatus.SUCCEEDED
    assert {sid: st.output for sid, st in remote.run.steps.items()} == {
        sid: st.output for sid, st in inline.run.steps.items()
    }
    assert remote.run.summary()["outputs"] == inline.run.summary()["outputs"]
    assert all(_kinds(remote, s)[:1] == ["StepDispatched"] for s in ("pick",))


@pytest.mark.parametrize(
    ("node", "params"),
    [
        ("transform@1.0.0", {"expression": "items[?", "data": {}}),  # invalid expression
        ("transform@1.0.0", {"expression": "abs(name)", "data": {"name": "x"}}),  # type error
        ("transform@1.0.0", {"data": {}}),  # params: no expression
        ("transform@1.0.0", {"expression": "a", "urll": 1}),  # params: unknown field
        ("condition@1.0.0", {"expression": "a", "value": 1}),  # params: both forms
        ("condition@1.0.0", {"expression": "[?", "data": []}),
    ],
)
def test_an_inline_failure_is_the_worker_paths_failure(node: str, params: Any) -> None:
    inline = Simulation(one_step(node, params), inline_node=ON)
    inline.start()
    remote = Simulation(one_step(node, params))
    remote.start()
    remote.run_workers(real_worker)
    for sim in (inline, remote):
        assert sim.run.status is RunStatus.FAILED
    inline_error = inline.run.steps["s"].error
    assert inline_error is not None and inline_error == remote.run.steps["s"].error
    assert inline_error.error_class in ("TransformError", "ValidationError")
    assert not inline_error.retryable
    assert _kinds(inline, "s") == ["StepScheduled", "StepStarted", "StepFailed"]
    (failed,) = [e for e in inline.log if isinstance(e, RunFailed)]
    assert failed.error == inline_error


def test_a_pure_failure_is_not_retried_whatever_the_policy() -> None:
    spec = one_step(
        "transform@1.0.0",
        {"expression": "abs(@)", "data": "x"},
        retry={"max_attempts": 3, "initial_backoff": "10ms"},
    )
    sim = Simulation(spec, inline_node=ON)
    sim.start()
    assert sim.run.status is RunStatus.FAILED
    assert [e.attempt for e in sim.log if isinstance(e, StepFailed)] == [1]
    assert sim.run.timers == {}


LARGE = {"expression": "length(@)", "data": "x" * (64 * 1024)}


@pytest.mark.parametrize(
    ("node", "params", "step"),
    [
        ("transform@1.0.0", {"expression": "a"}, {"inline": False}),  # the step opts out
        ("transform@1.0.0", {"expression": "{score: `1`}"}, {"checker": True}),  # scored by workers
        ("transform@1.0.0", {"expression": "a", "data": "{{ secrets.API_KEY }}"}, {}),
        ("transform@1.0.0", LARGE, {}),  # params over 64 KiB: a worker's thread pool takes them
        ("transform", {"expression": "a"}, {}),  # no catalog: the version is "*", unknown
        ("transform@1.2.0", {"expression": "a"}, {}),  # a version pure_nodes does not implement
        ("http.request@1.0.0", {"url": "https://example.com"}, {}),  # not a pure node
    ],
)
def test_ineligible_steps_are_dispatched(node: str, params: Any, step: dict[str, Any]) -> None:
    sim = Simulation(one_step(node, params, **step), inline_node=ON)
    decision = sim.start()
    assert len(decision.invocations) == 1
    assert _kinds(sim, "s") == ["StepDispatched"]  # scheduling it too (ADR 0075)
    assert sim.run.steps["s"].status is StepStatus.DISPATCHED


def test_the_catalogs_version_is_inlined_when_the_constraint_resolves_to_it() -> None:
    catalog = StaticNodeCatalog({"transform": ["1.0.0"]})
    sim = Simulation(one_step("transform@^1", {"expression": "`1`"}), node_catalog=catalog,
                     inline_node=ON)  # fmt: skip
    sim.start()
    assert sim.run.status is RunStatus.SUCCEEDED
    assert sim.run.steps["s"].node_version == "1.0.0"


@pytest.mark.parametrize("inline_node", [OFF, None], ids=["switch-off", "no-policy"])
def test_the_switch_sends_every_step_to_a_worker(inline_node: InlinePolicy | None) -> None:
    sim = Simulation(CHAIN, inline_node=inline_node)
    decision = sim.start({"items": ITEMS})
    assert len(decision.invocations) == 1
    sim.run_workers(real_worker)
    assert sim.run.status is RunStatus.SUCCEEDED and len(sim.sent) == 4
    assert all(e.worker != INLINE_WORKER for e in sim.log if isinstance(e, StepStarted))


def _version(version: str, status: NodeStatus, weight: float) -> CatalogVersion:
    return CatalogVersion(version, status, weight)


def test_a_rollout_between_production_versions_keeps_the_node_on_workers() -> None:
    rollout = [
        _version("1.0.0", NodeStatus.PRODUCTION, 1.0),
        _version("1.1.0", NodeStatus.PRODUCTION, 0.1),
    ]
    assert InlinePolicy(True, lambda name: rollout)("transform", "1.0.0") is None
    alone = [_version("1.0.0", NodeStatus.PRODUCTION, 1.0), _version("2.0.0", NodeStatus.DRAFT, 0)]
    policy = InlinePolicy(True, lambda name: alone)
    assert policy("transform", "1.0.0") is PURE_NODES["transform@1.0.0"]
    assert policy("transform", "2.0.0") is None  # a draft pinned by a workflow: its workers
    assert (
        InlinePolicy(True, lambda name: [])("condition", "1.0.0") is PURE_NODES["condition@1.0.0"]
    )


def test_inline_steps_neither_read_nor_write_the_cache() -> None:
    spec = one_step("transform@1.0.0", {"expression": "`1`"}, cache={"enabled": True})
    sim = Simulation(spec, inline_node=ON)
    decision = sim.start()
    assert decision.cache_lookups == () and decision.cache_writes == ()
    (scheduled,) = [e for e in sim.log if isinstance(e, StepScheduled)]
    assert scheduled.cache_key is None
    assert sim.run.status is RunStatus.SUCCEEDED


def test_a_large_inline_output_is_claim_checked() -> None:
    definition = parse_workflow(
        one_step("transform@1.0.0", {"expression": "[@, @, @, @, @]", "data": "y" * 30_000})
    )
    stored: list[Any] = []

    def store(value: Any) -> PayloadRef | None:
        if len(str(value)) < 100_000:
            return None
        stored.append(value)
        return PayloadRef(uri="s3://b/k", size_bytes=1, sha256="0" * 64, content_type="x")

    ctx = DecisionContext(
        now=T0,
        inline_node=ON,
        store_payload=store,
        lookup_workflow=lambda wid, version: RegisteredWorkflow(1, definition),
    )
    start = StartRun(run_id="r", command_id="c", workflow_id="one", inputs={})
    decision = decide(None, start, ctx)
    (succeeded,) = [e for e in decision.events if isinstance(e, StepSucceeded)]
    assert succeeded.output is None and succeeded.output_ref is not None
    assert stored == [{"result": ["y" * 30_000] * 5}]


def test_each_inline_attempt_has_a_trace_marked_inline() -> None:
    sim = Simulation(CHAIN, inline_node=ON)
    decision = sim.start({"items": ITEMS})
    assert decision.state is not None
    traces = traces_for(decision.events, decision.state)
    assert [t.step_id for t in traces] == ["pick", "names", "zero", "many"]
    for trace in traces:
        assert trace.status is TraceStatus.OK and trace.error is None
        assert trace.context == {"source": "scheduler", "worker": INLINE_WORKER}
        assert (trace.start, trace.end, trace.latency_ms, trace.retry_count) == (T0, T0, 0, 0)
        assert trace.inputs_hash == decision.state.steps[trace.step_id].params_sha256
        assert not trace.cache_hit and trace.invocation_id is not None


def test_a_failed_inline_attempt_is_traced_with_its_error() -> None:
    sim = Simulation(one_step("transform@1.0.0", {"expression": "[?"}), inline_node=ON)
    decision = sim.start()
    assert decision.state is not None
    (trace,) = traces_for(decision.events, decision.state)
    assert trace.status is TraceStatus.ERROR and trace.error is not None
    assert trace.error == decision.state.steps["s"].error


def test_a_redriven_inline_step_is_evaluated_again() -> None:
    sim = Simulation(one_step("transform@1.0.0", {"expression": "[?"}), inline_node=ON)
    sim.start()
    sim.redrive("s")
    assert [e.attempt for e in sim.log if isinstance(e, StepFailed)] == [1, 2]
    assert _kinds(sim, "s")[-3:] == ["StepScheduled", "StepStarted", "StepFailed"]


# -- the node definitions -------------------------------------------------------------------------


def test_the_pure_nodes_declare_it_in_their_manifest() -> None:
    for node in (TransformNode(), ConditionNode()):
        assert node.pure and node.manifest()["pure"] is True
        assert PURE_NODES[node.key].Input is node.Input


class _Impostor(Node[TransformInput, TransformOutput]):
    name = "transform"
    version = "9.0.0"
    Input = TransformInput
    Output = TransformOutput
    pure = True

    async def execute(self, params: TransformInput, ctx: NodeContext) -> TransformOutput:
        return TransformOutput(result=None)


def test_a_node_cannot_declare_pure_without_an_implementation() -> None:
    with pytest.raises(ValueError, match=r"transform@9\.0\.0, which declares pure"):
        _Impostor().check()
    TransformNode().check()


def test_inline_false_is_written_only_when_set() -> None:
    off = parse_workflow(one_step("transform", {"expression": "a"}, inline=False))
    on = parse_workflow(one_step("transform", {"expression": "a"}))
    assert off.to_json_dict()["steps"][0]["inline"] is False
    assert "inline" not in on.to_json_dict()["steps"][0]


def test_error_info_equality_is_field_by_field() -> None:
    # The equivalence tests above compare ErrorInfo records: make sure that compares content.
    a = ErrorInfo(error_class="TransformError", message="m", retryable=False)
    assert a == ErrorInfo(error_class="TransformError", message="m", retryable=False)
    assert a != ErrorInfo(error_class="TransformError", message="n", retryable=False)
