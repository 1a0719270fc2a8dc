"""The critic's tuning: every threshold in one place, with why it has its value.

The drift numbers were tuned with benchmarks/loop/drift.py (ADR 0031 has the measurements):
lognormal latencies with sigma 0.25 on the log scale, a x1.5 and a x2 shift at a known trace, 200
seeds for the delays, 20 x 100,000 stable traces for the false alarms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "ENGINES",
    "AnomalyTuning",
    "CriticConfig",
    "DriftTuning",
    "RunTuning",
    "WindowTuning",
]


@dataclass(frozen=True)
class DriftTuning:
    """One ADWIN detector (river.drift.ADWIN) and the gate its detections must pass."""

    delta: float
    """ADWIN's confidence: smaller = fewer false alarms, later detections."""
    scale: float
    """Values are multiplied by this before ADWIN sees them. ADWIN's cut threshold has a
    variance term and a range term (2/3 * ln(2/delta') / m) in absolute units: on log-latency,
    whose spread is ~0.25, the range term alone is larger than a x1.5 shift (ln 1.5 = 0.41) for
    the first ~25 traces after it. Scaling by 10 makes the range term negligible, so the test is
    decided by the variance term (a Bernstein bound in the stream's own noise)."""
    min_effect: float
    """A detection whose mean change (unscaled units) is smaller than this is not reported:
    ADWIN on long windows finds real but irrelevant changes (a 3% slower step)."""
    clock: int = 1
    """Check for a cut after every value: the default 32 adds up to 31 traces of delay; at
    ~1 us per update checking every time is affordable."""
    grace_period: int = 30
    """No detection before this many values (after a start or a detection's reset)."""
    min_window_length: int = 1
    """River's sub-window floor; its default 5 enters the bound as n - 5 + 1 and costs delay."""


@dataclass(frozen=True)
class AnomalyTuning:
    """river.anomaly.HalfSpaceTrees per step, on scaled features of each attempt."""

    n_trees: int = 5
    height: int = 6
    window_size: int = 250
    """HST's reference window (it learns from the previous window's mass)."""
    threshold: float = 0.9
    """A trace scoring at least this is 'anomalous'."""
    warmup: int = 500
    """No scoring before two reference windows were learned (counted in learned attempts)."""
    learn_every: int = 4
    """The trees learn from every 4th attempt (cost; see detectors.AnomalyDetector): mass
    profiles are frequencies, a 1-in-4 sample keeps them (a window then spans 1,000 attempts)."""
    candidate_z: float = 2.0
    """Only failed, retried or >= 2 sigma attempts are scored."""
    window: int = 50
    min_anomalous: int = 4
    """A diagnosis needs this many anomalous traces among the last ``window``."""
    seed: int = 42


@dataclass(frozen=True)
class WindowTuning:
    """Count-based windows: error classes and repeated inputs, per step."""

    error_window: int = 100
    error_min_count: int = 10
    error_min_share: float = 0.1
    """An error class is a cluster when it is at least 10 of the last 100 attempts (a steady
    background of 2% failures is not one)."""
    error_recent: int = 25
    """The class's share among the last 25 attempts is reported too (``recent_share``): the
    100-attempt share lags a rising rate (at the firing, 10% of 100 while the newest attempts
    fail 30%), and a retry policy sized on the lagging share is too short."""
    inputs_window: int = 200
    inputs_min_traces: int = 50
    inputs_min_repeat_share: float = 0.3
    """At least 30% of a step's recent first attempts repeat an inputs hash seen in the window:
    a cache candidate (retries are left out: they repeat their inputs by design)."""


@dataclass(frozen=True)
class RunTuning:
    """Run-level findings, from the traces of a run gathered per workflow."""

    idle_close_ms: int = 30_000
    """A run is analysed once the workflow's newest trace ends this long after the run's last
    trace (traces do not say when a run ends)."""
    max_open_runs: int = 10_000
    """Per workflow; beyond it the oldest open run is closed early."""
    bottleneck_runs: int = 50
    bottleneck_min_runs: int = 20
    bottleneck_min_share: float = 0.5
    bottleneck_dominance: float = 1.5
    """A step is a bottleneck when it is on average >= 50% of its runs' duration on the
    critical path, over the last 50 runs (at least 20), and at least 1.5 times the next step."""
    sequential_min_runs: int = 10
    sequential_min_share: float = 0.9
    """Two data-independent steps ran one after the other in >= 90% of >= 10 runs."""
    cost_min_runs: int = 20
    cost_min_share: float = 0.5
    cost_min_tokens: float = 50.0
    cost_dominance: float = 1.5
    """A step is where a workflow's money goes (a ``cost`` diagnosis about the step, detector
    ``cost_share``) when it is >= 50% of the tokens of the workflow's last runs (at least 20,
    up to 64, all of one version), >= 1.5x the next step, and averages >= 50 tokens per run:
    the cost counterpart of the bottleneck, which the optimizer's model choice answers. A drift
    is not needed: a workflow that always asked the expensive model never drifts."""


@dataclass(frozen=True)
class CriticConfig:
    latency: DriftTuning = field(
        default_factory=lambda: DriftTuning(delta=0.0005, scale=10.0, min_effect=math.log(1.1))
    )
    """On ln(latency_ms): median delay 11 traces (p95 18) for x1.5, 5 (7) for x2, 0.05 false
    alarms per 100k stable traces (sigma 0.25; ADR 0031)."""
    failure: DriftTuning = field(
        default_factory=lambda: DriftTuning(delta=0.0005, scale=1.0, min_effect=0.05)
    )
    """On the 0/1 failure (error or timeout) indicator: already in [0, 1], ADWIN's native
    range, so no scaling; a change of less than 5 points of failure rate is not reported."""
    timeout: DriftTuning = field(
        default_factory=lambda: DriftTuning(delta=0.0005, scale=1.0, min_effect=0.05)
    )
    quality: DriftTuning = field(
        default_factory=lambda: DriftTuning(
            delta=0.0005, scale=10.0, min_effect=0.05, min_window_length=10
        )
    )
    """On metrics['quality_score'] (scores in [0, 1]); scaled like latency for the same reason.
    Each side of a cut holds >= 10 scores: with 0/1 scores, two wrong answers among the last 3
    of a 97%-right step were a "0.98 -> 0.33" drift (seen every ~1,000 runs in scenario 4), and
    its episode then hid the real drop that came later."""
    cost: DriftTuning = field(
        default_factory=lambda: DriftTuning(delta=0.0005, scale=10.0, min_effect=math.log(1.2))
    )
    """On ln(1 + tokens per run), per workflow."""
    anomaly: AnomalyTuning = field(default_factory=AnomalyTuning)
    windows: WindowTuning = field(default_factory=WindowTuning)
    runs: RunTuning = field(default_factory=RunTuning)
    rearm_after_ms: int = 600_000
    """One diagnosis per episode: a (subject, kind, direction) that fired stays quiet until its
    detector has not fired for 10 minutes of event time (episodes.py)."""
    node_subjects: bool = True
    """Also run the drift detectors per node@version (not only per workflow step)."""
    examples: int = 5
    """Example run ids per diagnosis."""


ENGINES = frozenset({"kafka", "faust"})
"""How the critic consumes: a confluent-kafka loop or the faust app (``reflux critic --engine``);
here, not in the runtime, so the CLI offers the choice without importing the detectors."""
