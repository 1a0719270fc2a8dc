"""Workers sized for I/O: how many attempts one worker process keeps in flight, and at what rate.

On a topic prefix of its own (``bench-io-<uuid8>``, deleted afterwards), with one
:class:`~node_workers.runtime.WorkerRuntime` in this process and its **default** configuration
(``REFLUX_WORKER_*`` settings apply, as in ``reflux worker``):

1. **http.request**: N invocations (quick: N/2) of a local service that answers every request
   after 200 ms (:mod:`benchmarks.slow_service`, its own process, so it takes no CPU or GIL from
   the worker) are published first, then the worker serves them.
   ``worker_http_attempts_in_flight_max`` is the most requests the *service* held at once;
   ``worker_http_attempts_per_s`` is N / (first attempt started -> N-th result produced), whose
   ceiling is io_concurrency / 0.2 s (1,280/s at 256); ``worker_http_rss_growth_mib`` is how
   much this process's resident memory grew while serving.
2. **transform**: M invocations of the benchmark's no-op step (expression `` `1` ``), the CPU
   path the engine benchmark's runs take: ``worker_transform_attempts_per_s`` the same way.

Every invocation must end ``ok``: an error (a pool timeout, a refused connection) fails the
benchmark instead of being averaged in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from benchmarks.cleanup import delete_prefix_topics
from foundation.settings import Settings
from node_workers.node import AnyNode
from node_workers.nodes import HttpRequestNode, TransformNode
from node_workers.registry import NodeRegistry
from node_workers.runtime import WorkerConfig, WorkerRuntime
from schemas.models import NodeInvocation, StepRef
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.topics import TopicCatalog

__all__ = ["LATENCY_MS", "run_worker_io_benchmark"]

LATENCY_MS = 200
HTTP_ATTEMPTS = {False: 3000, True: 1500}
TRANSFORM_ATTEMPTS = {False: 5000, True: 2000}
SERVE_TIMEOUT_S = 180.0


def _progress(message: str) -> None:
    print(f"[worker_io {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def slow_service(latency_ms: float) -> Iterator[str]:
    """The service's base URL while the block runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.slow_service", "--latency-ms", str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:  # our own service
        stats: dict[str, int] = json.load(response)
        return stats


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _invocation(node: str, params: Any) -> NodeInvocation:
    invocation_id = str(uuid.uuid4())
    return NodeInvocation(
        run_id=f"bench-{uuid.uuid4().hex[:12]}",
        seq=1,
        invocation_id=invocation_id,
        attempt=1,
        workflow_id="bench-io",
        workflow_version=1,
        step=StepRef(step_id="s", node=node, node_version="1.0.0"),
        params=params,
        timeout_ms=60_000,
        idempotency_key=invocation_id,
    )


def _publish(settings: Settings, catalog: TopicCatalog, node: str, params: Any, n: int) -> None:
    topic = catalog.invoke_topic(node, 1)
    with Producer(settings, client_id="bench-worker-io", config={"linger.ms": 20}) as producer:
        for _ in range(n):
            invocation = _invocation(node, params)
            producer.send(topic, invocation.run_id, invocation)
        producer.flush(60)


async def _serve(
    settings: Settings, catalog: TopicCatalog, node: AnyNode, n: int
) -> dict[str, float]:
    """Serve ``n`` invocations of ``node``; times from the first start to the n-th result."""
    config = WorkerConfig.from_settings(settings, client_id="bench-worker-io")
    runtime = WorkerRuntime(settings, NodeRegistry([node]), config=config, catalog=catalog)
    stop = asyncio.Event()
    serving = asyncio.create_task(runtime.run_forever(stop))
    stats = runtime.stats
    baseline_rss = _rss_mib()
    peak_rss = baseline_rss
    first_start: float | None = None
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    try:
        while stats.results < n:
            if serving.done() or time.monotonic() > deadline:
                raise RuntimeError(f"Expected {n} results, but got {stats.results}: {stats}")
            if first_start is None and stats.started:
                first_start = time.monotonic()
            peak_rss = max(peak_rss, _rss_mib())
            await asyncio.sleep(0.005)  # sampling period of the measurement
        done = time.monotonic()
    finally:
        stop.set()
        await serving
    if stats.ok != n or stats.results != n:
        raise RuntimeError(f"Expected {n} ok results, but got {stats}")
    assert first_start is not None
    return {
        "attempts_per_s": n / (done - first_start),
        "seconds": done - first_start,
        "rss_growth_mib": peak_rss - baseline_rss,
        "pool": float(config.limit(node).size),
        "held_max": float(stats.held_max),
    }


def run_worker_io_benchmark(settings: Settings, quick: bool = False) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={"topic_prefix": f"bench-io-{tag}"})
    catalog = TopicCatalog.from_settings(settings)
    http_n, transform_n = HTTP_ATTEMPTS[quick], TRANSFORM_ATTEMPTS[quick]
    try:
        invoke = [catalog.invoke_topic(name, 1) for name in ("http.request", "transform")]
        ensure_topics(catalog, [*catalog, *invoke], settings=settings)
        with slow_service(LATENCY_MS) as url:
            _publish(settings, catalog, "http.request", {"url": f"{url}/slow"}, http_n)
            _progress(f"http.request: {http_n} invocations of a {LATENCY_MS} ms service published")
            http = asyncio.run(_serve(settings, catalog, HttpRequestNode(), http_n))
            service = _stats(url)
        _progress(
            f"http.request: {http['attempts_per_s']:.0f} attempts/s over {http['seconds']:.1f}s, "
            f"{service['in_flight_max']} in flight at most (pool {http['pool']:.0f}), "
            f"{service['requests']} requests, rss +{http['rss_growth_mib']:.0f} MiB"
        )
        if service["requests"] != http_n:
            raise RuntimeError(f"Expected {http_n} requests, but the service got {service}")

        params = {"expression": "`1`", "data": None}
        _publish(settings, catalog, "transform", params, transform_n)
        transform = asyncio.run(_serve(settings, catalog, TransformNode(), transform_n))
        _progress(
            f"transform: {transform['attempts_per_s']:.0f} attempts/s over "
            f"{transform['seconds']:.1f}s (pool {transform['pool']:.0f})"
        )
        return {
            "worker_http_attempts_in_flight_max": float(service["in_flight_max"]),
            "worker_http_attempts_per_s": http["attempts_per_s"],
            "worker_http_attempts": float(http_n),
            "worker_http_latency_ms": float(LATENCY_MS),
            "worker_http_io_concurrency": http["pool"],
            "worker_http_rss_growth_mib": http["rss_growth_mib"],
            "worker_transform_attempts_per_s": transform["attempts_per_s"],
            "worker_transform_attempts": float(transform_n),
            "worker_transform_cpu_concurrency": transform["pool"],
        }
    finally:
        delete_prefix_topics(settings)


if __name__ == "__main__":
    import logging

    from foundation.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    quick = "--quick" in sys.argv[1:]
    print(json.dumps(run_worker_io_benchmark(get_settings(), quick), indent=2))
