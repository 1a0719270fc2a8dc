"""The historian's numbers (ADR 0034): embeddings per second of the shipped model, and on the
real Postgres + pgvector: diagnoses stored per second (embedding included), the latency of the
optimizer's lookup (``PostgresHistorian.similar``, k=5) over N stored diagnoses, and the HNSW
index's recall of the exact nearest neighbours.

``run(seeds, quick)`` is the loop benchmark's interface (``benchmarks/loop_bench.py``); alone:
``python -m benchmarks.loop.historian [--quick] [--seeds 1 2 3]`` prints the JSON. Each seed
builds its own synthetic diagnoses (kinds, workflows, steps, nodes, error messages from fixed
vocabularies) in its own Postgres schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from foundation.settings import Settings, get_settings
from processors.historian.context import diagnosis_context
from processors.historian.embedder import default_embedder, to_pgvector
from processors.historian.plans import diagnosis_plan
from processors.historian.postgres import PostgresHistorian
from processors.historian.queries import nearest
from processors.historian.ranking import candidates_for
from projections.postgres.migrations import apply_migrations
from schemas.models import Diagnosis, DiagnosisKind, DiagnosisSeverity

__all__ = ["run", "synthetic_diagnoses"]

_WORKFLOWS = ("orders", "quotes", "invoices", "newsletter", "onboarding", "payouts", "search")
_STEPS = ("fetch_price", "charge_card", "render", "summarise", "lookup_user", "send_mail", "score")
_NODES = ("http.request", "openai.chat", "transform", "sql.query", "email.send", "code.run")
_ERRORS = (
    ("HTTPStatusError", "503 Service Unavailable from the supplier API"),
    ("StepTimedOut", "no answer within 5 s"),
    ("RateLimited", "429 Too Many Requests"),
    ("ConnectionError", "connection reset by peer"),
    ("ValidationError", "output does not match the schema"),
)
_EXPLAIN = {
    DiagnosisKind.LATENCY_DRIFT: "{step} got slower: mean {a} ms -> {b} ms",
    DiagnosisKind.FAILURE_DRIFT: "{step} fails in {b}% of attempts (was {a}%)",
    DiagnosisKind.TIMEOUT_DRIFT: "{step} times out in {b}% of attempts (was {a}%)",
    DiagnosisKind.QUALITY_DRIFT: "answers of {step} score {b} (was {a})",
    DiagnosisKind.ANOMALY: "{step} took an unusual {b} ms",
    DiagnosisKind.ERROR_CLUSTER: "{step}: {b} failures with the same error",
    DiagnosisKind.BOTTLENECK: "{step} is {b}% of the critical path",
    DiagnosisKind.REPEATED_INPUTS: "{step} ran {b} times on identical inputs",
    DiagnosisKind.SEQUENTIAL_INDEPENDENT: "{step} waits for a step it does not need ({b} ms)",
    DiagnosisKind.COST: "a run costs {b} cents, {step} most of it",
}


def synthetic_diagnoses(seed: int, count: int) -> list[Diagnosis]:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        kind = rng.choice(list(DiagnosisKind))
        workflow, step, node = rng.choice(_WORKFLOWS), rng.choice(_STEPS), rng.choice(_NODES)
        error_class, message = rng.choice(_ERRORS)
        failing = kind in (DiagnosisKind.FAILURE_DRIFT, DiagnosisKind.ERROR_CLUSTER)
        a, b = rng.randint(1, 200), rng.randint(200, 900)
        subject = f"workflow:{workflow}/step:{step}"
        detected = start + timedelta(seconds=n)
        out.append(
            Diagnosis(
                diagnosis_id=f"{kind.value}/{subject}/{seed}-{n}",
                subject=subject,
                kind=kind,
                severity=rng.choice(list(DiagnosisSeverity)),
                detector="adwin",
                workflow_id=workflow,
                step_id=step,
                node=node,
                node_version=f"1.{rng.randint(0, 3)}.0",
                error_class=error_class if failing else None,
                detected_at=detected,
                traces_seen=rng.randint(50, 5000),
                metrics={"before": float(a), "after": float(b)},
                evidence=json.dumps({"error_message": message} if failing else {"window": 64}),
                explanation=_EXPLAIN[kind].format(step=step, a=a, b=b),
            )
        )
    return out


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _embedding_rates(contexts: list[str]) -> tuple[float, float]:
    embedder = default_embedder()
    embedder.embed(contexts[:10])  # warm-up
    started = time.perf_counter()
    for text in contexts:
        embedder.embed([text])  # what the historian's projector does per record
    single = _rate(len(contexts), time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(contexts), 256):
        embedder.embed(contexts[i : i + 256])
    batch = _rate(len(contexts), time.perf_counter() - started)
    return single, batch


def _one_seed(settings: Settings, seed: int, stored: int, lookups: int) -> dict[str, Any]:
    embedder = default_embedder()
    diagnoses = synthetic_diagnoses(seed, stored + lookups)
    past, new = diagnoses[:stored], diagnoses[stored:]
    contexts = [diagnosis_context(d) for d in diagnoses]
    single, batch = _embedding_rates(contexts)
    schema = f"bench_hist_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            apply_migrations(conn, schema)
            started = time.perf_counter()
            vectors: list[list[float]] = []
            # One transaction, statements pipelined: how the projector's writer sends a batch.
            with conn.transaction(), conn.pipeline(), conn.cursor() as cursor:
                for d in past:
                    context = diagnosis_context(d)
                    [vector] = embedder.embed([context])
                    vectors.append(vector)
                    plan = diagnosis_plan(
                        d, schema, context=context, embedding=vector, model=embedder.model
                    )
                    cursor.execute(plan.guard.sql, plan.guard.params)
            store_rate = _rate(len(past), time.perf_counter() - started)
            conn.execute(f'ANALYZE "{schema}".diagnoses')
            # HNSW recall against the exact neighbours (numpy over the same unit vectors).
            matrix = np.array(vectors)
            ids = [d.diagnosis_id for d in past]
            wanted = candidates_for(5)
            recalls = []
            for d in new[: min(lookups, 50)]:
                [query] = embedder.embed([diagnosis_context(d)])
                exact = np.argsort(-(matrix @ np.array(query)))[:wanted]
                found = nearest(conn, to_pgvector(query), embedder.model, wanted, schema)
                hits = {row.diagnosis_id for row, _ in found} & {ids[i] for i in exact}
                recalls.append(len(hits) / wanted)
        historian = PostgresHistorian(settings, schema)
        try:
            historian.similar(new[0])  # connects
            latencies = []
            for d in new:
                started = time.perf_counter()
                historian.similar(d, k=5)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            historian.close()
    finally:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    latencies.sort()
    return {
        "seed": seed,
        "stored": stored,
        "lookups": len(new),
        "embeddings_per_s": round(single),
        "embeddings_per_s_batch": round(batch),
        "store_per_s": round(store_rate),
        "similar_p50_ms": round(statistics.median(latencies), 2),
        "similar_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "hnsw_recall_at_20": round(statistics.mean(recalls), 4),
    }


def run(seeds: list[int], quick: bool) -> dict[str, Any]:
    settings = get_settings()
    stored, lookups = (2_000, 100) if quick else (20_000, 300)
    per_seed = [_one_seed(settings, seed, stored, lookups) for seed in seeds]

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in per_seed))

    def worst(key: str) -> float:
        return float(max(r[key] for r in per_seed))

    return {
        "historian_embeddings_per_s": median("embeddings_per_s"),
        "historian_embeddings_per_s_batch": median("embeddings_per_s_batch"),
        "historian_store_per_s": median("store_per_s"),
        "historian_similar_p50_ms": median("similar_p50_ms"),
        "historian_similar_p95_ms": median("similar_p95_ms"),
        "historian_similar_p95_ms_worst_seed": worst("similar_p95_ms"),
        "historian_hnsw_recall_at_20": median("hnsw_recall_at_20"),
        "historian_stored": stored,
        "historian_model": default_embedder().model,
        "historian_seeds": per_seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    print(json.dumps(run(args.seeds, args.quick), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
