"""The model-choice bandits of a step, measured from its finished runs (pure).

The optimizer's ``model_choice`` strategy needs, per ``openai.chat`` step and input class, how
each candidate model did (:class:`~processors.optimizer.bandit.ModelBandit`). The runtime reads
the step's recent finished runs from the read models (the model that answered, its tokens, the
run's checker scores, the run's status and the input field that classifies it) as
:class:`ArmSample` rows; :func:`bandits_from_samples` folds them into one bandit per class.

Rebuilt for every diagnosis, from a window of runs: no state to lose on a restart, and a
**reset on drift** is the window starting where the drift began (:func:`drift_since`): the
arms' history before a quality drift no longer says how they do.

:func:`model_step` maps a diagnosis's step to the step whose model it is about: the step
itself when it is an ``openai.chat`` step, or, for a checker step (whose ``quality_score`` a
quality drift is measured on), the one ``openai.chat`` step it scores (the steps it reads or
waits for).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from processors.optimizer.bandit import ModelBandit, Outcome, RewardWeights
from schemas.quality import CheckerScoreError, checker_score
from workflows.data_dependencies import data_references
from workflows.model import WorkflowDefinition

__all__ = [
    "MODEL_NODE",
    "ArmSample",
    "bandits_from_samples",
    "drift_since",
    "in_use",
    "model_step",
    "sample_from_row",
]

MODEL_NODE = "openai.chat"


@dataclass(frozen=True)
class ArmSample:
    """One finished run, as the step's bandits see it."""

    run_id: str
    finished_at: datetime
    model: str | None
    """The model that answered (the step's output ``model``); None when the step did not run."""
    context: str | None
    """The run's value of the classifying input field (None: no field, or not a string)."""
    succeeded: bool
    quality: float | None
    """The mean of the run's checker scores; None when nothing scored it."""
    tokens: float = 0.0
    latency_ms: float = 0.0


def model_step(definition: WorkflowDefinition, step_id: str | None) -> str | None:
    """The ``openai.chat`` step a diagnosis about ``step_id`` is about, or None."""
    if step_id is None or not definition.has_step(step_id):
        return None
    step = definition.step(step_id)
    if step.node_name == MODEL_NODE:
        return step.id
    if not step.checker:
        return None
    scored = sorted(
        s
        for s in set(step.needs) | set(data_references(step))
        if definition.has_step(s) and definition.step(s).node_name == MODEL_NODE
    )
    return scored[0] if len(scored) == 1 else None


def drift_since(
    samples: Sequence[ArmSample], detected_at: datetime, after_n: int
) -> datetime | None:
    """Where a drift detected at ``detected_at`` on its last ``after_n`` values began: the
    finish time of the ``after_n``-th newest sample that finished by then (None when there are
    fewer, or ``after_n`` < 1)."""
    if after_n < 1:
        return None
    before = sorted((s.finished_at for s in samples if s.finished_at <= detected_at), reverse=True)
    if len(before) < after_n:
        return None
    return before[after_n - 1]


def bandits_from_samples(
    samples: Iterable[ArmSample],
    *,
    key: str,
    arms: Sequence[str],
    weights: RewardWeights,
    budget: float,
    min_pulls: int,
    since: datetime | None = None,
) -> list[ModelBandit]:
    """One bandit per input class (key ``<key>/<class>``; ``<key>`` when the runs have no
    class), each sample from ``since`` on one pull of its model's arm, in finish order. Samples
    of a model not among ``arms`` are left out. The default arm is ``arms[0]`` (the
    reference)."""
    if not arms:
        raise ValueError("Expected at least one arm")
    ordered = sorted(samples, key=lambda s: (s.finished_at, s.run_id))
    bandits: dict[str | None, ModelBandit] = {}
    for s in ordered:
        if s.model is None or s.model not in arms:
            continue
        if since is not None and s.finished_at < since:
            continue
        bandit = bandits.get(s.context)
        if bandit is None:
            bandit = bandits[s.context] = ModelBandit(
                key=key if s.context is None else f"{key}/{s.context}",
                arms=tuple(arms),
                default=arms[0],
                weights=weights,
                budget=budget,
                min_pulls=min_pulls,
            )
        bandit.observe(
            s.model,
            Outcome(s.succeeded, quality=s.quality, latency_ms=s.latency_ms, cost=s.tokens),
        )
    return [bandits[c] for c in sorted(bandits, key=lambda c: (c is None, c or ""))]


def in_use(bandit: ModelBandit) -> str | None:
    """The arm the class's newest run got (None: no pulls): what it runs on now, since the
    samples are folded in finish order."""
    return bandit.last_arm


def sample_from_row(  # noqa: PLR0917 (one read-model row, column by column)
    run_id: str,
    finished_at: datetime,
    status: str,
    context: object,
    output: object,
    duration_ms: float | None,
    checker_outputs: Sequence[object] | None,
) -> ArmSample:
    """An :class:`ArmSample` from a run's row (``runs``) and its steps' outputs (``steps``):
    the model step's output (``model``, ``usage.total_tokens``) and the checker steps' outputs
    (their ``score``; an unreadable one is left out, as the worker would have failed it)."""
    model: str | None = None
    tokens = 0.0
    if isinstance(output, dict):
        found = output.get("model")
        model = found if isinstance(found, str) else None
        usage = output.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int | float):
            tokens = float(usage["total_tokens"])
    scores = []
    for checked in checker_outputs or ():
        try:
            scores.append(checker_score(checked))
        except CheckerScoreError:
            continue
    return ArmSample(
        run_id=run_id,
        finished_at=finished_at,
        model=model,
        context=context if isinstance(context, str) else None,
        succeeded=status == "succeeded",
        quality=sum(scores) / len(scores) if scores else None,
        tokens=tokens,
        latency_ms=float(duration_ms or 0.0),
    )
