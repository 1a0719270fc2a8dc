"""A/B replay throughput: ``replay_runs_per_s``, ``replay_1000_runs_s`` (goal < 60 s) and
``replay_speedup_vs_live`` (goal >= 5).

On a topic prefix and Postgres schema of its own (``bench-replay-<uuid8>`` /
``bench_replay_<uuid8>``, deleted afterwards), a :class:`~reflux.dev.DevEngine` records ``N``
runs (1,000; ``--quick``: 100) of a 10-step workflow, all started at once and measured live:
four ``http.request`` POSTs to a slow local service (:mod:`benchmarks.slow_service`,
``LATENCY_MS`` each, its own process) chained with six pure transforms. Then the production
engine stops and a :class:`~processors.replay.shadow.ShadowReplay` replays all ``N`` against the
same version, side effects served from the record: its wall time counts everything a replay
does (loading the originals' logs, creating the shadow topics and schema, starting the shadow
engine, the runs, reading the outcomes), not its cleanup.

Keys: ``replay_live_s`` (recording N runs live: first start sent -> last run terminal in the
read model), ``replay_1000_runs_s`` (the replay of N, scaled to 1,000 in ``--quick``; fold
mode, ADR 0036: the runs folded with the scheduler's pure core in one process per core),
``replay_runs_per_s``, ``replay_speedup_vs_live`` (live wall / replay wall),
``replay_run_p50_ms_live`` / ``replay_run_p50_ms_replayed`` (a run's own duration), and
``replay_side_effect_calls`` (requests the slow service got during the replay: must be 0).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
import urllib.request
import uuid
from typing import Any

import psycopg

from benchmarks.cleanup import delete_prefix_topics, drop_engine_schemas
from benchmarks.registration import publish_version_one
from benchmarks.worker_io_bench import slow_service
from foundation.settings import Settings
from processors.replay.shadow import Candidate, ShadowReplay
from projections.postgres.identifiers import table
from reflux.dev import DevEngine
from schemas.models import StartRun
from streams.producer import Producer

__all__ = ["run_replay_benchmark", "workflow"]

RUNS = {True: 100, False: 1000}
LATENCY_MS = 80.0
LIVE_TIMEOUT_S = 600.0


def _progress(message: str) -> None:
    print(f"[replay {time.strftime('%H:%M:%S')}] {message}", flush=True)


def workflow(url: str) -> dict[str, Any]:
    """10 steps: post1 > t1 > post2 > t2 > post3 > t3 > post4 > t4 > t5 > t6."""

    def post(n: int, needs: list[str]) -> dict[str, Any]:
        return {
            "id": f"post{n}",
            "node": "http.request@^1",
            "params": {
                "url": f"{url}/effect/{n}",
                "method": "POST",
                "json": {"order": "{{ inputs.order }}", "n": n},
            },
            "needs": needs,
        }

    def shape(n: int, needs: list[str], data: str) -> dict[str, Any]:
        return {
            "id": f"t{n}",
            "node": "transform@^1",
            "params": {"expression": "{ok: v, n: n}", "data": {"v": data, "n": n}},
            "needs": needs,
        }

    steps = [
        post(1, []),
        shape(1, ["post1"], "{{ steps.post1.output.body.ok }}"),
        post(2, ["t1"]),
        shape(2, ["post2"], "{{ steps.post2.output.body.ok }}"),
        post(3, ["t2"]),
        shape(3, ["post3"], "{{ steps.post3.output.body.ok }}"),
        post(4, ["t3"]),
        shape(4, ["post4"], "{{ steps.post4.output.body.ok }}"),
        shape(5, ["t4"], "{{ steps.t4.output.result.ok }}"),
        shape(6, ["t5"], "{{ inputs.order }}"),
    ]
    return {
        "id": "bench-replay",
        "inputs": {"order": {"type": "string", "required": True}},
        "steps": steps,
        "outputs": {"last": "{{ steps.t6.output.result }}"},
    }


def _requests(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:  # our own service
        return int(json.loads(response.read())["requests"])


def _wait_terminal(settings: Settings, schema: str, run_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                f"SELECT count(*) FROM {table(schema, 'runs')} "
                "WHERE run_id = ANY(%s) AND status IN ('succeeded', 'failed', 'cancelled')",
                (run_ids,),
            ).fetchone()
            if row and row[0] >= len(run_ids):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(run_ids) - (row[0] if row else 0)} runs not finished")
            time.sleep(0.05)


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that ended (the replay's fold
    processes are joined before ``run`` returns; the slow service still runs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _p50(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def run_replay_benchmark(base: Settings, quick: bool = False) -> dict[str, float]:
    n = RUNS[quick]
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench-replay-{tag}"})
    schema = f"bench_replay_{tag}"
    engine: DevEngine | None = None
    try:
        with slow_service(LATENCY_MS) as url:
            engine = DevEngine(
                settings, schema=schema, trigger_router=False, mutation_processor=False
            ).start()
            producer = Producer(settings, client_id="bench-replay")
            try:
                workflow_id = publish_version_one(producer, engine.catalog, workflow(url))
                producer.flush(10)
                # One warm-up run: topics, consumers and the workflow are in place before timing.
                warm = str(uuid.uuid4())
                producer.send(
                    engine.catalog.commands.topic,
                    warm,
                    StartRun(run_id=warm, workflow_id=workflow_id, inputs={"order": "warm"}),
                )
                producer.flush(10)
                _wait_terminal(settings, schema, [warm], 120)
                run_ids = [str(uuid.uuid4()) for _ in range(n)]
                _progress(f"recording {n} runs live ({LATENCY_MS:.0f} ms per POST)")
                began, cpu_began = time.monotonic(), _cpu_s()
                for i, run_id in enumerate(run_ids):
                    producer.send(
                        engine.catalog.commands.topic,
                        run_id,
                        StartRun(run_id=run_id, workflow_id=workflow_id, inputs={"order": f"o{i}"}),
                    )
                producer.flush(30)
                _wait_terminal(settings, schema, run_ids, LIVE_TIMEOUT_S)
                live_s = time.monotonic() - began
                live_cpu = _cpu_s() - cpu_began
            finally:
                producer.close()
            engine.stop()
            engine = None
            _progress(f"live: {n} runs in {live_s:.1f}s; replaying them")
            calls_before = _requests(url)
            with ShadowReplay(settings, f"bench{tag}", schema=schema) as replay:
                began, cpu_began = time.monotonic(), _cpu_s()
                pairs = replay.run(run_ids, Candidate(workflow_version=1))
                replay_s = time.monotonic() - began
                replay_cpu = _cpu_s() - cpu_began
                timings = dict(replay.timings)
                fold = dict(replay.fold_timings)
                mode, processes = replay.last_mode, replay.last_processes
            calls = _requests(url) - calls_before
        failed = [p.candidate.run_id for p in pairs if p.candidate.status != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} replayed runs did not succeed, e.g. {failed[:3]}")
        live_ms = [p.original.duration_ms for p in pairs if p.original.duration_ms is not None]
        replay_ms = [p.candidate.duration_ms for p in pairs if p.candidate.duration_ms is not None]
        _progress(
            f"replay ({mode}, {processes} processes): {n} runs in {replay_s:.1f}s, "
            f"{calls} side-effect calls"
        )
        return {
            "replay_runs": float(n),
            "replay_live_s": round(live_s, 2),
            "replay_1000_runs_s": round(replay_s * 1000 / n, 2),
            "replay_runs_per_s": round(n / replay_s, 1),
            "replay_speedup_vs_live": round(live_s / replay_s, 2),
            "replay_run_p50_ms_live": _p50(live_ms),
            "replay_run_p50_ms_replayed": _p50(replay_ms),
            "replay_side_effect_calls": float(calls),
            # Where the replay's time went: the originals' logs (fold mode: only their RunStarted;
            # each fold process reads its part's logs within the runs' time), the shadow's start
            # (topics; engine mode also its consumers), and the runs themselves.
            "replay_load_originals_s": round(timings["load_originals_s"], 2),
            "replay_start_engine_s": round(timings["start_engine_s"], 2),
            "replay_runs_only_s": round(timings["runs_s"], 2),
            # CPU seconds spent in this process (and the fold processes): the engine's and
            # the replay's own work, without the broker, Postgres or the slow service. On a
            # shared machine the wall times follow the load; these follow the work.
            "replay_live_cpu_s": round(live_cpu, 2),
            "replay_cpu_s": round(replay_cpu, 2),
            # Fold mode: forking, and the slowest fold process's reading of its originals,
            # folding and outcomes (they overlap across processes, so they do not add up).
            **{f"replay_fold_{key}": round(value, 2) for key, value in fold.items()},
            # Fold processes (0: the replay ran on a shadow engine).
            "replay_fold_processes": float(processes),
        }
    finally:
        if engine is not None:
            engine.stop()
        delete_prefix_topics(settings)
        drop_engine_schemas(settings, schema)


if __name__ == "__main__":
    import sys

    from foundation.settings import get_settings

    print(json.dumps(run_replay_benchmark(get_settings(), "--quick" in sys.argv), indent=2))
