"""Scale-out benchmark (issue 15): ``python -m benchmarks.scaling_bench [--quick]``.

The engine's remote-path throughput (the ``steps_per_s`` workload of
:mod:`benchmarks.engine_bench`: N runs of 10 sequential ``transform`` steps, every step on a
worker) with 1, 2 and 4 OS processes of each kind -- ``reflux scheduler`` instances sharing the
run partitions and ``reflux worker`` processes sharing the invoke topics' consumer groups
(:class:`reflux.processes.ProcessEngine`) -- on two Kafka deployments:

- ``brokers_3``: a three-broker KRaft cluster of this benchmark's own
  (:class:`infra.services.kafka_cluster.KafkaCluster`, data under ``var/bench``), topics with
  replication factor 3 and ``min.insync.replicas=2``: every produce is acknowledged by two
  brokers (``acks=all``), every transaction commits on replicated partitions;
- ``brokers_1``: the local single broker of ``make up`` (replication factor 1).

Per configuration it records steps/s (median of the rounds), CPU seconds per step of each kind of
process (scheduler, worker, projector, trigger router, Kafka brokers), and the bytes each topic
took on disk per step (one replica). The machine's core count is recorded beside the curve: on a
2-core box, more processes than cores buy no CPU, so the curve shows the ceiling as much as the
scaling (docs/scaling.md turns these costs into a deployment model).

Keys (``benchmarks/out/results.json`` via ``python -m benchmarks.run --cluster``):
``steps_per_s_by_processes`` (three brokers; ``{"1": .., "2": .., "4": ..}``),
``steps_per_s_by_processes_one_broker``, and ``scaling`` (the details above).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import engine_metrics as em
from benchmarks.cleanup import delete_prefix_topics, drop_engine_schemas
from benchmarks.engine_bench import SEQ_WORKFLOW, STEPS, Watcher, sequential_workflow
from benchmarks.profiling import cpu_delta, cpu_snapshot
from benchmarks.registration import publish_version_one
from foundation.settings import PROJECT_ROOT, Settings, get_settings
from schemas.models import StartRun
from streams.producer import Producer

__all__ = ["FULL", "QUICK", "ScalingPlan", "run_scaling_benchmark"]

OUT_DIR = PROJECT_ROOT / "benchmarks" / "out"
BROKERS = 3


@dataclass(frozen=True)
class ScalingPlan:
    processes: tuple[int, ...]
    warmup_runs: int
    """Concurrent runs before measuring: every consumer group has joined and settled."""
    concurrent_runs: int
    rounds: int
    partitions: int
    """Of every topic: at least the largest process count, so no scheduler idles."""
    phase_timeout_s: float


QUICK = ScalingPlan((1, 2), 50, 100, 1, 8, 180)
FULL = ScalingPlan((1, 2, 4), 100, 200, 3, 8, 300)


def _progress(message: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the Kafka deployments -----------------------------------------------------------------------


def _free_base_port(nodes: int) -> int:
    """A loopback port ``p`` with ``p .. p + 3 * nodes - 1`` free (each node: listener,
    controller, SASL_SSL), below the kernel's ephemeral range."""
    for base in range(22000, 32000, 100):
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + 3 * nodes):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"Expected {3 * nodes} free loopback ports in 22000-32000, found none")


@contextlib.contextmanager
def _three_brokers(base: Settings, tag: str) -> Iterator[Deployment]:
    """A private three-broker cluster; yields settings pointing at it and the brokers' pids."""
    from infra.services.kafka_cluster import KafkaCluster

    port = _free_base_port(BROKERS)
    data_dir = base.data_dir / "bench" / f"cluster-{tag}"
    settings = base.model_copy(
        update={
            "data_dir": data_dir,
            "kafka_bootstrap": f"127.0.0.1:{port}",
            "kafka_local_port": None,
            "kafka_brokers": BROKERS,
        }
    )
    cluster = KafkaCluster(settings, BROKERS, jars_from=base)
    settings = settings.model_copy(
        update={
            "kafka_bootstrap": cluster.bootstrap,
            "replication_factor": BROKERS,
            # The credentials of the shared installation (Postgres, S3) stay where they are.
            "data_dir": base.data_dir,
        }
    )
    _progress(f"starting a {BROKERS}-broker cluster at {cluster.bootstrap} (data {data_dir})")
    took = cluster.start()
    _progress(f"cluster ready in {took:.1f}s")
    try:
        yield Deployment(
            settings,
            [pid for node in cluster.nodes if (pid := node.read_pid())],
            [node.root / "data" for node in cluster.nodes],
            BROKERS,
        )
    finally:
        cluster.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def _one_broker(base: Settings) -> Iterator[Deployment]:
    from infra.services.kafka import Kafka

    if base.kafka_brokers > 1:
        raise RuntimeError(
            "Expected the single local broker for the one-broker series (it starts its own "
            "three-broker cluster for the other), but REFLUX_KAFKA_BROKERS="
            f"{base.kafka_brokers}: run it after `make up` without CLUSTER"
        )
    broker = Kafka(base)
    pid = broker.read_pid()
    settings = base.model_copy(update={"replication_factor": 1})
    yield Deployment(settings, [pid] if pid else [], [broker.root / "data"], 1)


def _topic_bytes(data_dirs: Sequence[Path], prefix: str) -> dict[str, int]:
    """Bytes of log segments per topic of ``prefix``, summed over brokers (index files are
    preallocated, so their size says nothing)."""
    sizes: defaultdict[str, int] = defaultdict(int)
    for data in data_dirs:
        for partition_dir in data.glob(f"{prefix}.*-[0-9]*"):
            topic = partition_dir.name.rsplit("-", 1)[0].removeprefix(prefix + ".")
            sizes[topic] += sum(f.stat().st_size for f in partition_dir.glob("*.log"))
    return dict(sizes)


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    kafka_pids: list[int]
    data_dirs: list[Path]
    """The brokers' log folders (bytes per topic are read there)."""
    replication: int


# -- one configuration ---------------------------------------------------------------------------


def _measure(deployment: Deployment, processes: int, plan: ScalingPlan) -> dict[str, Any]:
    from api.publisher import api_producer
    from reflux.processes import ProcessEngine

    tag = uuid.uuid4().hex[:8]
    settings = deployment.settings.model_copy(
        update={"topic_prefix": f"bench-{tag}", "default_partitions": plan.partitions}
    )
    schema = f"bench_{tag}"
    engine = ProcessEngine(settings, schema=schema, schedulers=processes, workers=processes)
    watcher = Watcher(settings, engine.catalog).start()
    producer: Producer = api_producer(settings, 5.0)
    try:
        engine.start()
        publish_version_one(producer, engine.catalog, sequential_workflow())
        producer.flush(10)

        def health() -> None:
            if errors := engine.errors():
                raise RuntimeError(f"Expected a healthy engine, but: {errors}")

        def concurrent(runs: int) -> tuple[list[em.RunTrace], float]:
            commands = [
                StartRun(run_id=str(uuid.uuid4()), workflow_id=SEQ_WORKFLOW, inputs={})
                for _ in range(runs)
            ]
            began = time.time()
            for command in commands:
                producer.send(engine.catalog.commands, command.run_id, command)
            producer.flush(10)
            acked = time.time()
            watcher.wait([c.run_id for c in commands], plan.phase_timeout_s, health)
            return watcher.traces((c.run_id, began, acked) for c in commands), began

        _progress(f"{processes} process(es) of each kind: warm-up, {plan.warmup_runs} runs")
        concurrent(plan.warmup_runs)
        pids: dict[str, int | None] = dict(engine.pids())
        pids |= {f"kafka broker {i + 1}": pid for i, pid in enumerate(deployment.kafka_pids)}
        pids |= _store_pids(settings)
        before = cpu_snapshot(pids)
        rates: list[float] = []
        wall = 0.0
        run_events = 0
        for i in range(plan.rounds):
            started = time.monotonic()
            runs, began = concurrent(plan.concurrent_runs)
            wall += time.monotonic() - started
            rates.append(em.steps_per_s(runs, began))
            run_events += sum(len(run.events()) for run in runs)
            _progress(f"  round {i + 1}/{plan.rounds}: {rates[-1]:.0f} steps/s")
        cpu = cpu_delta(before, cpu_snapshot(pids))
        steps = plan.rounds * plan.concurrent_runs * STEPS
        # Every run of this configuration (warm-up included) wrote to this prefix's topics.
        all_steps = (plan.warmup_runs + plan.rounds * plan.concurrent_runs) * STEPS
        on_disk = _topic_bytes(deployment.data_dirs, settings.topic_prefix)
        return {
            "steps_per_s": statistics.median(rates),
            "rounds_steps_per_s": rates,
            "cpu_ms_per_step": _cpu_by_kind(cpu.services, steps),
            "cores_busy": round(sum(cpu.services.values()) / wall, 2) if wall else None,
            "partitions": plan.partitions,
            # What the projector writes to Postgres per step (one row per run event and more).
            "run_events_per_step": round(run_events / steps, 2),
            "bytes_per_step": {
                topic: round(size / deployment.replication / all_steps, 1)
                for topic, size in sorted(on_disk.items())
                if size
            },
        }
    finally:
        with contextlib.suppress(Exception):
            producer.close(10)
        watcher.close()
        engine.stop()
        _cleanup(settings, schema)


def _store_pids(settings: Settings) -> dict[str, int | None]:
    """The stores every configuration shares (their CPU, children included, counts too)."""
    from infra.services.postgres import Postgres
    from infra.services.redis import LedgerRedis, Redis

    return {cls.name: cls(settings).read_pid() for cls in (Postgres, Redis, LedgerRedis)}


def _cpu_by_kind(services: dict[str, float], steps: int) -> dict[str, float]:
    """CPU-ms per step by kind of process ("engine scheduler-1" -> "scheduler")."""
    kinds: defaultdict[str, float] = defaultdict(float)
    for name, seconds in services.items():
        kind = re.sub(r"[- ]\d+$", "", name.removeprefix("engine "))  # "kafka broker 2" too
        kinds["kafka" if kind == "kafka broker" else kind] += seconds
    return {kind: round(seconds * 1000 / steps, 3) for kind, seconds in sorted(kinds.items())}


def _cleanup(settings: Settings, schema: str) -> None:
    delete_prefix_topics(settings, timeout=30)
    drop_engine_schemas(settings, schema)


# -- the whole benchmark -------------------------------------------------------------------------


def _series(
    name: str, deployment: contextlib.AbstractContextManager[Deployment], plan: ScalingPlan
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with deployment as kafka:
        for n in plan.processes:
            result = _measure(kafka, n, plan)
            out[str(n)] = result
            _progress(f"{name}, {n} process(es) of each kind: {result['steps_per_s']:.0f} steps/s")
    return out


def run_scaling_benchmark(
    settings: Settings, quick: bool = False, *, out_dir: Path = OUT_DIR
) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    tag = uuid.uuid4().hex[:6]
    _progress(f"plan {asdict(plan)}, {os.cpu_count()} cores")
    one = _series("one broker", _one_broker(settings), plan)
    three = _series("three brokers", _three_brokers(settings, tag), plan)
    details = {
        "cores": os.cpu_count(),
        "plan": asdict(plan),
        "brokers_3": three,
        "brokers_1": one,
        "workload": f"{STEPS} sequential transform steps per run, every step on a worker",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling_details.json").write_text(json.dumps(details, indent=2) + "\n")
    return {
        "steps_per_s_by_processes": {n: r["steps_per_s"] for n, r in three.items()},
        "steps_per_s_by_processes_one_broker": {n: r["steps_per_s"] for n, r in one.items()},
        "scaling": details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 2 processes, one round")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "scaling.json")
    args = parser.parse_args(argv)
    results = run_scaling_benchmark(get_settings(), args.quick)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "scaling"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
