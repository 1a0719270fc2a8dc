"""Choosing a model (or a node version) per step by a bandit, with bounded exploration (pure).

Arms are the candidate values (``openai.chat`` models, node version constraints); one bandit per
``(workflow, step, context)`` where the context is an optional class of inputs (e.g. an input
field ``difficulty``), so "the cheap model suffices on easy inputs" can be learned.

- **Reward** (:func:`reward`): a weighted mean in [0, 1] of success, quality score, latency and
  cost; the weights are set per workflow (:class:`RewardWeights`).
- **Policy**: river's ``ThompsonSampling`` over ``Beta`` posteriors (a [0, 1] reward is fed as a
  Bernoulli trial, the usual trick for Thompson sampling with bounded rewards) or river's
  ``UCB`` on the mean reward.
- **Bounded exploration** (:meth:`ModelBandit.choose`): a run explores only when its routing
  point (sha256 of the bandit key and the run id, as the workflow routes; deterministic by run
  id) falls under ``budget``; every other run gets the *incumbent*, the arm with the best
  lower confidence bound on the reward (mean - z x standard error) among arms pulled at least
  ``min_pulls`` times since the last reset (before that: the configured default). So at most
  ``budget`` of the traffic ever goes to a non-incumbent arm.
- **Reset on drift** (:meth:`ModelBandit.reset`): a drift diagnosis about the step or one of its
  arms clears the posteriors (a degraded arm's long good history would otherwise keep it the
  incumbent for hundreds of runs); the incumbent falls back to the default until each arm is
  measured again, the previous incumbent excluded if the drift was about it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from river import bandit, proba

__all__ = ["ArmStats", "ModelBandit", "Outcome", "RewardWeights", "reward"]


@dataclass(frozen=True)
class RewardWeights:
    """Per-workflow weights of the reward terms, and the scales latency and cost are judged on
    (a term is ``1 - min(1, value / scale)``)."""

    success: float = 1.0
    quality: float = 1.0
    latency: float = 0.1
    cost: float = 0.3
    latency_scale_ms: float = 2_000.0
    cost_scale: float = 1.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RewardWeights:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown reward weight(s) {sorted(unknown)} "
                f"(known: {sorted(cls.__dataclass_fields__)})"
            )
        values = {name: float(value) for name, value in data.items()}
        for name, value in values.items():
            if value < 0:
                raise ValueError(f"reward weight {name} must be >= 0, got {value}")
        return cls(**values)


@dataclass(frozen=True)
class Outcome:
    """One run's result for one step."""

    succeeded: bool
    quality: float | None = None
    """In [0, 1]; None when nothing scored it (the term is then left out)."""
    latency_ms: float = 0.0
    cost: float = 0.0


def reward(outcome: Outcome, weights: RewardWeights) -> float:
    terms = [(weights.success, 1.0 if outcome.succeeded else 0.0)]
    if outcome.quality is not None:
        terms.append((weights.quality, min(1.0, max(0.0, outcome.quality))))
    terms.append((weights.latency, 1.0 - min(1.0, outcome.latency_ms / weights.latency_scale_ms)))
    terms.append((weights.cost, 1.0 - min(1.0, outcome.cost / weights.cost_scale)))
    total = sum(w for w, _ in terms)
    if total <= 0:
        return 1.0 if outcome.succeeded else 0.0
    return sum(w * v for w, v in terms) / total


@dataclass
class ArmStats:
    pulls: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    cost_sum: float = 0.0
    quality_sum: float = 0.0
    quality_n: int = 0
    latency_sum: float = 0.0
    successes: int = 0

    def add(self, outcome: Outcome, value: float) -> None:
        self.pulls += 1
        self.reward_sum += value
        self.reward_sq_sum += value * value
        self.cost_sum += outcome.cost
        self.latency_sum += outcome.latency_ms
        self.successes += int(outcome.succeeded)
        if outcome.quality is not None:
            self.quality_sum += outcome.quality
            self.quality_n += 1

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.pulls if self.pulls else 0.0

    def lower_bound(self, z: float) -> float:
        """``mean - z * standard error``: an arm measured a few times must beat the others by
        more than its noise to become the incumbent (a lucky streak does not take the traffic)."""
        if self.pulls == 0:
            return float("-inf")
        mean = self.mean_reward
        variance = max(0.0, self.reward_sq_sum / self.pulls - mean * mean)
        return mean - z * math.sqrt(variance / self.pulls)

    def to_json(self) -> dict[str, Any]:
        n = max(1, self.pulls)
        return {
            "pulls": self.pulls,
            "mean_reward": round(self.mean_reward, 4),
            "mean_cost": round(self.cost_sum / n, 6),
            "mean_latency_ms": round(self.latency_sum / n, 2),
            "success_rate": round(self.successes / n, 4),
            "mean_quality": (
                round(self.quality_sum / self.quality_n, 4) if self.quality_n else None
            ),
        }


def _point(key: str, run_id: str) -> float:
    digest = hashlib.sha256(f"{key}\x00{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class ModelBandit:
    key: str
    """``<workflow>/<step>[/<context>]``: names the routing points."""
    arms: tuple[str, ...]
    default: str
    weights: RewardWeights = RewardWeights()
    budget: float = 0.2
    """Largest share of runs that may go to a non-incumbent arm."""
    policy: Literal["thompson", "ucb"] = "thompson"
    min_pulls: int = 10
    confidence_z: float = 1.0
    """The incumbent is the arm with the best ``mean - z * standard error``."""
    seed: int = 0
    resets: int = 0
    stats: dict[str, ArmStats] = field(default_factory=dict)
    _policy: bandit.base.Policy | None = field(default=None, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _excluded: str | None = None
    last_arm: str | None = None
    """The arm of the newest observation since the last reset (what the class runs on now,
    when the observations come from the live runs)."""

    def __post_init__(self) -> None:
        if self.default not in self.arms:
            raise ValueError(f"default arm {self.default!r} is not one of the arms {self.arms}")
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {self.budget}")
        self._rng = random.Random(self.seed)
        self._fresh()

    def _fresh(self) -> None:
        self.stats = {arm: ArmStats() for arm in self.arms}
        seed = self.seed + 7919 * self.resets
        if self.policy == "thompson":
            # burn_in: exploration runs first measure every arm min_pulls times (river pulls
            # an arm below its burn-in before sampling), so the incumbent can be chosen soon.
            self._policy = bandit.ThompsonSampling(
                reward_obj=proba.Beta(1, 1), burn_in=self.min_pulls, seed=seed
            )
        else:
            self._policy = bandit.UCB(delta=1.0, seed=seed)

    # -- learning --------------------------------------------------------------------------------

    def observe(self, arm: str, outcome: Outcome) -> float:
        if arm not in self.stats:
            raise KeyError(f"unknown arm {arm!r} (arms: {', '.join(self.arms)})")
        value = reward(outcome, self.weights)
        self.stats[arm].add(outcome, value)
        self.last_arm = arm
        assert self._policy is not None
        if self.policy == "thompson":
            self._policy.update(arm, self._rng.random() < value)  # type: ignore[no-untyped-call]
        else:
            self._policy.update(arm, value)  # type: ignore[no-untyped-call]
        return value

    def reset(self, degraded: str | None = None) -> None:
        """Forget everything (a drift was diagnosed); ``degraded`` is not the incumbent again
        until it is measured anew."""
        self.resets += 1
        self._excluded = degraded
        self.last_arm = None
        self._fresh()

    # -- choosing --------------------------------------------------------------------------------

    def incumbent(self) -> str:
        measured = [arm for arm in self.arms if self.stats[arm].pulls >= self.min_pulls]
        if len(measured) >= 1 and (len(measured) == len(self.arms) or self._excluded is None):
            best = max(measured, key=lambda arm: self.stats[arm].lower_bound(self.confidence_z))
            if len(measured) == len(self.arms) or best != self._excluded:
                return best
        if self._excluded == self.default:
            others = [arm for arm in self.arms if arm != self.default]
            return others[0] if others else self.default
        return self.default

    def explores(self, run_id: str) -> bool:
        return _point(f"bandit:{self.key}", run_id) < self.budget

    def choose(self, run_id: str) -> str:
        """The arm for one run: the incumbent, unless the run is in the exploration budget."""
        if not self.explores(run_id):
            return self.incumbent()
        assert self._policy is not None
        return str(self._policy.pull(list(self.arms)))

    def best(self, *, min_pulls: int | None = None) -> str | None:
        """The arm with the best mean reward once every arm has ``min_pulls`` pulls, else None."""
        needed = self.min_pulls if min_pulls is None else min_pulls
        if any(self.stats[arm].pulls < needed for arm in self.arms):
            return None
        return max(self.arms, key=lambda arm: self.stats[arm].mean_reward)

    def snapshot(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "policy": self.policy,
            "budget": self.budget,
            "resets": self.resets,
            "incumbent": self.incumbent(),
            "arms": {arm: self.stats[arm].to_json() for arm in self.arms},
        }


def contexts_of(bandits: Sequence[ModelBandit]) -> list[str]:
    return [b.key for b in bandits]
