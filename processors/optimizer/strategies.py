"""The strategy library: a diagnosis + the workflow definition -> a proposed diff (pure).

Each strategy answers one kind of problem with one kind of change, and says what it expects the
change to do (``predicted_effect``), so the canary's measured effect can be compared with it:

- ``timeout``: latency_drift, timeout_drift, anomaly -> ``timeout`` = margin x observed p99;
- ``retry``: failure_drift, error_cluster (transient class) -> attempts so that p^n <= target;
- ``cache``: repeated_inputs -> the step cache on, its TTL from the repeat gap;
- ``parallelise``: sequential_independent, bottleneck -> needs relaxed to the data dependencies;
- ``fallback``: failure_drift, timeout_drift, error_cluster, when a fallback is configured ->
  try / fallback / join;
- ``model_choice``: cost, quality_drift, latency_drift, failure_drift, when a bandit measured
  every arm -> the ``openai.chat`` model (or a node version).

Diffs are ``GraphMutation`` bodies on the base definition. A step's timeout, retry, cache and
needs are not params, and the four mutation types only replace params or nodes, so changing them
is ``remove_step`` + ``add_step`` of the whole new step (same id): valid for proposals and for
run mutations alike, and the proposal's ``definition`` check validates the result.

Metric names read from a diagnosis (``Diagnosis.metrics``), first found wins (the critic's
names included): latency ``p99_ms``/``p99_after_ms``, ``p95_ms``/``p95_after_ms``, typical
latency ``p50_ms``/``mean_after``/``mean_latency_ms``; failure rate ``error_rate``,
``failure_rate``, ``rate_after``, ``timeout_rate``, ``share``; ``retryable_share`` (>= 0.5 makes
an unnamed or unknown class retryable); repeats ``repeat_share``, ``share``, gap
``median_gap_ms``; per-step latency for the parallelise estimate: ``evidence.step_p50_ms`` or
``evidence.durations_ms``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from processors.optimizer.arms import in_use, model_step
from processors.optimizer.bandit import ModelBandit, RewardWeights
from processors.optimizer.history import IncidentLike
from processors.replay.stats import wilson_interval
from schemas.base import canonical_json
from schemas.models import Diagnosis, DiagnosisKind, GraphMutation, GraphMutationType
from workflows.data_dependencies import (
    CatalogSideEffects,
    SideEffectView,
    relaxed_needs,
    sequential_chains,
)
from workflows.expressions import secret_placeholders
from workflows.meta import MAP_NODE, is_meta_node
from workflows.meta_children import CHILD_RUN_NODES
from workflows.model import StepDefinition, WorkflowDefinition

__all__ = [
    "STRATEGIES",
    "TRANSIENT_ERROR_CLASSES",
    "OptimizerConfig",
    "Proposal",
    "Strategy",
    "StrategyInput",
    "replace_step",
]

K = DiagnosisKind

TRANSIENT_ERROR_CLASSES: Final = frozenset(
    {
        "Timeout",
        "StepTimeout",
        "ConnectionError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "Http5xx",  # what http.request raises for a 5xx (node_workers/nodes/http_request.py)
        "Http429",
        "HttpTimeout",
        "NetworkError",
        "HttpStatus5xx",
        "HTTPStatus503",
        "ServiceUnavailable",
        "RateLimited",
        "TooManyRequests",
        "Transient",
        "TransientError",
        "UpstreamUnavailable",
        "BrokenPipe",
        "LlmServerError",  # openai.chat's 5xx
    }
)
"""Error classes a retry can fix; matched also by the words transient/timeout/5xx/unavailable/
rate/connect in a class name."""

_TRANSIENT_WORDS: Final = re.compile(
    r"transient|time_?out|timed_?out|5\d\d|5xx|unavailable|rate|connect", re.I
)


@dataclass(frozen=True)
class OptimizerConfig:
    timeout_margin: float = 1.5
    """New timeout = margin x p99 (or 2 x p95 when no p99 is known)."""
    min_timeout_ms: int = 100
    max_attempts: int = 8
    """The retry strategy's cap. A dependency failing a third of the time needs 7 attempts for
    99.9% (5 left the bench's flaky scenario at 98-99%); the exponential backoff with jitter
    spreads them over seconds, so a struggling dependency is not hammered."""
    target_failure: float = 0.001
    """Retry: attempts so that (failure rate)^attempts <= this."""
    min_cache_ttl_ms: int = 60_000
    max_cache_ttl_ms: int = 86_400_000
    min_parallel_gain: float = 0.1
    """Parallelise only when the critical path shrinks by this share at least."""
    fallbacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``"<workflow>/<step>"`` or ``"<node name>"`` -> ``{"node": ..., "params": {...}}``: what
    to call when the step's dependency fails; without one, no fallback is proposed."""
    weights: Mapping[str, RewardWeights] = field(default_factory=dict)
    """Reward weights per workflow id (``"*"``: every other workflow)."""
    exploration_budget: float = 0.2
    """Largest share of traffic a bandit may explore with (also the suggested canary weight)."""
    models: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """``"<workflow>/<step>"``, ``"<workflow>"`` or ``"*"`` -> the models an ``openai.chat``
    step may use, the reference first (the one that answers well; the default arm), then the
    cheaper alternatives in the order to try them. Without an entry the optimizer measures no
    model arms for the step (it still proposes what externally fed bandits measured)."""
    contexts: Mapping[str, str] = field(default_factory=dict)
    """Workflow id -> the input field whose value classifies a run's inputs (``difficulty``):
    one bandit per class, so a cheap model can be chosen for the classes it suffices for."""
    rejection_hold_s: float = 900.0
    """How long a proposal rejected by its validation holds its ``(workflow, step, strategy)``
    key, doubled for each earlier rejection of the key (0: no hold)."""
    experiment_min_runs: int = 10
    """``min_runs`` of a ``model_choice`` proposal's experiment (ADR 0037): pulls per arm
    before its weight moves."""

    def __post_init__(self) -> None:
        for key, arms in self.models.items():
            if (
                isinstance(arms, str)
                or not isinstance(arms, Sequence)
                or not arms
                or not all(isinstance(a, str) and a for a in arms)
                or len(set(arms)) != len(arms)
            ):
                raise ValueError(
                    f"models[{key!r}]: expected a list of distinct model names, the reference "
                    f"first, but got {arms!r}"
                )
        for workflow, name in self.contexts.items():
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"contexts[{workflow!r}]: expected an input field name, got {name!r}"
                )
        if self.experiment_min_runs < 1:
            raise ValueError(
                f"experiment_min_runs: expected >= 1, but got {self.experiment_min_runs}"
            )

    def weights_for(self, workflow_id: str) -> RewardWeights:
        return self.weights.get(workflow_id) or self.weights.get("*") or RewardWeights()

    def models_for(self, workflow_id: str, step_id: str) -> tuple[str, ...]:
        found = (
            self.models.get(f"{workflow_id}/{step_id}")
            or self.models.get(workflow_id)
            or self.models.get("*")
            or ()
        )
        return tuple(found)


@dataclass(frozen=True)
class StrategyInput:
    diagnosis: Diagnosis
    definition: WorkflowDefinition
    base_version: int
    side_effects: SideEffectView = field(default_factory=CatalogSideEffects)
    config: OptimizerConfig = field(default_factory=OptimizerConfig)
    incidents: Sequence[IncidentLike] = ()
    bandits: Sequence[ModelBandit] = ()
    """The bandits of the diagnosed step (one per input context)."""

    @property
    def step(self) -> StepDefinition | None:
        step_id = self.diagnosis.step_id
        if step_id is None or not self.definition.has_step(step_id):
            return None
        return self.definition.step(step_id)

    @property
    def model_step(self) -> StepDefinition | None:
        """The step a model choice is about: the diagnosed step, or for a checker step the
        ``openai.chat`` step it scores (:func:`processors.optimizer.arms.model_step`)."""
        step = self.step
        if step is None or not step.checker:
            return step
        target = model_step(self.definition, step.id)
        return None if target is None else self.definition.step(target)

    def metric(self, *names: str) -> float | None:
        for name in names:
            value = self.diagnosis.metrics.get(name)
            if value is not None and math.isfinite(value):
                return float(value)
        return None

    def evidence(self) -> dict[str, Any]:
        try:
            data = json.loads(self.diagnosis.evidence or "{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Proposal:
    strategy: str
    step_id: str
    """The step the change is about; ``"*"`` for a workflow-wide change (parallelise)."""
    changes: tuple[GraphMutation, ...]
    predicted_effect: dict[str, Any]
    rationale: str
    canary_weight: float | None = None

    def changes_json(self) -> list[dict[str, Any]]:
        return [{"type": c.type.value, "step_id": c.step_id, "data": c.data} for c in self.changes]


class Strategy(Protocol):
    name: str
    kinds: frozenset[DiagnosisKind]

    def propose(self, given: StrategyInput) -> Proposal | None: ...


# -- change helpers ------------------------------------------------------------------------------


def _step_json(step: StepDefinition) -> dict[str, Any]:
    data: dict[str, Any] = step.model_dump(mode="json")
    return data


def replace_step(step_id: str, new_step: Mapping[str, Any]) -> tuple[GraphMutation, ...]:
    """``remove_step`` + ``add_step``: how a non-params field of a step is changed."""
    return (
        GraphMutation(type=GraphMutationType.REMOVE_STEP, step_id=step_id, data={}),
        GraphMutation(type=GraphMutationType.ADD_STEP, step_id=step_id, data=dict(new_step)),
    )


def _dispatched(step: StepDefinition) -> bool:
    """A step a worker runs (not a scheduler-run meta step or child run)."""
    return not is_meta_node(step.node_name) and step.node_name not in CHILD_RUN_NODES


def _round_up(value: float, unit: int) -> int:
    return int(math.ceil(value / unit) * unit)


# -- timeout -------------------------------------------------------------------------------------


class TimeoutStrategy:
    name = "timeout"
    kinds = frozenset({K.LATENCY_DRIFT, K.TIMEOUT_DRIFT, K.ANOMALY})

    def propose(self, given: StrategyInput) -> Proposal | None:
        step = given.step
        if step is None or not _dispatched(step):
            return None
        if given.diagnosis.kind is K.LATENCY_DRIFT and given.evidence().get("direction") == "down":
            # Faster is not a problem to answer, and a timeout sized on the faster period would
            # cut the attempts if the latency comes back (seen: a warm-up's 75 -> 19 ms).
            return None
        p99 = given.metric("p99_ms", "p99_after_ms")
        p95 = given.metric("p95_ms", "p95_after_ms")
        if p99 is None and p95 is None:
            return None
        basis = p99 if p99 is not None else 2.0 * (p95 or 0.0)
        quantile = "p99" if p99 is not None else "p95"
        new = max(given.config.min_timeout_ms, _round_up(given.config.timeout_margin * basis, 100))
        current = step.timeout
        if current is not None and abs(new - current) <= 0.2 * current:
            return None  # already about right: churn is worse than a 20% difference
        if given.diagnosis.kind is K.TIMEOUT_DRIFT and current is not None and new <= current:
            return None  # timeouts rose: a shorter bound would only make more
        data = _step_json(step)
        data["timeout"] = new
        expected_timeouts = 0.01 if quantile == "p99" else 0.05
        return Proposal(
            strategy=self.name,
            step_id=step.id,
            changes=replace_step(step.id, data),
            predicted_effect={
                "timeout_ms": {"from": current, "to": new},
                "basis": {quantile + "_ms": round(basis if p99 else (p95 or 0.0), 1)},
                "expected_timeout_share_at_most": expected_timeouts,
                "attempt_latency_bound_ms": new,
            },
            rationale=(
                f"Step {step.id!r}: {quantile} latency {basis:.0f} ms observed; timeout "
                f"{_ms(current)} -> {new} ms ({given.config.timeout_margin:g} x {quantile}) "
                "bounds hung attempts while letting at least "
                f"{100 * (1 - expected_timeouts):.0f}% of normal ones finish."
            ),
        )


def _ms(value: int | None) -> str:
    return "none" if value is None else f"{value} ms"


# -- retry ---------------------------------------------------------------------------------------


def is_transient(error_class: str | None) -> bool:
    if not error_class:
        return False
    return error_class in TRANSIENT_ERROR_CLASSES or bool(_TRANSIENT_WORDS.search(error_class))


class RetryStrategy:
    name = "retry"
    kinds = frozenset({K.FAILURE_DRIFT, K.ERROR_CLUSTER, K.TIMEOUT_DRIFT})

    def propose(self, given: StrategyInput) -> Proposal | None:
        step = given.step
        if step is None or not _dispatched(step):
            return None
        error_class = given.diagnosis.error_class or (
            "Timeout" if given.diagnosis.kind is K.TIMEOUT_DRIFT else None
        )
        retryable = given.metric("retryable_share")
        if not is_transient(error_class) and not (retryable is not None and retryable >= 0.5):
            return None  # a retry cannot fix what fails the same way every time
        error_class = error_class or "retryable"
        rate = given.metric("error_rate", "failure_rate", "rate_after", "timeout_rate", "share")
        p = min(0.9, max(0.01, rate if rate is not None else 0.1))
        recent = given.metric("recent_share")
        if recent is not None:
            p = min(0.9, max(p, recent))
        # A drift is caught early, on a short window after the change, and an error cluster
        # while the rate still rises (its window mixes before and after): plan for the upper
        # confidence bound of the rate, over the window and over the recent attempts, not for
        # the estimate (the bench's flaky scenario was left a retry short: 95% success). A
        # policy sized too short is the expensive mistake: the canary keeps it and the step
        # still fails.
        for share, n in (
            (rate, given.metric("window_after", "window")),
            (given.metric("recent_share"), given.metric("recent_window")),
        ):
            if share is not None and n is not None and n >= 1:
                # The upper end of a two-sided 90% interval: a one-sided 95% bound.
                upper = wilson_interval(round(share * n), round(n), 0.90)[1]
                p = min(0.9, max(p, upper))
        cfg = given.config
        attempts = math.ceil(math.log(cfg.target_failure) / math.log(p))
        attempts = max(2, min(cfg.max_attempts, attempts))
        retry = step.retry
        non_retryable = tuple(c for c in retry.non_retryable if c != error_class)
        if retry.max_attempts >= attempts and non_retryable == retry.non_retryable:
            return None
        attempts = max(attempts, retry.max_attempts)
        p50 = given.metric("p50_ms", "mean_after", "mean_latency_ms") or 200.0
        initial = max(100, _round_up(min(p50, 5_000.0), 50))
        new_retry = {
            **retry.model_dump(mode="json"),
            "max_attempts": attempts,
            "initial_backoff": initial,
            "max_backoff": max(initial, retry.max_backoff),
            "non_retryable": list(non_retryable),
        }
        data = _step_json(step)
        data["retry"] = new_retry
        before = 1.0 - p**retry.max_attempts
        after = 1.0 - p**attempts
        return Proposal(
            strategy=self.name,
            step_id=step.id,
            changes=replace_step(step.id, data),
            predicted_effect={
                "max_attempts": {"from": retry.max_attempts, "to": attempts},
                "step_success_rate": {"from": round(before, 4), "to": round(after, 6)},
                "failure_rate_assumed": round(p, 4),
                "added_latency_ms_when_retried": initial,
            },
            rationale=(
                f"Step {step.id!r} fails with the transient error class {error_class!r} "
                f"at ~{100 * p:.0f}%; {attempts} attempts with {initial} ms exponential backoff "
                f"(equal jitter) should succeed {100 * after:.2f}% of the time if failures are "
                "independent."
            ),
        )


# -- cache ---------------------------------------------------------------------------------------


class CacheStrategy:
    name = "cache"
    kinds = frozenset({K.REPEATED_INPUTS})

    def propose(self, given: StrategyInput) -> Proposal | None:
        step = given.step
        if step is None or not _dispatched(step) or step.cache.enabled:
            return None
        if step.checker:
            return None  # a cache hit is not scored: the run would lose its quality signal
        if given.side_effects.has_side_effects(step.node_name, step.params):
            return None  # serving a write from the cache would skip the write
        if secret_placeholders(canonical_json(step.params)):
            return None  # validation refuses caching a step with secrets
        share = given.metric("repeat_share", "share")
        gap = given.metric("median_gap_ms")
        cfg = given.config
        ttl = 3_600_000 if gap is None else _round_up(4 * gap, 1000)
        ttl = min(cfg.max_cache_ttl_ms, max(cfg.min_cache_ttl_ms, ttl))
        p50 = given.metric("p50_ms", "mean_latency_ms")
        data = _step_json(step)
        data["cache"] = {"enabled": True, "ttl": ttl}
        hit = round(share, 4) if share is not None else None
        return Proposal(
            strategy=self.name,
            step_id=step.id,
            changes=replace_step(step.id, data),
            predicted_effect={
                "cache_hit_share": hit,
                "ttl_ms": ttl,
                "latency_saved_ms_per_call": (
                    round(p50 * share, 1) if p50 is not None and share is not None else None
                ),
            },
            rationale=(
                f"Step {step.id!r} ({step.node_name}, no side effects) is called again with the "
                f"same inputs{'' if hit is None else f' in {100 * hit:.0f}% of calls'}; "
                f"caching its output for {ttl // 1000} s serves those from the cache."
            ),
        )


# -- parallelise ---------------------------------------------------------------------------------


def critical_path_ms(
    definition: WorkflowDefinition, needs: Mapping[str, Sequence[str]], cost: Mapping[str, float]
) -> float:
    finish: dict[str, float] = {}
    for sid in definition.topological_order:
        start = max((finish.get(n, 0.0) for n in needs.get(sid, ())), default=0.0)
        finish[sid] = start + cost.get(sid, 1.0)
    return max(finish.values(), default=0.0)


class ParalleliseStrategy:
    name = "parallelise"
    kinds = frozenset({K.SEQUENTIAL_INDEPENDENT, K.BOTTLENECK})

    def propose(self, given: StrategyInput) -> Proposal | None:
        definition = given.definition
        relaxed = relaxed_needs(definition, given.side_effects)
        changed = [s for s in definition.steps if tuple(relaxed[s.id]) != tuple(s.needs)]
        if not changed:
            return None
        evidence = given.evidence()
        step_ms = evidence.get("step_p50_ms") or evidence.get("durations_ms")
        cost = (
            {k: float(v) for k, v in step_ms.items() if isinstance(v, int | float)}
            if isinstance(step_ms, dict)
            else {}
        )
        if cost:  # steps the evidence does not time count as a typical one
            typical = sorted(cost.values())[len(cost) // 2]
            cost = {s.id: cost.get(s.id, typical) for s in definition.steps}
        declared = {s.id: s.needs for s in definition.steps}
        before = critical_path_ms(definition, declared, cost)
        after = critical_path_ms(definition, relaxed, cost)
        gain = 1.0 - after / before if before > 0 else 0.0
        if gain < given.config.min_parallel_gain:
            return None
        changes: list[GraphMutation] = []
        for step in changed:
            data = _step_json(step)
            data["needs"] = list(relaxed[step.id])
            changes.extend(replace_step(step.id, data))
        chains = sequential_chains(definition, given.side_effects)
        unit = "ms" if cost else "steps"
        return Proposal(
            strategy=self.name,
            step_id="*",
            changes=tuple(changes),
            predicted_effect={
                "critical_path": {"from": round(before, 1), "to": round(after, 1), "unit": unit},
                "run_latency_change": round(-gain, 4),
                "needs": {
                    s.id: {"from": list(s.needs), "to": list(relaxed[s.id])} for s in changed
                },
                "outputs_identical": True,
            },
            rationale=(
                "Steps "
                + "; ".join(" -> ".join(c) for c in chains)
                + " run one after the other but read nothing from each other and have no side "
                "effects (workflows.data_dependencies); running them together shortens the "
                f"critical path from {before:.0f} to {after:.0f} {unit} (-{100 * gain:.0f}%). "
                "Orderings around side-effecting or conditional steps are kept."
            ),
        )


# -- fallback ------------------------------------------------------------------------------------


def _rewrite_refs(value: Any, step_id: str) -> Any:
    """``steps.<id>.output`` -> ``steps.<id>.output.result`` inside every template."""
    pattern = re.compile(rf"\bsteps\.{re.escape(step_id)}\.output\b")
    if isinstance(value, str):
        return pattern.sub(f"steps.{step_id}.output.result", value) if "{{" in value else value
    if isinstance(value, Mapping):
        return {k: _rewrite_refs(v, step_id) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rewrite_refs(v, step_id) for v in value]
    return value


def _refs_step(text: str | None, step_id: str) -> bool:
    return text is not None and re.search(rf"\bsteps\.{re.escape(step_id)}\b", text) is not None


class FallbackStrategy:
    """``X`` becomes: ``X__try`` (a one-item ``meta.map`` of the original call, collecting its
    failure), ``X__fallback`` (a ``meta.map`` of the configured fallback over one item when the
    try failed, none otherwise), and ``X`` (a ``transform`` picking the first result). Steps
    after ``X`` read ``steps.X.output.result`` instead of ``steps.X.output`` (rewritten)."""

    name = "fallback"
    kinds = frozenset({K.FAILURE_DRIFT, K.TIMEOUT_DRIFT, K.ERROR_CLUSTER})

    def propose(self, given: StrategyInput) -> Proposal | None:
        step = given.step
        if step is None or not _dispatched(step):
            return None
        definition = given.definition
        spec = given.config.fallbacks.get(f"{definition.id}/{step.id}") or (
            given.config.fallbacks.get(step.node_name)
        )
        if spec is None or "node" not in spec:
            return None
        if any(_refs_step(expr, step.id) for expr in _strings(definition.outputs)):
            return None  # run outputs cannot be rewritten by a graph mutation
        try_id, fallback_id = f"{step.id}__try", f"{step.id}__fallback"
        if definition.has_step(try_id) or definition.has_step(fallback_id):
            return None  # already has one
        base = _step_json(step)
        try_step = {
            "id": try_id,
            "node": MAP_NODE,
            "needs": list(step.needs),
            "params": {
                "items": [0],
                "node": step.node,
                "params": step.params,
                "on_failure": "collect",
                "concurrency": 1,
            },
            "retry": base["retry"],
            "timeout": base["timeout"],
        }
        if step.when is not None:
            try_step["when"] = step.when
        fallback_step = {
            "id": fallback_id,
            "node": MAP_NODE,
            "needs": [try_id],
            "params": {
                "items": f"{{{{ steps.{try_id}.output.failed > `0` && [`0`] || `[]` }}}}",
                "node": str(spec["node"]),
                "params": spec.get("params", step.params),
                "on_failure": "fail_fast",
                "concurrency": 1,
            },
        }
        join = {
            "id": step.id,
            "node": "transform",
            "needs": [try_id, fallback_id],
            "params": {
                "expression": "primary.results[0] || fallback.results[0]",
                "data": {
                    "primary": f"{{{{ steps.{try_id}.output }}}}",
                    "fallback": f"{{{{ steps.{fallback_id}.output }}}}",
                },
            },
        }
        changes: list[GraphMutation] = [
            GraphMutation(type=GraphMutationType.REMOVE_STEP, step_id=step.id, data={}),
            GraphMutation(type=GraphMutationType.ADD_STEP, step_id=try_id, data=try_step),
            GraphMutation(type=GraphMutationType.ADD_STEP, step_id=fallback_id, data=fallback_step),
            GraphMutation(type=GraphMutationType.ADD_STEP, step_id=step.id, data=join),
        ]
        for other in definition.steps:
            if other.id == step.id:
                continue
            reads = _refs_step(other.when, step.id) or any(
                _refs_step(s, step.id) for s in _strings(other.params)
            )
            if reads:
                data = _step_json(other)
                data["params"] = _rewrite_refs(other.params, step.id)
                if other.when is not None:
                    data["when"] = _rewrite_refs("{{" + other.when + "}}", step.id)[2:-2]
                changes.extend(replace_step(other.id, data))
        rate = given.metric("error_rate", "failure_rate", "rate_after", "share")
        return Proposal(
            strategy=self.name,
            step_id=step.id,
            changes=tuple(changes),
            predicted_effect={
                "step_success_rate": {
                    "from": None if rate is None else round(1 - rate, 4),
                    "to": "primary or fallback",
                },
                "fallback": {"node": spec["node"]},
                "extra_calls_share": None if rate is None else round(rate, 4),
            },
            rationale=(
                f"Step {step.id!r} depends on a flaky dependency"
                f"{'' if rate is None else f' ({100 * rate:.0f}% failures)'}; when it fails, "
                f"the configured fallback ({spec['node']}) answers instead."
            ),
        )


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


# -- model / node version choice -----------------------------------------------------------------


class ModelChoiceStrategy:
    """What the step's bandits measured, as a change: the model param of an ``openai.chat`` step
    (one value, or a JMESPath choice by input context when contexts differ), or the node
    version constraint of any other step (arms are constraints).

    When the bandits have not measured every arm (the step only ever used one model), an
    ``openai.chat`` step with configured models (``OptimizerConfig.models``) gets an
    *exploring* proposal, whose canary experiment (ADR 0037) measures it on live runs:

    - on a ``cost`` finding, the largest input class that has an untried alternative gets the
      first one (one class at a time: the experiment judges the class's change);
    - on a ``quality_drift`` down (of the step, or of the checker that scores it; the bandits
      then only count runs since the drift began), the classes answered by an alternative go
      back to the reference model.
    """

    name = "model_choice"
    kinds = frozenset({K.COST, K.QUALITY_DRIFT, K.LATENCY_DRIFT, K.FAILURE_DRIFT})

    def propose(self, given: StrategyInput) -> Proposal | None:
        step = given.model_step
        if step is None or not given.bandits:
            return None
        if any(b.best() is None for b in given.bandits):
            # not every arm is measured yet: explore, if the step has candidate models
            return self._explore(given, step) if step.node_name == "openai.chat" else None
        best: dict[str, str] = {}
        for b in given.bandits:
            arm = b.best()
            assert arm is not None
            best[b.key] = arm
        bandit_by_key = {b.key: b for b in given.bandits}
        summary = {key: bandit_by_key[key].snapshot() for key in best}
        if step.node_name == "openai.chat":
            return self._model(given, step, best, bandit_by_key, summary)
        choices = set(best.values())
        if len(choices) != 1:
            return None  # a node version cannot depend on the inputs
        constraint = choices.pop()
        if constraint == step.node_constraint:
            return None
        return Proposal(
            strategy=self.name,
            step_id=step.id,
            changes=(
                GraphMutation(
                    type=GraphMutationType.REPLACE_NODE,
                    step_id=step.id,
                    data={"node": step.node_name, "node_version": constraint},
                ),
            ),
            predicted_effect=_arm_effect(summary, step.node_constraint, constraint),
            rationale=f"Step {step.id!r}: version {constraint} earned the best reward.",
            canary_weight=given.config.exploration_budget,
        )

    def _explore(self, given: StrategyInput, step: StepDefinition) -> Proposal | None:
        arms = given.config.models_for(given.definition.id, step.id)
        if len(arms) < 2:
            return None
        reference = arms[0]
        choice: dict[str, str] = {}
        for b in given.bandits:
            choice[b.key] = in_use(b) or reference
        kind = given.diagnosis.kind
        if kind is K.COST:
            # The largest class (most runs in the window) with an alternative not tried on it.
            for b in sorted(given.bandits, key=lambda b: (-_pulls(b), b.key)):
                untried = [a for a in arms[1:] if a in b.arms and b.stats[a].pulls == 0]
                if untried and choice[b.key] == reference:
                    choice[b.key] = untried[0]
                    why = f"try {untried[0]} for {b.key} (its largest input class)"
                    break
            else:
                return None
        elif kind is K.QUALITY_DRIFT and _fell(given):
            moved = sorted(key for key, arm in choice.items() if arm != reference)
            if not moved:
                return None
            for key in moved:
                choice[key] = reference
            why = f"quality fell: back to {reference} for {', '.join(moved)}"
        else:
            return None
        bandit_by_key = {b.key: b for b in given.bandits}
        summary = {key: bandit_by_key[key].snapshot() for key in choice}
        proposal = self._model(given, step, choice, bandit_by_key, summary, default=reference)
        if proposal is None:
            return None
        return Proposal(
            strategy=proposal.strategy,
            step_id=proposal.step_id,
            changes=proposal.changes,
            predicted_effect={**proposal.predicted_effect, "explore": why},
            rationale=f"Step {step.id!r}: {why}; its canary experiment measures it on live "
            f"runs (diagnosis {given.diagnosis.kind.value}).",
            canary_weight=proposal.canary_weight,
        )

    def _model(  # noqa: PLR0917 (private)
        self,
        given: StrategyInput,
        step: StepDefinition,
        best: dict[str, str],
        bandits: Mapping[str, ModelBandit],
        summary: dict[str, Any],
        default: str | None = None,
    ) -> Proposal | None:
        params = dict(step.params) if isinstance(step.params, Mapping) else {}
        current = params.get("model")
        contexts = {key.rsplit("/", 2)[-1]: arm for key, arm in best.items()}
        context_field = given.evidence().get("context_field") or given.config.contexts.get(
            given.definition.id
        )
        if len(set(best.values())) == 1:
            new_value: Any = next(iter(best.values()))
        elif isinstance(context_field, str):
            # inputs.<field> == 'easy' && 'cheap' || inputs.<field> == 'hard' && 'big' || default
            # An explicit default (exploring) leaves out the classes that get it anyway.
            explicit = default is not None
            default = default or given.bandits[0].default
            parts = [
                f"inputs.{context_field} == '{ctx}' && '{arm}'"
                for ctx, arm in sorted(contexts.items())
                if not explicit or arm != default
            ]
            new_value = "{{ " + " || ".join([*parts, f"'{default}'"]) + " }}"
        else:
            return None
        if new_value == current:
            return None
        params["model"] = new_value
        return Proposal(
            strategy=self.name,
            step_id=step.id,
            changes=(
                GraphMutation(type=GraphMutationType.UPDATE_PARAMS, step_id=step.id, data=params),
            ),
            predicted_effect={
                "model": {"from": current, "to": new_value},
                "per_context": {
                    key: _arm_effect(summary[key], bandits[key].default, arm)
                    for key, arm in best.items()
                },
            },
            rationale=(
                f"Step {step.id!r}: the bandit's rewards (success, quality, latency, cost, "
                f"weighted for {given.definition.id!r}) favour "
                + ", ".join(f"{arm} for {key}" for key, arm in sorted(best.items()))
                + "."
            ),
            canary_weight=given.config.exploration_budget,
        )


def _pulls(b: ModelBandit) -> int:
    return sum(b.stats[arm].pulls for arm in b.arms)


def _fell(given: StrategyInput) -> bool:
    before = given.metric("mean_before")
    after = given.metric("mean_after")
    return before is not None and after is not None and after < before


def _arm_effect(snapshot: Mapping[str, Any], before: str, after: str) -> dict[str, Any]:
    arms = snapshot.get("arms", {})
    a, b = arms.get(before, {}), arms.get(after, {})

    def delta(name: str) -> float | None:
        x, y = a.get(name), b.get(name)
        return None if x is None or y is None else round(float(y) - float(x), 6)

    return {
        "arm": {"from": before, "to": after},
        "mean_reward": delta("mean_reward"),
        "mean_cost": delta("mean_cost"),
        "mean_quality": delta("mean_quality"),
        "mean_latency_ms": delta("mean_latency_ms"),
    }


STRATEGIES: Final[tuple[Strategy, ...]] = (
    ModelChoiceStrategy(),
    ParalleliseStrategy(),
    CacheStrategy(),
    RetryStrategy(),
    FallbackStrategy(),
    TimeoutStrategy(),
)
"""In the order they are tried when the historian has nothing to say."""
