"""``meta.map`` throughput: one map of 10,000 no-op transform items, end to end (ADR 0024).

The whole engine in the benchmark topology (:mod:`benchmarks.topology`: one process per
component), on a topic prefix (``bench-map-<uuid8>``) and Postgres schema of its own, both
removed afterwards. The driver and watcher are :mod:`benchmarks.engine_bench`'s: the run's
``StartRun`` is produced and flushed with the API's producer settings, the watcher reads
``runs`` directly (read_committed).

- ``map_items_per_s``: items / (``StartRun`` sent -> ``RunSucceeded`` visible) for a workflow
  whose one step is a ``meta.map`` over ``inputs.xs`` (10,000 integers; quick: the same) running
  ``transform@^1`` with ``{"expression": "@", "data": "{{ item }}"}`` per item, concurrency 64.
  Median over rounds (full: 3, quick: 1), after a warm-up map of 200 items.
- ``map_run_events``: records the run wrote to ``runs`` (chunk bookkeeping included);
  ``map_max_record_bytes``: the largest of them (the claim check bounds it).

Goal: ``map_items_per_s >= 2000`` (the engine does ~500-700 ordinary steps/s on this machine).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from typing import Any

from benchmarks.engine_bench import EngineBench, EnginePlan, _cleanup
from foundation.settings import Settings
from schemas.models import RunSucceeded, StartRun

__all__ = ["MAP_ITEMS", "MAP_WORKFLOW", "run_map_benchmark"]

MAP_WORKFLOW = "bench-map"
MAP_ITEMS = 10_000
WARMUP_ITEMS = 200
CONCURRENCY = 64
ROUNDS = {False: 3, True: 1}
PLAN = EnginePlan(1, 1, 1, 1, 1, 1, run_timeout_s=180, phase_timeout_s=300)


def _progress(message: str) -> None:
    print(f"[map {time.strftime('%H:%M:%S')}] {message}", flush=True)


def map_workflow() -> dict[str, Any]:
    return {
        "id": MAP_WORKFLOW,
        "inputs": {"xs": {"type": "array", "required": True}},
        "steps": [
            {
                "id": "each",
                "node": "meta.map",
                "params": {
                    "items": "{{ inputs.xs }}",
                    "node": "transform@^1",
                    "params": {"expression": "@", "data": "{{ item }}"},
                    "concurrency": CONCURRENCY,
                },
            }
        ],
        "outputs": {"succeeded": "{{ steps.each.output.succeeded }}"},
    }


def _one_map(bench: EngineBench, items: int) -> tuple[float, list[int]]:
    """(seconds from StartRun sent to RunSucceeded visible, the sizes in bytes of the run's
    records on ``runs``)."""
    command = StartRun(
        run_id=str(uuid.uuid4()), workflow_id=MAP_WORKFLOW, inputs={"xs": list(range(items))}
    )
    sent = time.time()
    bench.producer.send(bench.catalog.commands, command.run_id, command)
    bench.producer.flush(10)
    bench.watcher.wait([command.run_id], PLAN.run_timeout_s, bench.health)
    ended = bench.watcher.terminal[command.run_id]
    (trace,) = bench.watcher.traces([(command.run_id, sent, sent)])
    succeeded = [s.record for s in trace.seen if isinstance(s.record, RunSucceeded)]
    if not succeeded or succeeded[0].outputs != {"succeeded": items}:
        raise RuntimeError(f"Expected the map to succeed with {items} items, got {succeeded}")
    raw = bench.watcher._raw.get(command.run_id, [])  # the records as Kafka carried them
    return ended - sent, [len(value) for _, kind, value, _ in raw if kind == "runs"]


def run_map_benchmark(settings: Settings, quick: bool = False) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={"topic_prefix": f"bench-map-{tag}"})
    schema = f"bench_map_{tag}"
    _progress(f"prefix {settings.topic_prefix}, schema {schema}")
    bench: EngineBench | None = None
    try:
        bench = EngineBench(settings, PLAN, schema)
        bench.engine.start()
        bench.register(map_workflow())
        _progress(f"warm-up: a map of {WARMUP_ITEMS} items (consumer groups join)")
        _one_map(bench, WARMUP_ITEMS)
        rates: list[float] = []
        sizes: list[int] = []
        events = 0
        for i in range(ROUNDS[quick]):
            seconds, sizes = _one_map(bench, MAP_ITEMS)
            rates.append(MAP_ITEMS / seconds)
            events = len(sizes)
            _progress(
                f"round {i + 1}/{ROUNDS[quick]}: {MAP_ITEMS} items in {seconds:.2f}s = "
                f"{rates[-1]:.0f} items/s; {events} run events, largest {max(sizes)} bytes"
            )
        return {
            "map_items_per_s": statistics.median(rates),
            "map_items": float(MAP_ITEMS),
            "map_concurrency": float(CONCURRENCY),
            "map_run_events": float(events),
            "map_max_record_bytes": float(max(sizes)),
        }
    finally:
        if bench is not None:
            bench.close()
        _cleanup(settings, schema)


if __name__ == "__main__":
    import logging

    from foundation.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run_map_benchmark(get_settings(), "--quick" in sys.argv[1:]), indent=2))
