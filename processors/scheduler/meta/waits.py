"""``meta.wait`` and ``meta.signal`` in ``decide``: waiting is scheduler state, not a worker slot.

A waiting step is ``running`` in run state with its :class:`~processors.scheduler.state.StepWait`
(``StepWaitStarted``) and, when it has a due time, a durable timer (``TimerKind.wait``) in
``RunState.timers``: the runtime turns it into a ``FireTimer`` when it is due, like any other
timer, so a wait survives the restart of every component and may last days (ADR 0057).

- ``meta.wait``: the timer ends the wait, ``StepSucceeded`` with ``{"waited_ms", "due_at"}``.
- ``meta.signal``: ``SignalRun`` (``POST /v1/runs/{id}/signals/{name}``) ends it,
  ``StepSucceeded`` with ``{"signal", "payload", "timed_out": false}``; its optional timeout
  (the timer) fails it with ``WaitTimeout`` (``on_timeout: fail``) or ends it with
  ``payload: null, timed_out: true`` (``continue``). A signal no step waits for is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

from processors.scheduler.meta.map import ContextOf, Writer
from processors.scheduler.state import RunState, StepState, StepStatus, Timer
from schemas.models import ErrorInfo, SignalRun, StepSucceeded, StepWaitStarted
from workflows.expressions import render_params
from workflows.meta_waits import (
    SIGNAL_NODE,
    WAIT_NODES,
    due_time,
    parse_duration_ms,
    signal_params,
    wait_params,
)

__all__ = [
    "WAIT_TIMEOUT",
    "deliver_signal",
    "is_wait_node",
    "signal_refusal",
    "signal_waiters",
    "start_wait",
    "wait_timer_due",
]

WAIT_TIMEOUT: Final = "WaitTimeout"
"""Error class of a meta.signal step whose timeout passed before its signal (on_timeout: fail)."""

FailAttempt = Callable[[str, ErrorInfo], None]
"""``(step id, error)``: decide's way to fail the current attempt (retry policy applies)."""


def is_wait_node(node_name: str) -> bool:
    return node_name in WAIT_NODES


def start_wait(w: Writer, step_id: str, attempt: int, context_of: ContextOf) -> None:
    """``StepWaitStarted`` for ``attempt``; raises ``NonRetryableError`` (a template that does
    not render, a duration or time that is not one) for ``decide`` to fail the step with."""
    definition = w.run.step_definition(step_id)
    now = w.ctx.now
    prefix = f"steps.{step_id}.params"
    if definition.node_name == SIGNAL_NODE:
        signal = signal_params(definition.params)
        due = (
            now + timedelta(milliseconds=parse_duration_ms(signal.timeout, f"{prefix}.timeout"))
            if signal.timeout is not None
            else None
        )
        w.emit(
            StepWaitStarted,
            step=w.run.step_ref(step_id),
            attempt=attempt,
            timer_id=w.ctx.new_id() if due is not None else None,
            due_at=due,
            signal=signal.name,
            on_timeout=signal.on_timeout,
        )
        return
    params = wait_params(definition.params)
    rendered = render_params(
        {"duration": params.duration, "until": params.until}, context_of(), path=prefix
    )
    due = due_time(rendered, now, prefix)
    w.emit(
        StepWaitStarted,
        step=w.run.step_ref(step_id),
        attempt=attempt,
        timer_id=w.ctx.new_id(),
        # A time already past still goes through the timer (fires at once): one path for all.
        due_at=max(due, now),
        signal=None,
        on_timeout=None,
    )


def _waiting(step: StepState | None) -> bool:
    return (
        step is not None
        and step.status is StepStatus.RUNNING
        and step.wait is not None
        and step.wait.attempt == step.attempt
    )


def _succeed(w: Writer, step: StepState, output: Any) -> None:
    began = step.started_at or w.ctx.now
    w.emit(
        StepSucceeded,
        step=w.run.step_ref(step.step_id),
        attempt=step.attempt,
        invocation_id=None,
        output=output,
        output_ref=None,
        cache_hit=False,
        duration_ms=max(0, int((w.ctx.now - began).total_seconds() * 1000)),
    )


def wait_timer_due(w: Writer, timer: Timer, fail_attempt: FailAttempt) -> bool:
    """A wait timer fired: end the wait it belongs to (True), or nothing (False: the step's
    wait ended otherwise, e.g. its signal came first, or the step moved on)."""
    assert timer.step_id is not None
    step = w.run.steps.get(timer.step_id)
    if not _waiting(step):
        return False
    assert step is not None and step.wait is not None
    wait = step.wait
    if wait.timer_id != timer.timer_id:
        return False
    due = wait.due_at.isoformat(timespec="milliseconds") if wait.due_at else None
    if wait.signal is None:
        _succeed(w, step, {"waited_ms": _elapsed_ms(w, step), "due_at": due})
    elif wait.on_timeout == "continue":
        _succeed(w, step, {"signal": wait.signal, "payload": None, "timed_out": True})
    else:
        fail_attempt(
            step.step_id,
            ErrorInfo(
                error_class=WAIT_TIMEOUT,
                message=(
                    f"No signal {wait.signal!r} reached step {step.step_id!r} (attempt "
                    f"{step.attempt}) before its timeout at {due}"
                ),
                retryable=False,
            ),
        )
    return True


def _elapsed_ms(w: Writer, step: StepState) -> int:
    began = step.started_at or w.ctx.now
    return max(0, int((w.ctx.now - began).total_seconds() * 1000))


def signal_waiters(run: RunState, name: str) -> list[StepState]:
    """The steps of ``run`` waiting for signal ``name`` now (current attempts), in graph order."""
    order = run.graph.topological_order if run.definition is not None else list(run.steps)
    found = [run.steps.get(sid) for sid in order]
    return [s for s in found if _waiting(s) and s is not None and s.wait and s.wait.signal == name]


def signal_refusal(run: RunState, name: str) -> str | None:
    """Why signal ``name`` cannot be delivered to ``run`` now (None: some step waits for it)."""
    if signal_waiters(run, name):
        return None
    others = sorted(
        {
            s.wait.signal
            for s in run.steps.values()
            if _waiting(s) and s.wait is not None and s.wait.signal is not None
        }
    )
    waiting = (
        f"the run waits for {', '.join(repr(o) for o in others)}"
        if others
        else "no step of the run is waiting for a signal"
    )
    return f"Expected a step waiting for signal {name!r}, but none is ({waiting})"


def deliver_signal(w: Writer, cmd: SignalRun) -> None:
    """Each step waiting for ``cmd.signal`` succeeds with the payload (the caller checked
    :func:`signal_refusal` first)."""
    for step in signal_waiters(w.run, cmd.signal):
        _succeed(w, step, {"signal": cmd.signal, "payload": cmd.payload, "timed_out": False})
