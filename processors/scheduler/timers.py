"""Timers are deadlines in run state; the runtime turns due ones into ``FireTimer`` commands.

Design: ``decide`` never arms a timer "somewhere else". ``evolve`` records every timer in
``RunState.timers`` (backoff from StepRetryScheduled, queue timeout from
StepDispatched.queue_timeout_at, step timeout from StepStarted.timeout_at and
StepTimeoutExtended, run deadline from RunStarted.deadline, the wait of a meta.wait / meta.signal
step from StepWaitStarted: ADR 0057) and removes it when it can no longer
matter. A per-partition loop in the runtime keeps an index of ``next_due(state)`` per run (or
re-reads the ``timers_armed`` / ``timers_cancelled`` of each
:class:`~processors.scheduler.decide.Decision`), and when one is due writes
``due_timers(state, now)`` to ``reflux.commands``. The FireTimer then goes through ``decide``
like any command, so every decision stays in the single-writer agent.

A FireTimer that lost a race (its step already finished, or a newer attempt exists) is a no-op.
Backoff timers of a paused run are not due: ResumeRun dispatches the retries whose time has come.
A failed run keeps only its step and queue timeouts (attempts in flight must end before a
re-drive can finish the run).
"""

from __future__ import annotations

from datetime import datetime

from processors.scheduler.evolve import FAILED_RUN_TIMER_KINDS
from processors.scheduler.state import RunState, RunStatus, Timer
from schemas.models import FireTimer, TimerKind

__all__ = ["due_timers", "fire_timer_command", "live_timers", "next_due"]


def live_timers(state: RunState) -> list[Timer]:
    """Timers that may fire now or later, earliest first."""
    if state.status is RunStatus.RUNNING:
        timers = list(state.timers.values())
    elif state.status is RunStatus.PAUSED:
        timers = [t for t in state.timers.values() if t.kind is not TimerKind.BACKOFF]
    elif state.status is RunStatus.FAILED:
        # Attempts (and waits) still in flight in a failed run must end for a later re-drive
        # to finish.
        timers = [t for t in state.timers.values() if t.kind in FAILED_RUN_TIMER_KINDS]
    else:
        return []
    return sorted(timers, key=lambda t: (t.due_at, t.timer_id))


def next_due(state: RunState) -> datetime | None:
    timers = live_timers(state)
    return timers[0].due_at if timers else None


def fire_timer_command(state: RunState, timer: Timer) -> FireTimer:
    """The command for one timer; its command_id is derived from the timer (stable on re-emit)."""
    return FireTimer(
        run_id=state.run_id,
        command_id=f"fire:{timer.timer_id}",
        requested_by="timer",
        timer_id=timer.timer_id,
        step_id=timer.step_id,
        attempt=timer.attempt,
        kind=timer.kind,
        due_at=timer.due_at,
    )


def due_timers(state: RunState, now: datetime) -> list[FireTimer]:
    """FireTimer commands for every live timer due at ``now``, earliest first."""
    return [fire_timer_command(state, t) for t in live_timers(state) if t.due_at <= now]
