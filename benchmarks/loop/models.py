"""Scenario 4 of ``make bench-loop``: an expensive model where a cheap one suffices on easy
inputs, chosen per input class by the optimizer's bandit, and re-chosen after the cheap one
degrades.

The OpenAI-compatible stub (:func:`benchmarks.loop.stubs.openai_stub`, its own process) serves
two models, ``big`` and ``small`` (:data:`MODELS`: latency, completion tokens, accuracy per
difficulty); a run asks one arithmetic question (:func:`benchmarks.loop.stubs.question_set`,
75% easy ``a + b``, 25% hard ``a * b - c``) over real HTTP, and a checker scores the answer
(1 when it is the right number, else 0: the ``quality_score`` a checker step puts on the
trace). Cost of a call = its ``usage.total_tokens`` x the model's price (:data:`PRICE`, big 10x
small). After :data:`DEGRADE_AT` runs the stub degrades ``small`` (:data:`DEGRADED`: easy
accuracy 0.97 -> 0.5).

Policies, each on a fresh stub with the same seed, over the same question sequence:

- ``static_big`` (the configuration as written), ``static_small``, ``hand`` (the best choice by
  hand before the degradation: small for easy, big for hard);
- ``bandit``: :class:`processors.optimizer.bandit.ModelBandit` per input class (the context:
  the question's difficulty, an input field), Thompson sampling, exploration budget 10% of
  runs, reward weights success 1, quality 2, cost 0.5 (latency 0). A river ADWIN on each arm's
  quality per class plays the critic's ``quality_drift`` diagnosis: when it fires, the bandit of
  that class is reset (the degraded arm excluded from the incumbent until measured again);
- ``bandit_no_reset``: the same without the reset.

Runs go in batches of :data:`BATCH`: the choices of a batch are made before any of its results
is known (feedback arrives late, as from traces), the calls go one after the other so that call
``k`` draws the stub's ``k``-th random numbers under every policy (common random numbers: the
policies differ by their choices only, not by arrival-order luck, until their first different
answer). This drives the stub directly instead of through the engine: it measures the choice
policy (what the optimizer would route), not the engine's latency, which scenario 3 covers. In
the engine, the bandit's per-class choice becomes a ``model_choice`` proposal (the step's
``model`` param as a JMESPath choice on the input field) whose canary is a live bandit
experiment: :mod:`benchmarks.loop.models_engine` measures that variant (ADR 0037).

Reported per seed: cost per run and quality (% correct) of each policy before the
degradation; the bandit's cost change and quality difference (points) vs ``static_big`` once
settled (the second half of the runs before the degradation; goal: cost <= -50% with quality
within 1 point), and the same over the whole window, learning included. Quality is reported
both as measured by the checker (``quality_pct``) and as expected from the choices
(``expected_quality_pct``: the chosen model's accuracy on the question's difficulty); the goal
uses the expected one, because the stub's draws desynchronise between policies after their
first different answer (a wrong answer draws an extra number), which adds +-2 points of luck
to a 175-run window; runs after the degradation until the ``easy``
class's incumbent is ``big`` for good (goal <= 200), with and without the reset.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from river import drift

from benchmarks.loop.common import progress
from benchmarks.loop.stubs import Question, openai_stub, question_set
from processors.optimizer.bandit import ModelBandit, Outcome, RewardWeights

__all__ = ["run"]

SCENARIO: Final = "models"
MODELS: Final[dict[str, dict[str, Any]]] = {
    "big": {
        "median_ms": 6.0,
        "sigma": 0.2,
        "completion_tokens": 20,
        "accuracy": {"easy": 0.97, "hard": 0.95},
    },
    "small": {
        "median_ms": 2.0,
        "sigma": 0.2,
        "completion_tokens": 20,
        "accuracy": {"easy": 0.97, "hard": 0.45},
    },
}
PRICE: Final = {"big": 10.0, "small": 1.0}
"""Price per 1000 tokens."""
DEGRADED: Final = {"small": {"accuracy": {"easy": 0.5, "hard": 0.2}}}
RUNS: Final = {True: 700, False: 1400}
DEGRADE_AT: Final = {True: 350, False: 700}
BATCH: Final = 8
EASY_SHARE: Final = 0.75
BUDGET: Final = 0.1
MIN_PULLS: Final = 8
WEIGHTS: Final = RewardWeights(
    success=1.0, quality=2.0, latency=0.0, cost=0.5, cost_scale=PRICE["big"] * 0.04
)
POLICIES: Final = ("static_big", "static_small", "hand", "bandit", "bandit_no_reset")


def questions(seed: int, n: int) -> list[Question]:
    pool = question_set(200, seed=seed)
    easy = [q for q in pool if q.difficulty == "easy"]
    hard = [q for q in pool if q.difficulty == "hard"]
    rng = random.Random(seed)
    return [rng.choice(easy if rng.random() < EASY_SHARE else hard) for _ in range(n)]


@dataclass
class Trace:
    """What one run produced: the model, the checker's score, the cost, the latency."""

    model: str
    difficulty: str
    correct: bool
    cost: float
    latency_ms: float
    ok: bool
    expected: float = 0.0
    """The chosen model's accuracy on this difficulty (the stub's profile at that run): the
    quality the choice is worth, without the stub's sampling noise."""
    easy_incumbent: str | None = None


@dataclass
class Chooser:
    """One policy: ``choose(run_id, difficulty) -> model`` and ``learn(trace)``."""

    name: str
    seed: int
    bandits: dict[str, ModelBandit] = field(default_factory=dict)
    detectors: dict[tuple[str, str], Any] = field(default_factory=dict)
    resets: list[int] = field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        if self.name.startswith("bandit"):
            for ctx in ("easy", "hard"):
                self.bandits[ctx] = ModelBandit(
                    key=f"{SCENARIO}/answer/{ctx}",
                    arms=("big", "small"),
                    default="big",
                    weights=WEIGHTS,
                    budget=BUDGET,
                    min_pulls=MIN_PULLS,
                    seed=self.seed,
                )

    def choose(self, run_id: str, difficulty: str) -> str:
        if self.name == "static_big":
            return "big"
        if self.name == "static_small":
            return "small"
        if self.name == "hand":
            return "small" if difficulty == "easy" else "big"
        return self.bandits[difficulty].choose(run_id)

    def learn(self, trace: Trace) -> None:
        self.seen += 1
        if not self.bandits:
            return
        bandit = self.bandits[trace.difficulty]
        bandit.observe(
            trace.model,
            Outcome(
                trace.ok, quality=float(trace.correct), latency_ms=trace.latency_ms, cost=trace.cost
            ),
        )
        if self.name != "bandit":
            return
        key = (trace.difficulty, trace.model)
        detector = self.detectors.setdefault(key, drift.ADWIN(delta=0.002))  # type: ignore[no-untyped-call]
        before = detector.estimation
        detector.update(float(trace.correct))
        if detector.drift_detected:
            # the critic's quality_drift diagnosis on this arm: reset the class's bandit; the
            # arm is kept from the incumbent's place until measured again if it got worse
            # (ADWIN fires on improvements too; after a cut its estimate is the recent part).
            worse = detector.estimation < before
            bandit.reset(degraded=trace.model if worse else None)
            self.detectors = {k: v for k, v in self.detectors.items() if k[0] != trace.difficulty}
            self.resets.append(self.seen)


async def _call(
    client: httpx.AsyncClient, base_url: str, model: str, question: Question
) -> tuple[bool, bool, float, float]:
    started = asyncio.get_running_loop().time()
    response = await client.post(
        f"{base_url}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question.prompt}]},
        headers={"Authorization": "Bearer bench"},
    )
    latency = (asyncio.get_running_loop().time() - started) * 1000
    if response.status_code != 200:
        return False, False, 0.0, latency
    body = response.json()
    answer = str(body["choices"][0]["message"]["content"]).strip()
    tokens = int(body["usage"]["total_tokens"])
    return True, answer == question.answer, tokens * PRICE[model] / 1000.0, latency


def _accuracy(model: str, difficulty: str, degraded: bool) -> float:
    accuracy = dict(MODELS[model]["accuracy"])
    if degraded and model in DEGRADED:
        accuracy.update(DEGRADED[model]["accuracy"])
    return float(accuracy[difficulty])


async def _drive(
    chooser: Chooser, base_url: str, qs: list[Question], seed: int, degrade_at: int
) -> list[Trace]:
    traces: list[Trace] = []
    async with httpx.AsyncClient(timeout=30.0) as client:
        for start in range(0, len(qs), BATCH):
            batch = list(enumerate(qs[start : start + BATCH], start))
            models = [chooser.choose(f"{seed}-{i}", q.difficulty) for i, q in batch]
            # One call after the other: request k then draws the stub's k-th random numbers
            # under every policy (common random numbers), so policies differ only by their
            # choices, not by the luck of arrival order. Learning still waits for the batch.
            results = [
                await _call(client, base_url, m, q) for m, (_, q) in zip(models, batch, strict=True)
            ]
            for model, (_, q), (ok, correct, cost, latency) in zip(
                models, batch, results, strict=True
            ):
                trace = Trace(model, q.difficulty, correct, cost, latency, ok)
                trace.expected = _accuracy(model, q.difficulty, len(traces) >= degrade_at)
                chooser.learn(trace)
                if chooser.bandits:
                    trace.easy_incumbent = chooser.bandits["easy"].incumbent()
                traces.append(trace)
    return traces


def _segment(traces: list[Trace]) -> dict[str, Any]:
    if not traces:
        return {}
    return {
        "cost_per_run": round(statistics.fmean(t.cost for t in traces), 5),
        "quality_pct": round(100 * statistics.fmean(t.correct for t in traces), 2),
        "expected_quality_pct": round(100 * statistics.fmean(t.expected for t in traces), 2),
        "small_share": round(statistics.fmean(t.model == "small" for t in traces), 3),
    }


def reconverged_after(traces: list[Trace], at: int, best: str = "big") -> int | None:
    """Runs after ``at`` until the easy class's incumbent is ``best`` for good."""
    after = traces[at:]
    last_bad = max((i for i, t in enumerate(after) if t.easy_incumbent != best), default=-1)
    return None if last_bad == len(after) - 1 else last_bad + 1


def measure(seed: int, quick: bool) -> dict[str, Any]:
    n, at = RUNS[quick], DEGRADE_AT[quick]
    qs = questions(seed, n)
    per_policy: dict[str, Any] = {}
    traces_of: dict[str, list[Trace]] = {}
    resets: dict[str, list[int]] = {}
    for policy in POLICIES:
        chooser = Chooser(policy, seed)
        with openai_stub(MODELS, seed=seed, change_after=at, change_to=DEGRADED) as llm:
            traces = asyncio.run(_drive(chooser, llm.base_url, qs, seed, at))
        traces_of[policy] = traces
        resets[policy] = chooser.resets
        per_policy[policy] = {
            "before": _segment(traces[:at]),
            "settled": _segment(traces[at // 2 : at]),
            "after": _segment(traces[at:]),
        }
    # The goal is judged once the bandit settled (the second half before the degradation);
    # the whole window, learning included, is reported too.
    big = per_policy["static_big"]["settled"]
    bandit = per_policy["bandit"]["settled"]
    whole_big, whole_bandit = per_policy["static_big"]["before"], per_policy["bandit"]["before"]
    result = {
        "runs": n,
        "degrade_at": at,
        "policies": per_policy,
        "cost_change_vs_big": round(bandit["cost_per_run"] / big["cost_per_run"] - 1, 4),
        "quality_diff_points_vs_big": round(
            bandit["expected_quality_pct"] - big["expected_quality_pct"], 2
        ),
        "measured_quality_diff_points_vs_big": round(bandit["quality_pct"] - big["quality_pct"], 2),
        "whole_window_cost_change_vs_big": round(
            whole_bandit["cost_per_run"] / whole_big["cost_per_run"] - 1, 4
        ),
        "whole_window_quality_diff_points": round(
            whole_bandit["expected_quality_pct"] - whole_big["expected_quality_pct"], 2
        ),
        "hand_cost_change_vs_big": round(
            per_policy["hand"]["before"]["cost_per_run"] / big["cost_per_run"] - 1, 4
        ),
        "reconverge_runs": reconverged_after(traces_of["bandit"], at),
        "reconverge_runs_no_reset": reconverged_after(traces_of["bandit_no_reset"], at),
        "resets_at_runs": resets["bandit"],
    }
    progress(
        SCENARIO,
        f"seed {seed}: cost {result['cost_change_vs_big']:+.1%} vs big, quality "
        f"{result['quality_diff_points_vs_big']:+.2f} pt, re-converged after "
        f"{result['reconverge_runs']} runs (without reset: {result['reconverge_runs_no_reset']})",
    )
    return result


def run(seeds: list[int], quick: bool) -> dict[str, Any]:
    per_seed = {str(seed): measure(seed, quick) for seed in seeds}
    results = list(per_seed.values())

    def col(name: str, pick: Callable[[dict[str, Any]], Any] | None = None) -> list[float]:
        values = [(pick or (lambda r: r[name]))(r) for r in results]
        return [float(v) for v in values if v is not None]

    cost, quality = col("cost_change_vs_big"), col("quality_diff_points_vs_big")
    reconv = [r["reconverge_runs"] for r in results]
    goal = {
        "cost_change_at_most": -0.5,
        "quality_within_points": 1.0,
        "reconverge_within_runs": 200,
        "cost_change_median": statistics.median(cost),
        "quality_diff_median": statistics.median(quality),
        "reconverge_median": (
            statistics.median([r for r in reconv if r is not None])
            if any(r is not None for r in reconv)
            else None
        ),
        "reconverge_no_reset_median": (
            statistics.median(col("reconverge_runs_no_reset"))
            if col("reconverge_runs_no_reset")
            else None
        ),
    }
    goal["met"] = bool(
        max(cost) <= -0.5
        and min(quality) >= -1.0
        and all(r is not None and r <= 200 for r in reconv)
    )
    return {
        "description": "big vs small model on an OpenAI-compatible stub, 75% easy questions; "
        "small degrades at a known run",
        "per_seed": per_seed,
        "goal": goal,
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="scenario 4: model choice by a bandit")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run([int(s) for s in args.seeds.split(",")], args.quick), indent=2))
