"""Scenario 1 of ``make bench-loop``: how fast the critic sees a latency shift, how rarely it
cries wolf, and what it costs per trace.

``python -m benchmarks.loop.drift [--quick] [--seeds 1 2 3] [--out path.json]``; the loop
harness calls :func:`run`.

**Streams.** One workflow step whose attempt latencies are lognormal: median 200 ms, sigma
0.25 on the natural-log scale (p95/p50 = 1.51; ADR 0031 says why), 2% failures. At trace
``CHANGE_AT`` (1,000; the detectors are long past their warm-up) the median is multiplied by
1.5 (or 2). Each seed of ``seeds`` gives ``reps`` independent streams (``random.Random`` seeded
with ``(seed, rep)``), so medians and p95s are over ``len(seeds) * reps`` >= 20 streams.

**Detection delay** (traces): index of the first trace at which the critic emits a
``latency_drift`` (direction up) for the step, minus ``CHANGE_AT``, plus one (a detection on
the first shifted trace is a delay of 1). It runs the whole critic (:class:`Critic.observe` on
each trace: every detector, the episode guard, diagnosis building), exactly as the runtime
does. A stream with no detection within ``MAX_AFTER`` traces counts as ``MAX_AFTER``.

**False alarms** per 100,000 stable traces (no shift):

- ``false_alarms_per_100k``: drifts the critic's latency detector reports (ADWIN detections
  that pass the minimum-effect gate: what becomes a diagnosis when no episode is open), over
  ``len(seeds) * fa_reps`` streams of 100,000 traces, through :class:`MeanDrift` with the
  critic's own tuning (the same object the critic holds per subject; the full critic on 2M
  traces would take a minute for the same number);
- ``raw_adwin_detections_per_100k``: every ADWIN detection, gate or not;
- ``critic_diagnoses_per_100k_stable``: every diagnosis of any kind the whole critic emits on
  stable streams (full critic, fewer traces).

**Cost** (``critic_us_per_trace``, goal <= 25): the **end-to-end** CPU time per trace of the
default runtime (the confluent-kafka engine, :func:`critic_e2e`): the critic's processor on the
local broker drains a backlog of traces produced beforehand (a mixed stream: 4 steps on 3
nodes, 2% failures, tokens on one step, quality scores on another, repeated inputs, runs
closing); CPU time (``time.process_time`` of the whole process: Kafka client threads, JSON
decoding, the detectors, producing and committing; this machine is shared, so wall time would
measure the neighbours) over the traces consumed. The median of ``E2E_RUNS`` runs (each on
fresh topics; every run in ``critic_us_per_trace_runs``); ``critic_us_per_trace_wall`` is the
median wall time per trace (1 / throughput).

The parts, on the same stream without Kafka (median of ``COST_RUNS`` runs):
``critic_detectors_us_per_trace`` is ``Critic.observe`` alone (every detector, the episode
guard, run analysis), ``critic_view_from_json_us`` the JSON decoding the runtime does,
``critic_decode_us_per_trace`` the sum of both, ``trace_pydantic_decode_us`` the strict
``decode_trace`` the runtime avoids. ``critic_e2e_*`` repeat the default engine's median run
(traces/s, wall and CPU us per trace) and ``critic_e2e_faust_*`` are the faust engine's (one
run). ``load_avg_1m`` is the machine's load average before and after the cost measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from processors.critic.config import CriticConfig
from processors.critic.critic import Critic, step_subject
from processors.critic.detectors import MeanDrift
from processors.critic.view import TraceView, view_from_json
from schemas.models import DiagnosisKind, ErrorInfo, Trace, TraceStatus
from schemas.trace_json import decode_trace, encode_trace

__all__ = ["run"]

SIGMA = 0.25
MEDIAN_MS = 200.0
CHANGE_AT = 1_000
MAX_AFTER = 1_000
STABLE = 100_000
T0_MS = 1_780_000_000_000
GAP_MS = 50
"""Event time between two attempts of the step (20 attempts/s)."""

COST_RUNS = 3
E2E_RUNS = 3
"""Runs of the cost measurements (>= 2: the machine is shared); the median is reported."""

GOALS = {"delay_median": 16, "delay_p95": 48, "false_alarms_per_100k": 1.0, "us_per_trace": 25.0}


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _stream(
    rng: random.Random, n: int, factor: float, change_at: int, sigma: float
) -> Iterator[TraceView]:
    mu = math.log(MEDIAN_MS)
    shifted = mu + math.log(factor)
    for i in range(n):
        latency = max(1, round(math.exp(rng.gauss(shifted if i >= change_at else mu, sigma))))
        failed = rng.random() < 0.02
        start = T0_MS + i * GAP_MS
        yield TraceView(
            run_id=f"run-{i}",
            workflow_id="bench",
            workflow_version=1,
            step_id="fetch",
            node="http.request",
            node_version="1.4.0",
            status="error" if failed else "ok",
            start_ms=start,
            end_ms=start + latency,
            latency_ms=latency,
            inputs_hash=f"{rng.getrandbits(64):016x}",
            error_class="HttpStatusError" if failed else None,
            error_message="503 from upstream" if failed else None,
            error_retryable=True if failed else None,
        )


def detection_delay(seed: int, rep: int, factor: float, sigma: float = SIGMA) -> int:
    rng = random.Random(f"{seed}-{rep}-{factor}-{sigma}")
    critic = Critic()
    subject = step_subject("bench", "fetch")
    for i, trace in enumerate(_stream(rng, CHANGE_AT + MAX_AFTER, factor, CHANGE_AT, sigma)):
        for d in critic.observe(trace):
            if (
                d.kind == DiagnosisKind.LATENCY_DRIFT
                and d.subject == subject
                and i >= CHANGE_AT
                and d.metrics["ratio"] > 1
            ):
                return i - CHANGE_AT + 1
    return MAX_AFTER


def false_alarms(seed: int, rep: int, sigma: float = SIGMA) -> tuple[int, int]:
    """(reported drifts, raw ADWIN detections) on STABLE stable ln-latencies."""
    rng = random.Random(f"fa-{seed}-{rep}-{sigma}")
    detector = MeanDrift(CriticConfig().latency)
    mu = math.log(MEDIAN_MS)
    reported = 0
    gauss = rng.gauss
    for _ in range(STABLE):
        # The critic feeds ln(latency in whole ms), as here.
        if detector.update(math.log(max(1, round(math.exp(gauss(mu, sigma)))))) is not None:
            reported += 1
    return reported, detector.detections


def critic_stable_diagnoses(seed: int, n: int) -> dict[str, int]:
    rng = random.Random(f"stable-{seed}")
    critic = Critic()
    kinds: dict[str, int] = {}
    for trace in _stream(rng, n, 1.0, n, SIGMA):
        for d in critic.observe(trace):
            kinds[d.kind.value] = kinds.get(d.kind.value, 0) + 1
    for d in critic.flush():
        kinds[d.kind.value] = kinds.get(d.kind.value, 0) + 1
    return kinds


def _mixed(n: int, seed: int) -> list[TraceView]:
    """4 steps on 3 nodes; tokens on `summarize`, quality on `check`; `lookup` repeats inputs."""
    rng = random.Random(f"mixed-{seed}")
    steps = [
        ("fetch", "http.request", 120.0),
        ("lookup", "http.request", 40.0),
        ("summarize", "openai.chat", 900.0),
        ("check", "transform", 5.0),
    ]
    out: list[TraceView] = []
    for i in range(n):
        run = i // len(steps)
        step, node, median = steps[i % len(steps)]
        latency = max(1, round(math.exp(rng.gauss(math.log(median), 0.3))))
        failed = rng.random() < 0.02
        start = T0_MS + run * 2_000 + (i % len(steps)) * 400
        out.append(
            TraceView(
                run_id=f"run-{run}",
                workflow_id="mixed",
                workflow_version=1,
                step_id=step,
                node=node,
                node_version="1.0.0",
                status="error" if failed else "ok",
                start_ms=start,
                end_ms=start + latency,
                latency_ms=latency,
                inputs_hash=f"{rng.randrange(50) if step == 'lookup' else rng.getrandbits(64):x}",
                cache_hit=False,
                cost_tokens=rng.randrange(300, 900) if step == "summarize" else None,
                error_class="HttpStatusError" if failed else None,
                error_message="503" if failed else None,
                error_retryable=True if failed else None,
                metrics={"quality_score": rng.uniform(0.7, 1.0)} if step == "check" else {},
            )
        )
    return out


def _to_trace(v: TraceView) -> Trace:
    from datetime import UTC, datetime

    return Trace(
        run_id=v.run_id,
        seq=1,
        workflow_id=v.workflow_id,
        workflow_version=v.workflow_version,
        step_id=v.step_id,
        node=v.node,
        node_version=v.node_version,
        invocation_id="inv",
        status=TraceStatus(v.status),
        start=datetime.fromtimestamp(v.start_ms / 1000, UTC),
        end=datetime.fromtimestamp(v.end_ms / 1000, UTC),
        latency_ms=v.latency_ms,
        inputs_hash=v.inputs_hash,
        metrics=v.metrics,
        error=(
            ErrorInfo(error_class=v.error_class, message=v.error_message or "", retryable=True)
            if v.error_class
            else None
        ),
        retry_count=v.retry_count,
        cache_hit=v.cache_hit,
        cost_tokens=v.cost_tokens,
    )


def cost(n: int, seed: int, runs: int = COST_RUNS) -> dict[str, Any]:
    """The detectors' and the decoder's CPU per trace, without Kafka (median of ``runs``)."""
    views = _mixed(n, seed)
    payloads = [encode_trace(_to_trace(v)) for v in views]
    detectors, walls, decoding = [], [], []
    for _ in range(runs):
        critic = Critic()
        t = time.process_time()
        wall = time.perf_counter()
        for v in views:
            critic.observe(v)
        detectors.append((time.process_time() - t) / n * 1e6)
        walls.append((time.perf_counter() - wall) / n * 1e6)
        t = time.process_time()
        for p in payloads:
            view_from_json(p)
        decoding.append((time.process_time() - t) / n * 1e6)
    t = time.process_time()
    for p in payloads[: n // 4]:
        decode_trace(p)
    pydantic_us = (time.process_time() - t) / (n // 4) * 1e6
    detectors_us, view_us = statistics.median(detectors), statistics.median(decoding)
    return {
        "critic_detectors_us_per_trace": round(detectors_us, 2),
        "critic_detectors_us_per_trace_runs": [round(x, 2) for x in detectors],
        "critic_detectors_us_per_trace_wall": round(statistics.median(walls), 2),
        "critic_view_from_json_us": round(view_us, 2),
        "critic_decode_us_per_trace": round(detectors_us + view_us, 2),
        "trace_pydantic_decode_us": round(pydantic_us, 2),
    }


def e2e_cost(n: int, seed: int, runs: int = E2E_RUNS) -> dict[str, Any]:
    """``critic_us_per_trace``: the default runtime's end-to-end CPU per trace, median of
    ``runs`` runs of :func:`critic_e2e` (fresh topics each)."""
    results = [critic_e2e(n, seed, "kafka") for _ in range(runs)]
    results.sort(key=lambda r: r["critic_e2e_cpu_us_per_trace"])
    median = results[(len(results) - 1) // 2]
    return median | {
        "critic_us_per_trace": median["critic_e2e_cpu_us_per_trace"],
        "critic_us_per_trace_runs": [r["critic_e2e_cpu_us_per_trace"] for r in results],
        "critic_us_per_trace_wall": median["critic_e2e_us_per_trace"],
        "critic_e2e_runs": len(results),
    }


def critic_e2e(n: int, seed: int, engine: str = "kafka") -> dict[str, float]:
    """The critic's processor (``engine``) on the real broker: ``n`` traces produced first (a
    backlog), then the critic started; throughput = traces / (last consumed - first consumed)."""
    import threading
    import uuid

    from benchmarks.cleanup import delete_prefix_topics
    from foundation.settings import get_settings
    from processors.critic.runtime import CriticProcessor
    from streams.admin import ensure_topics
    from streams.producer import Producer
    from streams.topics import TopicCatalog

    settings = get_settings().model_copy(
        update={"topic_prefix": f"bench-critic-{uuid.uuid4().hex[:8]}"}
    )
    try:
        catalog = TopicCatalog.from_settings(settings)
        ensure_topics(catalog, [catalog.traces, catalog.diagnoses], settings=settings)
        payloads = [(v.node, encode_trace(_to_trace(v))) for v in _mixed(n, seed)]
        with Producer(settings, client_id="bench-critic") as producer:
            for key, value in payloads:
                producer.send(catalog.traces.topic, key, value)
        processor = CriticProcessor(settings, schema=None, engine=engine)
        stop = threading.Event()
        thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
        started = time.perf_counter()
        cpu0 = time.process_time()
        thread.start()
        first: float | None = None
        deadline = started + 300
        while processor.stats.consumed < n and time.perf_counter() < deadline:
            if first is None and processor.stats.consumed > 0:
                first, first_count, cpu_first = (
                    time.perf_counter(),
                    processor.stats.consumed,
                    time.process_time(),
                )
            stop.wait(0.005)
        done, cpu_done = time.perf_counter(), time.process_time()
        consumed = processor.stats.consumed
        stop.set()
        processor.interrupt()
        thread.join(60)
        if first is None or consumed < n:
            raise RuntimeError(f"critic e2e: consumed {consumed} of {n} traces within 300 s")
        per_s = (consumed - first_count) / max(done - first, 1e-9)
        tag = "critic_e2e" if engine == "kafka" else f"critic_e2e_{engine}"
        return {
            f"{tag}_traces": n,
            f"{tag}_traces_per_s": round(per_s, 1),
            f"{tag}_us_per_trace": round(1e6 / per_s, 1),
            f"{tag}_cpu_us_per_trace": round(
                (cpu_done - cpu_first) / (consumed - first_count) * 1e6, 1
            ),
            f"{tag}_startup_s": round(first - started, 2),
            f"{tag}_cpu_s_total": round(cpu_done - cpu0, 2),
        }
    finally:
        delete_prefix_topics(settings)


def run(seeds: list[int], quick: bool, *, with_kafka: bool = True) -> dict[str, Any]:
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    reps = max(1, math.ceil((20 if quick else 100) / len(seeds)))
    fa_reps = max(1, math.ceil((20 if quick else 50) / len(seeds)))
    started = time.perf_counter()
    result: dict[str, Any] = {
        "scenario": "latency_shift",
        "sigma": SIGMA,
        "median_ms": MEDIAN_MS,
        "change_at": CHANGE_AT,
        "streams": len(seeds) * reps,
        "tuning": {
            "delta": CriticConfig().latency.delta,
            "scale": CriticConfig().latency.scale,
            "clock": CriticConfig().latency.clock,
            "grace_period": CriticConfig().latency.grace_period,
            "min_effect_ratio": round(math.exp(CriticConfig().latency.min_effect), 4),
        },
    }
    # Per seed too (the loop harness summarises ``per_seed`` over the seeds).
    per_seed: dict[str, dict[str, float]] = {str(s): {} for s in seeds}
    for factor in (1.5, 2.0):
        tag = f"x{factor:g}".replace(".", "_")
        by_seed = {s: [detection_delay(s, r, factor) for r in range(reps)] for s in seeds}
        delays = [d for values in by_seed.values() for d in values]
        result[f"delay_{tag}_median"] = statistics.median(delays)
        result[f"delay_{tag}_p95"] = _p95(delays)
        result[f"delay_{tag}_missed"] = sum(1 for d in delays if d >= MAX_AFTER)
        for s, values in by_seed.items():
            per_seed[str(s)][f"delay_{tag}_median"] = statistics.median(values)
            per_seed[str(s)][f"delay_{tag}_p95"] = _p95(values)
    reported = raw = 0
    for s in seeds:
        seed_reported = 0
        for r in range(fa_reps):
            a, b = false_alarms(s, r)
            reported += a
            seed_reported += a
            raw += b
        per_seed[str(s)]["false_alarms_per_100k"] = seed_reported / fa_reps
    result["per_seed"] = per_seed
    streams = len(seeds) * fa_reps
    result["stable_traces"] = streams * STABLE
    result["false_alarms_per_100k"] = reported / streams
    result["raw_adwin_detections_per_100k"] = raw / streams
    stable_n = 20_000 if quick else STABLE
    kinds = critic_stable_diagnoses(seeds[0], stable_n)
    result["critic_diagnoses_per_100k_stable"] = round(sum(kinds.values()) * STABLE / stable_n, 2)
    result["critic_diagnoses_stable_by_kind"] = kinds
    if not quick:
        # How the delay grows with the noise: the goals hold up to sigma ~0.3 (ADR 0031).
        sweep: dict[str, Any] = {}
        for sigma in (0.3, 0.35, 0.5):
            delays = [detection_delay(s, r, 1.5, sigma) for s in seeds for r in range(reps)]
            fa = [false_alarms(s, r, sigma)[0] for s in seeds for r in range(max(1, fa_reps // 5))]
            sweep[f"sigma_{sigma:g}"] = {
                "delay_x1_5_median": statistics.median(delays),
                "delay_x1_5_p95": _p95(delays),
                "false_alarms_per_100k": sum(fa) / len(fa),
            }
        result["sigma_sweep"] = sweep
    n = 20_000 if quick else 100_000
    load_before = os.getloadavg()[0]
    result |= cost(n, seeds[0], 2 if quick else COST_RUNS)
    result["critic_us_per_trace"] = None  # measured end to end below (needs the broker)
    if with_kafka:
        result |= e2e_cost(n, seeds[0], 2 if quick else E2E_RUNS)
        result |= critic_e2e(n, seeds[0], "faust")
    result["load_avg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}

    def goal(name: str, target: str, value: float | None, met: bool | None) -> dict[str, Any]:
        return {"name": name, "target": target, "value": value, "met": met}

    e2e = result["critic_us_per_trace"]
    result["goals"] = [
        goal(
            "delay_x1_5_median_traces",
            f"<= {GOALS['delay_median']}",
            result["delay_x1_5_median"],
            result["delay_x1_5_median"] <= GOALS["delay_median"],
        ),
        goal(
            "delay_x1_5_p95_traces",
            f"<= {GOALS['delay_p95']}",
            result["delay_x1_5_p95"],
            result["delay_x1_5_p95"] <= GOALS["delay_p95"],
        ),
        goal(
            "false_alarms_per_100k",
            f"<= {GOALS['false_alarms_per_100k']:g}",
            result["false_alarms_per_100k"],
            result["false_alarms_per_100k"] <= GOALS["false_alarms_per_100k"],
        ),
        goal(
            "critic_us_per_trace (end to end, CPU: Kafka + decode + detectors)",
            f"<= {GOALS['us_per_trace']:g}",
            e2e,
            None if e2e is None else e2e <= GOALS["us_per_trace"],
        ),
        goal(
            "critic_detectors_us_per_trace (the detectors' share, CPU)",
            f"<= {GOALS['us_per_trace']:g}",
            result["critic_detectors_us_per_trace"],
            result["critic_detectors_us_per_trace"] <= GOALS["us_per_trace"],
        ),
    ]
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--no-kafka", action="store_true", help="skip the end-to-end processor measurement"
    )
    args = parser.parse_args()
    result = run(args.seeds, args.quick, with_kafka=not args.no_kafka)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
