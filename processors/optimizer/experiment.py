"""A ``model_choice`` proposal's canary as a two-arm bandit experiment (pure; ADR 0037).

While the proposal is ``applied``, its route splits new runs between the previous version and
the new one by a deterministic point of the run id (``processors/mutations/routing.py``). The
experiment makes that split a Thompson-sampling bandit:

- **Arms**: ``previous`` and ``new`` (the two versions). Each finished run of either is one
  pull: its :func:`~processors.optimizer.bandit.reward` (success, the checker's
  ``quality_score``, latency, cost; weights per workflow). The posterior of each arm's mean
  reward is normal (sample mean, sample variance / n: Gaussian Thompson sampling), or with
  ``posterior="beta"`` a river ``Beta`` fed the reward as a Bernoulli trial whose uniform draw is
  a sha256 point of (experiment, run id). Either way the posteriors depend on which runs were
  seen, never on the order they were read in or on when the runtime polled.
- **Probability matching**: the new version's canary weight is ``P(new is the better arm)``
  under the posteriors (exact, no sampling) -- the share of runs Thompson sampling would send
  it -- clipped to ``[budget, 1 - budget]``: exploration of the worse-looking arm is bounded
  by the budget and both arms stay measured. Routing by run id turns that weight into the
  runs' assignment.
- **Decision**: once each arm has ``decide_runs`` pulls (the weight moves from ``min_runs``
  on), ``keep`` when ``P(new better) >= decisive``, ``rollback`` when ``<= 1 - decisive``.
- **Reset on drift**: a quality drift of an arm (river ADWIN on its checker scores, the critic's
  ``quality_drift`` detector) or :meth:`Experiment.reset` from a drift diagnosis forgets the
  posteriors and sets the weight back to 1/2: after a drift nothing is known, and both arms
  must be re-measured fast (a 90/10 split would take ~10x ``min_runs`` runs to re-measure the
  minority arm).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from river import drift, proba

from processors.optimizer.bandit import ArmStats, Outcome, RewardWeights, reward

__all__ = [
    "ARMS",
    "Arm",
    "Experiment",
    "ExperimentConfig",
    "ExperimentStep",
    "RunOutcome",
    "prob_better",
    "prob_better_normal",
]

Arm = Literal["previous", "new"]
ARMS: tuple[Arm, Arm] = ("previous", "new")
_GRID = 400
_MIN_VARIANCE = 0.0025
"""Floor of a reward's variance (a standard deviation of 0.05)."""


@dataclass(frozen=True)
class ExperimentConfig:
    budget: float = 0.1
    """Least share of new runs each arm keeps while the experiment runs."""
    decisive: float = 0.95
    """``P(new better)`` at which the experiment keeps (and ``1 - decisive`` rolls back)."""
    min_runs: int = 20
    """Pulls each arm needs (since the last reset) before the weight moves or a decision."""
    posterior: Literal["gaussian", "beta"] = "gaussian"
    """``gaussian``: a normal posterior of each arm's mean reward (its measured variance); ``beta``:
    river ``Beta`` posteriors fed Bernoulli trials (the ADR 0032 bandit's trick; ~4x the
    variance of the rewards here, measured slower to decide: ADR 0037)."""
    decide_runs: int = 30
    """Pulls each arm needs (since the last reset) before a keep or a rollback: the posterior is
    looked at after every batch, and a decision on 10 Bernoulli trials is too often a fluke
    (measured: 1 good proposal in 11 rolled back at 10 pulls per arm, 0.017)."""
    min_change: float = 0.05
    """A weight change smaller than this is not worth a record on ``reflux.mutations``."""
    drift_delta: float = 0.0005
    """ADWIN's delta on each arm's quality scores (a drift resets the experiment); with the
    scale 10, clock 1 and grace 30 of the critic's ``quality_drift`` (ADR 0031)."""
    weights: RewardWeights = field(default_factory=RewardWeights)

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 0.5:
            raise ValueError(f"Expected budget in (0, 0.5), but got {self.budget}")
        if not 0.5 < self.decisive < 1.0:
            raise ValueError(f"Expected decisive in (0.5, 1), but got {self.decisive}")
        if self.min_runs < 1:
            raise ValueError(f"Expected min_runs >= 1, but got {self.min_runs}")
        if self.decide_runs < self.min_runs:
            raise ValueError(
                f"Expected decide_runs >= min_runs ({self.min_runs}), but got {self.decide_runs}"
            )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = set(cls.__dataclass_fields__) - {"weights"}
        unknown = set(data) - known - {"weights"}
        if unknown:
            raise ValueError(f"unknown experiment setting(s) {sorted(unknown)}")
        values: dict[str, Any] = {k: data[k] for k in known if k in data}
        if "weights" in data:
            values["weights"] = RewardWeights.from_json(data["weights"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "decisive": self.decisive,
            "posterior": self.posterior,
            "min_runs": self.min_runs,
            "decide_runs": self.decide_runs,
            "min_change": self.min_change,
            "drift_delta": self.drift_delta,
            "weights": {k: getattr(self.weights, k) for k in RewardWeights.__dataclass_fields__},
        }


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    arm: Arm
    outcome: Outcome


@dataclass(frozen=True)
class ExperimentStep:
    """What the runtime should send now: a new weight, a decision, or nothing."""

    weight: float | None
    decision: Literal["keep", "rollback"] | None
    p_new_better: float | None
    reason: str


def prob_better(a: proba.Beta, b: proba.Beta) -> float:
    """``P(X_a > X_b)`` for independent Beta posteriors: ``∫ pdf_a(x) cdf_b(x) dx`` on a
    midpoint grid (deterministic, unlike sampling; exact to ~1e-3 for the counts used here)."""
    # a's density in log space, scaled by its maximum on the grid (river's ``Beta.__call__``
    # overflows / underflows past a few hundred pulls); b's cdf is river's (scipy's betainc).
    grid = [(i + 0.5) / _GRID for i in range(_GRID)]
    logs = [(a.alpha - 1) * math.log(x) + (a.beta - 1) * math.log1p(-x) for x in grid]
    top = max(logs)
    densities = [math.exp(v - top) for v in logs]
    norm = sum(densities)
    total = sum(d * b.cdf(x) for d, x in zip(densities, grid, strict=True))
    return total / norm if norm > 0 else 0.5


def prob_better_normal(a: ArmStats, b: ArmStats) -> float:
    """``P(mean_a > mean_b)`` under normal posteriors of the means (flat prior: mean ~
    N(sample mean, sample variance / n)), i.e. Gaussian Thompson sampling's allocation. The
    variance is floored (an arm whose rewards were all equal is not infinitely certain)."""

    def moments(s: ArmStats) -> tuple[float, float]:
        mean = s.mean_reward
        variance = max(_MIN_VARIANCE, s.reward_sq_sum / s.pulls - mean * mean)
        return mean, variance / s.pulls

    (mean_a, var_a), (mean_b, var_b) = moments(a), moments(b)
    return 0.5 * (1.0 + math.erf((mean_a - mean_b) / math.sqrt(2.0 * (var_a + var_b))))


def _point(key: str, run_id: str) -> float:
    digest = hashlib.sha256(f"experiment:{key}\x00{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Experiment:
    key: str
    """Names the Bernoulli draws: the proposal's mutation id."""
    config: ExperimentConfig = field(default_factory=ExperimentConfig)
    weight: float = 0.5
    """The new version's current canary weight (what the route applies)."""
    resets: int = 0
    posteriors: dict[str, proba.Beta] = field(default_factory=dict)
    stats: dict[str, ArmStats] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    _detectors: dict[str, drift.ADWIN] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._fresh()

    def _fresh(self) -> None:
        self.posteriors = {arm: proba.Beta(1, 1) for arm in ARMS}
        self.stats = {arm: ArmStats() for arm in ARMS}
        self._detectors = {
            arm: drift.ADWIN(  # type: ignore[no-untyped-call]
                delta=self.config.drift_delta, clock=1, grace_period=30
            )
            for arm in ARMS
        }

    def observe(self, run: RunOutcome) -> bool:
        """Folds one finished run (once per run id); ``True`` when it made the experiment reset
        (its arm's quality drifted)."""
        if run.run_id in self.seen:
            return False
        self.seen.add(run.run_id)
        value = reward(run.outcome, self.config.weights)
        self.stats[run.arm].add(run.outcome, value)
        self.posteriors[run.arm].update(_point(self.key, run.run_id) < value)  # type: ignore[no-untyped-call]
        quality = run.outcome.quality
        if quality is None:
            return False
        detector = self._detectors[run.arm]
        detector.update(10.0 * quality)  # type: ignore[no-untyped-call]
        if detector.drift_detected:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        """A drift was diagnosed: forget the posteriors, split the traffic evenly again."""
        self.resets += 1
        self.weight = 0.5
        self._fresh()

    def p_new_better(self) -> float | None:
        """``None`` until each arm has ``min_runs`` pulls since the last reset."""
        if any(self.stats[arm].pulls < self.config.min_runs for arm in ARMS):
            return None
        if self.config.posterior == "beta":
            return prob_better(self.posteriors["new"], self.posteriors["previous"])
        return prob_better_normal(self.stats["new"], self.stats["previous"])

    def step(self) -> ExperimentStep:
        """The weight to route by now, or the decision that ends the experiment."""
        p = self.p_new_better()
        if p is None:
            pulls = {arm: self.stats[arm].pulls for arm in ARMS}
            return ExperimentStep(None, None, None, f"measuring both arms ({pulls})")
        c = self.config
        decidable = all(self.stats[arm].pulls >= c.decide_runs for arm in ARMS)
        if decidable and p >= c.decisive:
            return ExperimentStep(1.0, "keep", p, f"P(new better) = {p:.3f} >= {c.decisive}")
        if decidable and p <= 1.0 - c.decisive:
            return ExperimentStep(
                0.0, "rollback", p, f"P(new better) = {p:.3f} <= {1.0 - c.decisive:.3f}"
            )
        target = round(min(1.0 - c.budget, max(c.budget, p)), 3)
        if abs(target - self.weight) < c.min_change:
            return ExperimentStep(None, None, p, f"P(new better) = {p:.3f}, weight unchanged")
        self.weight = target
        return ExperimentStep(target, None, p, f"probability matching: P(new better) = {p:.3f}")

    def snapshot(self) -> dict[str, Any]:
        p = self.p_new_better()
        return {
            "key": self.key,
            "weight": self.weight,
            "resets": self.resets,
            "p_new_better": None if p is None else round(p, 4),
            "arms": {arm: self.stats[arm].to_json() for arm in ARMS},
            "config": self.config.to_json(),
        }
