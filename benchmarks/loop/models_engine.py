"""Scenario 4 on the real engine: the model choice as a bandit experiment on live runs (ADR 0037).

Same stub and questions as :mod:`benchmarks.loop.models` (big vs small; 75% easy), but every run
is a workflow run on a ``DevEngine`` (scheduler, workers, projector, mutation processor, canary
judge and the optimizer's bandit experiments), its own topic prefix and Postgres schema:

- ``ask``: ``openai.chat`` on the stub, ``model`` a param; ``check``: a checker step
  (``checker: true``, a ``transform``) scoring the answer 1/0 -> the trace's ``quality_score``.
  Cost = the call's tokens (the engine's cost unit, ``cost_tokens``): the stub's ``big`` answers
  with 10x the completion tokens of ``small`` (:data:`ENGINE_MODELS`), so a big call costs ~8x.
- Version 1 asks ``big`` for everything (the configuration as written; the ``static_big`` runs).
- Phase 1: a ``model_choice`` proposal (author ``optimizer:model_choice``, evidence ``bandit``:
  the experiment's config; ``model`` = ``small`` for easy inputs, ``big`` for hard, the per-class
  JMESPath choice the strategy writes) is validated (static checks) and applied by policy
  ``auto`` at the default canary weight 0.2; the experiment reweights it by probability matching
  and keeps or rolls it back. Then :data:`SETTLED` runs on what was kept.
- Phase 2: ``small`` degrades (easy accuracy 0.97 -> 0.5). A river ADWIN on the live checker
  scores of the kept version plays the critic's ``quality_drift``; on it, the optimizer's answer
  is proposed (back to ``big``, a new experiment: its bandit starts from scratch, i.e. reset).
  Re-convergence = runs after the degradation until the right version has the majority of new
  runs for good (the route's weight, as the direct variant counts the incumbent), and until that
  proposal is kept (all runs).

Runs go in batches of :data:`BATCH` (started together, waited for), so the experiment sees the
results of a batch before the next one is routed.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from river import drift

from benchmarks.loop.common import engine_session, progress, register_auto
from benchmarks.loop.models import DEGRADED, EASY_SHARE, MODELS, questions
from benchmarks.loop.stubs import Question, openai_stub
from foundation.settings import Settings
from processors.optimizer.bandit import RewardWeights
from processors.optimizer.experiment import ExperimentConfig
from projections.postgres.identifiers import table
from schemas.models import (
    GraphMutation,
    GraphMutationType,
    MutationAction,
    MutationRequest,
    StartRun,
)
from streams.producer import Producer

__all__ = ["ENGINE_MODELS", "EXPERIMENT", "checked_workflow", "measure", "run"]

SCENARIO: Final = "models_engine"
WORKFLOW: Final = "answer"
ENGINE_MODELS: Final[dict[str, dict[str, Any]]] = {
    **MODELS,
    "big": {**MODELS["big"], "completion_tokens": 200},
}
"""The pure scenario's two models, but ``big`` answers with 10x the completion tokens: on the
engine, the cost is the call's tokens (the pure scenario prices the calls instead)."""
EXPERIMENT: Final = ExperimentConfig(
    budget=0.1,
    min_runs=10,
    weights=RewardWeights(success=1.0, quality=3.0, latency=0.0, cost=1.0, cost_scale=250.0),
)
"""Per-workflow reward weights: quality counts 3, cost (tokens, judged on 250) 1."""
PER_CLASS: Final = "{{ inputs.difficulty == 'easy' && 'small' || 'big' }}"
BATCH: Final = 8
SETTLED: Final = {True: 120, False: 240}
MAX_EXPERIMENT_RUNS: Final = {True: 400, False: 600}
AFTER: Final = {True: 300, False: 400}


def checked_workflow(base_url: str, model: str, workflow_id: str = WORKFLOW) -> dict[str, Any]:
    """``ask`` (openai.chat) then the checker ``check`` scoring the answer 1/0."""
    return {
        "id": workflow_id,
        "inputs": {
            "prompt": {"type": "string", "required": True},
            "answer": {"type": "string", "required": True},
            "difficulty": {"type": "string", "required": True},
        },
        "steps": [
            {
                "id": "ask",
                "node": "openai.chat@^1",
                "params": {
                    "base_url": base_url,
                    "api_key": "bench",
                    "model": model,
                    "messages": [{"role": "user", "content": "{{ inputs.prompt }}"}],
                },
            },
            {
                "id": "check",
                "node": "transform@^1",
                "checker": True,
                "needs": ["ask"],
                "params": {
                    "expression": "{score: (got == want && `1`) || `0`}",
                    "data": {
                        "got": "{{ steps.ask.output.content }}",
                        "want": "{{ inputs.answer }}",
                    },
                },
            },
        ],
        "outputs": {"content": "{{ steps.ask.output.content }}"},
    }


def model_choice_request(
    workflow_id: str, base_url: str, model: str, base_version: int, why: str
) -> MutationRequest:
    """The optimizer's ``model_choice`` proposal for ``ask`` (evidence ``bandit``: the canary
    is a bandit experiment)."""
    definition = checked_workflow(base_url, model, workflow_id)
    return MutationRequest(
        workflow_id=workflow_id,
        mutation_id=f"mc-{uuid.uuid4().hex[:12]}",
        action=MutationAction.PROPOSE,
        actor="optimizer:model_choice",
        base_version=base_version,
        changes=[
            GraphMutation(
                type=GraphMutationType.UPDATE_PARAMS,
                step_id="ask",
                data=definition["steps"][0]["params"],
            )
        ],
        rationale=why,
        evidence={
            "diagnosis_id": f"bench-{uuid.uuid4().hex[:8]}",
            "strategy": "model_choice",
            "predicted_effect": {"model": {"to": model}},
            "similar_incidents": [],
            "step_id": "ask",
            "bandit": EXPERIMENT.to_json(),
        },
    )


@dataclass
class RunResult:
    run_id: str
    version: int
    difficulty: str
    model: str | None
    correct: bool
    tokens: int
    ok: bool


@dataclass
class Session:
    settings: Settings
    schema: str
    engine: Any
    producer: Producer
    conn: psycopg.Connection[Any]
    results: list[RunResult] = field(default_factory=list)

    def request(self, request: MutationRequest) -> None:
        self.producer.send(self.engine.catalog.mutations.topic, request.workflow_id, request)
        self.producer.flush(10)

    def register(self, definition: dict[str, Any]) -> None:
        register_auto(self.producer, self.engine.catalog, definition)

    def batch(self, qs: list[Question], timeout: float = 120.0) -> list[RunResult]:
        run_ids = []
        for q in qs:
            run_id = str(uuid.uuid4())
            inputs = {"prompt": q.prompt, "answer": q.answer, "difficulty": q.difficulty}
            self.producer.send(
                self.engine.catalog.commands.topic,
                run_id,
                StartRun(run_id=run_id, workflow_id=WORKFLOW, inputs=inputs),
            )
            run_ids.append(run_id)
        self.producer.flush(10)
        deadline = time.monotonic() + timeout
        runs = table(self.schema, "runs")
        steps = table(self.schema, "steps")
        while True:
            rows = self.conn.execute(
                f"SELECT r.run_id, r.workflow_version, r.status, a.output, c.output "
                f"FROM {runs} r LEFT JOIN {steps} a ON a.run_id = r.run_id AND a.step_id = 'ask' "
                f"LEFT JOIN {steps} c ON c.run_id = r.run_id AND c.step_id = 'check' "
                "WHERE r.run_id = ANY(%s) AND r.status IN ('succeeded', 'failed', 'cancelled')",
                (run_ids,),
            ).fetchall()
            if len(rows) >= len(run_ids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(run_ids) - len(rows)} runs not finished")
            errors = self.engine.errors()
            if errors:
                raise RuntimeError(f"engine component failed: {errors}")
            time.sleep(0.02)  # polling the read model (benchmark driver, not a test)
        by_id = {r[0]: r for r in rows}
        out = []
        for q, run_id in zip(qs, run_ids, strict=True):
            _, version, status, ask, check = by_id[run_id]
            ask = ask or {}
            score = ((check or {}).get("result") or {}).get("score")
            out.append(
                RunResult(
                    run_id,
                    int(version),
                    q.difficulty,
                    ask.get("model"),
                    score == 1,
                    int((ask.get("usage") or {}).get("total_tokens") or 0),
                    status == "succeeded",
                )
            )
        self.results.extend(out)
        return out

    def proposal(self, mutation_id: str) -> tuple[str, float | None, Any] | None:
        row = self.conn.execute(
            f"SELECT status, canary_weight, report FROM "
            f"{table(self.schema, 'mutation_proposals')} WHERE mutation_id = %s",
            (mutation_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])


@contextlib.contextmanager
def session(base: Settings, tag: str) -> Iterator[Session]:
    settings = base.model_copy(update={"topic_prefix": f"bench-loop-models-{tag}"})
    schema = f"bench_models_{tag}"
    with engine_session(
        settings,
        schema,
        "bench-models",
        replay_runner=False,
        proposal_replay=None,
        canary=True,
        bandit=True,
    ) as (dev, producer, conn):
        yield Session(settings, schema, dev, producer, conn)


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)  # polling the read model (benchmark driver, not a test)
    raise TimeoutError(what)


def _segment(results: list[RunResult], degraded: bool = False) -> dict[str, Any]:
    if not results:
        return {}
    accuracy = {m: dict(p["accuracy"]) for m, p in ENGINE_MODELS.items()}
    if degraded:
        for m, patch in DEGRADED.items():
            accuracy[m].update(patch["accuracy"])
    return {
        "runs": len(results),
        "tokens_per_run": round(statistics.fmean(r.tokens for r in results), 2),
        "quality_pct": round(100 * statistics.fmean(r.correct for r in results), 2),
        "expected_quality_pct": round(
            100
            * statistics.fmean(
                accuracy.get(r.model or "", {}).get(r.difficulty, 0.0) for r in results
            ),
            2,
        ),
        "small_share": round(statistics.fmean(r.model == "small" for r in results), 3),
        "success_rate": round(statistics.fmean(r.ok for r in results), 4),
    }


def _experiment(
    s: Session, request: MutationRequest, qs: Iterator[Question], limit: int
) -> tuple[str, int, list[dict[str, Any]]]:
    """Drives traffic until the proposal is kept or rolled back: (status, runs, weights seen)."""
    assert request.mutation_id is not None
    s.request(request)
    _until(
        lambda: (p := s.proposal(request.mutation_id or "")) and p[0] in {"applied", "rejected"},
        60,
        "proposal applied",
    )
    runs = 0
    weights: list[dict[str, Any]] = []
    while runs < limit:
        found = s.proposal(request.mutation_id)
        assert found is not None
        status, weight, _ = found
        if status != "applied":
            return status, runs, weights
        if not weights or weights[-1]["weight"] != weight:
            weights.append({"at_run": runs, "weight": weight})
        s.batch([next(qs) for _ in range(BATCH)])
        runs += BATCH
    return "applied", runs, weights


def measure(seed: int, quick: bool, base: Settings | None = None) -> dict[str, Any]:
    base = base or Settings()
    tag = f"{seed}{uuid.uuid4().hex[:6]}"
    qs_all = questions(seed, 5000)
    qs = iter(qs_all)
    with (
        openai_stub(ENGINE_MODELS, seed=seed) as llm,
        session(base, tag) as s,
    ):
        progress(SCENARIO, f"seed {seed}: prefix {s.settings.topic_prefix}")
        s.register(checked_workflow(llm.base_url, "big"))
        _until(
            lambda: s.conn.execute(
                f"SELECT 1 FROM {table(s.schema, 'workflow_improvement')} WHERE workflow_id = %s",
                (WORKFLOW,),
            ).fetchone(),
            60,
            "policy set",
        )
        t0 = time.monotonic()
        baseline = [
            r for _ in range(40 // BATCH) for r in s.batch([next(qs) for _ in range(BATCH)])
        ]
        first = model_choice_request(
            WORKFLOW, llm.base_url, PER_CLASS, 1, "small for easy questions, big for hard"
        )
        status1, runs1, weights1 = _experiment(s, first, qs, MAX_EXPERIMENT_RUNS[quick])
        exp_runs = s.results[len(baseline) :]
        big_runs = [r for r in s.results if r.version == 1]
        settled: list[RunResult] = []
        while len(settled) < SETTLED[quick]:
            settled += s.batch([next(qs) for _ in range(BATCH)])
        kept_version = max(r.version for r in settled)
        progress(
            SCENARIO,
            f"seed {seed}: experiment 1 {status1} after {runs1} runs "
            f"({time.monotonic() - t0:.0f} s)",
        )
        # phase 2: small degrades; ADWIN on the kept version's checker scores plays the critic
        llm.control(models=DEGRADED)
        # the critic's quality_drift tuning (ADR 0031): delta 0.0005 on 10 x score, clock 1
        detector = drift.ADWIN(  # type: ignore[no-untyped-call]
            delta=0.0005, clock=1, grace_period=30
        )
        for r in settled:  # the kept version's scores so far: the detector's "before"
            detector.update(10.0 * r.correct)  # type: ignore[no-untyped-call]
        after: list[RunResult] = []
        detected_at: int | None = None
        while detected_at is None and len(after) < AFTER[quick]:
            for r in s.batch([next(qs) for _ in range(BATCH)]):
                after.append(r)
                detector.update(10.0 * r.correct)  # type: ignore[no-untyped-call]
                if detector.drift_detected and detected_at is None:
                    detected_at = len(after)
        status2, runs2 = "not_proposed", 0
        weights2: list[dict[str, Any]] = []
        if detected_at is not None:
            second = model_choice_request(
                WORKFLOW,
                llm.base_url,
                "big",
                kept_version,
                "quality drift of check: back to big",
            )
            before = len(s.results)
            status2, runs2, weights2 = _experiment(
                s, second, qs, AFTER[quick] - len(after) + MAX_EXPERIMENT_RUNS[quick]
            )
            after += s.results[before:]
        reconverge = len(after) if status2 == "kept" else None
        # the right version has the majority of new runs for good: after the last weight <= 0.5
        majority: int | None = None
        if detected_at is not None and status2 == "kept":
            # weights2[k] holds from its at_run on (read between batches; it starts at 0.2)
            low = max(k for k, w in enumerate(weights2) if w["weight"] <= 0.5)
            good_from = weights2[low + 1]["at_run"] if low + 1 < len(weights2) else runs2
            majority = detected_at + good_from
        tail: list[RunResult] = []
        if status2 == "kept":
            while len(tail) < 80:
                tail += s.batch([next(qs) for _ in range(BATCH)])
        base_seg = _segment(big_runs)
        settled_seg = _segment(settled)
        result = {
            "experiment": {
                "status": status1,
                "runs": runs1,
                "weights": weights1,
                "whole": _segment(exp_runs),
            },
            "static_big": base_seg,
            "settled": settled_seg,
            "cost_change_vs_big": round(
                settled_seg["tokens_per_run"] / base_seg["tokens_per_run"] - 1, 4
            ),
            "quality_diff_points_vs_big": round(
                settled_seg["expected_quality_pct"] - base_seg["expected_quality_pct"], 2
            ),
            "measured_quality_diff_points_vs_big": round(
                settled_seg["quality_pct"] - base_seg["quality_pct"], 2
            ),
            "drift_detected_after_runs": detected_at,
            "degraded_before_detection": _segment(after[: detected_at or len(after)], True),
            "stub_after": llm.stats()["models"]["small"],
            "second_experiment": {"status": status2, "runs": runs2, "weights": weights2},
            "reconverge_runs": reconverge,
            "majority_reconverge_runs": majority,
            "after_reconverged": _segment(tail, degraded=True),
            "seconds": round(time.monotonic() - t0, 1),
            "easy_share": EASY_SHARE,
        }
    progress(
        SCENARIO,
        f"seed {seed}: cost {result['cost_change_vs_big']:+.1%} vs big, quality "
        f"{result['quality_diff_points_vs_big']:+.2f} pt (measured "
        f"{result['measured_quality_diff_points_vs_big']:+.2f}), drift seen after "
        f"{detected_at}, re-converged (kept) after {reconverge} runs",
    )
    return result


def run(seeds: list[int], quick: bool) -> dict[str, Any]:
    per_seed = {str(seed): measure(seed, quick) for seed in seeds}
    results = list(per_seed.values())
    cost = [r["cost_change_vs_big"] for r in results]
    quality = [r["quality_diff_points_vs_big"] for r in results]
    reconv = [r["reconverge_runs"] for r in results]
    majority = [r["majority_reconverge_runs"] for r in results]
    met_cost = max(cost) <= -0.5
    met_quality = min(quality) >= -1.0
    return {
        "goals": [
            {
                "name": "cost change vs big (settled)",
                "target": "<= -50%",
                "value": cost,
                "met": met_cost,
            },
            {
                "name": "expected quality vs big (points)",
                "target": ">= -1",
                "value": quality,
                "met": met_quality,
            },
            {
                "name": "runs after the degradation until the right version has the majority "
                "for good",
                "target": "<= 200",
                "value": majority,
                "met": all(m is not None and m <= 200 for m in majority),
            },
            {
                "name": "runs after the degradation until it is kept",
                "target": "<= 200",
                "value": reconv,
                "met": all(r is not None and r <= 200 for r in reconv),
            },
        ],
        "description": "scenario 4 on the engine: a model_choice proposal's canary as a two-arm "
        "bandit experiment (reweight by probability matching, keep when decisive)",
        "per_seed": per_seed,
        "goal": {
            "cost_change_at_most": -0.5,
            "quality_within_points": 1.0,
            "reconverge_within_runs": 200,
            "cost_change_median": statistics.median(cost),
            "quality_diff_median": statistics.median(quality),
            "reconverge": reconv,
            "majority_reconverge": majority,
            "met": bool(
                all(r["experiment"]["status"] == "kept" for r in results)
                and max(cost) <= -0.5
                and min(quality) >= -1.0
                and all(r is not None and r <= 200 for r in reconv)
            ),
        },
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="scenario 4 on the engine")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run([int(s) for s in args.seeds.split(",")], args.quick), indent=2))
