"""The A/B replay report, built from the engine's ``ReplayPair`` list (pure).

Per run: the outcome of each side (``both_succeeded | fixed | broke | both_failed``), whether
the outputs are equal (else a JSON diff: one entry per differing path), end-to-end and per-step
latency, cost (tokens, calls). Aggregated: counts, success rates, latency quantiles, per-step
median latencies, cost totals, and the statistical comparison (:mod:`processors.replay.stats`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any, Final

from processors.replay.shadow import ReplayPair, RunOutcome, StepOutcome
from processors.replay.stats import VerdictRules, compare

__all__ = [
    "MAX_DIFF_ENTRIES",
    "RunReport",
    "build_report",
    "json_diff",
    "run_report",
    "work_latencies",
]

SUCCEEDED: Final = "succeeded"
MAX_DIFF_ENTRIES: Final = 50
"""A run's output diff is cut after this many entries (``truncated`` says so)."""


def json_diff(original: Any, candidate: Any, path: str = "$") -> Iterator[dict[str, Any]]:
    """Differences between two JSON values, one ``{path, op, original, candidate}`` per place:
    ``op`` is ``changed``, ``added`` (only in the candidate) or ``removed``."""
    if isinstance(original, Mapping) and isinstance(candidate, Mapping):
        for key in sorted(set(original) | set(candidate), key=str):
            sub = f"{path}.{key}"
            if key not in candidate:
                yield {"path": sub, "op": "removed", "original": original[key], "candidate": None}
            elif key not in original:
                yield {"path": sub, "op": "added", "original": None, "candidate": candidate[key]}
            else:
                yield from json_diff(original[key], candidate[key], sub)
        return
    if isinstance(original, list) and isinstance(candidate, list):
        for index in range(max(len(original), len(candidate))):
            sub = f"{path}[{index}]"
            if index >= len(candidate):
                yield {"path": sub, "op": "removed", "original": original[index], "candidate": None}
            elif index >= len(original):
                yield {"path": sub, "op": "added", "original": None, "candidate": candidate[index]}
            else:
                yield from json_diff(original[index], candidate[index], sub)
        return
    # bool is an int in Python, but True and 1 are different JSON; 1 and 1.0 are the same.
    numbers = (int, float)
    same_number = (
        isinstance(original, numbers)
        and isinstance(candidate, numbers)
        and not isinstance(original, bool)
        and not isinstance(candidate, bool)
        and original == candidate
    )
    if not same_number and (type(original) is not type(candidate) or original != candidate):
        yield {"path": path, "op": "changed", "original": original, "candidate": candidate}


def _outcome(original: RunOutcome, candidate: RunOutcome) -> str:
    a, b = original.status == SUCCEEDED, candidate.status == SUCCEEDED
    return {
        (True, True): "both_succeeded",
        (False, True): "fixed",
        (True, False): "broke",
        (False, False): "both_failed",
    }[(a, b)]


def _cost(run: RunOutcome) -> dict[str, int]:
    return {
        "tokens": sum(s.tokens or 0 for s in run.steps.values()),
        "calls": sum(s.calls for s in run.steps.values()),
    }


def _step(step: StepOutcome | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {
        "status": step.status,
        "attempts": step.attempts,
        "duration_ms": step.duration_ms,
        "served": step.served,
        "tokens": step.tokens,
        "calls": step.calls,
    }


def _side(run: RunOutcome) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "error_class": run.error_class,
        "duration_ms": run.duration_ms,
        **_cost(run),
    }


@dataclass(frozen=True)
class RunReport:
    original_run_id: str
    candidate_run_id: str
    outcome: str
    output_equal: bool
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.body


def run_report(pair: ReplayPair) -> RunReport:
    original, candidate = pair.original, pair.candidate
    diff = list(json_diff(original.outputs, candidate.outputs))
    steps = []
    for step_id in sorted(set(original.steps) | set(candidate.steps)):
        a, b = original.steps.get(step_id), candidate.steps.get(step_id)
        equal = a is not None and b is not None and not any(json_diff(a.output, b.output))
        steps.append(
            {
                "step_id": step_id,
                "original": _step(a),
                "candidate": _step(b),
                "output_equal": equal,
            }
        )
    outcome = _outcome(original, candidate)
    body = {
        "original": _side(original),
        "candidate": _side(candidate),
        "outcome": outcome,
        "output_equal": not diff,
        "output_diff": diff[:MAX_DIFF_ENTRIES],
        "output_diff_truncated": len(diff) > MAX_DIFF_ENTRIES,
        "steps": steps,
    }
    return RunReport(original.run_id, candidate.run_id, outcome, not diff, body)


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "mean": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "count": len(ordered),
        "p50": float(median(ordered)),
        "p95": float(p95),
        "mean": sum(ordered) / len(ordered),
    }


def _step_medians(runs: Sequence[RunOutcome]) -> dict[str, float]:
    durations: dict[str, list[float]] = {}
    for run in runs:
        for step_id, step in run.steps.items():
            if step.duration_ms is not None:
                durations.setdefault(step_id, []).append(step.duration_ms)
    return {step_id: float(median(values)) for step_id, values in sorted(durations.items())}


def _ok_latencies(runs: Sequence[RunOutcome]) -> list[float]:
    return [r.duration_ms for r in runs if r.status == SUCCEEDED and r.duration_ms is not None]


def _work_ms(run: RunOutcome, executed: set[str]) -> float:
    """The wall time ``executed`` steps of ``run`` took: the length of the union of their
    execution intervals ``[end - duration, end]``. Steps one after the other add up (a chain:
    the sum of their durations); steps that ran at the same time count once (the longest).
    Gaps between steps (scheduling, steps served from the record) are left out. A step with no
    end time (a hand-made outcome) makes it the plain sum."""
    spans: list[tuple[float, float]] = []
    total = 0.0
    timed = True
    for step_id in executed:
        step = run.steps.get(step_id)
        if step is None or step.duration_ms is None:
            continue
        total += step.duration_ms
        if step.ended_at_ms is None:
            timed = False
        else:
            spans.append((step.ended_at_ms - step.duration_ms, step.ended_at_ms))
    if not timed:
        return total
    covered = 0.0
    reach = float("-inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        covered += end - max(start, reach)
        reach = end
    return covered


def work_latencies(pairs: Sequence[ReplayPair]) -> tuple[list[float], list[float]]:
    """What the statistics compare: per successful run, the wall time of the steps the
    candidate re-executed (``served == "executed"``), on each side (:func:`_work_ms`: the
    union of their execution intervals, so a candidate that runs independent steps together
    is measured by the time they took together, not by their sum).

    Not end to end: a shadow run's end-to-end time is not comparable with its original's
    (side effects are served from the record in ~0 ms, the shadow engine starts its runs
    together on a machine that is also running production), so an identical candidate would
    differ by tens to hundreds of milliseconds. The steps that really ran again on both sides
    are the like-for-like part. End-to-end and per-step times are still reported."""
    original: list[float] = []
    candidate: list[float] = []
    for pair in pairs:
        executed = {s for s, step in pair.candidate.steps.items() if step.served == "executed"}
        if not executed:
            continue
        if pair.original.status == SUCCEEDED:
            original.append(_work_ms(pair.original, executed))
        if pair.candidate.status == SUCCEEDED:
            candidate.append(_work_ms(pair.candidate, executed))
    return original, candidate


def build_report(
    pairs: Sequence[ReplayPair], rules: VerdictRules | None = None
) -> tuple[dict[str, Any], list[RunReport]]:
    """``(aggregate, per-run reports)``; the aggregate holds the comparison and the verdict."""
    runs = [run_report(pair) for pair in pairs]
    originals = [p.original for p in pairs]
    candidates = [p.candidate for p in pairs]
    work_a, work_b = work_latencies(pairs)
    comparison = compare(
        [r.status == SUCCEEDED for r in originals],
        [r.status == SUCCEEDED for r in candidates],
        work_a,
        work_b,
        rules,
    )
    outcomes: dict[str, int] = {"both_succeeded": 0, "fixed": 0, "broke": 0, "both_failed": 0}
    for run in runs:
        outcomes[run.outcome] += 1

    def totals(side: Sequence[RunOutcome]) -> dict[str, int]:
        costs = [_cost(r) for r in side]
        return {
            "tokens": sum(c["tokens"] for c in costs),
            "calls": sum(c["calls"] for c in costs),
        }

    aggregate = {
        "runs": len(runs),
        "verdict": comparison.verdict,
        "outcomes": outcomes,
        "outputs_equal": sum(1 for r in runs if r.output_equal),
        "outputs_different": sum(1 for r in runs if not r.output_equal),
        "latency_ms": {
            "original": _quantiles(_ok_latencies(originals)),
            "candidate": _quantiles(_ok_latencies(candidates)),
        },
        # What the latency test compares (see work_latencies).
        "executed_steps_ms": {"original": _quantiles(work_a), "candidate": _quantiles(work_b)},
        "step_latency_p50_ms": {
            "original": _step_medians(originals),
            "candidate": _step_medians(candidates),
        },
        "cost": {"original": totals(originals), "candidate": totals(candidates)},
        "comparison": comparison.to_json(),
    }
    return aggregate, runs
