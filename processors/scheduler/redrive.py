"""Re-drive from a step and rebind to another workflow version: the rules, as pure functions.

``decide`` (:mod:`processors.scheduler.decide`) calls these to judge a ``RedriveStep`` with
``downstream`` or a ``RebindRun`` against run state; each answers a plan (what to write) or a
refusal (the reason, "Expected X, but Y", naming the step and the rule). Nothing here emits
events: the handlers in ``decide`` do, so the append-is-apply discipline stays in one place.
See docs/decisions/0026-redrive-and-rebind.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.scheduler.state import (
    DONE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    RunState,
    RunStatus,
    StepStatus,
)
from workflows.model import WorkflowDefinition
from workflows.validation import WorkflowValidationError, validate_inputs

__all__ = [
    "REBIND_RUN_STATUSES",
    "REDRIVE_FROM_RUN_STATUSES",
    "RebindPlan",
    "RedrivePlan",
    "plan_rebind",
    "plan_redrive_from",
    "rebind_status_refusal",
    "transitive_dependents",
]

REDRIVE_FROM_RUN_STATUSES = (RunStatus.RUNNING, RunStatus.FAILED, RunStatus.SUCCEEDED)
"""A re-drive from a step reopens a finished run; a paused run is resumed first (a re-drive
would start attempts the pause is holding back); a cancelled run stays cancelled."""

REBIND_RUN_STATUSES = (RunStatus.FAILED, RunStatus.PAUSED)
"""Rebinding swaps the graph under the run: only while nothing new is being started."""

_IN_FLIGHT = (StepStatus.SCHEDULED, StepStatus.DISPATCHED, StepStatus.RUNNING)
"""An attempt a worker (or a cache answer) may still end: a re-drive does not reset it. Not
cancel-and-restart: the scheduler cannot stop a worker, so the old attempt's side effects would
run alongside the new one's. Wait for it to end (or cancel the run)."""


@dataclass(frozen=True)
class RedrivePlan:
    step_ids: tuple[str, ...]
    """The chosen step and its transitive dependents, in topological order."""
    reopen: bool
    """The run is failed or succeeded: a ``RunResumed`` reopens it first."""


def _status_words(statuses: tuple[RunStatus, ...]) -> str:
    words = [s.value for s in statuses]
    return ", ".join(words[:-1]) + " or " + words[-1]


def transitive_dependents(graph: WorkflowDefinition, step_id: str) -> list[str]:
    """Every step downstream of ``step_id`` (needing it directly or not), topological order."""
    return [sid for sid in graph.topological_order if step_id in graph.upstream(sid)]


def plan_redrive_from(run: RunState, step_id: str) -> RedrivePlan | str:
    """What a re-drive from ``step_id`` resets, or why it is refused."""
    if run.status not in REDRIVE_FROM_RUN_STATUSES:
        hint = {
            RunStatus.PAUSED: " (resume it first)",
            RunStatus.CANCELLED: " (a cancelled run is never reopened)",
        }.get(run.status, "")
        return (
            f"Expected run to be {_status_words(REDRIVE_FROM_RUN_STATUSES)} to re-drive from a "
            f"step, but it is {run.status}{hint}"
        )
    if run.definition is None:
        # A finished run the scheduler keeps only as a marker, and could not reload from the
        # run log (its beginning is past retention): nothing to re-run from.
        return (
            f"Expected run {run.run_id!r} to be in the run log from its first event to re-drive "
            "from a step, but the scheduler could not reload it (retention deleted its start)"
        )
    step = run.steps.get(step_id)
    if step is None:
        return (
            f"Expected step {step_id!r} to exist, but the run has no such step "
            f"(steps: {', '.join(run.steps)})"
        )
    if step.status not in DONE_STEP_STATUSES | FAILED_STEP_STATUSES:
        return (
            f"Expected step {step_id!r} to have ended (succeeded, skipped, failed or timed_out) "
            f"to re-drive from it, but it is {step.status}"
        )
    graph = run.graph
    reset = (step_id, *transitive_dependents(graph, step_id))
    busy = [sid for sid in reset if run.steps[sid].status in _IN_FLIGHT]
    if busy:
        which = ", ".join(f"{sid!r} is {run.steps[sid].status}" for sid in busy)
        return (
            f"Expected step {step_id!r} and the steps downstream of it not to be in flight, "
            f"but {which} (wait for it to end, or cancel the run)"
        )
    return RedrivePlan(step_ids=reset, reopen=run.status is not RunStatus.RUNNING)


# -- rebind --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebindPlan:
    definition: WorkflowDefinition
    inputs: dict[str, Any]
    kept: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    redrive: tuple[str, ...]
    """Failed or timed-out steps to run again (only for a failed run with redrive_failed)."""


def rebind_status_refusal(run: RunState) -> str | None:
    """Why the run cannot be rebound in its status, or None."""
    if run.status in REBIND_RUN_STATUSES:
        return None
    hint = " (pause it first)" if run.status is RunStatus.RUNNING else ""
    return (
        f"Expected run to be {_status_words(REBIND_RUN_STATUSES)} to rebind it, but it is "
        f"{run.status}{hint}"
    )


def plan_rebind(
    run: RunState,
    version: int,
    definition: WorkflowDefinition,
    *,
    redrive_failed: bool,
) -> RebindPlan | str:
    """How ``run`` maps onto ``definition`` (version ``version``), or why it cannot.

    Rules (each refusal names the step and the rule):

    - ``has-run-stays``: a step that has run (any status but pending) exists in the new version;
    - ``same-node``: such a step keeps its node name (its version constraint may change: a
      re-driven step resolves the new one);
    - ``needs-ended``: a step whose result stands (succeeded, skipped, or in flight in a paused
      run) needs, in the new version, only steps that succeeded or were skipped in this run --
      it must not depend on a step that has not run. A failed step may gain needs: it is reset
      to pending and runs once they end;
    - ``inputs``: the run's inputs are valid for the new version (its defaults are applied).
    """
    refusal = rebind_status_refusal(run)
    if refusal is not None:
        return refusal
    if version == run.workflow_version:
        return (
            f"Expected a version other than the run's own ({version}) to rebind to, but got "
            f"version {version}"
        )
    old = run.graph
    problems: list[str] = []
    for step_id in old.topological_order:
        step = run.steps.get(step_id)
        if step is None or step.status is StepStatus.PENDING:
            continue
        where = f"step {step_id!r} ({step.status})"
        if not definition.has_step(step_id):
            problems.append(
                f"{where} is missing from version {version} (rule has-run-stays: a step that "
                "has run must stay)"
            )
            continue
        before, after = old.step(step_id).node_name, definition.step(step_id).node_name
        if before != after:
            problems.append(
                f"{where} runs node {before!r} but version {version} gives it {after!r} "
                "(rule same-node: a step that has run keeps its node)"
            )
        if step.status in FAILED_STEP_STATUSES:
            continue
        for need in definition.step(step_id).needs:
            upstream = run.steps.get(need)
            if upstream is None or upstream.status not in DONE_STEP_STATUSES:
                state = "is new" if upstream is None else f"is {upstream.status}"
                problems.append(
                    f"{where} needs {need!r} in version {version}, which {state} in this run "
                    "(rule needs-ended: a step whose result stands needs only steps that "
                    "succeeded or were skipped)"
                )
    try:
        inputs = validate_inputs(definition, run.inputs)
    except WorkflowValidationError as exc:
        problems.append(
            f"the run's inputs do not fit version {version}: "
            + "; ".join(str(e) for e in exc.errors)
            + " (rule inputs)"
        )
        inputs = {}
    if problems:
        return f"Expected run to map onto version {version}, but " + "; ".join(problems)
    new_ids = set(definition.step_ids)
    kept = tuple(sid for sid in old.step_ids if sid in new_ids)
    changed = tuple(
        sid
        for sid in kept
        if old.step(sid).model_dump(mode="json") != definition.step(sid).model_dump(mode="json")
    )
    redrive: tuple[str, ...] = ()
    if redrive_failed and run.status is RunStatus.FAILED:
        redrive = tuple(
            sid
            for sid in definition.topological_order
            if sid in run.steps and run.steps[sid].status in FAILED_STEP_STATUSES
        )
    return RebindPlan(
        definition=definition,
        inputs=inputs,
        kept=kept,
        added=tuple(sid for sid in definition.step_ids if sid not in run.steps),
        removed=tuple(sid for sid in old.step_ids if sid not in new_ids),
        changed=changed,
        redrive=redrive,
    )
