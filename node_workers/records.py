"""Pure builders: an :class:`~node_workers.attempt.Attempt` becomes a NodeResult and a Trace.

The result answers the invocation (same run, seq, invocation id, attempt and step; the step's
``node_version`` is the version that actually ran) so the scheduler can match it to the step's
current attempt and drop late duplicates. The trace is the seed's reflection-layer row.
"""

from __future__ import annotations

from collections.abc import Mapping

from node_workers.attempt import Attempt
from node_workers.node import AnyNode
from schemas.models import NodeInvocation, NodeResult, PayloadRef, StepRef, Trace

__all__ = ["build_result", "build_trace"]


def _step(node: AnyNode, invocation: NodeInvocation) -> StepRef:
    return StepRef(step_id=invocation.step.step_id, node=node.name, node_version=node.version)


def build_result(
    node: AnyNode,
    invocation: NodeInvocation,
    attempt: Attempt,
    *,
    output_ref: PayloadRef | None = None,
) -> NodeResult:
    """``output_ref`` replaces the inline output (claim check) when given."""
    return NodeResult(
        run_id=invocation.run_id,
        seq=invocation.seq,
        invocation_id=invocation.invocation_id,
        attempt=invocation.attempt,
        step=_step(node, invocation),
        status=attempt.status,
        output=None if output_ref is not None else attempt.output,
        output_ref=output_ref,
        error=attempt.error,
        metrics=dict(attempt.metrics),
        cost_tokens=attempt.cost_tokens,
        started_at=attempt.started_at,
        finished_at=attempt.finished_at,
    )


def build_trace(
    node: AnyNode,
    invocation: NodeInvocation,
    attempt: Attempt,
    *,
    context: Mapping[str, str] | None = None,
) -> Trace:
    return Trace(
        run_id=invocation.run_id,
        seq=invocation.seq,
        workflow_id=invocation.workflow_id,
        workflow_version=invocation.workflow_version,
        step_id=invocation.step.step_id,
        node=node.name,
        node_version=node.version,
        invocation_id=invocation.invocation_id,
        status=attempt.status,
        start=attempt.started_at,
        end=attempt.finished_at,
        latency_ms=attempt.latency_ms,
        inputs_hash=attempt.inputs_hash,
        metrics=dict(attempt.metrics),
        error=attempt.error,
        retry_count=max(invocation.attempt - 1, 0),
        cache_hit=False,
        cost_tokens=attempt.cost_tokens,
        context={**invocation.trace_context, **(context or {})},
    )
