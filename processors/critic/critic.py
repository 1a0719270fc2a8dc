"""The critic's core: routes each trace to the detectors of its subjects and turns what they
find into :class:`~schemas.models.Diagnosis` records. Pure: no I/O, time is the traces' own
(event time), so the same traces always give the same diagnoses.

Subjects (the Kafka key of the diagnoses topic):

- ``workflow:<id>/step:<step_id>``: latency, failure, timeout and quality drifts (ADWIN), anomaly
  (HalfSpaceTrees), error clusters, repeated inputs, bottleneck, sequential independent steps;
- ``node:<name>@<version>``: latency, failure and timeout drifts across every workflow using it;
- ``workflow:<id>``: cost per run drift.

Which traces count: attempts (ok, error, timeout). The scheduler's retry decisions, cancelled
and skipped attempts are left out of every detector (they are neither slow nor failing);
cache hits are left out of latency (a hit's 1 ms is not the step's speed) and of repeated
inputs (a hit means the cache is already on), and kept in the run analysis.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from processors.critic.config import CriticConfig, DriftTuning
from processors.critic.detectors import (
    AnomalyDetector,
    Drift,
    ErrorClusters,
    MeanDrift,
    RepeatedInputs,
)
from processors.critic.episodes import Episodes
from processors.critic.event_clock import PartitionClock
from processors.critic.runs import (
    ClosedRun,
    DependencyOracle,
    RunAssembler,
    critical_shares,
    sequential_pairs,
)
from processors.critic.view import TraceView
from schemas.models import Diagnosis, DiagnosisKind, DiagnosisSeverity
from schemas.quality import FEEDBACK_NODE

__all__ = ["Critic", "CriticStats", "node_subject", "step_subject", "workflow_subject"]

LAZY_ZEROS = 500
"""A failure or timeout detector created late starts with at most this many earlier zeros."""

COST_SHARE_EVERY = 8
"""The cost share (a finding about a 64-run window) is judged every this many closed runs of
a workflow: judging it per run cost ~2 us per trace, a tenth of the critic's budget, for a
finding that moves slowly; a mix of versions still ends its episode at once."""

LATENCY_FLOOR_MS = 10
"""Latencies up to this count as this on the latency detectors' log scale: traces have whole
milliseconds, so a 1 ms step's 1 -> 2 ms is a x2 "drift" of nothing, and a few ms more of a
fast step is the machine's scheduling (seen: a checker step's 1 -> 2 ms and 5 -> 7 ms over 3
attempts, each answered by a timeout proposal that held the canary slot)."""
_LOG_FLOOR = math.log(LATENCY_FLOOR_MS)

_NAMESPACE = uuid.UUID("6f1c2a52-8a6e-4a4b-9a51-3b0f5c1f0c31")


def step_subject(workflow_id: str, step_id: str) -> str:
    return f"workflow:{workflow_id}/step:{step_id}"


def node_subject(node: str, version: str) -> str:
    return f"node:{node}@{version}"


def workflow_subject(workflow_id: str) -> str:
    return f"workflow:{workflow_id}"


@dataclass
class CriticStats:
    traces: int = 0
    ignored: int = 0
    detections: int = 0
    """Detector firings (before the episode guard)."""
    diagnoses: int = 0
    runs_closed: int = 0


_ATTEMPT = frozenset({"ok", "error", "timeout"})
_KIND = {kind: kind.value for kind in DiagnosisKind}
"""Enum ``.value`` is a descriptor call; episode keys are built on hot paths."""


class _DriftSet:
    __slots__ = ("failure", "latency", "quality", "recent", "seen", "subject", "timeout")

    def __init__(self, config: CriticConfig, subject: str) -> None:
        self.subject = subject
        self.latency = MeanDrift(config.latency)
        # Created at the subject's first failure / timeout (most steps never time out), with
        # the zeros of every earlier attempt (up to LAZY_ZEROS): the same stream, cheaper.
        self.failure: MeanDrift | None = None
        self.timeout: MeanDrift | None = None
        self.quality: MeanDrift | None = None
        self.recent: deque[tuple[str, int, bool, bool]] = deque(maxlen=64)
        """The subject's last traces, for example run ids: (run_id, latency_ms, failed,
        timed_out)."""
        self.seen = 0


class _NodeState(_DriftSet):
    __slots__ = ("owner",)

    def __init__(self, config: CriticConfig, subject: str) -> None:
        super().__init__(config, subject)
        self.owner: _StepState | None = None
        """Set while this node@version is *mirrored*: every trace of it so far came from this
        one step, and every trace of that step was of this node (both began with the same
        trace). Its streams are then the step's, value for value, so its detectors would do
        exactly what the step's do: they are not run, and each drift of the step is also
        reported for the node (:meth:`Critic._observe_drifts`). The first trace that breaks the
        pairing gives the node copies of the step's detectors (:meth:`Critic._unmirror`)."""

    def take_over(self, owner: _DriftSet) -> None:
        """Continue from the owner's state (mirrored until now: the same values)."""
        self.latency = owner.latency.clone()
        self.failure = owner.failure.clone() if owner.failure is not None else None
        self.timeout = owner.timeout.clone() if owner.timeout is not None else None
        self.recent = deque(owner.recent, maxlen=owner.recent.maxlen)
        self.seen = owner.seen
        self.owner = None


class _StepState(_DriftSet):
    __slots__ = ("anomalous_runs", "anomaly", "errors", "inputs", "mirror")

    def __init__(self, config: CriticConfig, subject: str) -> None:
        super().__init__(config, subject)
        self.mirror: _NodeState | None = None
        """The node this step mirrors (see ``_NodeState.owner``)."""
        self.anomaly = AnomalyDetector(config.anomaly)
        self.anomalous_runs: deque[str] = deque(maxlen=config.examples)
        """Runs of the latest high-scoring attempts: the anomaly's examples."""
        self.errors = ErrorClusters(config.windows)
        self.inputs = RepeatedInputs(config.windows)


@dataclass
class _WorkflowState:
    assembler: RunAssembler
    cost: MeanDrift
    shares: deque[dict[str, float]]
    runs: deque[str]
    costs: deque[tuple[str, int, dict[str, int]]]
    cost_versions: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    """The workflow version of each run in ``costs`` (the cost share is about one version)."""
    share_keys: set[str] = field(default_factory=set)
    """Episode keys of the cost-share findings opened (closed when versions mix)."""
    cost_total: int = 0
    cost_by_step: dict[str, int] = field(default_factory=dict)
    version_counts: dict[int, int] = field(default_factory=dict)
    """Sums over the ``costs`` window, kept incrementally: the cost share is judged per run
    closed, and summing the 64-run window each time doubled the critic's cost per trace."""
    sequential: dict[tuple[str, str], deque[bool]] = field(default_factory=dict)
    share_totals: dict[str, float] = field(default_factory=dict)
    """Sum of the critical-path shares in ``shares``, per step (kept incrementally)."""
    runs_seen: int = 0

    def add_cost(self, run_id: str, cost: int, per_step: dict[str, int], version: int) -> None:
        costs, versions = self.costs, self.cost_versions
        if len(costs) == costs.maxlen:
            _, old_cost, old_steps = costs[0]
            self.cost_total -= old_cost
            by_step = self.cost_by_step
            for step, tokens in old_steps.items():
                left = by_step[step] - tokens
                if left:
                    by_step[step] = left
                else:
                    del by_step[step]
            old_version = versions[0]
            remaining = self.version_counts[old_version] - 1
            if remaining:
                self.version_counts[old_version] = remaining
            else:
                del self.version_counts[old_version]
        costs.append((run_id, cost, per_step))
        versions.append(version)
        self.cost_total += cost
        for step, tokens in per_step.items():
            self.cost_by_step[step] = self.cost_by_step.get(step, 0) + tokens
        self.version_counts[version] = self.version_counts.get(version, 0) + 1

    def add_shares(self, run_id: str, shares: dict[str, float]) -> None:
        totals = self.share_totals
        if len(self.shares) == self.shares.maxlen:
            for step, share in self.shares[0].items():
                totals[step] -= share
        self.shares.append(shares)
        self.runs.append(run_id)
        for step, share in shares.items():
            totals[step] = totals.get(step, 0.0) + share


class Critic:
    """Feed it traces in stream order (:meth:`observe`); it returns the diagnoses to publish."""

    def __init__(
        self,
        config: CriticConfig | None = None,
        *,
        episodes: MutableMapping[str, Any] | None = None,
        dependencies: DependencyOracle | None = None,
    ) -> None:
        self.config = config or CriticConfig()
        store = episodes if episodes is not None else {}
        self.episodes = Episodes(store, self.config.rearm_after_ms)
        self.dependencies = dependencies
        self.stats = CriticStats()
        self.clock = PartitionClock()
        """Fed by a consumer loop reading several partitions (:mod:`.event_clock`); left
        alone, it limits nothing."""
        self._steps: dict[tuple[str, str], _StepState] = {}
        # People's feedback per (workflow, step or ""): quality detectors of their own.
        self._feedback_states: dict[tuple[str, str], _StepState] = {}
        self._nodes: dict[tuple[str, str], _NodeState] = {}
        self._workflows: dict[str, _WorkflowState] = {}
        self._fired: list[tuple[DiagnosisKind, Drift]] = []
        """Drifts of a step that mirrors a node, for the node (``_observe_drifts``)."""

    # -- per trace -------------------------------------------------------------------------------

    def observe(self, trace: TraceView) -> list[Diagnosis]:
        stats = self.stats
        stats.traces += 1
        status = trace.status
        if status == "skipped" and trace.node == FEEDBACK_NODE:
            return self._feedback(trace)
        if trace.is_retry_decision or status not in _ATTEMPT:
            stats.ignored += 1
            return []
        # Computed once here and passed down: this method runs for every trace.
        failed = status != "ok"
        timed_out = status == "timeout"
        out: list[Diagnosis] = []
        key = (trace.workflow_id, trace.step_id)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = _StepState(
                self.config, step_subject(trace.workflow_id, trace.step_id)
            )
            new_step = True
        else:
            new_step = False
        if self.config.node_subjects:
            self._observe_drifts(step, new_step, trace, failed, timed_out, out)
        else:
            self._drifts(step, trace, "step", failed, timed_out, out)
        self._step_windows(step, trace, failed, out)
        self._runs(trace, failed, out)
        return out

    def _feedback(self, t: TraceView) -> list[Diagnosis]:
        """People's feedback (``POST /v1/runs/{id}/feedback``, a trace of node ``feedback``):
        its ``quality_score`` goes to a quality detector of its own per step (or per workflow
        for feedback on a whole run), apart from the checker steps' scores, whose scale and
        meaning can differ."""
        quality = t.metrics.get("quality_score") if t.metrics else None
        if quality is None:
            self.stats.ignored += 1
            return []
        key = (t.workflow_id, t.step_id)
        state = self._feedback_states.get(key)
        if state is None:
            subject = (
                step_subject(t.workflow_id, t.step_id)
                if t.step_id
                else workflow_subject(t.workflow_id)
            )
            state = self._feedback_states[key] = _StepState(self.config, subject)
        state.seen += 1
        if state.quality is None:
            state.quality = MeanDrift(self.config.quality)
        out: list[Diagnosis] = []
        drift = state.quality.update(quality)
        if drift is not None:
            self._emit_drift(DiagnosisKind.QUALITY_DRIFT, "step", state, t, drift, out)
        return out

    def advance(self) -> list[Diagnosis]:
        """Analyse the runs that are quiet now that :attr:`clock`'s limit rose (the consumer
        loop calls it when :meth:`PartitionClock.settle` says so)."""
        out: list[Diagnosis] = []
        for state in self._workflows.values():
            for run in state.assembler.close_quiet():
                self._closed_run(state, run, out)
        return out

    @property
    def late_traces(self) -> int:
        """Traces of runs already analysed (and so left out of their run's analysis)."""
        return sum(state.assembler.late for state in self._workflows.values())

    def flush(self) -> list[Diagnosis]:
        """Analyse every open run now (the end of a bounded stream: tests, benchmarks)."""
        out: list[Diagnosis] = []
        for state in self._workflows.values():
            for run in state.assembler.flush():
                self._closed_run(state, run, out)
        return out

    MIRROR_NODES = True
    """Skip the detectors of a node@version that only one step uses (``_NodeState.owner``);
    False runs them anyway (the tests compare both)."""

    def _observe_drifts(  # noqa: PLR0917 (private, hot: positional on purpose)
        self,
        step: _StepState,
        new_step: bool,
        t: TraceView,
        failed: bool,
        timed_out: bool,
        out: list[Diagnosis],
    ) -> None:
        """The step's drift detectors, then the node's (or the step's drifts again, for a
        mirrored node)."""
        nkey = (t.node, t.node_version)
        node = self._nodes.get(nkey)
        if node is None:
            node = self._nodes[nkey] = _NodeState(self.config, node_subject(t.node, t.node_version))
            if new_step and self.MIRROR_NODES:
                # Both begin with this trace: the same stream while they stay paired.
                node.owner, step.mirror = step, node
        elif node.owner is not None and node.owner is not step:
            self._unmirror(node)  # a second step uses the node
        if step.mirror is not None and step.mirror is not node:
            self._unmirror(step.mirror)  # the step moved to another node (version)
        if node.owner is None:
            self._drifts(step, t, "step", failed, timed_out, out)
            self._drifts(node, t, "node", failed, timed_out, out)
            return
        fired = self._fired
        if fired:
            fired.clear()  # left by a trace whose judgement raised half-way
        self._drifts(step, t, "step", failed, timed_out, out)
        if not fired:
            return
        found = list(fired)
        fired.clear()
        for kind, drift in found:
            if kind != DiagnosisKind.QUALITY_DRIFT:  # not a node stream
                self._emit_drift(kind, "node", step, t, drift, out, subject=node.subject)

    def _found(  # noqa: PLR0917 (private; one call shape)
        self,
        kind: DiagnosisKind,
        level: str,
        s: _DriftSet,
        t: TraceView,
        drift: Drift,
        out: list[Diagnosis],
    ) -> None:
        self._emit_drift(kind, level, s, t, drift, out)
        if isinstance(s, _StepState) and s.mirror is not None:
            self._fired.append((kind, drift))  # the mirrored node's detector found it too

    def _unmirror(self, node: _NodeState) -> None:
        owner = node.owner
        if owner is not None:
            node.take_over(owner)
            owner.mirror = None

    def _drifts(  # noqa: PLR0917 (private, hot: positional on purpose)
        self,
        s: _DriftSet,
        t: TraceView,
        level: str,
        failed: bool,
        timed_out: bool,
        out: list[Diagnosis],
    ) -> None:
        s.seen += 1
        latency = t.latency_ms
        s.recent.append((t.run_id, latency, failed, timed_out))
        if not failed and not t.cache_hit:
            drift = s.latency.update(
                _LOG_FLOOR if latency <= LATENCY_FLOOR_MS else math.log(latency)
            )
            if drift is not None:
                self._found(DiagnosisKind.LATENCY_DRIFT, level, s, t, drift, out)
        if failed and s.failure is None:
            s.failure = MeanDrift(self.config.failure, zeros=min(s.seen - 1, LAZY_ZEROS))
        if s.failure is not None:
            drift = s.failure.update(1.0 if failed else 0.0)
            if drift is not None:
                self._found(DiagnosisKind.FAILURE_DRIFT, level, s, t, drift, out)
        if timed_out and s.timeout is None:
            s.timeout = MeanDrift(self.config.timeout, zeros=min(s.seen - 1, LAZY_ZEROS))
        if s.timeout is not None:
            drift = s.timeout.update(1.0 if timed_out else 0.0)
            if drift is not None:
                self._found(DiagnosisKind.TIMEOUT_DRIFT, level, s, t, drift, out)
        quality = t.metrics.get("quality_score") if t.metrics else None
        if quality is not None and level == "step":
            if s.quality is None:
                s.quality = MeanDrift(self.config.quality)
            drift = s.quality.update(quality)
            if drift is not None:
                self._found(DiagnosisKind.QUALITY_DRIFT, level, s, t, drift, out)

    def _step_windows(
        self, step: _StepState, t: TraceView, failed: bool, out: list[Diagnosis]
    ) -> None:
        subject = step.subject
        if not t.cache_hit:
            score = step.anomaly.update(t.latency_ms, t.retry_count, failed, t.cost_tokens)
            if score >= step.anomaly.tuning.threshold:
                step.anomalous_runs.append(t.run_id)
            if step.anomaly.firing and not self._extend(
                DiagnosisKind.ANOMALY, subject, "", t.end_ms
            ):
                self._emit_anomaly(step, t, subject, out)
        clustered = step.errors.update(
            t.error_class if failed else None, t.error_message, t.error_retryable, t.run_id
        )
        if clustered is not None and not self._extend(
            DiagnosisKind.ERROR_CLUSTER, subject, clustered, t.end_ms
        ):
            cluster = step.errors.cluster(clustered)
            severity = (
                DiagnosisSeverity.CRITICAL if cluster.share >= 0.2 else DiagnosisSeverity.WARNING
            )
            self._emit(
                out,
                kind=DiagnosisKind.ERROR_CLUSTER,
                subject=subject,
                key_extra=cluster.error_class,
                severity=severity,
                detector="error_window",
                trace=t,
                level="step",
                error_class=cluster.error_class,
                seen=step.seen,
                metrics={
                    "count": cluster.count,
                    "window": cluster.window,
                    "share": cluster.share,
                    "retryable_share": cluster.retryable_share,
                    "recent_share": cluster.recent_share,
                    "recent_window": cluster.recent,
                },
                examples=cluster.run_ids,
                evidence={
                    "window": cluster.window,
                    "count": cluster.count,
                    "share": round(cluster.share, 4),
                    "retryable_share": round(cluster.retryable_share, 4),
                    "recent": cluster.recent,
                    "recent_share": round(cluster.recent_share, 4),
                    "messages": [{"message": m, "count": c} for m, c in cluster.messages],
                },
                explanation=(
                    f"{cluster.error_class} is {cluster.count} of the last {cluster.window} "
                    f"attempts of step {t.step_id} in workflow {t.workflow_id} "
                    f"({cluster.share:.0%}, {cluster.recent_share:.0%} of the last "
                    f"{cluster.recent}; {cluster.retryable_share:.0%} retryable)"
                    + (f": {cluster.messages[0][0]!r}" if cluster.messages else "")
                    + "."
                ),
            )
        if not t.cache_hit and t.retry_count == 0 and t.status == "ok":
            repeated = step.inputs.update(t.inputs_hash, t.latency_ms, t.run_id)
            if repeated and not self._extend(DiagnosisKind.REPEATED_INPUTS, subject, "", t.end_ms):
                rep = step.inputs.repetition()
                self._emit(
                    out,
                    kind=DiagnosisKind.REPEATED_INPUTS,
                    subject=subject,
                    key_extra="",
                    severity=DiagnosisSeverity.INFO,
                    detector="inputs_window",
                    trace=t,
                    level="step",
                    seen=step.seen,
                    metrics={
                        "repeat_share": rep.repeat_share,
                        "window": rep.traces,
                        "distinct": rep.distinct,
                        "mean_latency_ms": rep.mean_latency_ms,
                    },
                    examples=rep.run_ids,
                    evidence={
                        "window": rep.traces,
                        "distinct_inputs": rep.distinct,
                        "repeat_share": round(rep.repeat_share, 4),
                        "top_inputs": [{"inputs_hash": h, "count": c} for h, c in rep.top],
                        "mean_latency_ms": round(rep.mean_latency_ms, 1),
                    },
                    explanation=(
                        f"Step {t.step_id} of workflow {t.workflow_id} ran {rep.traces} times "
                        f"on only {rep.distinct} distinct inputs ({rep.repeat_share:.0%} repeats, "
                        f"{rep.mean_latency_ms:.0f} ms each): a step cache candidate."
                    ),
                )

    def _extend(self, kind: DiagnosisKind, subject: str, key_extra: str, at_ms: int) -> bool:
        """A window condition holds: True (and the open episode extended) when its episode is
        open, so the evidence is not built for nothing; False when a diagnosis is due."""
        self.stats.detections += 1
        return self.episodes.extend(f"{_KIND[kind]}|{subject}|{key_extra}", at_ms)

    def _emit_anomaly(
        self, step: _StepState, t: TraceView, subject: str, out: list[Diagnosis]
    ) -> None:
        a = step.anomaly
        self._emit(
            out,
            kind=DiagnosisKind.ANOMALY,
            subject=subject,
            key_extra="",
            severity=DiagnosisSeverity.WARNING,
            detector="half_space_trees",
            trace=t,
            level="step",
            seen=step.seen,
            metrics={
                "anomalous": a.anomalous_recent,
                "window": a.tuning.window,
                "threshold": a.tuning.threshold,
            },
            examples=list(reversed(step.anomalous_runs)),
            evidence={
                "anomalous_traces": a.anomalous_recent,
                "window": a.tuning.window,
                "score_threshold": a.tuning.threshold,
                "features": ["latency_z", "retries", "failed", "cost_z"],
                "trees": a.tuning.n_trees,
                "height": a.tuning.height,
            },
            explanation=(
                f"{a.anomalous_recent} of the last {a.tuning.window} attempts of step "
                f"{t.step_id} in workflow {t.workflow_id} look unlike its history "
                f"(HalfSpaceTrees score >= {a.tuning.threshold}: latency, retries, failures, cost)."
            ),
        )

    def _emit_drift(  # noqa: PLR0917 (private; one call shape)
        self,
        kind: DiagnosisKind,
        level: str,
        s: _DriftSet,
        t: TraceView,
        drift: Drift,
        out: list[Diagnosis],
        subject: str | None = None,
    ) -> None:
        """``subject``: the mirrored node's, when ``s`` is the step it mirrors."""
        self.stats.detections += 1
        tuning: DriftTuning
        subject = subject or s.subject
        if t.node == FEEDBACK_NODE:
            where = "people's feedback on " + (
                f"step {t.step_id} of workflow {t.workflow_id}"
                if t.step_id
                else f"runs of workflow {t.workflow_id}"
            )
        elif level == "step":
            where = f"step {t.step_id} of workflow {t.workflow_id}"
        else:
            where = f"node {t.node}@{t.node_version}"
        recent = list(s.recent)[-max(drift.after_n, 1) :]
        metrics: dict[str, float] = {
            "window_before": drift.before_n,
            "window_after": drift.after_n,
        }
        up = drift.direction == "up"
        error_class = None
        if kind == DiagnosisKind.LATENCY_DRIFT:
            tuning = self.config.latency
            before, after = math.exp(drift.before_mean), math.exp(drift.after_mean)
            ratio = after / before
            metrics |= {"mean_before": before, "mean_after": after, "ratio": ratio}
            ok = [r for r in recent if not r[2]]
            if ok:
                lat = sorted(r[1] for r in ok)
                metrics["p95_after_ms"] = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            severity = (
                DiagnosisSeverity.INFO
                if not up
                else DiagnosisSeverity.CRITICAL
                if ratio >= 3
                else DiagnosisSeverity.WARNING
            )
            examples = [r[0] for r in sorted(ok, key=lambda r: r[1], reverse=up)]
            explanation = (
                f"Latency of {where} {'rose' if up else 'fell'} from {before:.0f} ms to "
                f"{after:.0f} ms (geometric mean, x{ratio:.2f}) over its last {drift.after_n} "
                f"attempts, against {drift.before_n:.0f} before."
            )
        elif kind == DiagnosisKind.QUALITY_DRIFT:
            tuning = self.config.quality
            metrics |= {"mean_before": drift.before_mean, "mean_after": drift.after_mean}
            severity = DiagnosisSeverity.WARNING if not up else DiagnosisSeverity.INFO
            examples = [r[0] for r in reversed(recent)]
            explanation = (
                f"Quality score of {where} {'rose' if up else 'fell'} from "
                f"{drift.before_mean:.3f} to {drift.after_mean:.3f} over its last "
                f"{drift.after_n} scored attempts, against {drift.before_n:.0f} before."
            )
        else:
            failure = kind == DiagnosisKind.FAILURE_DRIFT
            tuning = self.config.failure if failure else self.config.timeout
            what = "failure" if failure else "timeout"
            metrics |= {"rate_before": drift.before_mean, "rate_after": drift.after_mean}
            severity = (
                DiagnosisSeverity.INFO
                if not up
                else DiagnosisSeverity.CRITICAL
                if drift.after_mean >= 0.2
                else DiagnosisSeverity.WARNING
            )
            column = 2 if what == "failure" else 3
            examples = [r[0] for r in reversed(recent) if r[column]]
            explanation = (
                f"The {what} rate of {where} {'rose' if up else 'fell'} from "
                f"{drift.before_mean:.1%} to {drift.after_mean:.1%} over its last "
                f"{drift.after_n} attempts, against {drift.before_n:.0f} before."
            )
            if up and t.error_class and kind == DiagnosisKind.FAILURE_DRIFT:
                error_class = t.error_class
        evidence = {
            "detector": {
                "name": "adwin",
                "delta": tuning.delta,
                "scale": tuning.scale,
                "clock": tuning.clock,
                "grace_period": tuning.grace_period,
            },
            "direction": drift.direction,
            "stream": "ln(latency_ms)" if kind == DiagnosisKind.LATENCY_DRIFT else kind.value,
            "before": {"n": drift.before_n, "mean": round(drift.before_mean, 6)},
            "after": {"n": drift.after_n, "mean": round(drift.after_mean, 6)},
            "values_seen": drift.seen,
        }
        self._emit(
            out,
            kind=kind,
            subject=subject,
            key_extra=drift.direction,
            severity=severity,
            detector="adwin",
            trace=t,
            level=level,
            error_class=error_class,
            seen=s.seen,
            metrics=metrics,
            examples=examples,
            evidence=evidence,
            explanation=explanation,
        )

    # -- per run ---------------------------------------------------------------------------------

    def _runs(self, t: TraceView, failed: bool, out: list[Diagnosis]) -> None:
        state = self._workflows.get(t.workflow_id)
        if state is None:
            rt = self.config.runs
            state = self._workflows[t.workflow_id] = _WorkflowState(
                assembler=RunAssembler(t.workflow_id, rt, self.clock),
                cost=MeanDrift(self.config.cost),
                shares=deque(maxlen=rt.bottleneck_runs),
                runs=deque(maxlen=rt.bottleneck_runs),
                costs=deque(maxlen=64),
            )
        closed = state.assembler.add(t, failed)
        if closed:
            for run in closed:
                self._closed_run(state, run, out)

    def _closed_run(self, state: _WorkflowState, run: ClosedRun, out: list[Diagnosis]) -> None:
        self.stats.runs_closed += 1
        state.runs_seen += 1
        rt = self.config.runs
        state.add_shares(run.run_id, critical_shares(run))
        if len(run.steps) > 1:
            self._bottleneck(state, run, out)
        cost = run.cost_tokens
        if cost > 0:
            per_step = {s: span.cost_tokens for s, span in run.steps.items() if span.cost_tokens}
            state.add_cost(run.run_id, cost, per_step, run.workflow_version)
            drift = state.cost.update(math.log1p(cost))
            if drift is not None:
                self._emit_cost(state, run, drift, out)
            self._cost_share(state, run, out)
        if self.dependencies is not None and len(run.steps) > 1:
            pairs = self.dependencies(run.workflow_id, run.workflow_version)
            if pairs is not None:
                pairs = list(pairs)
                seq = set(sequential_pairs(run, pairs))
                for pair in pairs:
                    if pair[0] in run.steps and pair[1] in run.steps:
                        window = state.sequential.setdefault(pair, deque(maxlen=50))
                        window.append(pair in seq)
                        n = len(window)
                        share = sum(window) / n
                        if n >= rt.sequential_min_runs and share >= rt.sequential_min_share:
                            self._emit_sequential(state, run, pair, window, out)

    def _bottleneck(self, state: _WorkflowState, run: ClosedRun, out: list[Diagnosis]) -> None:
        rt = self.config.runs
        n = len(state.shares)
        if n < rt.bottleneck_min_runs:
            return
        totals = state.share_totals
        # The top two by (share, step), one pass: this runs for every closed run.
        top: tuple[float, str] | None = None
        runner_up = 0.0
        for name, value in totals.items():
            if top is None:
                top = (value, name)
            elif (value, name) > top:
                runner_up = top[0]
                top = (value, name)
            elif value > runner_up:
                runner_up = value
        if top is None:
            return
        total, step = top
        mean = total / n
        second = runner_up / n
        # Dominant, not one of two equals: a 50/50 split has no bottleneck to fix.
        if mean < rt.bottleneck_min_share or mean < rt.bottleneck_dominance * second:
            return
        subject = step_subject(run.workflow_id, step)
        if self._extend(DiagnosisKind.BOTTLENECK, subject, "", run.end_ms):
            return
        runs_list = list(state.runs)
        ranked = sorted(range(n), key=lambda i: list(state.shares)[i].get(step, 0.0), reverse=True)
        ordered = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
        self._emit_run_level(
            out,
            kind=DiagnosisKind.BOTTLENECK,
            subject=subject,
            step_id=step,
            severity=DiagnosisSeverity.WARNING if mean >= 0.8 else DiagnosisSeverity.INFO,
            detector="critical_path",
            run=run,
            seen=state.runs_seen,
            metrics={"share": mean, "runs": n},
            examples=[runs_list[i] for i in ranked],
            evidence={
                "runs": n,
                "critical_path_share": {s: round(v / n, 4) for s, v in ordered[:8]},
            },
            explanation=(
                f"Step {step} is {mean:.0%} of the duration of workflow {run.workflow_id}'s runs "
                f"on the critical path (mean over its last {n} runs): its bottleneck."
            ),
        )

    def _cost_share(self, state: _WorkflowState, run: ClosedRun, out: list[Diagnosis]) -> None:
        """The step carrying most of the tokens of the workflow version its runs ran (every
        run in the window of it, at least ``cost_min_runs``): a finding about one definition,
        which is what a proposal changes. One diagnosis per episode of the version; a mix of
        versions (a canary) ends the episode, so the version that new runs get once it is
        decided -- kept, rolled back or the same again -- is looked at anew."""
        rt = self.config.runs
        version = run.workflow_version
        versions = state.cost_versions
        key = f"share|v{version}"
        if len(versions) < rt.cost_min_runs:
            return
        if len(state.version_counts) > 1:
            # the whole window (64 runs): a 10% canary leaves 20 runs in a row of one version
            # often enough to re-announce the finding again and again
            for opened in state.share_keys:
                self.episodes.close(opened)
            state.share_keys.clear()
            return
        if len(versions) != rt.cost_min_runs and state.runs_seen % COST_SHARE_EVERY:
            return  # (judged as soon as the window allows, then every few runs)
        # One version in the whole window: its sums are the window's.
        by_step = state.cost_by_step
        total = state.cost_total
        n = len(versions)
        if total <= 0 or not by_step:
            return
        step, tokens = max(by_step.items(), key=lambda kv: (kv[1], kv[0]))
        runner_up = max((c for s, c in by_step.items() if s != step), default=0)
        share = tokens / total
        per_run = tokens / n
        # Dominant, not one of two equals (as for the bottleneck): a model change on one of
        # two equal spenders saves at most half.
        if share < rt.cost_min_share or per_run < rt.cost_min_tokens:
            return
        if tokens < rt.cost_dominance * runner_up:
            return
        subject = step_subject(run.workflow_id, step)
        if self._extend(DiagnosisKind.COST, subject, key, run.end_ms):
            return
        state.share_keys.add(f"{_KIND[DiagnosisKind.COST]}|{subject}|{key}")
        self._emit_run_level(
            out,
            kind=DiagnosisKind.COST,
            subject=subject,
            step_id=step,
            key_extra=key,
            severity=DiagnosisSeverity.INFO,
            detector="cost_share",
            run=run,
            seen=state.runs_seen,
            metrics={"share": share, "tokens_per_run": per_run, "runs": n},
            examples=[
                r
                for (r, c, _), v in sorted(
                    zip(state.costs, versions, strict=True), key=lambda x: x[0][1], reverse=True
                )
                if v == version
            ],
            evidence={
                "runs": n,
                "workflow_version": version,
                "tokens_per_run": round(per_run, 1),
                "workflow_tokens_per_run": round(total / n, 1),
                "share_by_step": {
                    s: round(c / total, 4) for s, c in sorted(by_step.items(), key=lambda kv: kv[0])
                },
            },
            explanation=(
                f"Step {step} spends {share:.0%} of the tokens of workflow {run.workflow_id} "
                f"v{version} ({per_run:.0f} per run over its last {n} runs): where its cost goes."
            ),
        )

    def _emit_cost(
        self, state: _WorkflowState, run: ClosedRun, drift: Drift, out: list[Diagnosis]
    ) -> None:
        self.stats.detections += 1
        before, after = math.expm1(drift.before_mean), math.expm1(drift.after_mean)
        up = drift.direction == "up"
        recent = list(state.costs)[-max(drift.after_n, 1) :]
        by_step: dict[str, int] = {}
        for _, _, per_step in recent:
            for s, c in per_step.items():
                by_step[s] = by_step.get(s, 0) + c
        total = sum(by_step.values()) or 1
        self._emit_run_level(
            out,
            kind=DiagnosisKind.COST,
            subject=workflow_subject(run.workflow_id),
            step_id=None,
            key_extra=drift.direction,
            severity=DiagnosisSeverity.WARNING if up else DiagnosisSeverity.INFO,
            detector="adwin",
            run=run,
            seen=state.runs_seen,
            metrics={"cost_before": before, "cost_after": after, "runs_after": drift.after_n},
            examples=[r for r, _, _ in sorted(recent, key=lambda x: x[1], reverse=up)],
            evidence={
                "stream": "ln(1 + tokens per run)",
                "direction": drift.direction,
                "before": {"runs": drift.before_n, "tokens_per_run": round(before, 1)},
                "after": {"runs": drift.after_n, "tokens_per_run": round(after, 1)},
                "share_by_step": {s: round(c / total, 4) for s, c in sorted(by_step.items())},
            },
            explanation=(
                f"Cost per run of workflow {run.workflow_id} {'rose' if up else 'fell'} from "
                f"{before:.0f} to {after:.0f} tokens (geometric mean) over its last "
                f"{drift.after_n} runs, against {drift.before_n:.0f} before."
            ),
        )

    def _emit_sequential(
        self,
        state: _WorkflowState,
        run: ClosedRun,
        pair: tuple[str, str],
        window: deque[bool],
        out: list[Diagnosis],
    ) -> None:
        self.stats.detections += 1
        a, b = pair
        sa, sb = run.steps[a], run.steps[b]
        saving = min(sa.duration_ms, sb.duration_ms)
        share = sum(window) / len(window)
        self._emit_run_level(
            out,
            kind=DiagnosisKind.SEQUENTIAL_INDEPENDENT,
            subject=step_subject(run.workflow_id, b if sb.start_ms >= sa.start_ms else a),
            step_id=b if sb.start_ms >= sa.start_ms else a,
            key_extra=f"{a}|{b}",
            severity=DiagnosisSeverity.INFO,
            detector="data_dependencies",
            run=run,
            seen=state.runs_seen,
            metrics={"sequential_share": share, "runs": len(window), "saving_ms": saving},
            examples=[run.run_id],
            evidence={
                "steps": [a, b],
                "runs": len(window),
                "sequential_share": round(share, 4),
                "durations_ms": {a: sa.duration_ms, b: sb.duration_ms},
                "saving_ms_per_run": saving,
            },
            explanation=(
                f"Steps {a} and {b} of workflow {run.workflow_id} share no data but ran one after "
                f"the other in {share:.0%} of its last {len(window)} runs; in parallel a run "
                f"would save about {saving} ms."
            ),
        )

    # -- emitting --------------------------------------------------------------------------------

    def _emit_run_level(
        self,
        out: list[Diagnosis],
        *,
        kind: DiagnosisKind,
        subject: str,
        step_id: str | None,
        severity: DiagnosisSeverity,
        detector: str,
        run: ClosedRun,
        seen: int,
        metrics: dict[str, float],
        examples: list[str],
        evidence: dict[str, Any],
        explanation: str,
        key_extra: str = "",
    ) -> None:
        self._finish(
            out,
            kind=kind,
            subject=subject,
            key_extra=key_extra,
            severity=severity,
            detector=detector,
            at_ms=run.end_ms,
            fields={
                "workflow_id": run.workflow_id,
                "workflow_version": run.workflow_version,
                "step_id": step_id,
            },
            seen=seen,
            metrics=metrics,
            examples=examples,
            evidence=evidence,
            explanation=explanation,
        )

    def _emit(
        self,
        out: list[Diagnosis],
        *,
        kind: DiagnosisKind,
        subject: str,
        key_extra: str,
        severity: DiagnosisSeverity,
        detector: str,
        trace: TraceView,
        level: str,
        seen: int,
        metrics: dict[str, float],
        examples: list[str],
        evidence: dict[str, Any],
        explanation: str,
        error_class: str | None = None,
    ) -> None:
        if level == "step":
            fields: dict[str, Any] = {
                "workflow_id": trace.workflow_id,
                "workflow_version": trace.workflow_version,
                "step_id": trace.step_id,
                "node": trace.node,
                "node_version": trace.node_version,
            }
        else:
            fields = {"node": trace.node, "node_version": trace.node_version}
        self._finish(
            out,
            kind=kind,
            subject=subject,
            key_extra=key_extra,
            severity=severity,
            detector=detector,
            at_ms=trace.end_ms,
            fields=fields | {"error_class": error_class},
            seen=seen,
            metrics=metrics,
            examples=examples,
            evidence=evidence,
            explanation=explanation,
        )

    def _finish(
        self,
        out: list[Diagnosis],
        *,
        kind: DiagnosisKind,
        subject: str,
        key_extra: str,
        severity: DiagnosisSeverity,
        detector: str,
        at_ms: int,
        fields: dict[str, Any],
        seen: int,
        metrics: dict[str, float],
        examples: list[str],
        evidence: dict[str, Any],
        explanation: str,
    ) -> None:
        diagnosis_id = f"{kind.value}/{subject}/{at_ms}"
        if not self.episodes.fire(f"{kind.value}|{subject}|{key_extra}", at_ms, diagnosis_id):
            return
        self.stats.diagnoses += 1
        out.append(
            Diagnosis(
                # Derived from the finding, so re-processing the same traces (at-least-once)
                # gives the same record and consumers dedupe it.
                event_id=str(uuid.uuid5(_NAMESPACE, diagnosis_id)),
                diagnosis_id=diagnosis_id,
                subject=subject,
                kind=kind,
                severity=severity,
                detector=detector,
                detected_at=datetime.fromtimestamp(at_ms / 1000, UTC),
                traces_seen=seen,
                metrics={k: float(v) for k, v in metrics.items() if math.isfinite(float(v))},
                example_run_ids=list(dict.fromkeys(examples))[: self.config.examples],
                evidence=json.dumps(evidence, sort_keys=True, separators=(",", ":")),
                explanation=explanation,
                **fields,
            )
        )
