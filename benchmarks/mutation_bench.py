"""Mutating a running run: ``mutation_apply_p99_ms`` (goal < 100 ms).

On a topic prefix and Postgres schema of its own (``bench-mut-<uuid8>`` / ``bench_mut_<uuid8>``,
both deleted afterwards), a :class:`~reflux.dev.DevEngine` with the scheduler and the projector
but no workers: each run's first step is dispatched and stays so (nobody answers), so the run
is in flight for as long as the benchmark mutates it.

Per mutation, one at a time, through the API (``POST /v1/runs/{id}/mutations`` on an in-process
TestClient, no ``wait_ms``): the clock starts when the 202 comes back (the API validated the
mutation and Kafka acknowledged ``MutateGraph``) and stops when the mutation is in the read
model -- its ``run_mutations`` row, written in the same transaction as ``runs.definition``:
what ``GET /v1/runs/{id}/graph`` shows. A dedicated connection polls for it every 1 ms.
Mutations alternate ``add_step`` (a new step after the held one) and ``update_params`` (of the
step just added), spread over several runs.

Keys: ``mutation_apply_p50_ms`` / ``_p99_ms`` / ``_max_ms`` (ack -> visible),
``mutation_api_p50_ms`` / ``_p99_ms`` (the POST itself: validation + publish + ack) and
``mutation_count``.

Then atomic lists (``{"mutations": [...]}``, ADR 0022 addendum): per run, rounds of one list of
``LIST_OPS`` operations (add steps, then update each one's params), timed ack -> every operation
visible: ``mutation_list_apply_p50_ms`` / ``_p99_ms`` and ``mutation_list_ops`` (per list).
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from typing import Any

import psycopg

from benchmarks.cleanup import delete_prefix_topics, drop_engine_schemas
from foundation.settings import Settings
from projections.postgres.identifiers import table

__all__ = ["run_mutation_benchmark"]

RUNS = {True: 10, False: 20}
MUTATIONS_PER_RUN = {True: 20, False: 25}
VISIBLE_TIMEOUT_S = 30.0
LIST_OPS = 10
LIST_ROUNDS = {True: 3, False: 5}
WORKFLOW = {
    "id": "bench-mutations",
    "steps": [
        # No workers run: `hold` stays dispatched, so the run stays in flight.
        {"id": "hold", "node": "transform@^1", "params": {"expression": "v", "data": {"v": 1}}},
    ],
}


def _progress(message: str) -> None:
    print(f"[mutation {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _until(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"Expected {what} within {timeout:.0f}s")
        time.sleep(interval)


def _dispatched(client: Any, run_id: str) -> bool:
    response = client.get(f"/v1/runs/{run_id}")
    return response.status_code == 200 and bool(response.json()["steps"])


def _mutation(i: int) -> dict[str, Any]:
    step = f"m{i // 2}"
    if i % 2 == 0:
        return {
            "type": "add_step",
            "step_id": step,
            "data": {
                "node": "transform@^1",
                "needs": ["hold"],
                "params": {"expression": "v", "data": {"v": i}},
            },
            "reason": "benchmark",
            "requested_by": "bench",
        }
    return {
        "type": "update_params",
        "step_id": step,
        "data": {"expression": "v", "data": {"v": -i}},
        "reason": "benchmark",
        "requested_by": "bench",
    }


def _mutation_list(round_no: int) -> dict[str, Any]:
    """``LIST_OPS`` operations: add ``LIST_OPS // 2`` steps, then update each one's params."""
    half = LIST_OPS // 2
    steps = [f"l{round_no}_{k}" for k in range(half)]
    added = [
        {
            "type": "add_step",
            "step_id": step,
            "data": {
                "node": "transform@^1",
                "needs": ["hold"],
                "params": {"expression": "v", "data": {"v": k}},
            },
        }
        for k, step in enumerate(steps)
    ]
    updated = [
        {"type": "update_params", "step_id": step, "data": {"expression": "v", "data": {"v": -k}}}
        for k, step in enumerate(steps)
    ]
    return {"mutations": added + updated, "reason": "benchmark", "requested_by": "bench"}


def _measure(settings: Settings, schema: str, quick: bool) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth.bootstrap import bearer_headers
    from api.config import ApiSettings
    from reflux.dev import DevEngine

    engine = DevEngine(settings, schema=schema, workers=False, trigger_router=False).start()
    api = ApiSettings(read_schema=schema, api_schema=f"{schema}_api", clickhouse_enabled=False)
    visible_sql = (
        f"SELECT 1 FROM {table(schema, 'run_mutations')} WHERE run_id = %s AND command_id = %s"
    )
    count_sql = (
        f"SELECT count(*) FROM {table(schema, 'run_mutations')} "
        "WHERE run_id = %s AND command_id = %s"
    )
    apply_ms: list[float] = []
    post_ms: list[float] = []
    list_ms: list[float] = []
    try:
        with (
            TestClient(
                create_app(settings, api),
                headers=bearer_headers(settings, api, name="bench", created_by="benchmark"),
            ) as client,
            psycopg.connect(settings.postgres_dsn, autocommit=True) as conn,
        ):
            registered = client.post("/v1/workflows", json=WORKFLOW)
            if registered.status_code != 201:
                raise RuntimeError(f"registering the workflow: {registered.text[:300]}")
            start = {"workflow_id": WORKFLOW["id"]}
            # The projection may not have the workflow yet (404 until it does).
            _until(
                lambda: client.get(f"/v1/workflows/{WORKFLOW['id']}").status_code == 200,
                30,
                "the workflow in the read model",
            )
            run_ids = [
                client.post("/v1/runs", json=start).json()["run_id"] for _ in range(RUNS[quick])
            ]
            for run_id in run_ids:
                _until(
                    lambda run_id=run_id: _dispatched(client, run_id),
                    30,
                    f"run {run_id} dispatched",
                )
            _progress(f"{len(run_ids)} runs in flight; mutating each {MUTATIONS_PER_RUN[quick]}x")
            for i in range(MUTATIONS_PER_RUN[quick]):
                body = _mutation(i)
                for run_id in run_ids:
                    requested = time.perf_counter()
                    response = client.post(f"/v1/runs/{run_id}/mutations", json=body)
                    acked = time.perf_counter()
                    if response.status_code != 202:
                        raise RuntimeError(
                            f"Expected 202 from POST mutations, but got {response.status_code}: "
                            f"{response.text[:300]}"
                        )
                    command_id = response.json()["command_id"]
                    deadline = acked + VISIBLE_TIMEOUT_S
                    while conn.execute(visible_sql, (run_id, command_id)).fetchone() is None:
                        if time.perf_counter() > deadline:
                            raise TimeoutError(
                                f"Expected mutation {command_id} of run {run_id} in the read "
                                f"model within {VISIBLE_TIMEOUT_S:.0f}s (rejected?)"
                            )
                        time.sleep(0.001)
                    apply_ms.append((time.perf_counter() - acked) * 1000)
                    post_ms.append((acked - requested) * 1000)
                _progress(
                    f"  round {i + 1}: {body['type']}, apply p50 so far "
                    f"{statistics.median(apply_ms):.1f} ms"
                )
            # The last graph is what the mutations built: every added step, latest params.
            graph = client.get(f"/v1/runs/{run_ids[0]}/graph").json()
            added = MUTATIONS_PER_RUN[quick] // 2 + MUTATIONS_PER_RUN[quick] % 2
            if len(graph["steps"]) != 1 + added or len(graph["mutations"]) != len(apply_ms) // len(
                run_ids
            ):
                raise RuntimeError(f"Unexpected final graph: {graph}")
            _progress(f"atomic lists of {LIST_OPS} operations, {LIST_ROUNDS[quick]} per run")
            for round_no in range(LIST_ROUNDS[quick]):
                body = _mutation_list(round_no)
                for run_id in run_ids:
                    response = client.post(f"/v1/runs/{run_id}/mutations", json=body)
                    acked = time.perf_counter()
                    if response.status_code != 202:
                        raise RuntimeError(
                            f"Expected 202 from POST mutations (a list), but got "
                            f"{response.status_code}: {response.text[:300]}"
                        )
                    command_id = response.json()["command_id"]
                    deadline = acked + VISIBLE_TIMEOUT_S
                    while _count(conn, count_sql, run_id, command_id) < LIST_OPS:
                        if time.perf_counter() > deadline:
                            raise TimeoutError(
                                f"Expected the {LIST_OPS} operations of {command_id} (run "
                                f"{run_id}) in the read model within {VISIBLE_TIMEOUT_S:.0f}s"
                            )
                        time.sleep(0.001)
                    list_ms.append((time.perf_counter() - acked) * 1000)
    finally:
        engine.stop()
    return {
        "mutation_apply_p50_ms": statistics.median(apply_ms),
        "mutation_apply_p99_ms": _pct(apply_ms, 0.99),
        "mutation_apply_max_ms": max(apply_ms),
        "mutation_api_p50_ms": statistics.median(post_ms),
        "mutation_api_p99_ms": _pct(post_ms, 0.99),
        "mutation_count": float(len(apply_ms)),
        "mutation_list_apply_p50_ms": statistics.median(list_ms),
        "mutation_list_apply_p99_ms": _pct(list_ms, 0.99),
        "mutation_list_ops": float(LIST_OPS),
    }


def _count(conn: Any, sql: str, run_id: str, command_id: str) -> int:
    row = conn.execute(sql, (run_id, command_id)).fetchone()
    return int(row[0]) if row is not None else 0


def _cleanup(settings: Settings, schema: str) -> None:
    delete_prefix_topics(settings, timeout=30)
    drop_engine_schemas(settings, schema)


def run_mutation_benchmark(base: Settings, quick: bool = False) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench-mut-{tag}"})
    schema = f"bench_mut_{tag}"
    _progress(f"prefix {settings.topic_prefix}, schema {schema}")
    try:
        results = _measure(settings, schema, quick)
    finally:
        _cleanup(settings, schema)
    _progress(
        f"apply p50 {results['mutation_apply_p50_ms']:.1f} ms, "
        f"p99 {results['mutation_apply_p99_ms']:.1f} ms over {results['mutation_count']:.0f}; "
        f"lists of {LIST_OPS}: p50 {results['mutation_list_apply_p50_ms']:.1f} ms, "
        f"p99 {results['mutation_list_apply_p99_ms']:.1f} ms"
    )
    return results


if __name__ == "__main__":
    import json

    from foundation.settings import get_settings

    print(json.dumps(run_mutation_benchmark(get_settings(), "--quick" in sys.argv[1:]), indent=2))
