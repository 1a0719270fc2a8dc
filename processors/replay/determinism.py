"""Determinism check: a recorded run replayed against its own version (side effects from the
record) must yield the same events and outputs.

"The same" (docs/decisions/0029-shadow-replay.md): every event of the run log, compared field by
field except what differs by nature between two executions -- record ids, timestamps, durations,
invocation/timer ids, the worker's name, cache hits (the shadow cache starts empty), and the
StepStarted signal (emitted only when an attempt outlasts the start-signal delay, so a timing
fact), and where an attempt ran: a pure step evaluated inline by the scheduler has no
StepDispatched and no cache key (docs/decisions/0064-inline-pure-steps.md), so a run recorded with
inlining on replays the same as with it off, and the other way round. Steps run in parallel
interleave differently each time, so the logs are compared per step (each step's events in
order) and for the run's own events in order; the first divergence is the one with the lowest
original seq.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from foundation.settings import Settings
from node_workers.registry import NodeRegistry
from processors.replay.shadow import Candidate, ReplayError, ShadowReplay
from schemas.models import StepDispatched
from schemas.run_log import scheduling_of

__all__ = [
    "VOLATILE_FIELDS",
    "DeterminismReport",
    "check_determinism",
    "check_determinism_runs",
    "first_divergence",
]

VOLATILE_FIELDS: Final = frozenset(
    {
        "event_id",
        "seq",
        "occurred_at",
        "causation_id",
        "invocation_id",
        "timer_id",
        "next_attempt_at",
        "timeout_at",
        "queue_timeout_at",
        "started_at",
        "duration_ms",
        "backoff_ms",
        "held_ms",
        "circuit",
        "worker",
        "deadline",
        "cache_hit",
        "registered_at",
        "cache_key",
    }
)
TIMING_EVENTS: Final = frozenset({"StepStarted", "StepTimeoutExtended", "StepDispatched"})
"""Events not compared: when a worker started (timing), and whether the attempt went to one (a
dispatch that schedules its step is compared as its ``StepScheduled``)."""


@dataclass(frozen=True)
class DeterminismReport:
    run_id: str
    deterministic: bool
    # {"seq": n, "expected": {...}, "actual": {...}} of the first event that differs (seq: the
    # original's; candidate_seq: the replay's; expected/actual None where one log has no event).
    first_divergence: dict[str, Any] | None


def normalize(event: Any) -> dict[str, Any]:
    """An event as compared: its type and its non-volatile fields (JSON)."""
    data = event.model_dump(mode="json") if hasattr(event, "model_dump") else dict(event)
    out = {k: v for k, v in data.items() if k not in VOLATILE_FIELDS}
    topic = out.get("invoke_topic")
    if isinstance(topic, str) and ".invoke." in topic:
        # The deployment's topic prefix is not the run's behaviour: keep the logical name.
        out["invoke_topic"] = "invoke." + topic.rpartition(".invoke.")[2]
    out["type"] = type(event).__name__ if hasattr(event, "model_dump") else data.get("type")
    return out


def _groups(events: Sequence[Any]) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for recorded in events:
        event = recorded
        if isinstance(recorded, StepDispatched) and recorded.scheduled:
            # A dispatch that schedules its step (ADR 0075) is compared as that scheduling, so
            # a log with a StepScheduled before each dispatch (older, or inline) replays the same.
            event = scheduling_of(recorded)
        elif type(recorded).__name__ in TIMING_EVENTS:
            continue
        step = getattr(event, "step", None)
        key = step.step_id if step is not None else ""
        groups.setdefault(key, []).append((int(event.seq), normalize(event)))
    return groups


def first_divergence(expected: Sequence[Any], actual: Sequence[Any]) -> dict[str, Any] | None:
    """The first event (lowest original seq) where the replay differs, or None."""
    want, got = _groups(expected), _groups(actual)
    found: list[dict[str, Any]] = []
    for key in sorted(set(want) | set(got)):
        a, b = want.get(key, []), got.get(key, [])
        for i in range(max(len(a), len(b))):
            left = a[i] if i < len(a) else None
            right = b[i] if i < len(b) else None
            if left is not None and right is not None and left[1] == right[1]:
                continue
            found.append(
                {
                    "seq": None if left is None else left[0],
                    "candidate_seq": None if right is None else right[0],
                    "step_id": key or None,
                    "expected": None if left is None else left[1],
                    "actual": None if right is None else right[1],
                }
            )
            break
    if not found:
        return None

    def order(d: dict[str, Any]) -> tuple[int, int]:
        seq = d["seq"] if d["seq"] is not None else d["candidate_seq"]
        return (int(seq), 0 if d["seq"] is not None else 1)

    return min(found, key=order)


def check_determinism(
    settings: Settings,
    run_id: str,
    *,
    schema: str = "reflux",
    nodes: NodeRegistry | None = None,
    replay_id: str | None = None,
) -> DeterminismReport:
    """Replay ``run_id`` against the version it ran on, side effects from its record, in a
    shadow engine (removed afterwards), and compare the logs."""
    (report,) = check_determinism_runs(
        settings, [run_id], schema=schema, nodes=nodes, replay_id=replay_id
    )
    return report


def check_determinism_runs(
    settings: Settings,
    run_ids: Sequence[str],
    *,
    schema: str = "reflux",
    nodes: NodeRegistry | None = None,
    replay_id: str | None = None,
) -> list[DeterminismReport]:
    """:func:`check_determinism` for several finished runs, one report per run in order: the
    runs of each workflow version are replayed together, in one shadow round (one fold or one
    shadow engine, not one per run), each compared with its own record."""
    with ShadowReplay(
        settings, replay_id or f"det_{uuid.uuid4().hex[:10]}", schema=schema, nodes=nodes
    ) as replay:
        originals = {}
        # A shadow round replays runs of one workflow version.
        by_version: dict[tuple[str, int], list[str]] = {}
        for run_id in run_ids:
            original = originals[run_id] = replay.original_events(run_id)
            if not original:
                raise ReplayError(f"run_id: no recorded run {run_id!r} in {schema}")
            head = original[0]
            by_version.setdefault((head.workflow_id, head.workflow_version), []).append(run_id)
        divergences = {}
        for (_, version), runs in by_version.items():
            replay.run(runs, Candidate(workflow_version=version))
            for run_id in runs:
                divergences[run_id] = first_divergence(
                    originals[run_id], replay.candidate_events(run_id)
                )
    return [
        DeterminismReport(
            run_id=run_id,
            deterministic=divergences[run_id] is None,
            first_divergence=divergences[run_id],
        )
        for run_id in run_ids
    ]
