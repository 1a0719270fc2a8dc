"""The critic's pure core: every detector on seeded synthetic streams, the episode guard, the
run analysis and the diagnoses the critic builds (docs/learning.md, "Critic"; ADR 0031)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from foundation.settings import Settings
from processors.critic.config import AnomalyTuning, CriticConfig, WindowTuning
from processors.critic.critic import Critic
from processors.critic.detectors import (
    AnomalyDetector,
    ErrorClusters,
    MeanDrift,
    RepeatedInputs,
    normalize_message,
)
from processors.critic.episodes import Episodes
from processors.critic.kafka_loop import TrackedStore
from processors.critic.runs import RunAssembler, StepSpan, critical_path
from processors.critic.runtime import CriticEngineError, CriticProcessor
from processors.critic.view import (
    TraceView,
    TraceViewError,
    _view_reference,
    view_from_json,
    view_from_trace,
)
from schemas.models import (
    Diagnosis,
    DiagnosisKind,
    DiagnosisSeverity,
    ErrorInfo,
    Trace,
    TraceStatus,
)
from schemas.serde import decode, encode
from schemas.trace_json import encode_trace
from workflows.data_dependencies import independent_pairs
from workflows.model import WorkflowDefinition

T0 = 1_780_000_000_000
LATENCY = CriticConfig().latency


def _view(i: int, **over: object) -> TraceView:
    base: dict[str, object] = {
        "run_id": f"r{i}",
        "workflow_id": "wf",
        "workflow_version": 1,
        "step_id": "fetch",
        "node": "http.request",
        "node_version": "1.0.0",
        "status": "ok",
        "start_ms": T0 + i * 100,
        "end_ms": T0 + i * 100 + 50,
        "latency_ms": 50,
        "inputs_hash": f"h{i}",
    }
    base.update(over)
    return TraceView(**base)  # type: ignore[arg-type]


def _latency_stream(
    seed: int, n: int, change_at: int, factor: float, sigma: float = 0.25, fail: float = 0.0
) -> Iterator[TraceView]:
    rng = random.Random(seed)
    for i in range(n):
        mu = math.log(200 * (factor if i >= change_at else 1.0))
        latency = max(1, round(math.exp(rng.gauss(mu, sigma))))
        failed = rng.random() < fail
        yield _view(
            i,
            latency_ms=latency,
            end_ms=T0 + i * 100 + latency,
            status="error" if failed else "ok",
            error_class="HttpStatusError" if failed else None,
            error_message="503 upstream" if failed else None,
            error_retryable=True if failed else None,
        )


# -- MeanDrift (ADWIN) ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adwin_on_log_latency_sees_a_x1_5_shift_within_the_goal(seed: int) -> None:
    rng = random.Random(seed)
    detector = MeanDrift(LATENCY)
    for _ in range(1000):
        assert detector.update(rng.gauss(math.log(200), 0.25)) is None
    for i in range(1, 200):  # noqa: B007 (read after the loop)
        drift = detector.update(rng.gauss(math.log(300), 0.25))
        if drift is not None:
            break
    else:
        pytest.fail("no drift within 200 shifted values")
    assert i <= 48
    assert drift.direction == "up"
    assert math.exp(drift.before_mean) == pytest.approx(200, rel=0.05)
    assert math.exp(drift.after_mean) == pytest.approx(300, rel=0.25)
    assert drift.before_n >= 100  # W0: what ADWIN dropped, cut at a bucket boundary


def test_adwin_stays_quiet_on_a_stable_stream() -> None:
    rng = random.Random(11)
    detector = MeanDrift(LATENCY)
    drifts = [d for _ in range(50_000) if (d := detector.update(rng.gauss(5.3, 0.25)))]
    assert drifts == []


def test_unscaled_adwin_is_too_slow_which_is_why_the_critic_scales() -> None:
    """The range term of ADWIN's bound is in absolute units: on raw ln-latency (scale 1) a x1.5
    shift takes several times longer; the scale is what makes the goal reachable."""
    delays = {}
    for scale in (1.0, LATENCY.scale):
        rng = random.Random(5)
        detector = MeanDrift(replace(LATENCY, scale=scale))
        for _ in range(1000):
            detector.update(rng.gauss(math.log(200), 0.25))
        delays[scale] = next(
            i for i in range(1, 5000) if detector.update(rng.gauss(math.log(300), 0.25))
        )
    assert delays[LATENCY.scale] * 2 < delays[1.0]


def test_a_detection_below_the_minimum_effect_is_not_reported() -> None:
    rng = random.Random(3)
    detector = MeanDrift(replace(LATENCY, min_effect=math.log(3)))
    for _ in range(1000):
        detector.update(rng.gauss(math.log(200), 0.25))
    reported = [detector.update(rng.gauss(math.log(300), 0.25)) for _ in range(300)]
    assert not any(reported)
    assert detector.rejected >= 1 and detector.detections == detector.rejected


def test_failure_indicator_drift_and_lazy_zeros() -> None:
    rng = random.Random(4)
    detector = MeanDrift(CriticConfig().failure, zeros=500)
    assert detector.seen == 500
    for _ in range(500):
        assert detector.update(1.0 if rng.random() < 0.02 else 0.0) is None
    for i in range(1, 200):  # noqa: B007 (read after the loop)
        drift = detector.update(1.0 if rng.random() < 0.3 else 0.0)
        if drift:
            break
    else:
        pytest.fail("no failure drift")
    assert i <= 60
    assert drift.before_mean < 0.05 and drift.after_mean > 0.15


# -- HalfSpaceTrees -------------------------------------------------------------------------------


def test_anomaly_fires_on_a_burst_of_outliers_not_on_noise() -> None:
    rng = random.Random(9)
    detector = AnomalyDetector(AnomalyTuning())
    for _ in range(3000):
        detector.update(max(1, round(math.exp(rng.gauss(5.3, 0.25)))), 0, False, None)
        assert not detector.firing
    fired = False
    for i in range(50):
        outlier = i % 5 == 0
        latency = 20_000 if outlier else round(math.exp(rng.gauss(5.3, 0.25)))
        detector.update(latency, 3 if outlier else 0, outlier, None)
        fired = fired or detector.firing
    assert fired
    assert detector.scored > 0


# -- windows --------------------------------------------------------------------------------------


def test_error_clusters_need_count_and_share_and_forget_old_failures() -> None:
    clusters = ErrorClusters(WindowTuning())
    hits = []
    for i in range(100):
        cls = "Timeout" if i % 11 == 10 else None  # 9 of 100: below 10
        hits.append(clusters.update(cls, f"timed out after {i} ms", True, f"r{i}"))
    assert not any(hits)
    assert clusters.update("Timeout", "timed out after 7 ms", True, "r100") == "Timeout"
    cluster = clusters.cluster("Timeout")
    assert cluster.count == 10 and cluster.window == 100
    assert cluster.messages[0] == ("timed out after # ms", 10)
    assert cluster.run_ids[0] == "r100"
    for i in range(100):
        assert clusters.update(None, None, None, f"s{i}") is None
    assert clusters.update("Timeout", "x", True, "late") is None  # the old ones left the window


def test_an_error_cluster_reports_the_share_of_its_newest_attempts() -> None:
    # A rate rising from 0 to ~1 in 3: the cluster fires at 10 of 100 while the newest 25
    # attempts fail far more often -- the rate a retry policy must be sized for.
    clusters = ErrorClusters(WindowTuning())
    fired = None
    for i in range(200):
        cls = "Http5xx" if i >= 80 and i % 3 == 0 else None
        fired = fired or clusters.update(cls, "HTTP 503", True, f"r{i}")
        if fired:
            break
    assert fired == "Http5xx"
    cluster = clusters.cluster("Http5xx")
    assert cluster.share == pytest.approx(0.1)
    assert cluster.recent == 25 and cluster.recent_share >= 0.3


def test_normalize_message_groups_numbers_and_ids() -> None:
    assert normalize_message("id 3f2a9c0b1d: 503 after 1.5 s") == "id #: # after # s"
    assert normalize_message(None) == ""


def test_repeated_inputs_make_a_cache_candidate() -> None:
    rng = random.Random(2)
    unique = RepeatedInputs(WindowTuning())
    assert not any(unique.update(f"{rng.getrandbits(64)}", 100, "r") for _ in range(300))
    repeated = RepeatedInputs(WindowTuning())
    flags = [repeated.update(f"h{rng.randrange(40)}", 100, f"r{i}") for i in range(300)]
    assert not any(flags[:49]) and flags[-1]
    rep = repeated.repetition()
    assert rep.distinct <= 40 and rep.repeat_share >= 0.8 and rep.mean_latency_ms == 100


# -- runs -----------------------------------------------------------------------------------------


def test_critical_path_follows_the_latest_predecessor() -> None:
    steps = {
        "a": StepSpan(0, 100),
        "b": StepSpan(100, 150),  # parallel with c
        "c": StepSpan(100, 400),
        "d": StepSpan(400, 450),
    }
    assert critical_path(steps) == ["d", "c", "a"]


def test_runs_close_after_the_idle_time_in_event_time() -> None:
    assembler = RunAssembler("wf", CriticConfig().runs)
    assert assembler.add(_view(0, run_id="r1", step_id="a", start_ms=T0, end_ms=T0 + 10)) == []
    assert assembler.add(_view(0, run_id="r1", step_id="b", start_ms=T0 + 10, end_ms=T0 + 30)) == []
    closed = assembler.add(_view(0, run_id="r2", start_ms=T0 + 40_000, end_ms=T0 + 40_010))
    assert [c.run_id for c in closed] == ["r1"]
    assert closed[0].duration_ms == 30 and set(closed[0].steps) == {"a", "b"}
    assembler.add(_view(0, run_id="r1", start_ms=T0 + 50, end_ms=T0 + 60))
    assert assembler.late == 1
    assert [c.run_id for c in assembler.flush()] == ["r2"]


# -- episodes -------------------------------------------------------------------------------------


def test_one_diagnosis_per_episode_then_rearmed_after_the_quiet_time() -> None:
    store: dict[str, object] = {}
    episodes = Episodes(store, rearm_after_ms=1000)
    assert episodes.fire("k", 0, "d0")
    assert not episodes.fire("k", 900, "d1")  # extends: last firing now 900
    assert not episodes.fire("k", 1800, "d2")  # 900 after the last firing: still open
    assert episodes.fire("k", 2900, "d3")  # quiet for 1100 ms: a new episode
    assert episodes.fire("other", 2900, "d4")
    assert store["k"] == {"opened_ms": 2900, "last_ms": 2900, "fires": 1, "diagnosis_id": "d3"}


# -- the critic -----------------------------------------------------------------------------------


def test_latency_shift_gives_one_diagnosis_per_subject_with_evidence() -> None:
    critic = Critic()
    stream = list(_latency_stream(1, 2000, 1000, 2.0))
    found = [(i, d) for i, t in enumerate(stream) for d in critic.observe(t)]
    latency = [(i, d) for i, d in found if d.kind == DiagnosisKind.LATENCY_DRIFT]
    assert sorted(d.subject for _, d in latency) == [
        "node:http.request@1.0.0",
        "workflow:wf/step:fetch",
    ]
    i, d = next((i, d) for i, d in latency if d.subject == "workflow:wf/step:fetch")
    assert 1000 <= i <= 1048
    assert d.severity == DiagnosisSeverity.WARNING
    assert d.metrics["ratio"] == pytest.approx(2.0, rel=0.3)
    assert d.step_id == "fetch" and d.workflow_id == "wf" and d.node_version == "1.0.0"
    assert all(int(r[1:]) >= 1000 for r in d.example_run_ids)
    detected_ms = round(d.detected_at.timestamp() * 1000)
    assert detected_ms == stream[i].end_ms  # event time: the trace that tipped it
    assert d.diagnosis_id == f"latency_drift/workflow:wf/step:fetch/{detected_ms}"
    evidence = json.loads(d.evidence)
    assert evidence["detector"]["name"] == "adwin" and evidence["direction"] == "up"
    assert "rose" in d.explanation and "fetch" in d.explanation
    assert decode(encode(d), Diagnosis) == d
    # Same traces, same diagnosis (at-least-once re-processing is deduped downstream).
    again = Critic()
    ids = [x.event_id for t in _latency_stream(1, 2000, 1000, 2.0) for x in again.observe(t)]
    assert d.event_id in ids


def test_latency_recovery_is_an_info_diagnosis() -> None:
    critic = Critic()
    found = [d for t in _latency_stream(2, 3000, 1500, 0.4) for d in critic.observe(t)]
    step = [d for d in found if d.subject == "workflow:wf/step:fetch"]
    assert [(d.kind, d.severity) for d in step] == [
        (DiagnosisKind.LATENCY_DRIFT, DiagnosisSeverity.INFO)
    ]


def test_failure_spike_gives_failure_drift_and_error_cluster() -> None:
    critic = Critic()
    stream = list(_latency_stream(3, 1000, 10_000, 1.0, fail=0.01))
    rng = random.Random(3)
    for i in range(1000, 1200):
        failed = rng.random() < 0.4
        stream.append(
            _view(
                i,
                status="error" if failed else "ok",
                error_class="HttpStatusError" if failed else None,
                error_message="502 bad gateway" if failed else None,
                error_retryable=True if failed else None,
            )
        )
    found = [d for t in stream for d in critic.observe(t)]
    kinds = {(d.kind, d.subject) for d in found}
    assert (DiagnosisKind.FAILURE_DRIFT, "workflow:wf/step:fetch") in kinds
    assert (DiagnosisKind.ERROR_CLUSTER, "workflow:wf/step:fetch") in kinds
    failure = next(d for d in found if d.kind == DiagnosisKind.FAILURE_DRIFT)
    assert failure.severity == DiagnosisSeverity.CRITICAL
    assert failure.error_class == "HttpStatusError"
    assert failure.metrics["rate_before"] < 0.05 < 0.2 < failure.metrics["rate_after"]
    cluster = next(d for d in found if d.kind == DiagnosisKind.ERROR_CLUSTER)
    assert cluster.error_class == "HttpStatusError"
    messages = [m["message"] for m in json.loads(cluster.evidence)["messages"]]
    assert "# bad gateway" in messages
    assert len([d for d in found if d.kind == DiagnosisKind.ERROR_CLUSTER]) == 1


def test_timeouts_drift_on_their_own_indicator() -> None:
    critic = Critic()
    stream = [_view(i) for i in range(600)]
    stream += [_view(i, status="timeout" if i % 3 == 0 else "ok") for i in range(600, 800)]
    found = [d for t in stream for d in critic.observe(t)]
    assert (DiagnosisKind.TIMEOUT_DRIFT, "workflow:wf/step:fetch") in {
        (d.kind, d.subject) for d in found
    }


def test_quality_drift_on_quality_score() -> None:
    rng = random.Random(8)
    critic = Critic()
    stream = [
        _view(
            i,
            metrics={"quality_score": min(1.0, max(0.0, rng.gauss(0.9 if i < 800 else 0.6, 0.05)))},
        )
        for i in range(1000)
    ]
    found = [d for t in stream for d in critic.observe(t)]
    quality = [d for d in found if d.kind == DiagnosisKind.QUALITY_DRIFT]
    assert len(quality) == 1
    assert quality[0].severity == DiagnosisSeverity.WARNING
    assert quality[0].metrics["mean_before"] > 0.85 > 0.7 > quality[0].metrics["mean_after"]


def test_peoples_feedback_drifts_on_its_own_detector() -> None:
    # Feedback on whole runs (POST /v1/runs/{id}/feedback, no step): a trace of node
    # "feedback", status skipped. Its scores drop from ~0.9 to ~0.5 at the 300th feedback.
    rng = random.Random(4)
    critic = Critic()
    found = []
    for i in range(400):
        score = min(1.0, max(0.0, rng.gauss(0.9 if i < 300 else 0.5, 0.1)))
        feedback = _view(
            i,
            node="feedback",
            node_version="1",
            step_id="",
            status="skipped",
            latency_ms=0,
            metrics={"quality_score": score},
        )
        found += [(i, d) for d in critic.observe(feedback)]
    assert [d.kind for _, d in found] == [DiagnosisKind.QUALITY_DRIFT]
    at, diagnosis = found[0]
    assert 300 <= at < 340
    assert diagnosis.subject == "workflow:wf"
    assert "people's feedback on runs of workflow wf" in diagnosis.explanation
    # A feedback without a score, and the skipped steps of runs, are ignored.
    assert critic.observe(_view(1, node="feedback", step_id="", status="skipped")) == []
    assert critic.observe(_view(2, status="skipped")) == []


def test_repeated_inputs_diagnosis() -> None:
    critic = Critic()
    found = [d for i in range(300) for d in critic.observe(_view(i, inputs_hash=f"h{i % 20}"))]
    rep = [d for d in found if d.kind == DiagnosisKind.REPEATED_INPUTS]
    assert len(rep) == 1 and rep[0].severity == DiagnosisSeverity.INFO
    assert rep[0].metrics["repeat_share"] >= 0.3
    # Retries and cache hits do not count as repeats.
    critic = Critic()
    assert not [
        d
        for i in range(300)
        for d in critic.observe(
            _view(i, inputs_hash="same", retry_count=1 if i % 2 else 0, cache_hit=not i % 2)
        )
    ]


def _run(
    critic: Critic, run: int, spans: dict[str, tuple[int, int]], tokens: int = 0
) -> list[Diagnosis]:
    out = []
    base = T0 + run * 10_000
    for step, (start, end) in spans.items():
        out += critic.observe(
            _view(
                run,
                run_id=f"run{run}",
                step_id=step,
                start_ms=base + start,
                end_ms=base + end,
                latency_ms=end - start,
                cost_tokens=tokens or None,
            )
        )
    return out


def test_bottleneck_by_critical_path_share() -> None:
    critic = Critic(replace(CriticConfig(), runs=replace(CriticConfig().runs, idle_close_ms=5000)))
    found: list[Diagnosis] = []
    for run in range(40):
        found += _run(critic, run, {"a": (0, 50), "slow": (50, 900), "c": (900, 950)})
    found += critic.flush()
    bottleneck = [d for d in found if d.kind == DiagnosisKind.BOTTLENECK]
    assert [d.subject for d in bottleneck] == ["workflow:wf/step:slow"]
    assert bottleneck[0].metrics["share"] == pytest.approx(850 / 950, rel=0.01)
    assert bottleneck[0].severity == DiagnosisSeverity.WARNING


def test_cost_per_run_drift() -> None:
    rng = random.Random(6)
    critic = Critic(replace(CriticConfig(), runs=replace(CriticConfig().runs, idle_close_ms=5000)))
    found: list[Diagnosis] = []
    for run in range(400):
        tokens = round(rng.gauss(1000 if run < 300 else 2500, 50))
        found += _run(critic, run, {"a": (0, 50), "b": (50, 100)}, tokens)
    cost = [d for d in found if d.kind == DiagnosisKind.COST]
    assert len(cost) == 1 and cost[0].subject == "workflow:wf"
    # Two steps of 1000 tokens each, then of 2500.
    assert cost[0].metrics["cost_before"] == pytest.approx(2000, rel=0.05)
    assert cost[0].metrics["cost_after"] > 1.5 * cost[0].metrics["cost_before"]
    assert json.loads(cost[0].evidence)["share_by_step"] == {"a": 0.5, "b": 0.5}


def test_independent_steps_that_ran_in_sequence() -> None:
    definition = WorkflowDefinition.from_json_dict(
        {
            "id": "wf",
            "steps": [
                {"id": "a", "node": "transform@^1", "params": {"x": 1}},
                {"id": "b", "node": "transform@^1", "params": {"y": 2}, "needs": ["a"]},
                {
                    "id": "c",
                    "node": "transform@^1",
                    "params": {"z": "{{ steps.b.output }}"},
                    "needs": ["b"],
                },
            ],
        }
    )
    pairs = independent_pairs(definition)
    assert ("a", "b") in pairs and ("b", "c") not in pairs
    critic = Critic(
        replace(CriticConfig(), runs=replace(CriticConfig().runs, idle_close_ms=5000)),
        dependencies=lambda wf, version: pairs,
    )
    found: list[Diagnosis] = []
    for run in range(20):
        found += _run(critic, run, {"a": (0, 150), "b": (160, 310), "c": (320, 330)})
    seq = {
        tuple(json.loads(d.evidence)["steps"]): d
        for d in found
        if d.kind == DiagnosisKind.SEQUENTIAL_INDEPENDENT
    }
    # c reads b's output: (b, c) stays ordered; a shares no data with b nor c.
    assert set(seq) == {("a", "b"), ("a", "c")}
    assert seq[("a", "b")].metrics["saving_ms"] == 150
    assert seq[("a", "b")].subject == "workflow:wf/step:b"
    # Without the definition (unknown version) nothing is claimed.
    blind = Critic(dependencies=lambda wf, version: None)
    assert not [
        d
        for run in range(20)
        for d in _run(blind, run, {"a": (0, 150), "b": (160, 310)})
        if d.kind == DiagnosisKind.SEQUENTIAL_INDEPENDENT
    ]


def _node_sharing_stream(seed: int) -> Iterator[TraceView]:
    """Step `a` alone on node n@1 (mirrored): latency x1.7 at 600, failures 30% at 1,200; at
    2,000 workflow `other`'s step `b` joins the node (the pairing breaks); latency x1.7 again
    at 3,000, timeouts at 3,500; step `c` moves from n.c@1 to n.c@2 at 1,500."""
    rng = random.Random(seed)
    for i in range(4000):
        a = i % 2 == 0
        joined = i >= 2000 and i % 4 == 1
        step = "a" if a else ("b" if joined else "c")
        node = "n" if a or joined else "n.c"
        version = "2" if node == "n.c" and i >= 1500 else "1"
        median = 100.0 * (1.7 if a and i >= 600 else 1.0) * (1.7 if i >= 3000 else 1.0)
        latency = max(1, round(math.exp(rng.gauss(math.log(median), 0.25))))
        r = rng.random()
        fail = 0.3 if a and i >= 1200 else 0.01
        status = "error" if r < fail else "timeout" if i >= 3500 and r < fail + 0.3 else "ok"
        yield _view(
            i,
            workflow_id="other" if joined else "wf",
            step_id=step,
            node=node,
            node_version=version,
            latency_ms=latency,
            end_ms=T0 + i * 100 + latency,
            status=status,
            error_class=None if status == "ok" else "Boom",
            error_message=None if status == "ok" else "boom",
            error_retryable=None if status == "ok" else False,
        )


@pytest.mark.parametrize("seed", [1, 2])
def test_a_node_used_by_one_step_mirrors_it_with_the_same_diagnoses(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diagnoses(mirror: bool) -> list[dict[str, object]]:
        monkeypatch.setattr(Critic, "MIRROR_NODES", mirror)
        critic = Critic()
        out = []
        for i, view in enumerate(_node_sharing_stream(seed)):
            out += [d.model_dump(exclude={"occurred_at"}) for d in critic.observe(view)]
            if mirror and i == 1999:
                # Until the second step came, the node's detectors were not run at all.
                assert critic._nodes[("n", "1")].owner is not None
                assert critic._nodes[("n", "1")].latency.seen == 0
        assert critic._nodes[("n", "1")].owner is None
        return out

    mirrored, separate = diagnoses(True), diagnoses(False)
    assert mirrored == separate
    subjects = {(d["kind"], d["subject"]) for d in mirrored}
    # Node drifts both while mirrored (before 2,000) and after the pairing broke.
    assert (DiagnosisKind.LATENCY_DRIFT, "node:n@1") in subjects
    assert (DiagnosisKind.FAILURE_DRIFT, "node:n@1") in subjects
    assert (DiagnosisKind.TIMEOUT_DRIFT, "node:n@1") in subjects
    late = [
        d
        for d in mirrored
        if d["subject"] == "node:n@1"
        and int(str(d["diagnosis_id"]).rsplit("/", 1)[1]) > T0 + 2000 * 100
    ]
    assert late, "no node diagnosis after the second step joined"


def test_retry_decisions_cancelled_and_skipped_are_ignored() -> None:
    critic = Critic()
    for i in range(500):
        critic.observe(_view(i, is_retry_decision=True, status="skipped", latency_ms=5000))
        critic.observe(_view(i, status="cancelled"))
    assert critic.stats.ignored == 1000
    assert not critic._steps


# -- views ----------------------------------------------------------------------------------------


def _trace(**over: object) -> Trace:
    fields: dict[str, object] = {
        "run_id": "r1",
        "seq": 3,
        "workflow_id": "wf",
        "workflow_version": 2,
        "step_id": "fetch",
        "node": "http.request",
        "node_version": "1.0.0",
        "invocation_id": "i1",
        "status": TraceStatus.ERROR,
        "start": datetime(2026, 12, 6, 9, 0, tzinfo=UTC),
        "end": datetime(2026, 12, 6, 9, 0, 1, tzinfo=UTC),
        "latency_ms": 1000,
        "inputs_hash": "abc",
        "metrics": {"quality_score": 0.5},
        "error": ErrorInfo(error_class="Boom", message="boom 42", retryable=False),
        "retry_count": 1,
        "cache_hit": False,
        "cost_tokens": 12,
        "context": {"source": "worker"},
    }
    fields.update(over)
    return Trace(**fields)  # type: ignore[arg-type]


def test_view_from_json_matches_the_model() -> None:
    trace = _trace()
    assert view_from_json(encode_trace(trace)) == view_from_trace(trace)
    retry = _trace(context={"kind": "retry"}, status=TraceStatus.SKIPPED, error=None)
    assert view_from_json(encode_trace(retry)).is_retry_decision


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{nope", "<root>: not a UTF-8 JSON object"),
        (b"[1]", "<root>: expected a JSON object"),
        (
            json.dumps({**json.loads(encode_trace(_trace())), "latency_ms": "5"}).encode(),
            "latency_ms: expected int",
        ),
        (
            json.dumps({**json.loads(encode_trace(_trace())), "cache_hit": 1}).encode(),
            "cache_hit: expected bool",
        ),
        (
            json.dumps({**json.loads(encode_trace(_trace())), "retry_count": True}).encode(),
            "retry_count: expected int",
        ),
        (
            json.dumps({**json.loads(encode_trace(_trace())), "error": "x"}).encode(),
            "error: expected an object",
        ),
    ],
)
def test_view_from_json_names_the_bad_field(payload: bytes, message: str) -> None:
    with pytest.raises(TraceViewError, match=message.replace("(", r"\(")):
        view_from_json(payload)


def _variant(**over: object) -> bytes:
    return json.dumps({**json.loads(encode_trace(_trace())), **over}).encode()


@pytest.mark.parametrize(
    "payload",
    [
        encode_trace(_trace()),
        encode_trace(_trace(error=None, metrics={}, context={}, status=TraceStatus.OK)),
        encode_trace(_trace(context={"kind": "retry"}, status=TraceStatus.SKIPPED, error=None)),
        _variant(error={}),
        _variant(error={"error_class": 5, "message": None, "retryable": "yes"}),
        _variant(metrics={"a": True, "b": 2, "c": 1.5, "d": "x"}),
        _variant(metrics=[], context=0),
        _variant(context=[1], cost_tokens=None),
        _variant(workflow_version=2**70),
        _variant(unknown={"nested": [1, 2]}),
        _variant(metrics={"q": float("nan")}),  # json.loads reads NaN; msgspec defers
        b'{"run_id": "\\ud800"}',
    ],
)
def test_view_from_json_fast_path_reads_like_the_reference(payload: bytes) -> None:
    # The msgspec fast path must accept exactly what the reference (json.loads and checks)
    # accepts, with the same view, and defer to it for the rest (its error names the field).
    try:
        expected: TraceView | str = _view_reference(payload)
    except TraceViewError as exc:
        expected = str(exc)
    try:
        got: TraceView | str = view_from_json(payload)
    except TraceViewError as exc:
        got = str(exc)
    assert got == expected


# -- runtime pieces without I/O --------------------------------------------------------------------


def test_tracked_store_reports_what_changed_once() -> None:
    store = TrackedStore({"old": {"last_ms": 1}})
    episodes = Episodes(store, rearm_after_ms=1000)
    assert episodes.fire("k", 0, "d0")
    assert not episodes.fire("k", 50, "d1")  # extended by less than a tenth: no write
    assert store.take_dirty() == [
        ("k", {"opened_ms": 0, "last_ms": 0, "fires": 1, "diagnosis_id": "d0"})
    ]
    assert store.take_dirty() == []
    assert not episodes.fire("k", 500, "d2")  # moved by half the re-arm time: written
    assert [key for key, _ in store.take_dirty()] == ["k"]
    del store["old"]
    assert store.take_dirty() == [("old", None)]  # a tombstone on the compacted topic


def test_an_unknown_engine_is_refused_with_the_field_name() -> None:
    with pytest.raises(CriticEngineError, match="engine: expected one of \\['faust', 'kafka'\\]"):
        CriticProcessor(Settings(), engine="spark", schema=None)


def test_anomaly_diagnosis_names_the_odd_runs() -> None:
    rng = random.Random(12)
    critic = Critic()
    stream = list(_latency_stream(12, 3000, 10_000, 1.0))
    for i in range(3000, 3060):
        odd = i % 6 == 0
        latency = 30_000 if odd else round(math.exp(rng.gauss(math.log(200), 0.25)))
        stream.append(
            _view(
                i,
                latency_ms=latency,
                end_ms=T0 + i * 100 + latency,
                retry_count=2 if odd else 0,
                status="error" if odd else "ok",
                error_class="Boom" if odd else None,
            )
        )
    found = [d for t in stream for d in critic.observe(t)]
    assert not [
        d for d in found if d.kind == DiagnosisKind.ANOMALY and int(d.example_run_ids[0][1:]) < 3000
    ]
    anomaly = [d for d in found if d.kind == DiagnosisKind.ANOMALY]
    assert len(anomaly) == 1
    assert anomaly[0].detector == "half_space_trees"
    assert anomaly[0].metrics["anomalous"] >= 4
    odd_runs = {f"r{i}" for i in range(3000, 3060) if i % 6 == 0}
    assert set(anomaly[0].example_run_ids) <= odd_runs


def test_the_step_carrying_most_of_the_tokens_is_a_cost_finding() -> None:
    """A workflow that always asked the expensive model has no cost drift; the critic still
    says which step its tokens go to (``cost`` about the step, detector ``cost_share``), once
    per episode."""
    critic = Critic(replace(CriticConfig(), runs=replace(CriticConfig().runs, idle_close_ms=5000)))
    found: list[Diagnosis] = []
    for run in range(80):
        # _run puts the tokens on every span: two equal spenders, none dominant.
        found += _run(critic, run, {"ask": (0, 50), "check": (50, 60)}, 210)
    assert not [d for d in found if d.kind == DiagnosisKind.COST]

    critic = Critic(replace(CriticConfig(), runs=replace(CriticConfig().runs, idle_close_ms=5000)))

    def runs(first: int, last: int, version: Callable[[int], int]) -> list[Diagnosis]:
        out: list[Diagnosis] = []
        for run in range(first, last):
            base = T0 + run * 10_000
            for step, (start, end), tokens in (("ask", (0, 50), 210), ("check", (50, 60), None)):
                out += critic.observe(
                    _view(
                        run,
                        run_id=f"run{run}",
                        workflow_version=version(run),
                        step_id=step,
                        start_ms=base + start,
                        end_ms=base + end,
                        latency_ms=end - start,
                        cost_tokens=tokens,
                    )
                )
        return [d for d in out if d.kind == DiagnosisKind.COST]

    shares = runs(0, 80, lambda _: 1)
    assert [(d.subject, d.detector, d.step_id) for d in shares] == [
        ("workflow:wf/step:ask", "cost_share", "ask")
    ]
    assert shares[0].metrics["share"] == 1.0
    assert shares[0].metrics["tokens_per_run"] == 210.0
    assert shares[0].metrics["runs"] == CriticConfig().runs.cost_min_runs
    evidence = json.loads(shares[0].evidence)
    assert evidence["share_by_step"] == {"ask": 1.0} and evidence["workflow_version"] == 1
    # A canary mixes two versions: nothing, and the episode ends; once the runs are all of
    # the version new runs get (kept, or rolled back), it is a finding about that version.
    assert runs(80, 120, lambda run: 1 + run % 2) == []
    # once the whole window (64 runs) is of the version new runs get
    assert runs(120, 120 + 63, lambda _: 2) == []
    again = runs(183, 200, lambda _: 2)
    assert [json.loads(d.evidence)["workflow_version"] for d in again] == [2]
    assert runs(200, 240, lambda run: 2 + run % 2) + runs(240, 320, lambda _: 2) != []


def test_whole_millisecond_jitter_of_a_fast_step_is_no_latency_drift() -> None:
    """A 1 ms step measured 1, 2 or 3 ms (traces have whole milliseconds) is not x2 slower."""
    rng = random.Random(3)
    critic = Critic()
    found: list[Diagnosis] = []
    for i in range(600):
        latency = 1 if i < 300 else rng.choice([1, 2, 3, 4])
        found += critic.observe(_view(i, latency_ms=latency, end_ms=T0 + i * 100 + latency))
    assert not [d for d in found if d.kind == DiagnosisKind.LATENCY_DRIFT]
    # a real slowdown of the same step still is one
    for i in range(600, 700):
        found += critic.observe(_view(i, latency_ms=40, end_ms=T0 + i * 100 + 40))
    assert [d for d in found if d.kind == DiagnosisKind.LATENCY_DRIFT]
