"""The quality signal on traces (docs/decisions/0035-quality-signal-on-traces.md).

A quality score is a number in ``[0, 1]`` (1 = right/good) carried by a trace as
``metrics["quality_score"]``. Two sources write it:

- a **checker step** (``checker: true`` in the workflow definition): its attempt's trace, written
  by the worker like every attempt, gets the ``score`` of the step's output. The scheduler marks
  the invocation (:data:`CHECKER_CONTEXT_KEY` in ``trace_context``) so the worker knows;
- **feedback** on a run (``POST /v1/runs/{id}/feedback``): one more trace of that run,
  :func:`feedback_trace`, with ``context["kind"] = "feedback"``, status ``skipped`` and no
  invocation. It is not an attempt (the attempt rollups leave it out, like the scheduler's retry
  decisions); the critic and the quality queries read ``metrics["quality_score"]`` of any trace.

Both live in the contracts layer: the scheduler, the worker and the API all use them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from foundation.errors import NonRetryableError
from schemas.models import Trace, TraceStatus

__all__ = [
    "CHECKER_CONTEXT_KEY",
    "COMMENT_CHARS",
    "FEEDBACK_KIND",
    "FEEDBACK_NODE",
    "QUALITY_SCORE",
    "SCORE_MAX",
    "SCORE_MIN",
    "CheckerScoreError",
    "checker_context",
    "checker_score",
    "feedback_trace",
    "is_checker",
]

QUALITY_SCORE: Final = "quality_score"
"""The metric's name on traces."""
SCORE_MIN: Final = 0.0
SCORE_MAX: Final = 1.0
CHECKER_CONTEXT_KEY: Final = "reflux.checker"
"""Set to ``"true"`` in a checker step's ``NodeInvocation.trace_context`` (and so in its trace's
``context``)."""
FEEDBACK_KIND: Final = "feedback"
"""``context["kind"]`` of a feedback trace."""
FEEDBACK_NODE: Final = "feedback"
"""``node`` of a feedback trace (also its Kafka key): feedback is not a node's attempt."""
COMMENT_CHARS: Final = 2000
"""Longest comment kept on a feedback trace."""


def checker_context() -> dict[str, str]:
    return {CHECKER_CONTEXT_KEY: "true"}


def is_checker(trace_context: Mapping[str, str]) -> bool:
    return trace_context.get(CHECKER_CONTEXT_KEY) == "true"


class CheckerScoreError(NonRetryableError):
    """A checker step's output has no usable score; the attempt fails with this class."""

    error_class = "CheckerScoreMissing"


def _score_of(value: Any) -> Any:
    if isinstance(value, Mapping):
        if "score" in value:
            return value["score"]
        result = value.get("result")  # the transform node's output: {"result": {"score": ...}}
        if isinstance(result, Mapping) and "score" in result:
            return result["score"]
    raise CheckerScoreError(
        "Expected a checker step's output to contain a numeric 'score' (at the top level or "
        f"under 'result'), but it has {_shape(value)}"
    )


def _shape(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = sorted(str(k) for k in value)
        return f"keys {keys[:10]}" if keys else "no keys"
    return f"a {type(value).__name__}"


def checker_score(output: Any) -> float:
    """The score of a checker step's output, in ``[0, 1]``; :class:`CheckerScoreError` when it
    is missing, not a number (booleans are not scores) or out of range."""
    score = _score_of(output)
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise CheckerScoreError(
            f"Expected a checker step's 'score' to be a number between {SCORE_MIN:g} and "
            f"{SCORE_MAX:g}, but it is {score!r}"
        )
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise CheckerScoreError(
            f"Expected a checker step's 'score' to be between {SCORE_MIN:g} and {SCORE_MAX:g}, "
            f"but it is {score!r}"
        )
    return float(score)


def feedback_trace(
    *,
    run_id: str,
    workflow_id: str,
    workflow_version: int,
    score: float,
    at: datetime,
    feedback_id: str | None = None,
    step_id: str | None = None,
    label: str | None = None,
    comment: str | None = None,
    source: str = "api",
) -> Trace:
    """One feedback on a run (or on one of its steps) as a trace of that run.

    ``step_id`` empty = the whole run. ``inputs_hash`` is the feedback id (a trace field that
    must be non-empty text; it is not a cache key here). ``seq`` is -1: no invocation.
    """
    feedback_id = feedback_id or str(uuid.uuid4())
    context = {"source": source, "kind": FEEDBACK_KIND, "feedback_id": feedback_id}
    if label:
        context["label"] = label
    if comment:
        context["comment"] = comment[:COMMENT_CHARS]
    return Trace(
        run_id=run_id,
        seq=-1,
        workflow_id=workflow_id,
        workflow_version=workflow_version,
        step_id=step_id or "",
        node=FEEDBACK_NODE,
        node_version="",
        invocation_id=None,
        status=TraceStatus.SKIPPED,
        start=at,
        end=at,
        latency_ms=0,
        inputs_hash=feedback_id,
        metrics={QUALITY_SCORE: float(score)},
        error=None,
        retry_count=0,
        cache_hit=False,
        cost_tokens=None,
        context=context,
    )
