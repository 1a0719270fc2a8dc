"""Every component in one process: the seed's "monolith" scaling mode (``reflux dev``).

Each component runs in its own thread with its own Kafka clients, exactly as it would in its own
process; only the process boundary is gone. The demo, the end-to-end tests and the benchmarks use
the same engine, so what they exercise is what ``reflux scheduler`` / ``reflux worker`` /
``reflux projector`` / ``reflux api`` run separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from foundation.settings import Settings
from node_workers.registry import NodeRegistry, default_registry
from node_workers.runtime import WorkerConfig, WorkerRuntime
from processors.scheduler.runtime.loop import SchedulerRuntime
from processors.triggers.router import TriggerRouter
from projections.postgres.migrations import apply_migrations
from projections.projector import Projector
from streams.admin import ensure_topics
from streams.topics import TopicCatalog

log = logging.getLogger(__name__)


@dataclass
class _Component:
    name: str
    thread: threading.Thread
    stop: Callable[[], None]
    error: list[BaseException] = field(default_factory=list)


def invoke_specs(catalog: TopicCatalog, nodes: NodeRegistry) -> list[Any]:
    return [catalog.invoke_topic(node.name, node.major) for node in nodes]


def prepare(settings: Settings, nodes: NodeRegistry, schema: str = "reflux") -> TopicCatalog:
    """Topics (catalog + one invoke topic per node major) and the Postgres read models."""
    catalog = TopicCatalog.from_settings(settings)
    ensure_topics(catalog, settings=settings)
    ensure_topics(catalog, invoke_specs(catalog, nodes), settings=settings)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, schema)
    return catalog


class DevEngine:
    """Starts the scheduler, trigger router, workers and projector (and optionally the API)."""

    def __init__(
        self,
        settings: Settings,
        *,
        nodes: NodeRegistry | None = None,
        schema: str = "reflux",
        scheduler: bool = True,
        workers: bool = True,
        projector: bool = True,
        trigger_router: bool = True,
        schedulers: int = 1,
        register_nodes: bool = False,
        worker_config: WorkerConfig | None = None,
    ) -> None:
        self.settings = settings
        self.nodes = nodes or default_registry()
        self.schema = schema
        self.catalog = prepare(settings, self.nodes, schema)
        self._want = {
            "scheduler": scheduler,
            "workers": workers,
            "projector": projector,
            "trigger-router": trigger_router,
        }
        self.components: list[_Component] = []
        # Several instances share the partitions like separate processes would (each has its
        # own transactional producer, so their commits overlap instead of queueing).
        self.scheduler_count = schedulers
        # Publish the served node versions to the catalog (as `reflux worker` does). Off for
        # tests that manage the catalog themselves.
        self.register_nodes = register_nodes
        self.worker_config = worker_config
        self.schedulers: list[SchedulerRuntime] = []
        self.scheduler: SchedulerRuntime | None = None
        self.worker: WorkerRuntime | None = None
        self.projector: Projector | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> DevEngine:
        if self._want["scheduler"]:
            for n in range(self.scheduler_count):
                self.start_scheduler(instance_id=None if n == 0 else f"dev-{n}")
        if self._want["trigger-router"]:
            router = TriggerRouter(self.settings)
            self._thread("trigger-router", router.run, router.close)
        if self._want["workers"]:
            self.start_workers()
        if self._want["projector"]:
            projector = Projector(self.settings, schema=self.schema)
            self.projector = projector
            self._thread("projector", projector.run, projector.close)
        return self

    def start_scheduler(self, instance_id: str | None = None) -> SchedulerRuntime:
        scheduler = SchedulerRuntime(self.settings, instance_id=instance_id)
        self.schedulers.append(scheduler)
        self.scheduler = self.scheduler or scheduler
        self._thread(f"scheduler-{scheduler.instance_id}", scheduler.run, lambda: None)
        return scheduler

    def start_workers(self) -> WorkerRuntime:
        if self.register_nodes:
            from node_workers.registration import register_nodes

            register_nodes(self.settings, self.nodes)
        worker = WorkerRuntime(self.settings, self.nodes, config=self.worker_config)
        self.worker = worker
        stop_event: dict[str, asyncio.Event] = {}
        loop_holder: dict[str, asyncio.AbstractEventLoop] = {}
        ready = threading.Event()

        async def serve() -> None:
            stop_event["event"] = asyncio.Event()
            loop_holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await worker.run_forever(stop_event["event"])

        def body(_stop: threading.Event) -> None:
            asyncio.run(serve())

        def stop() -> None:
            if ready.wait(5):
                loop_holder["loop"].call_soon_threadsafe(stop_event["event"].set)

        self._thread("workers", body, lambda: None, stopper=stop)
        return worker

    def _thread(
        self,
        name: str,
        body: Callable[[threading.Event], Any],
        close: Callable[[], Any],
        *,
        stopper: Callable[[], None] | None = None,
    ) -> None:
        stop = threading.Event()
        component = _Component(name, threading.Thread(), lambda: None)

        def target() -> None:
            try:
                body(stop)
            except BaseException as exc:
                component.error.append(exc)
                log.exception("%s stopped with an error", name)
            finally:
                with contextlib.suppress(Exception):
                    close()

        def request_stop() -> None:
            stop.set()
            if stopper is not None:
                stopper()

        component.thread = threading.Thread(target=target, name=f"reflux-{name}", daemon=True)
        component.stop = request_stop
        self.components.append(component)
        component.thread.start()

    def errors(self) -> dict[str, list[BaseException]]:
        return {c.name: c.error for c in self.components if c.error}

    def stop(self, timeout: float = 30.0) -> None:
        for component in reversed(self.components):
            component.stop()
        deadline = time.monotonic() + timeout
        for component in reversed(self.components):
            component.thread.join(max(0.1, deadline - time.monotonic()))
            if component.thread.is_alive():
                log.warning("%s did not stop within %.0fs", component.name, timeout)
        self.components.clear()

    def __enter__(self) -> DevEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
