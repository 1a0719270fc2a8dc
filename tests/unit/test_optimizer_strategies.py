"""processors.optimizer: each strategy, the planner (historian first, policy, open keys)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from node_workers.nodes import builtin_nodes
from processors.mutations.validation import candidate_definition
from processors.optimizer.bandit import ModelBandit, Outcome, RewardWeights
from processors.optimizer.planner import (
    mutation_id_for,
    mutation_request,
    order_strategies,
    plan,
    proposal_key,
    rejection_holds,
    reset_on_drift,
)
from processors.optimizer.strategies import (
    STRATEGIES,
    CacheStrategy,
    FallbackStrategy,
    ModelChoiceStrategy,
    OptimizerConfig,
    ParalleliseStrategy,
    RetryStrategy,
    StrategyInput,
    TimeoutStrategy,
)
from schemas.models import Diagnosis, DiagnosisKind, DiagnosisSeverity, MutationAction
from workflows import StaticNodeCatalog, check_definition, parse_workflow
from workflows.model import WorkflowDefinition

CATALOG = StaticNodeCatalog({n.name: [n.version] for n in builtin_nodes()})


def diagnosis(
    kind: DiagnosisKind,
    step: str | None = "call",
    *,
    metrics: dict[str, float] | None = None,
    error_class: str | None = None,
    evidence: str = "{}",
    workflow: str = "wf",
) -> Diagnosis:
    subject = f"workflow:{workflow}" + (f"/step:{step}" if step else "")
    return Diagnosis(
        diagnosis_id=f"{kind.value}/{subject}/1",
        subject=subject,
        kind=kind,
        severity=DiagnosisSeverity.WARNING,
        detector="test",
        workflow_id=workflow,
        workflow_version=1,
        step_id=step,
        error_class=error_class,
        detected_at=datetime(2026, 1, 1, tzinfo=UTC),
        traces_seen=100,
        metrics=metrics or {},
        evidence=evidence,
        explanation="test diagnosis",
    )


def wf(steps: list[dict[str, Any]], **extra: Any) -> WorkflowDefinition:
    return parse_workflow({"id": "wf", "steps": steps, **extra})


def one_call(**step: Any) -> WorkflowDefinition:
    base = {"id": "call", "node": "http.request", "params": {"url": "http://s/x"}}
    return wf(
        [
            {**base, **step},
            {
                "id": "after",
                "node": "transform",
                "needs": ["call"],
                "params": {"expression": "@", "data": "{{ steps.call.output.body }}"},
            },
        ]
    )


def applied(definition: WorkflowDefinition, proposal: Any) -> WorkflowDefinition:
    result = candidate_definition(definition, proposal.changes)
    assert check_definition(result, node_catalog=CATALOG) == []
    return result


def given(definition: WorkflowDefinition, d: Diagnosis, **kw: Any) -> StrategyInput:
    return StrategyInput(diagnosis=d, definition=definition, base_version=1, **kw)


# -- timeout -----------------------------------------------------------------------------------


def test_timeout_from_p99() -> None:
    d = diagnosis(
        DiagnosisKind.LATENCY_DRIFT, metrics={"p50_ms": 100, "p95_ms": 300, "p99_ms": 420}
    )
    p = TimeoutStrategy().propose(given(one_call(), d))
    assert p is not None and p.strategy == "timeout" and p.step_id == "call"
    assert applied(one_call(), p).step("call").timeout == 700  # 1.5 x 420 rounded up to 100 ms
    assert p.predicted_effect["timeout_ms"] == {"from": None, "to": 700}


def test_timeout_close_to_the_current_one_is_left_alone() -> None:
    d = diagnosis(DiagnosisKind.LATENCY_DRIFT, metrics={"p99_ms": 420})
    assert TimeoutStrategy().propose(given(one_call(timeout=650), d)) is None
    assert (
        TimeoutStrategy().propose(given(one_call(), diagnosis(DiagnosisKind.LATENCY_DRIFT))) is None
    )


def test_timeout_drift_never_shortens() -> None:
    d = diagnosis(DiagnosisKind.TIMEOUT_DRIFT, metrics={"p99_ms": 100})
    assert TimeoutStrategy().propose(given(one_call(timeout=5000), d)) is None


# -- retry -------------------------------------------------------------------------------------


def test_retry_for_a_transient_class() -> None:
    d = diagnosis(
        DiagnosisKind.FAILURE_DRIFT,
        error_class="HttpStatus5xx",
        metrics={"error_rate": 0.3, "p50_ms": 80},
    )
    p = RetryStrategy().propose(given(one_call(), d))
    assert p is not None
    retry = applied(one_call(), p).step("call").retry
    assert retry.max_attempts == 6  # 0.3^n <= 0.001 -> n = 6
    assert retry.initial_backoff == 100
    assert p.predicted_effect["step_success_rate"]["to"] == pytest.approx(1 - 0.3**6, abs=1e-6)


def test_retry_of_an_error_cluster_is_sized_on_its_newest_attempts() -> None:
    # 10% of the window, 30% of the newest attempts (a rising rate): 10% would give 3
    # attempts (97.3% at the real 30%); the recent share gives 6.
    d = diagnosis(
        DiagnosisKind.ERROR_CLUSTER,
        error_class="Http5xx",
        metrics={"share": 0.1, "recent_share": 0.3, "retryable_share": 1.0},
    )
    p = RetryStrategy().propose(given(one_call(), d))
    assert p is not None and p.predicted_effect["max_attempts"]["to"] == 6
    assert p.predicted_effect["failure_rate_assumed"] == 0.3
    # (Http5xx is http.request's class: transient by name, with no retryable_share either.)
    lagging = diagnosis(DiagnosisKind.ERROR_CLUSTER, error_class="Http5xx", metrics={"share": 0.1})
    q = RetryStrategy().propose(given(one_call(), lagging))
    assert q is not None and q.predicted_effect["max_attempts"]["to"] == 3


def test_retry_plans_for_the_upper_bound_of_a_short_window() -> None:
    # Caught early: 1 failure in the 20 attempts after the cut (5%). The estimate alone asks
    # for 3 attempts (0.05^3 <= 0.001); the window's 95% upper bound (~0.2) asks for 5.
    metrics = {"rate_after": 0.05, "window_after": 20.0, "p50_ms": 80.0}
    d = diagnosis(DiagnosisKind.FAILURE_DRIFT, error_class="HttpStatus5xx", metrics=metrics)
    p = RetryStrategy().propose(given(one_call(), d))
    assert p is not None
    assert p.predicted_effect["failure_rate_assumed"] == pytest.approx(0.2, abs=0.03)
    assert applied(one_call(), p).step("call").retry.max_attempts == 5
    # A long window barely moves it: 5% over 5,000 attempts plans for ~5.5%, 3 attempts.
    long = diagnosis(
        DiagnosisKind.FAILURE_DRIFT,
        error_class="HttpStatus5xx",
        metrics=metrics | {"window_after": 5000.0},
    )
    p2 = RetryStrategy().propose(given(one_call(), long))
    assert p2 is not None
    assert p2.predicted_effect["failure_rate_assumed"] == pytest.approx(0.055, abs=0.003)
    assert applied(one_call(), p2).step("call").retry.max_attempts == 3


def test_retry_for_an_error_cluster_plans_for_its_recent_share() -> None:
    # Caught while rising: 10% of the last 100 attempts, 45% of the last 20.
    metrics = {"share": 0.1, "window": 100.0, "recent_share": 0.45, "recent_window": 20.0}
    d = diagnosis(DiagnosisKind.ERROR_CLUSTER, error_class="Http5xx", metrics=metrics)
    p = RetryStrategy().propose(given(one_call(), d))
    assert p is not None
    assert p.predicted_effect["failure_rate_assumed"] > 0.6
    assert applied(one_call(), p).step("call").retry.max_attempts == 8  # the cap


def test_no_retry_for_a_permanent_class_or_when_already_enough() -> None:
    d = diagnosis(
        DiagnosisKind.ERROR_CLUSTER, error_class="ValidationError", metrics={"share": 0.3}
    )
    assert RetryStrategy().propose(given(one_call(), d)) is None
    d2 = diagnosis(DiagnosisKind.FAILURE_DRIFT, error_class="Timeout", metrics={"error_rate": 0.1})
    assert RetryStrategy().propose(given(one_call(retry={"max_attempts": 4}), d2)) is None


# -- cache -------------------------------------------------------------------------------------


def test_cache_for_repeated_inputs_with_ttl_from_the_gap() -> None:
    d = diagnosis(
        DiagnosisKind.REPEATED_INPUTS, metrics={"repeat_share": 0.6, "median_gap_ms": 30_000}
    )
    p = CacheStrategy().propose(given(one_call(), d))
    assert p is not None
    cache = applied(one_call(), p).step("call").cache
    assert cache.enabled and cache.ttl == 120_000
    assert p.predicted_effect["cache_hit_share"] == 0.6


def test_no_cache_for_a_side_effect_or_a_secret() -> None:
    d = diagnosis(DiagnosisKind.REPEATED_INPUTS, metrics={"repeat_share": 0.6})
    post = one_call(params={"url": "http://s/x", "method": "POST"})
    assert CacheStrategy().propose(given(post, d)) is None
    secret = one_call(
        params={"url": "http://s/x", "headers": {"Authorization": "{{ secrets.TOKEN }}"}}
    )
    assert CacheStrategy().propose(given(secret, d)) is None


# -- parallelise -------------------------------------------------------------------------------


def four_calls(trap: bool = False) -> WorkflowDefinition:
    steps: list[dict[str, Any]] = []
    previous: str | None = None
    for name in "abcd":
        step: dict[str, Any] = {
            "id": name,
            "node": "http.request",
            "params": {"url": f"http://s/{name}"},
        }
        if previous:
            step["needs"] = [previous]
        steps.append(step)
        previous = name
    if trap:
        steps += [
            {
                "id": "put",
                "node": "http.request",
                "needs": ["d"],
                "params": {"url": "http://s/kv/k", "method": "PUT", "body": {"v": 1}},
            },
            {
                "id": "get",
                "node": "http.request",
                "needs": ["put"],
                "params": {"url": "http://s/kv/k"},
            },
        ]
    return wf(steps, outputs={"d": "{{ steps.d.output.body }}"})


def test_parallelise_four_independent_calls() -> None:
    d = diagnosis(
        DiagnosisKind.SEQUENTIAL_INDEPENDENT,
        step=None,
        evidence='{"step_p50_ms": {"a": 150, "b": 150, "c": 150, "d": 150}}',
    )
    p = ParalleliseStrategy().propose(given(four_calls(), d))
    assert p is not None and p.step_id == "*"
    result = applied(four_calls(), p)
    assert all(result.step(s).needs == () for s in "abcd")
    assert p.predicted_effect["critical_path"] == {"from": 600.0, "to": 150.0, "unit": "ms"}
    assert p.predicted_effect["run_latency_change"] == -0.75


def test_trap_a_hidden_ordering_through_a_side_effect_is_not_parallelised() -> None:
    """put writes /kv/k, get reads it: no template links them, the side effect does."""
    d = diagnosis(DiagnosisKind.SEQUENTIAL_INDEPENDENT, step=None)
    p = ParalleliseStrategy().propose(given(four_calls(trap=True), d))
    assert p is not None
    result = applied(four_calls(trap=True), p)
    assert result.step("get").needs == ("put",)
    # the write stays after everything the user ordered before it, now run side by side
    assert result.step("put").needs == ("a", "b", "c", "d")
    assert {s for s in "abcd" if result.step(s).needs} == set()
    # the pair alone: nothing to propose
    pair = wf(
        [
            {
                "id": "put",
                "node": "http.request",
                "params": {"url": "http://s/kv/k", "method": "PUT"},
            },
            {
                "id": "get",
                "node": "http.request",
                "needs": ["put"],
                "params": {"url": "http://s/kv/k"},
            },
        ]
    )
    assert ParalleliseStrategy().propose(given(pair, d)) is None


def test_parallelise_needs_a_real_gain() -> None:
    d = diagnosis(
        DiagnosisKind.SEQUENTIAL_INDEPENDENT,
        step=None,
        evidence='{"step_p50_ms": {"a": 1000, "b": 1, "c": 1, "d": 1}}',
    )
    cfg = OptimizerConfig(min_parallel_gain=0.5)
    assert ParalleliseStrategy().propose(given(four_calls(), d, config=cfg)) is None


# -- fallback ----------------------------------------------------------------------------------


def test_fallback_branch_when_configured() -> None:
    d = diagnosis(
        DiagnosisKind.FAILURE_DRIFT, error_class="HttpStatus5xx", metrics={"error_rate": 0.3}
    )
    cfg = OptimizerConfig(
        fallbacks={"wf/call": {"node": "http.request", "params": {"url": "http://backup/x"}}}
    )
    assert FallbackStrategy().propose(given(one_call(), d)) is None  # nothing configured
    p = FallbackStrategy().propose(given(one_call(), d, config=cfg))
    assert p is not None
    result = applied(one_call(), p)
    assert result.step("call").node_name == "transform"
    assert result.step("call__try").node_name == "meta.map"
    assert result.step("after").params["data"] == "{{ steps.call.output.result.body }}"


def test_no_fallback_when_run_outputs_read_the_step() -> None:
    d = diagnosis(DiagnosisKind.FAILURE_DRIFT, error_class="Timeout")
    cfg = OptimizerConfig(fallbacks={"http.request": {"node": "http.request"}})
    definition = wf(
        [{"id": "call", "node": "http.request", "params": {"url": "http://s"}}],
        outputs={"x": "{{ steps.call.output }}"},
    )
    assert FallbackStrategy().propose(given(definition, d, config=cfg)) is None


# -- model choice ------------------------------------------------------------------------------


def chat() -> WorkflowDefinition:
    return wf(
        [
            {
                "id": "answer",
                "node": "openai.chat",
                "params": {
                    "model": "big",
                    "messages": [{"role": "user", "content": "{{ inputs.q }}"}],
                },
            }
        ],
        inputs={"q": {"type": "string"}, "difficulty": {"type": "string"}},
    )


def trained(key: str, good: str, n: int = 30) -> ModelBandit:
    b = ModelBandit(key=key, arms=("big", "small"), default="big", min_pulls=10)
    for _ in range(n):
        b.observe("big", Outcome(True, quality=0.95, cost=1.0))
        b.observe("small", Outcome(True, quality=0.95 if good == "small" else 0.4, cost=0.1))
    return b


def test_model_choice_single_and_per_context() -> None:
    d = diagnosis(DiagnosisKind.COST, step="answer")
    p = ModelChoiceStrategy().propose(given(chat(), d, bandits=[trained("wf/answer", "small")]))
    assert p is not None
    assert applied(chat(), p).step("answer").params["model"] == "small"
    assert p.predicted_effect["per_context"]["wf/answer"]["mean_cost"] < 0

    d2 = diagnosis(DiagnosisKind.COST, step="answer", evidence='{"context_field": "difficulty"}')
    bandits = [trained("wf/answer/easy", "small"), trained("wf/answer/hard", "big")]
    p2 = ModelChoiceStrategy().propose(given(chat(), d2, bandits=bandits))
    assert p2 is not None
    model = applied(chat(), p2).step("answer").params["model"]
    assert model == (
        "{{ inputs.difficulty == 'easy' && 'small' || "
        "inputs.difficulty == 'hard' && 'big' || 'big' }}"
    )


def test_model_choice_waits_until_every_arm_is_measured() -> None:
    b = ModelBandit(key="wf/answer", arms=("big", "small"), default="big")
    b.observe("big", Outcome(True, quality=1.0))
    d = diagnosis(DiagnosisKind.COST, step="answer")
    assert ModelChoiceStrategy().propose(given(chat(), d, bandits=[b])) is None


# -- planner -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Past:
    mutation_id: str
    strategy: str | None
    status: str
    changes: list[dict[str, Any]]
    effect: dict[str, Any] | None


@dataclass(frozen=True)
class Incident:
    diagnosis_id: str
    kind: str
    subject: str
    similarity: float
    explanation: str
    proposals: tuple[Past, ...]


def test_policy_off_proposes_nothing() -> None:
    d = diagnosis(DiagnosisKind.LATENCY_DRIFT, metrics={"p99_ms": 420})
    found = plan(given(one_call(), d), policy="off", open_keys=set())
    assert found.proposal is None and found.skipped == (("*", "improvement policy is off"),)


def test_one_open_proposal_per_key() -> None:
    d = diagnosis(
        DiagnosisKind.TIMEOUT_DRIFT,
        error_class="Timeout",
        metrics={"p99_ms": 420, "timeout_rate": 0.2},
    )
    first = plan(given(one_call(timeout=100), d), policy="propose", open_keys=set())
    assert first.proposal is not None and first.proposal.strategy == "retry"
    second = plan(
        given(one_call(timeout=100), d),
        policy="propose",
        open_keys={proposal_key("wf", "call", "retry")},
    )
    assert second.proposal is not None and second.proposal.strategy == "timeout"
    assert ("retry", "a proposal for wf/call/retry is still open") in second.skipped


def test_a_rejected_proposal_holds_its_key_and_each_rejection_doubles_the_hold() -> None:
    key = proposal_key("wf", "call", "timeout")
    assert rejection_holds([(key, 1000.0)], now=1899.0, hold_s=900) == {
        key: f"validation rejected a proposal for {key} (a rejection; held 1 s more)"
    }
    assert rejection_holds([(key, 1000.0)], now=1900.0, hold_s=900) == {}
    twice = rejection_holds([(key, 100.0), (key, 1000.0)], now=2000.0, hold_s=900)
    assert set(twice) == {key} and "2 rejections; held 800 s more" in twice[key]
    assert rejection_holds([(key, 1000.0)] * 40, now=1000.0 + 86_399, hold_s=900) != {}
    assert rejection_holds([(key, 1000.0)] * 40, now=1000.0 + 86_400, hold_s=900) == {}
    assert rejection_holds([(key, 1000.0)], now=1001.0, hold_s=0) == {}


def test_a_held_key_is_skipped_and_the_next_strategy_proposes() -> None:
    d = diagnosis(
        DiagnosisKind.TIMEOUT_DRIFT,
        error_class="Timeout",
        metrics={"p99_ms": 420, "timeout_rate": 0.2},
    )
    key = proposal_key("wf", "call", "retry")
    held = rejection_holds([(key, 0.0)], now=1.0, hold_s=900)
    found = plan(given(one_call(timeout=100), d), policy="propose", open_keys=set(), held=held)
    assert found.proposal is not None and found.proposal.strategy == "timeout"
    assert ("retry", held[key]) in found.skipped


def test_historian_first_what_was_kept_goes_first_and_what_failed_is_avoided() -> None:
    kept = Incident(
        "d1",
        "timeout_drift",
        "workflow:wf/step:call",
        0.8,
        "x",
        (Past("m1", "timeout", "kept", [], None),),
    )
    failed = Incident(
        "d2",
        "timeout_drift",
        "workflow:wf/step:call",
        0.95,
        "x",
        (Past("m2", "retry", "rolled_back", [], None),),
    )
    ordered, avoid = order_strategies([kept, failed])
    assert ordered[0].name == "timeout" and avoid == {"retry"}
    d = diagnosis(
        DiagnosisKind.TIMEOUT_DRIFT,
        error_class="Timeout",
        metrics={"p99_ms": 420, "timeout_rate": 0.2},
    )
    found = plan(
        given(one_call(timeout=100), d, incidents=[kept, failed]), policy="auto", open_keys=set()
    )
    assert found.proposal is not None and found.proposal.strategy == "timeout"
    assert [s["diagnosis_id"] for s in found.similar] == ["d1", "d2"]


def test_mutation_request_carries_the_evidence() -> None:
    d = diagnosis(DiagnosisKind.LATENCY_DRIFT, metrics={"p99_ms": 420})
    g = given(one_call(), d)
    found = plan(g, policy="propose", open_keys=set())
    request = mutation_request(found, g)
    assert request.action is MutationAction.PROPOSE
    assert request.actor == "optimizer:timeout"
    assert request.mutation_id == mutation_id_for(d.diagnosis_id, "timeout")
    assert request.base_version == 1
    evidence = request.evidence
    assert isinstance(evidence, dict)
    assert {"diagnosis_id", "strategy", "predicted_effect", "similar_incidents"} <= set(evidence)
    assert evidence["diagnosis_id"] == d.diagnosis_id and evidence["strategy"] == "timeout"


def test_every_strategy_has_a_distinct_name() -> None:
    assert len({s.name for s in STRATEGIES}) == len(STRATEGIES) == 6


def test_reward_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown reward weight"):
        RewardWeights.from_json({"speed": 1})
    with pytest.raises(ValueError, match=">= 0"):
        RewardWeights.from_json({"cost": -1})


def test_a_drift_resets_the_step_bandits_and_keeps_the_degraded_arm_out() -> None:
    b = trained("wf/answer", "small")
    assert b.incumbent() == "small"
    cost = diagnosis(DiagnosisKind.COST, step="answer")
    assert not reset_on_drift(cost, [b]) and b.resets == 0
    drift = diagnosis(DiagnosisKind.QUALITY_DRIFT, step="answer", evidence='{"arm": "small"}')
    assert reset_on_drift(drift, [b])
    assert b.resets == 1 and b.stats["small"].pulls == 0
    assert b.incumbent() == "big"


def test_the_critics_metric_names_are_read() -> None:
    latency = diagnosis(
        DiagnosisKind.LATENCY_DRIFT, metrics={"p95_after_ms": 300, "mean_after": 90}
    )
    p = TimeoutStrategy().propose(given(one_call(), latency))
    assert p is not None and p.predicted_effect["timeout_ms"]["to"] == 900  # 1.5 x 2 x p95
    failures = diagnosis(
        DiagnosisKind.ERROR_CLUSTER,
        error_class="UpstreamError",
        metrics={"share": 0.2, "retryable_share": 0.9},
    )
    assert RetryStrategy().propose(given(one_call(), failures)) is not None
    seq = diagnosis(
        DiagnosisKind.SEQUENTIAL_INDEPENDENT,
        step="b",
        evidence='{"durations_ms": {"a": 150, "b": 150}, "steps": ["a", "b"]}',
    )
    p2 = ParalleliseStrategy().propose(given(four_calls(), seq))
    assert p2 is not None and p2.predicted_effect["critical_path"]["unit"] == "ms"
