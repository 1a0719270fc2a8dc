"""Validating a proposal: a list of pluggable stages, each reporting what it checked.

A stage is anything with a ``name`` and ``run(subject) -> CheckResult``. The built-in stages:

- ``base``: the base version is registered;
- ``applies``: every operation of the diff applies, in order, to the base definition
  (:func:`workflows.mutations.apply_mutation`); errors are prefixed ``changes[i]``;
- ``definition``: the result passes :func:`workflows.validation.check_definition` against the
  node catalog.

A stage whose input is missing (``definition`` after ``applies`` failed) is reported as skipped,
not passed.

**The replay stage** (issue 10, ADR 0030) is asynchronous, so it is not one of these synchronous
stages: when the static stages pass and the processor is configured with a
:class:`ReplayValidation`, the proposal stays ``validating`` with the replay listed under
``pending`` (:func:`pending_report`), the processor asks the replay runner for an A/B replay of
recent runs of the base version against the proposal's definition (:func:`replay_spec`), and the
runner's ``replay_verdict`` request is judged by :func:`judge_replay`: ``worse`` rejects;
``better`` and ``no_difference`` validate; ``insufficient_data`` (too few recorded runs) and a
replay that failed validate on the static checks alone, and the report says so. Without a
``ReplayValidation`` every report lists ``replay`` under ``not_run`` so nobody mistakes a
validated proposal for an evaluated one.

Pure: the base definition and the node catalog are handed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from schemas.models import GraphMutation
from workflows.model import WorkflowDefinition
from workflows.mutations import apply_mutation
from workflows.node_catalog import NodeCatalogView
from workflows.validation import FieldError, WorkflowValidationError, check_definition

__all__ = [
    "DEFAULT_STAGES",
    "NOT_RUN",
    "RESCUE_CANARY_WEIGHT",
    "CheckResult",
    "ReplayValidation",
    "Report",
    "Stage",
    "ValidationSubject",
    "auto_canary_weight",
    "candidate_definition",
    "judge_replay",
    "pending_report",
    "replay_cost",
    "replay_spec",
    "validate",
]

NOT_RUN: Final = (
    {
        "name": "replay",
        "why": "A/B replay evaluation is not configured for this mutation processor",
    },
)


@dataclass
class ValidationSubject:
    """What the stages look at; stages fill ``candidate`` for the ones after them."""

    workflow_id: str
    base_version: int
    changes: Sequence[GraphMutation]
    base: WorkflowDefinition | None
    node_catalog: NodeCatalogView | None = None
    candidate: WorkflowDefinition | None = None


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    errors: tuple[FieldError, ...] = ()
    skipped: str | None = None
    """Why the stage could not run (its input is missing); a skipped stage did not pass."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "errors": [{"path": e.path, "message": e.message} for e in self.errors],
        }
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out


class Stage(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, subject: ValidationSubject) -> CheckResult: ...


@dataclass(frozen=True)
class BaseStage:
    name: str = "base"

    def run(self, subject: ValidationSubject) -> CheckResult:
        if subject.base is None:
            message = (
                f"workflow {subject.workflow_id!r} has no version {subject.base_version} registered"
            )
            return CheckResult(self.name, False, (FieldError("base_version", message),))
        return CheckResult(self.name, True)


def candidate_definition(
    base: WorkflowDefinition, changes: Sequence[GraphMutation]
) -> WorkflowDefinition:
    """``base`` with every change applied in order; raises ``WorkflowValidationError`` with
    paths prefixed ``changes[i]``."""
    current = base
    for index, change in enumerate(changes):
        try:
            current = apply_mutation(current, change)
        except WorkflowValidationError as exc:
            raise WorkflowValidationError(
                [
                    FieldError(f"changes[{index}]." + e.path.removeprefix("mutation."), e.message)
                    for e in exc.errors
                ],
                subject="proposal",
            ) from exc
    return current


@dataclass(frozen=True)
class AppliesStage:
    name: str = "applies"

    def run(self, subject: ValidationSubject) -> CheckResult:
        if subject.base is None:
            return CheckResult(self.name, False, skipped="no base definition")
        if not subject.changes:
            return CheckResult(
                self.name, False, (FieldError("changes", "a proposal needs at least one change"),)
            )
        try:
            subject.candidate = candidate_definition(subject.base, subject.changes)
        except WorkflowValidationError as exc:
            return CheckResult(self.name, False, tuple(exc.errors))
        return CheckResult(self.name, True)


@dataclass(frozen=True)
class DefinitionStage:
    name: str = "definition"

    def run(self, subject: ValidationSubject) -> CheckResult:
        if subject.candidate is None:
            return CheckResult(self.name, False, skipped="the diff did not apply")
        errors = check_definition(subject.candidate, node_catalog=subject.node_catalog)
        return CheckResult(self.name, not errors, tuple(errors))


DEFAULT_STAGES: Final[tuple[Stage, ...]] = (BaseStage(), AppliesStage(), DefinitionStage())


@dataclass(frozen=True)
class Report:
    checks: tuple[CheckResult, ...]
    not_run: tuple[dict[str, str], ...] = field(default=NOT_RUN)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [check.to_json() for check in self.checks],
            "not_run": [dict(item) for item in self.not_run],
        }


def validate(subject: ValidationSubject, stages: Sequence[Stage] = DEFAULT_STAGES) -> Report:
    """Runs every stage in order (none is short-circuited: each says why it could not run)."""
    return Report(tuple(stage.run(subject) for stage in stages))


# -- the replay stage (asynchronous) -------------------------------------------------------------

REPLAY: Final = "replay"


@dataclass(frozen=True)
class ReplayValidation:
    """How a proposal is replayed: the newest ``sample_size`` runs of its base version, every
    side-effecting node answered from the record, at the originals' ``pace``, judged at
    ``confidence``."""

    sample_size: int = 50
    confidence: float = 0.95
    pace: str = "recorded"
    """``recorded``: the replay admits at most as many runs at once as the originals had in
    flight, so a candidate's latency is measured under the load its originals met
    (processors/replay/pace.py); ``free``: every sampled run at once (fastest)."""


def replay_spec(
    workflow_id: str,
    base_version: int,
    mutation_id: str,
    candidate: WorkflowDefinition,
    config: ReplayValidation,
) -> dict[str, Any]:
    """The ``ReplayRequested`` spec (the same shape ``POST /v1/replays`` writes)."""
    return {
        "selection": {
            "workflow_id": workflow_id,
            "workflow_version": base_version,
            "sample_size": config.sample_size,
        },
        "candidate": {"definition": candidate.to_json_dict(), "mutation_id": mutation_id},
        "policy": {"per_node": {}, "stubs": {}, "pace": config.pace},
        "confidence": config.confidence,
    }


def pending_report(report: Report, replay_id: str) -> dict[str, Any]:
    """The static checks' report of a proposal whose replay is running."""
    body = report.to_json()
    body["not_run"] = []
    body["pending"] = [{"name": REPLAY, "replay_id": replay_id}]
    return body


def replay_cost(summary: dict[str, Any]) -> tuple[float, float] | None:
    """``(original, candidate)`` LLM tokens of a replay, or ``None`` when the originals' cost is
    not known (the report then has no cost to compare: a cheaper candidate cannot be shown).

    Tokens are the cost both sides can measure: ``calls`` are not comparable (a candidate's
    side effects served from the record count 0 calls where the original paid for them)."""
    cost = summary.get("cost") or {}
    original = (cost.get("original") or {}).get("tokens")
    candidate = (cost.get("candidate") or {}).get("tokens")
    if not isinstance(original, (int, float)) or not isinstance(candidate, (int, float)):
        return None
    if original <= 0:
        return None
    return float(original), float(candidate)


def judge_replay(
    report: dict[str, Any] | None, outcome: dict[str, Any]
) -> tuple[bool, dict[str, Any], str]:
    """``(validated, report, reason)`` for a validating proposal whose replay ended.

    ``outcome`` is the runner's ``{replay_id, status, verdict, summary, error}``. A proposal is
    validated only when the replay shows it is worth having (issue 11, ADR 0033): the verdict
    is ``better``, or ``no_difference`` with a lower cost. Everything else -- ``worse``,
    ``no_difference`` at the same or a higher cost, ``insufficient_data``, a replay that
    failed -- rejects it, with the reason: a change with nothing to show for it is only risk.
    """
    body = dict(report or {})
    verdict = outcome.get("verdict")
    replay_id = outcome.get("replay_id")
    summary = outcome.get("summary") or {}
    check: dict[str, Any] = {"name": REPLAY, "passed": False, "errors": []}
    if outcome.get("status") != "completed":
        reason = (
            f"replay {replay_id} failed ({outcome.get('error')}): "
            "the proposal was not shown to be better"
        )
    elif verdict == "better":
        check["passed"] = True
        reason = "replay verdict better: " + str(summary.get("comparison", {}).get("reason", ""))
    elif verdict == "worse":
        reason = "replay verdict worse: " + str(summary.get("comparison", {}).get("reason", ""))
    elif verdict == "no_difference":
        cost = replay_cost(summary)
        if cost is not None and cost[1] < cost[0]:
            check["passed"] = True
            reason = (
                f"replay verdict no_difference with a lower cost ({cost[0]:.0f} -> "
                f"{cost[1]:.0f} tokens)"
            )
        else:
            seen = "cost not measured" if cost is None else f"{cost[0]:.0f} -> {cost[1]:.0f} tokens"
            reason = f"replay verdict no_difference and no lower cost ({seen}): nothing to gain"
    elif verdict == "insufficient_data":
        reason = (
            f"replay {replay_id}: insufficient data ({summary.get('runs', 0)} runs): "
            "the proposal was not shown to be better"
        )
    else:
        reason = f"replay verdict {verdict!r}: the proposal was not shown to be better"
    if not check["passed"]:
        check["errors"] = [{"path": "replay", "message": reason}]
    body["checks"] = [*body.get("checks", []), check]
    body["pending"] = []
    body["not_run"] = []
    body["passed"] = bool(body.get("passed", True)) and check["passed"]
    body["replay"] = {
        "replay_id": replay_id,
        "status": outcome.get("status"),
        "verdict": verdict,
        "runs": summary.get("runs"),
        "outcomes": summary.get("outcomes"),
        "comparison": summary.get("comparison"),
        "cost": summary.get("cost"),
        "error": outcome.get("error"),
    }
    return check["passed"], body, reason


RESCUE_CANARY_WEIGHT: Final = 0.5
"""Policy auto's canary share for a proposal whose replay showed the baseline failing runs the
candidate saves (:func:`auto_canary_weight`)."""
RESCUE_MIN_GAIN: Final = 0.10
"""The success-rate gain (the replay's whole confidence interval above zero, the estimate at
least this) that makes a proposal a rescue."""


def auto_canary_weight(report: Mapping[str, Any] | None, default: float) -> float:
    """The canary share policy ``auto`` applies a validated proposal with.

    ``default`` for most: a change that only saves latency or cost risks little by waiting.
    :data:`RESCUE_CANARY_WEIGHT` when the replay showed a significant success-rate gain of at
    least :data:`RESCUE_MIN_GAIN`: then every run left on the baseline is a failure the replay
    predicts the candidate avoids, and a larger share both saves those runs and gives the
    canary judge its evidence sooner (the judge still rolls it back on live traces). Flagger's
    progressive delivery steps the weight up for the same reason; here the replay has already
    given the first step's evidence.
    """
    replay = (report or {}).get("replay") or {}
    if replay.get("verdict") != "better":
        return default
    success = (replay.get("comparison") or {}).get("success") or {}
    gain, low = success.get("difference"), success.get("ci_low")
    rescue = (
        isinstance(gain, int | float)
        and isinstance(low, int | float)
        and low > 0
        and gain >= RESCUE_MIN_GAIN
    )
    if rescue:
        return max(default, RESCUE_CANARY_WEIGHT)
    return default
