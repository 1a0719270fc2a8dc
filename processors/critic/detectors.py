"""Per-stream detectors. Each is small, deterministic for a given input (and seed) and has no
I/O; the critic (critic.py) decides which subject's detector sees which trace and turns their
findings into diagnoses.
"""

from __future__ import annotations

import copy
import heapq
import math
import re
from collections import Counter, deque
from dataclasses import dataclass
from operator import itemgetter

from river.anomaly import HalfSpaceTrees
from river.drift import ADWIN

from processors.critic.config import AnomalyTuning, DriftTuning, WindowTuning

__all__ = [
    "AnomalyDetector",
    "Drift",
    "ErrorCluster",
    "ErrorClusters",
    "MeanDrift",
    "RepeatedInputs",
    "Repetition",
    "normalize_message",
]


@dataclass(frozen=True)
class Drift:
    """A change ADWIN found and the gate accepted, in the stream's own (unscaled) units."""

    before_mean: float
    after_mean: float
    before_n: int
    after_n: int
    seen: int
    """Values the detector had seen since it was created (across resets)."""

    @property
    def direction(self) -> str:
        return "up" if self.after_mean > self.before_mean else "down"


class MeanDrift:
    """river ADWIN on one numeric stream, reporting the means on both sides of the change.

    River's ADWIN empties its window on the update after a detection (``_reset``), so each
    detection re-arms the detector on the new regime after ``grace_period`` values: a change is
    detected once, a later change again.

    The *after* side is the recent values since the most likely change point (:meth:`_after`,
    within the last ``min(|W1|, 16)``), not ADWIN's whole new window W1: ADWIN cuts at bucket
    boundaries, so W1 still holds many values from before the change (x1.5 detected 11 values
    after it: W1 = 91 values, 80 of them old) and its mean would understate the change
    tenfold; the *before* side is the window ADWIN dropped (W0).
    """

    __slots__ = (
        "_adwin",
        "_push",
        "_recent",
        "_scale",
        "_seen0",
        "_total",
        "detections",
        "rejected",
        "seen",
        "tuning",
    )

    RECENT = 16

    def __init__(self, tuning: DriftTuning, *, zeros: int = 0) -> None:
        """``zeros``: start as if that many 0.0 values had been seen (a failure indicator
        created lazily at a step's first failure knows that every earlier attempt was a 0)."""
        self.tuning = tuning
        self._scale = tuning.scale
        self._adwin = self._new()
        self._push = self._adwin._helper.update
        self._recent: deque[float] = deque(maxlen=self.RECENT)
        # ADWIN's window only shrinks at a detection (after which it is replaced), so the sum
        # and count since the last reset are its width and total: kept here, because reading
        # them from the Rust helper on every update costs more than the update itself.
        self._seen0 = 0
        """``seen`` at the last reset: the values since then are ``seen - _seen0``."""
        self._total = 0.0
        self.seen = 0
        self.detections = 0
        self.rejected = 0
        """Detections below ``min_effect``: not reported."""
        for _ in range(zeros):
            self.update(0.0)

    def _new(self) -> ADWIN:
        t = self.tuning
        return ADWIN(  # type: ignore[no-untyped-call]
            delta=t.delta,
            clock=t.clock,
            grace_period=t.grace_period,
            min_window_length=t.min_window_length,
        )

    def update(self, value: float) -> Drift | None:
        scaled = value * self._scale
        self._recent.append(value)
        self.seen += 1
        self._total += scaled
        # river's ``ADWIN.update`` is ``if drift_detected: _reset()`` around this call to its
        # Rust helper; a detector that detected is replaced below, so the reset never applies
        # and the wrapper's Python frame (a fifth of the update's cost) is skipped.
        if not self._push(scaled):
            return None
        adwin = self._adwin
        # ADWIN would empty itself on its next update; a fresh one is the same and lets the
        # running sums restart with it.
        self._adwin = self._new()
        self._push = self._adwin._helper.update
        w1_n, w1_total = int(adwin.width), adwin.total
        n, total = self.seen - self._seen0, self._total
        self._seen0, self._total = self.seen, 0.0
        before_n = n - w1_n
        if before_n <= 0 or w1_n <= 0:
            return None
        before = (total - w1_total) / before_n / self.tuning.scale
        after, after_n = self._after(before, min(w1_n, len(self._recent)))
        self.detections += 1
        if abs(after - before) < self.tuning.min_effect:
            self.rejected += 1
            return None
        return Drift(before, after, before_n, after_n, self.seen)

    def clone(self) -> MeanDrift:
        """An independent copy, state included (ADWIN's window is deep-copied)."""
        other = copy.copy(self)
        other._adwin = copy.deepcopy(self._adwin)
        other._push = other._adwin._helper.update
        other._recent = deque(self._recent, maxlen=self.RECENT)
        return other

    def _after(self, before: float, limit: int) -> tuple[float, int]:
        """Mean and length of the recent run that departs most from ``before``: the k (3 <= k
        <= limit) last values maximising k * (mean_k - before)^2, the change point's
        likelihood under equal noise (ADWIN's W1 mixes old values in: see the class doc)."""
        values = list(self._recent)[-limit:]
        best, best_k, total = -1.0, len(values), 0.0
        best_mean = sum(values) / len(values)
        for k, v in enumerate(reversed(values), start=1):
            total += v
            mean = total / k
            score = k * (mean - before) ** 2
            if k >= min(3, len(values)) and score > best:
                best, best_k, best_mean = score, k, mean
        return best_mean, best_k

    @property
    def mean(self) -> float:
        return self._adwin.estimation / self.tuning.scale

    @property
    def width(self) -> int:
        return self._adwin.width


def _squash(z: float) -> float:
    """A z-score to (0, 1): HalfSpaceTrees splits on [0, 1] features."""
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z / 2.0))))


class AnomalyDetector:
    """HalfSpaceTrees on one step's attempts: features scaled to [0, 1] and a count of high
    scores over a short window.

    Features: the latency's z-score on the log scale against an exponentially weighted mean
    and variance (so the scale follows the step; a shift that persists stops being anomalous,
    which is the drift detectors' job), retries as r / (1 + r), the failure flag, and tokens as
    ln(1 + tokens) against the same kind of running estimate.

    Cost: a HalfSpaceTrees update and score take ~15 us each in river's Python trees, more than
    the critic's whole budget per trace (25 us). So the trees learn from every ``learn_every``-th
    attempt (mass profiles are frequencies; a sample keeps them) and score only *candidates*:
    attempts that failed, were retried, or whose latency or cost is at least ``candidate_z``
    standard deviations from the step's running mean. Every other attempt scores 0: it is
    within two deviations on every feature, so no tree region it falls in is sparse for it.
    """

    __slots__ = (
        "_cost",
        "_lat",
        "_recent",
        "anomalous_recent",
        "hst",
        "learned",
        "scored",
        "seen",
        "tuning",
    )

    def __init__(self, tuning: AnomalyTuning) -> None:
        self.tuning = tuning
        self.hst = HalfSpaceTrees(
            n_trees=tuning.n_trees,
            height=tuning.height,
            window_size=tuning.window_size,
            seed=tuning.seed,
        )
        self._lat = _Ewm()
        self._cost = _Ewm()
        self.seen = 0
        self.learned = 0
        self.scored = 0
        self._recent: deque[bool] = deque(maxlen=tuning.window)
        self.anomalous_recent = 0
        """High scores among the last ``window`` attempts."""

    def update(self, latency_ms: int, retries: int, failed: bool, tokens: int | None) -> float:
        """Learn one attempt; its anomaly score in [0, 1] (0 during warm-up or when it is not a
        candidate)."""
        t = self.tuning
        z_lat = self._lat.step(math.log1p(max(latency_ms, 0)))
        cost = self._cost
        if tokens or cost.mean or cost.var:
            z_cost = cost.step(math.log1p(tokens) if tokens else 0.0)
        else:
            # A step without tokens so far: its estimate is exactly 0 and stays 0 (z 0), so
            # only the count moves; the same numbers as ``step(0.0)`` for less work.
            cost.n += 1
            z_cost = 0.0
        self.seen += 1
        candidate = (
            failed or retries > 0 or abs(z_lat) >= t.candidate_z or abs(z_cost) >= t.candidate_z
        )
        learn = self.seen % t.learn_every == 0
        score = 0.0
        if candidate or learn:
            x = {
                "latency": _squash(z_lat),
                "retries": retries / (1.0 + retries),
                "failed": 1.0 if failed else 0.0,
                "cost": _squash(z_cost),
            }
            if candidate and self.learned >= t.warmup:
                self.scored += 1
                score = float(self.hst.score_one(x))  # type: ignore[no-untyped-call]
            if learn:
                self.hst.learn_one(x)  # type: ignore[no-untyped-call]
                self.learned += 1
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self.anomalous_recent -= 1
        high = score >= t.threshold
        recent.append(high)
        self.anomalous_recent += high
        return score

    @property
    def firing(self) -> bool:
        return self.anomalous_recent >= self.tuning.min_anomalous


class _Ewm:
    """Exponentially weighted mean and variance (alpha 0.02: ~50 values of memory)."""

    __slots__ = ("mean", "n", "var")

    ALPHA = 0.02

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def z(self, x: float) -> float:
        if self.n < 10:
            return 0.0
        return (x - self.mean) / math.sqrt(self.var + 1e-6)

    def add(self, x: float) -> None:
        self.n += 1
        if self.n == 1:
            self.mean = x
            return
        a = max(self.ALPHA, 1.0 / self.n)
        diff = x - self.mean
        self.mean += a * diff
        self.var = (1 - a) * (self.var + a * diff * diff)

    def step(self, x: float) -> float:
        """``z(x)`` then ``add(x)`` in one call (the same arithmetic; this runs per trace)."""
        n = self.n = self.n + 1
        if n == 1:
            self.mean = x
            return 0.0
        mean, var = self.mean, self.var
        z = 0.0 if n <= 10 else (x - mean) / math.sqrt(var + 1e-6)
        a = max(self.ALPHA, 1.0 / n)
        diff = x - mean
        self.mean = mean + a * diff
        self.var = (1 - a) * (var + a * diff * diff)
        return z


_NUMBERS = re.compile(r"\b[0-9a-f]{8,}\b|\d+(\.\d+)?", re.IGNORECASE)


def normalize_message(message: str | None, limit: int = 160) -> str:
    """Group messages that differ only in numbers and ids ('timeout after 1503 ms')."""
    if not message:
        return ""
    return _NUMBERS.sub("#", message)[:limit]


@dataclass(frozen=True)
class ErrorCluster:
    error_class: str
    count: int
    window: int
    share: float
    retryable_share: float
    messages: list[tuple[str, int]]
    run_ids: list[str]
    recent_share: float = 0.0
    """The class's share of the newest ``recent`` attempts (the current rate, noisier)."""
    recent: int = 0


class ErrorClusters:
    """The error classes of a step's last ``error_window`` attempts (None for a success)."""

    __slots__ = ("_classes", "_counts", "_failures", "tuning")

    def __init__(self, tuning: WindowTuning) -> None:
        self.tuning = tuning
        self._classes: deque[str | None] = deque(maxlen=tuning.error_window)
        self._counts: Counter[str] = Counter()
        self._failures: deque[tuple[str, str, bool | None, str]] = deque(maxlen=50)
        """(error_class, normalized message, retryable, run_id) of recent failures."""

    def update(
        self,
        error_class: str | None,
        message: str | None,
        retryable: bool | None,
        run_id: str,
    ) -> str | None:
        """Add one attempt; its error class when that class is a cluster now (then
        :meth:`cluster` has the evidence: built on demand, most firings extend an episode)."""
        classes = self._classes
        if len(classes) == classes.maxlen:
            old = classes[0]
            if old is not None:
                self._counts[old] -= 1
        classes.append(error_class)
        if error_class is None:
            return None
        self._counts[error_class] += 1
        self._failures.append((error_class, normalize_message(message), retryable, run_id))
        count = self._counts[error_class]
        t = self.tuning
        if count < t.error_min_count or count / len(classes) < t.error_min_share:
            return None
        return error_class

    def cluster(self, error_class: str) -> ErrorCluster:
        count = self._counts[error_class]
        window = len(self._classes)
        share = count / window
        mine = [f for f in self._failures if f[0] == error_class]
        retryable_share = sum(1 for f in mine if f[2]) / len(mine)
        messages = Counter(f[1] for f in mine).most_common(3)
        runs = list(dict.fromkeys(f[3] for f in reversed(mine)))
        recent = min(window, self.tuning.error_recent)
        newest = list(self._classes)[-recent:] if recent else []
        recent_share = sum(1 for c in newest if c == error_class) / recent if recent else 0.0
        return ErrorCluster(
            error_class, count, window, share, retryable_share, messages, runs, recent_share, recent
        )


@dataclass(frozen=True)
class Repetition:
    traces: int
    distinct: int
    repeat_share: float
    top: list[tuple[str, int]]
    mean_latency_ms: float
    run_ids: list[str]


class RepeatedInputs:
    """Inputs hashes of a step's last executed first attempts (cache hits and retries left
    out): a high share of repeats makes the step a cache candidate."""

    __slots__ = ("_counts", "_window", "tuning")

    def __init__(self, tuning: WindowTuning) -> None:
        self.tuning = tuning
        self._window: deque[tuple[str, int, str]] = deque(maxlen=tuning.inputs_window)
        # A plain dict, not a Counter: Counter's ``-=``/``del`` run Python code per trace.
        self._counts: dict[str, int] = {}

    def update(self, inputs_hash: str, latency_ms: int, run_id: str) -> bool:
        """Add one attempt; True when the step is a cache candidate now (evidence:
        :meth:`repetition`)."""
        window, counts = self._window, self._counts
        if len(window) == window.maxlen:
            old = window[0][0]
            left = counts[old] - 1
            if left:
                counts[old] = left
            else:
                del counts[old]
        window.append((inputs_hash, latency_ms, run_id))
        counts[inputs_hash] = counts.get(inputs_hash, 0) + 1
        n = len(window)
        t = self.tuning
        return n >= t.inputs_min_traces and 1.0 - len(counts) / n >= t.inputs_min_repeat_share

    def repetition(self) -> Repetition:
        window = self._window
        n = len(window)
        distinct = len(self._counts)
        share = 1.0 - distinct / n
        top = heapq.nlargest(3, self._counts.items(), key=itemgetter(1))  # = most_common(3)
        top_hashes = {h for h, _ in top}
        runs = list(dict.fromkeys(r for h, _, r in reversed(window) if h in top_hashes))
        mean_latency = sum(w[1] for w in window) / n
        return Repetition(n, distinct, share, top, mean_latency, runs)
