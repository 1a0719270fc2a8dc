"""From one diagnosis to at most one proposal (pure): historian first, policy, one open proposal
per ``(workflow, step, strategy)``, and the ``MutationRequest`` that carries it.

- **Historian first**: the strategies are tried in the order of what worked for similar past
  incidents (a kept proposal counts its incident's similarity for its strategy, an applied one
  half of it); a strategy whose proposals for a very similar incident (similarity >= 0.9) were
  all rolled back or rejected is not tried again for it. The rest keep the library's order.
- **Policy**: nothing is proposed for a workflow whose improvement policy is ``off``.
- **One open proposal per key**: a strategy whose key already has a proposal that is not final
  (proposed, validating, validated, approved, applied) is skipped.
- **A rejection holds its key**: a proposal its validation rejected (the replay showed nothing to
  gain, or worse) holds its key for ``rejection_hold_s``, doubled for each earlier rejection of
  the key (:func:`rejection_holds`); the diagnoses that follow the same incident would otherwise
  ask for the same change again (seen: a timeout replayed twice in the flaky scenario, ADR 0041).
- **Idempotent**: the mutation id is derived from the diagnosis id and the strategy, so a
  redelivered diagnosis asks for the same id and the mutation processor refuses the duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from processors.optimizer.arms import model_step
from processors.optimizer.bandit import ModelBandit
from processors.optimizer.experiment import ExperimentConfig
from processors.optimizer.history import IncidentLike
from processors.optimizer.strategies import STRATEGIES, Proposal, Strategy, StrategyInput
from schemas.models import Diagnosis, DiagnosisKind, MutationAction, MutationRequest
from workflows.model import WorkflowDefinition

__all__ = [
    "AUTHOR_PREFIX",
    "FINAL_STATUSES",
    "Plan",
    "mutation_id_for",
    "mutation_request",
    "order_strategies",
    "plan",
    "proposal_key",
    "rejection_holds",
    "reset_on_drift",
    "strategy_step",
    "superseding_key",
]

AUTHOR_PREFIX: Final = "optimizer:"
FINAL_STATUSES: Final = frozenset({"rejected", "kept", "rolled_back", "reverted"})
WORKFLOW_WIDE: Final = frozenset({"parallelise"})
_REPEAT_SIMILARITY: Final = 0.9
MAX_REJECTION_HOLD_S: Final = 86_400.0
DRIFT_KINDS: Final = frozenset(
    {
        DiagnosisKind.LATENCY_DRIFT,
        DiagnosisKind.FAILURE_DRIFT,
        DiagnosisKind.TIMEOUT_DRIFT,
        DiagnosisKind.QUALITY_DRIFT,
    }
)
"""Diagnoses that reset the step's bandits: the arms' history no longer says how they do."""


def reset_on_drift(diagnosis: Diagnosis, bandits: Sequence[ModelBandit]) -> bool:
    """Reset the bandits of the diagnosed step on a drift; the arm named by the evidence
    (``arm``) or the node version is kept from the incumbent's place until measured again."""
    if diagnosis.kind not in DRIFT_KINDS or not bandits:
        return False
    try:
        evidence = json.loads(diagnosis.evidence or "{}")
    except ValueError:
        evidence = {}
    arm = evidence.get("arm") if isinstance(evidence, dict) else None
    arm = arm if isinstance(arm, str) else diagnosis.node_version
    for b in bandits:
        b.reset(degraded=arm if arm in b.arms else None)
    return True


def superseding_key(diagnosis: Diagnosis, definition: WorkflowDefinition) -> str | None:
    """The ``model_choice`` key whose open experiment a diagnosis supersedes: a quality drop
    of a model step (or of the checker scoring it) makes the arms' history void, so the
    optimizer's own experiment on that step is rolled back for the answer (ADR 0040)."""
    if diagnosis.kind is not DiagnosisKind.QUALITY_DRIFT:
        return None
    before = diagnosis.metrics.get("mean_before")
    after = diagnosis.metrics.get("mean_after")
    if before is None or after is None or after >= before:
        return None
    step_id = model_step(definition, diagnosis.step_id)
    return None if step_id is None else proposal_key(definition.id, step_id, "model_choice")


def strategy_step(strategy: str, step_id: str | None) -> str:
    return "*" if strategy in WORKFLOW_WIDE or step_id is None else step_id


def proposal_key(workflow_id: str, step_id: str, strategy: str) -> str:
    return f"{workflow_id}/{step_id}/{strategy}"


def mutation_id_for(diagnosis_id: str, strategy: str) -> str:
    digest = hashlib.sha256(f"{diagnosis_id}\x00{strategy}".encode()).hexdigest()
    return f"opt-{digest[:24]}"


def rejection_holds(
    rejections: Iterable[tuple[str, float]], *, now: float, hold_s: float
) -> dict[str, str]:
    """Key -> why it is held, for the keys whose last validation rejection is recent.

    ``rejections`` are ``(key, rejected_at)`` (epoch seconds) of the optimizer's proposals its
    validation rejected. The n-th rejection of a key holds it ``hold_s * 2**(n-1)`` seconds
    after it (at most :data:`MAX_REJECTION_HOLD_S`): one rejection is a verdict about that
    moment's traffic, repeated ones say the strategy does not fit the step.
    """
    if hold_s <= 0:
        return {}
    by_key: dict[str, list[float]] = {}
    for key, at in rejections:
        by_key.setdefault(key, []).append(at)
    held: dict[str, str] = {}
    for key, times in by_key.items():
        hold = min(MAX_REJECTION_HOLD_S, hold_s * 2 ** (len(times) - 1))
        left = max(times) + hold - now
        if left > 0:
            count = f"{len(times)} rejections" if len(times) > 1 else "a rejection"
            held[key] = (
                f"validation rejected a proposal for {key} ({count}; held {left:.0f} s more)"
            )
    return held


@dataclass(frozen=True)
class Plan:
    proposal: Proposal | None
    skipped: tuple[tuple[str, str], ...] = ()
    """``(strategy, why)`` for every strategy that applied to the diagnosis but proposed nothing."""
    similar: tuple[dict[str, Any], ...] = field(default=())


def _history_scores(incidents: Sequence[IncidentLike]) -> tuple[dict[str, float], set[str]]:
    scores: dict[str, float] = {}
    failed: dict[str, bool] = {}
    for incident in incidents:
        for past in incident.proposals:
            if past.strategy is None:
                continue
            if past.status == "kept":
                scores[past.strategy] = scores.get(past.strategy, 0.0) + incident.similarity
            elif past.status == "applied":
                scores[past.strategy] = scores.get(past.strategy, 0.0) + incident.similarity / 2
            if incident.similarity >= _REPEAT_SIMILARITY:
                bad = past.status in ("rolled_back", "rejected", "reverted")
                failed[past.strategy] = failed.get(past.strategy, True) and bad
    avoid = {name for name, all_bad in failed.items() if all_bad and name not in scores}
    return scores, avoid


def order_strategies(
    incidents: Sequence[IncidentLike], strategies: Sequence[Strategy] = STRATEGIES
) -> tuple[list[Strategy], set[str]]:
    """The strategies in the order to try them, and the names left out because they failed for
    a very similar incident."""
    scores, avoid = _history_scores(incidents)
    position = {s.name: i for i, s in enumerate(strategies)}
    ordered = sorted(
        (s for s in strategies if s.name not in avoid),
        key=lambda s: (-scores.get(s.name, 0.0), position[s.name]),
    )
    return ordered, avoid


def _similar_json(incidents: Sequence[IncidentLike]) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "diagnosis_id": i.diagnosis_id,
            "kind": i.kind,
            "subject": i.subject,
            "similarity": round(float(i.similarity), 4),
            "proposals": [
                {"mutation_id": p.mutation_id, "strategy": p.strategy, "status": p.status}
                for p in i.proposals
            ],
        }
        for i in incidents
    )


def plan(
    given: StrategyInput,
    *,
    policy: str,
    open_keys: Collection[str],
    held: Mapping[str, str] | None = None,
    strategies: Sequence[Strategy] = STRATEGIES,
) -> Plan:
    """The first strategy, in the historian's order, that applies to the diagnosis, whose key
    is neither open nor ``held`` (:func:`rejection_holds`), and that proposes a change."""
    diagnosis = given.diagnosis
    similar = _similar_json(given.incidents)
    if policy == "off":
        return Plan(None, (("*", "improvement policy is off"),), similar)
    workflow_id = given.definition.id
    ordered, avoid = order_strategies(given.incidents, strategies)
    skipped: list[tuple[str, str]] = [
        (name, "rolled back or rejected for a very similar incident") for name in sorted(avoid)
    ]
    for strategy in ordered:
        if diagnosis.kind not in strategy.kinds:
            continue
        key = proposal_key(
            workflow_id, strategy_step(strategy.name, diagnosis.step_id), strategy.name
        )
        if key in open_keys:
            skipped.append((strategy.name, f"a proposal for {key} is still open"))
            continue
        if held and key in held:
            skipped.append((strategy.name, held[key]))
            continue
        proposal = strategy.propose(given)
        if proposal is None:
            skipped.append((strategy.name, "nothing to change"))
            continue
        # The proposal may be about another step than the diagnosis (a checker's quality
        # drift answered on the model step it scores): its own key must be free too.
        own = proposal_key(
            workflow_id, strategy_step(strategy.name, proposal.step_id), strategy.name
        )
        if own != key and own in open_keys:
            skipped.append((strategy.name, f"a proposal for {own} is still open"))
            continue
        if own != key and held and own in held:
            skipped.append((strategy.name, held[own]))
            continue
        return Plan(proposal, tuple(skipped), similar)
    return Plan(None, tuple(skipped), similar)


def mutation_request(found: Plan, given: StrategyInput) -> MutationRequest:
    """The ``propose`` request for a plan's proposal (author ``optimizer:<strategy>``)."""
    proposal = found.proposal
    if proposal is None:
        raise ValueError("Expected a plan with a proposal, but it proposes nothing")
    diagnosis = given.diagnosis
    evidence: dict[str, Any] = {
        "diagnosis_id": diagnosis.diagnosis_id,
        "strategy": proposal.strategy,
        "predicted_effect": proposal.predicted_effect,
        "similar_incidents": list(found.similar),
        "diagnosis": {
            "kind": diagnosis.kind.value,
            "subject": diagnosis.subject,
            "severity": diagnosis.severity.value,
            "detector": diagnosis.detector,
            "metrics": dict(diagnosis.metrics),
            "example_run_ids": list(diagnosis.example_run_ids)[:5],
            "explanation": diagnosis.explanation,
        },
        "step_id": proposal.step_id,
    }
    if proposal.canary_weight is not None:
        evidence["suggested_canary_weight"] = proposal.canary_weight
    if proposal.strategy == "model_choice":
        # The canary becomes a two-arm bandit experiment (ADR 0037): the experiment runner
        # moves its weight within the budget and keeps or rolls it back.
        min_runs = max(1, given.config.experiment_min_runs)
        evidence["bandit"] = ExperimentConfig(
            budget=min(0.49, max(0.01, given.config.exploration_budget)),
            min_runs=min_runs,
            decide_runs=max(min_runs, ExperimentConfig.decide_runs),
            weights=given.config.weights_for(given.definition.id),
        ).to_json()
    return MutationRequest(
        workflow_id=given.definition.id,
        mutation_id=mutation_id_for(diagnosis.diagnosis_id, proposal.strategy),
        action=MutationAction.PROPOSE,
        actor=f"{AUTHOR_PREFIX}{proposal.strategy}",
        base_version=given.base_version,
        changes=list(proposal.changes),
        rationale=proposal.rationale + f" (diagnosis {diagnosis.diagnosis_id}: "
        f"{diagnosis.explanation})",
        evidence=evidence,
    )
