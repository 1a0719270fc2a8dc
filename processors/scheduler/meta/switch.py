"""``meta.switch`` in ``decide``: evaluate the value, record the case, skip the other branches.

The switch step succeeds at once (no worker), its output naming the case. A step listed under
a case that was not chosen is skipped when it becomes ready (``StepSkipped``, reason naming the
switch and its case); steps downstream of it are then skipped by the usual rule ("any need
skipped -> skipped"), exactly as for a false ``when``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processors.scheduler.meta.map import ContextOf, Writer
from processors.scheduler.state import RunState, StepStatus
from schemas.models import StepSucceeded
from workflows.expressions import render_params
from workflows.meta import SWITCH_NODE, case_key, switch_params

__all__ = ["run_switch", "switch_skip_reason"]


def run_switch(w: Writer, step_id: str, attempt: int, context_of: ContextOf) -> None:
    """StepSucceeded with ``{"value", "case", "default"}``; raises ``NonRetryableError`` (a
    template error) for ``decide`` to fail the step with."""
    params = switch_params(w.run.step_definition(step_id).params)
    value = render_params(params.value, context_of(), path=f"steps.{step_id}.params.value")
    key = case_key(value)
    case = key if key in params.cases else None
    w.emit(
        StepSucceeded,
        step=w.run.step_ref(step_id),
        attempt=attempt,
        invocation_id=None,
        output={"value": value, "case": case, "default": case is None},
        output_ref=None,
        cache_hit=False,
        duration_ms=0,
    )


def switch_skip_reason(run: RunState, step_id: str) -> str | None:
    """Why ``step_id`` must be skipped: a switch it needs chose a branch without it."""
    graph = run.graph
    for need in graph.step(step_id).needs:
        if not graph.has_step(need):
            continue
        switch = graph.step(need)
        state = run.steps.get(need)
        if switch.node_name != SWITCH_NODE or state is None:
            continue
        if state.status is not StepStatus.SUCCEEDED or not isinstance(state.output, Mapping):
            continue
        params = switch_params(switch.params)
        listed = {s for ids in params.cases.values() for s in ids} | set(params.default)
        if step_id not in listed:
            continue  # not a branch of this switch (e.g. a join after it): runs as usual
        case: Any = state.output.get("case")
        chosen = params.cases.get(case, ()) if isinstance(case, str) else params.default
        if step_id not in chosen:
            which = f"case {case!r}" if isinstance(case, str) else "no case (default)"
            return f"switch {need!r} chose {which}"
    return None
