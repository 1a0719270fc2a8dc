"""One attempt without Kafka: every ending becomes an Attempt; results and traces from it."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foundation.objectstore import FileBlobStore
from node_workers.attempt import (
    attempt_deadline,
    error_info,
    inputs_hash,
    run_attempt,
    too_late_to_start,
)
from node_workers.claimcheck import PayloadCorruptError, encode_json, load_json, store_json
from node_workers.node import Node, NodeContext, NodeModel, RetryableNodeError
from node_workers.nodes.transform import TransformNode
from node_workers.records import build_result, build_trace
from schemas import decode, encode
from schemas.base import canonical_json
from schemas.models import NodeInvocation, PayloadRef, StepRef, TraceStatus


class _SleepIn(NodeModel):
    seconds: float = 0.0
    fail: str | None = None
    crash: bool = False
    metric: float | None = None


class _SleepOut(NodeModel):
    slept: float
    key: str


class _Sleep(Node[_SleepIn, _SleepOut]):
    name = "sleep"
    version = "1.3.0"
    Input = _SleepIn
    Output = _SleepOut

    async def execute(self, params: _SleepIn, ctx: NodeContext) -> _SleepOut:
        if params.metric is not None:
            ctx.record("m", params.metric)
            ctx.cost_tokens = 42
        await asyncio.sleep(params.seconds)  # a node that takes time: under test, not a wait
        if params.fail:
            raise RetryableNodeError("flaky", error_class=params.fail)
        if params.crash:
            raise KeyError("boom")
        return _SleepOut(slept=params.seconds, key=ctx.idempotency_key)


def _invocation(node: str = "sleep", params: Any = None, **extra: Any) -> NodeInvocation:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "seq": 7,
        "invocation_id": "inv-1",
        "attempt": 3,
        "workflow_id": "wf",
        "workflow_version": 2,
        "step": StepRef(step_id="s1", node=node, node_version="1.0.0"),
        "params": params,
        "idempotency_key": "idem-1",
        "trace_context": {"traceparent": "00-abc-def-01"},
    }
    fields.update(extra)
    return NodeInvocation(**fields)


def _run(node: Node[Any, Any], invocation: NodeInvocation, **kwargs: Any) -> Any:
    return asyncio.run(run_attempt(node, invocation, **kwargs))


def test_success_output_and_context() -> None:
    attempt = _run(_Sleep(), _invocation(params={"seconds": 0, "metric": 2.5}))
    assert attempt.status is TraceStatus.OK
    assert attempt.output == {"slept": 0.0, "key": "idem-1"}
    assert attempt.error is None
    assert attempt.metrics == {"m": 2.5} and attempt.cost_tokens == 42
    assert attempt.inputs_hash == inputs_hash({"seconds": 0, "metric": 2.5})
    assert attempt.finished_at >= attempt.started_at


class _WhoseOut(NodeModel):
    workflow_id: str
    tenant: str


class _Whose(Node[NodeModel, _WhoseOut]):
    """Reports whose call it is: what an egress-checking node passes to the policy."""

    name = "whose"
    version = "1.0.0"
    Input = NodeModel
    Output = _WhoseOut

    async def execute(self, params: NodeModel, ctx: NodeContext) -> _WhoseOut:
        return _WhoseOut(workflow_id=ctx.workflow_id, tenant=ctx.tenant)


def test_the_context_carries_the_runs_tenant() -> None:
    attempt = _run(_Whose(), _invocation("whose", {}, tenant="acme"))
    assert attempt.output == {"workflow_id": "wf", "tenant": "acme"}
    # An invocation written before tenancy names none: the default tenant's.
    assert _run(_Whose(), _invocation("whose", {})).output["tenant"] == "default"


def test_inputs_hash_is_sha256_of_canonical_params() -> None:
    params = {"b": [1, 2], "a": "é"}
    expected = hashlib.sha256(canonical_json(params).encode()).hexdigest()
    assert inputs_hash(params) == expected == inputs_hash({"a": "é", "b": [1, 2]})


def test_node_error_keeps_class_and_retryability() -> None:
    attempt = _run(_Sleep(), _invocation(params={"fail": "Http5xx"}))
    assert attempt.status is TraceStatus.ERROR
    assert attempt.error is not None
    assert (attempt.error.error_class, attempt.error.retryable) == ("Http5xx", True)


def test_invalid_params_are_a_validation_error_with_path() -> None:
    attempt = _run(_Sleep(), _invocation(params={"seconds": "soon"}))
    assert attempt.error is not None and attempt.error.error_class == "ValidationError"
    assert attempt.error.message.startswith("params.seconds: ")
    assert not attempt.error.retryable


def test_absent_params_are_an_empty_object() -> None:
    assert _run(_Sleep(), _invocation(params=None)).status is TraceStatus.OK


def test_deadline_becomes_a_retryable_node_timeout() -> None:
    deadline = datetime.now(UTC) + timedelta(milliseconds=100)
    attempt = _run(_Sleep(), _invocation(params={"seconds": 5}, deadline=deadline))
    assert attempt.status is TraceStatus.TIMEOUT
    assert attempt.error is not None
    assert (attempt.error.error_class, attempt.error.retryable) == ("NodeTimeout", True)
    assert attempt.latency_ms < 2000


def test_deadline_already_passed_does_not_run_the_node() -> None:
    deadline = datetime.now(UTC) - timedelta(seconds=1)
    attempt = _run(_Sleep(), _invocation(params={"crash": True}, deadline=deadline))
    assert attempt.status is TraceStatus.TIMEOUT  # not a crash: execute never ran


def test_the_step_timeout_counts_from_the_workers_start_not_the_dispatch() -> None:
    # Dispatched an hour ago with a 1 s timeout: a backlog is not execution time.
    invocation = _invocation(
        params={"seconds": 0.05},
        timeout_ms=1_000,
        occurred_at=datetime.now(UTC) - timedelta(hours=1),
    )
    assert _run(_Sleep(), invocation).status is TraceStatus.OK


def test_the_step_timeout_ends_a_long_attempt_from_its_start() -> None:
    started = datetime.now(UTC)
    attempt = _run(_Sleep(), _invocation(params={"seconds": 5}, timeout_ms=100), started_at=started)
    assert attempt.status is TraceStatus.TIMEOUT and attempt.started_at == started
    assert attempt.error is not None
    assert (attempt.error.error_class, attempt.error.retryable) == ("NodeTimeout", True)
    assert attempt.latency_ms < 2000


def test_attempt_deadline_is_the_earlier_of_timeout_and_absolute_deadline() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    timeout = _invocation(timeout_ms=1_500)
    assert attempt_deadline(timeout, start) == start + timedelta(milliseconds=1_500)
    both = _invocation(timeout_ms=1_500, deadline=start + timedelta(seconds=1))
    assert attempt_deadline(both, start) == start + timedelta(seconds=1)
    assert attempt_deadline(_invocation(), start) is None


def test_the_node_sees_the_deadline_counted_from_the_start() -> None:
    seen: list[datetime | None] = []

    class _Peek(_Sleep):
        async def execute(self, params: _SleepIn, ctx: NodeContext) -> _SleepOut:
            seen.append(ctx.deadline)
            return await super().execute(params, ctx)

    started = datetime.now(UTC)
    _run(_Peek(), _invocation(params={}, timeout_ms=2_000), started_at=started)
    assert seen == [started + timedelta(seconds=2)]


def test_an_invocation_past_its_start_by_is_not_started() -> None:
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    invocation = _invocation(params={"seconds": 0}, start_by=now - timedelta(milliseconds=250))
    late = too_late_to_start(invocation, now)
    assert late is not None and late.status is TraceStatus.ERROR
    assert late.error is not None
    assert (late.error.error_class, late.error.retryable) == ("QueueTimeout", False)
    assert "250 ms after its start_by" in late.error.message
    assert late.inputs_hash == inputs_hash({"seconds": 0})
    assert too_late_to_start(invocation, now - timedelta(milliseconds=250)) is None
    assert too_late_to_start(_invocation(params={}), now) is None


def test_default_timeout_without_deadline() -> None:
    attempt = _run(_Sleep(), _invocation(params={"seconds": 5}), default_timeout_s=0.05)
    assert attempt.status is TraceStatus.TIMEOUT


def test_a_crashing_node_is_a_non_retryable_error_named_after_the_exception() -> None:
    attempt = _run(_Sleep(), _invocation(params={"crash": True}))
    assert attempt.error is not None
    assert (attempt.error.error_class, attempt.error.retryable) == ("KeyError", False)
    assert "boom" in attempt.error.message


def test_invocation_of_another_node_is_rejected() -> None:
    attempt = _run(_Sleep(), _invocation(node="transform", params={}))
    assert attempt.error is not None and attempt.error.error_class == "UnknownNode"


def test_params_loader_errors_become_results() -> None:
    ref = PayloadRef(uri="s3://b/k", size_bytes=3, sha256="ab" * 32, content_type="x")

    async def failing(_: NodeInvocation) -> Any:
        raise PayloadCorruptError("bad blob")

    attempt = _run(_Sleep(), _invocation(params_ref=ref), load_params=failing)
    assert attempt.error is not None and attempt.error.error_class == "PayloadCorrupt"
    assert attempt.inputs_hash == ref.sha256


def test_error_info_of_plain_exceptions() -> None:
    info = error_info(ValueError("x"))
    assert (info.error_class, info.retryable, info.message) == (
        "ValueError",
        False,
        "ValueError: x",
    )


def test_result_and_trace_answer_the_invocation() -> None:
    invocation = _invocation(node="transform", params={"expression": "a", "data": {"a": 1}})
    node = TransformNode()
    attempt = _run(node, invocation)
    result = build_result(node, invocation, attempt)
    assert (result.run_id, result.seq, result.invocation_id, result.attempt) == (
        "run-1",
        7,
        "inv-1",
        3,
    )
    assert result.step == StepRef(step_id="s1", node="transform", node_version="1.0.0")
    assert result.status is TraceStatus.OK and result.output == {"result": 1}
    assert decode(encode(result)) == result

    trace = build_trace(node, invocation, attempt, context={"worker": "w"})
    assert trace.retry_count == 2 and trace.cache_hit is False
    assert trace.node == "transform" and trace.node_version == "1.0.0"
    assert trace.inputs_hash == inputs_hash(invocation.params)
    assert trace.latency_ms == attempt.latency_ms
    assert trace.context == {"traceparent": "00-abc-def-01", "worker": "w"}
    assert (trace.workflow_id, trace.workflow_version, trace.seq) == ("wf", 2, 7)
    assert decode(encode(trace)) == trace


def test_claim_checked_result_has_no_inline_output(tmp_path: Any) -> None:
    store = FileBlobStore(tmp_path)
    invocation = _invocation(node="transform", params={"expression": "a", "data": {"a": 1}})
    node = TransformNode()
    attempt = _run(node, invocation)
    data = encode_json(attempt.output)
    ref = store_json(store, "results/x.json", data)
    result = build_result(node, invocation, attempt, output_ref=ref)
    assert result.output is None and result.output_ref == ref
    assert load_json(store, ref) == attempt.output
    (tmp_path / "results" / "x.json").write_bytes(b'{"result":2}')
    with pytest.raises(PayloadCorruptError, match="sha256"):
        load_json(store, ref)
