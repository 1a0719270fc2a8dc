"""Every component in one process: the seed's "monolith" scaling mode (``reflux dev``).

Each component runs in its own thread with its own Kafka clients, exactly as it would in its own
process; only the process boundary is gone. The demo, the end-to-end tests and the benchmarks use
the same engine, so what they exercise is what ``reflux scheduler`` / ``reflux worker`` /
``reflux projector`` / ``reflux api`` run separately.

Every component is supervised (:mod:`reflux.supervision`): one that dies is logged with the
reason and started again, as a fresh instance, after a backoff -- what a process supervisor
does for a separate process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg

from foundation.settings import Settings
from node_workers.registry import NodeRegistry, default_registry
from node_workers.runtime import WorkerConfig, WorkerRuntime
from processors.canary.judge import CanaryConfig
from processors.canary.runtime import CanaryJudge
from processors.historian.runtime import HistorianProjector
from processors.mutations.runtime import MutationProcessor
from processors.mutations.validation import ReplayValidation
from processors.scheduler.runtime.loop import SchedulerRuntime
from processors.schedules.runtime import ScheduleProcessor
from processors.triggers.router import TriggerRouter
from projections.postgres.migrations import apply_migrations
from projections.projector import Projector
from reflux.supervision import Running, Supervisor
from streams.admin import ensure_topics
from streams.topics import TopicCatalog

if TYPE_CHECKING:
    # The runner replays on a shadow DevEngine (processors.replay.shadow imports this module):
    # imported where it is built, not at module level.
    from processors.critic.config import CriticConfig
    from processors.critic.runtime import CriticProcessor
    from processors.optimizer.experiment_runtime import BanditExperiments
    from processors.optimizer.runtime import OptimizerProcessor
    from processors.optimizer.strategies import OptimizerConfig
    from processors.replay.runner import ReplayRunner

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PROPOSAL_REPLAY: Final = ReplayValidation()
"""Proposals are validated by an A/B replay of the newest 50 runs of their base version."""


def _first_then_fresh(first: T, build: Callable[[], T]) -> Callable[[], T]:
    """The instance built by the caller (so its construction errors reach the caller) for the
    first run, a fresh one for every restart."""
    pending = [first]
    return lambda: pending.pop() if pending else build()


def invoke_specs(catalog: TopicCatalog, nodes: NodeRegistry) -> list[Any]:
    return [catalog.invoke_topic(node.name, node.major) for node in nodes]


def builtin_node_versions(nodes: NodeRegistry) -> dict[str, list[str]]:
    """Node name -> versions served: the fallback node catalog for proposal validation."""
    versions: dict[str, list[str]] = {}
    for node in nodes:
        versions.setdefault(node.name, []).append(node.version)
    return versions


def new_mutation_processor(
    settings: Settings,
    nodes: NodeRegistry,
    schema: str = "reflux",
    replay: ReplayValidation | None = None,
) -> MutationProcessor:
    """The mutation processor; versions are allocated in the API's schema (``<schema>_api``).
    With ``replay``, a proposal is validated by an A/B replay (a replay runner must run)."""
    return MutationProcessor(
        settings,
        version_schema=f"{schema}_api",
        builtin_nodes=builtin_node_versions(nodes),
        replay=replay,
    )


def prepare(settings: Settings, nodes: NodeRegistry, schema: str = "reflux") -> TopicCatalog:
    """Topics (catalog + one invoke topic per node major) and the Postgres read models."""
    catalog = TopicCatalog.from_settings(settings)
    ensure_topics(catalog, settings=settings)
    ensure_topics(catalog, invoke_specs(catalog, nodes), settings=settings)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, schema)
    return catalog


class DevEngine:
    """Starts the scheduler, trigger router, workers and projector (and optionally the API),
    each under a :class:`~reflux.supervision.Supervisor`."""

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
        mutation_processor: bool = True,
        replay_runner: bool = True,
        proposal_replay: ReplayValidation | None = DEFAULT_PROPOSAL_REPLAY,
        schedulers: int = 1,
        register_nodes: bool = False,
        worker_config: WorkerConfig | None = None,
        critic: bool = False,
        critic_config: CriticConfig | None = None,
        optimizer: bool = False,
        optimizer_config: OptimizerConfig | None = None,
        canary: bool = False,
        canary_config: CanaryConfig | None = None,
        historian: bool = False,
        bandit: bool = False,
        schedules: bool = False,
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
            "mutation-processor": mutation_processor,
            "replay-runner": replay_runner,
            "critic": critic,
            "optimizer": optimizer,
            "canary": canary,
            "historian": historian,
            "bandit": bandit,
            "schedules": schedules,
        }
        self.optimizer_config = optimizer_config
        self.critic_config = critic_config
        # The canary judge (processors/canary, ADR 0033): keeps or rolls back applied proposals
        # from their live runs; reads this engine's read models, so it needs the projector.
        self.canary_config = canary_config
        self.components: list[Supervisor] = []
        self.proposal_replay = proposal_replay
        # Several instances share the partitions like separate processes would (each has its
        # own transactional producer, so their commits overlap instead of queueing).
        self.scheduler_count = schedulers
        # Publish the served node versions to the catalog (as `reflux worker` does). Off for
        # tests that manage the catalog themselves.
        self.register_nodes = register_nodes
        self.worker_config = worker_config
        # The running instances; a restarted component replaces its entry.
        self.schedulers: list[SchedulerRuntime] = []
        self.scheduler: SchedulerRuntime | None = None
        self.worker: WorkerRuntime | None = None
        self.projector: Projector | None = None
        self.mutation_processor: MutationProcessor | None = None
        self.replay_runner: ReplayRunner | None = None
        self.critic: CriticProcessor | None = None
        self.optimizer: OptimizerProcessor | None = None
        self.canary: CanaryJudge | None = None
        self.historian: HistorianProjector | None = None
        self.bandit: BanditExperiments | None = None
        self.schedule_processor: ScheduleProcessor | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> DevEngine:
        if self._want["scheduler"]:
            for n in range(self.scheduler_count):
                self.start_scheduler(instance_id=None if n == 0 else f"dev-{n}")
        if self._want["trigger-router"]:
            build_router = _first_then_fresh(
                TriggerRouter(self.settings), lambda: TriggerRouter(self.settings)
            )

            def router() -> Running:
                instance = build_router()
                return Running(instance.run, instance.close)

            self._supervise("trigger-router", router)
        if self._want["mutation-processor"]:
            # Proposals are replayed only where a runner answers (this engine's, when it runs).
            replay = self.proposal_replay if self._want["replay-runner"] else None

            def new_processor() -> MutationProcessor:
                return new_mutation_processor(self.settings, self.nodes, self.schema, replay)

            build_processor = _first_then_fresh(new_processor(), new_processor)

            def mutation_processor() -> Running:
                instance = self.mutation_processor = build_processor()
                return Running(instance.run, instance.close)

            self._supervise("mutation-processor", mutation_processor)
        if self._want["replay-runner"]:

            def new_runner() -> ReplayRunner:
                from processors.replay.runner import ReplayRunner

                return ReplayRunner(self.settings, schema=self.schema, nodes=self.nodes)

            build_runner = _first_then_fresh(new_runner(), new_runner)

            def replay_runner() -> Running:
                instance = self.replay_runner = build_runner()
                return Running(instance.run, instance.close)

            self._supervise("replay-runner", replay_runner)
        if self._want["critic"]:
            self.start_critic()
        if self._want["workers"]:
            self.start_workers()
        if self._want["projector"]:

            def new_projector() -> Projector:
                return Projector(self.settings, schema=self.schema)

            build_projector = _first_then_fresh(new_projector(), new_projector)

            def projector() -> Running:
                instance = self.projector = build_projector()
                return Running(instance.run, instance.close)

            self._supervise("projector", projector)
        if self._want["canary"]:

            def new_judge() -> CanaryJudge:
                return CanaryJudge(self.settings, schema=self.schema, config=self.canary_config)

            build_judge = _first_then_fresh(new_judge(), new_judge)

            def canary() -> Running:
                instance = self.canary = build_judge()
                return Running(instance.run, instance.close)

            self._supervise("canary", canary)
        if self._want["bandit"]:
            # The optimizer's bandit experiments (ADR 0037): reweight, keep or roll back
            # model_choice canaries from their live runs; reads the read models.
            from processors.optimizer.experiment_runtime import BanditExperiments

            def new_experiments() -> BanditExperiments:
                return BanditExperiments(self.settings, schema=self.schema)

            build_experiments = _first_then_fresh(new_experiments(), new_experiments)

            def experiments() -> Running:
                instance = self.bandit = build_experiments()
                return Running(instance.run, instance.close)

            self._supervise("bandit", experiments)
        if self._want["historian"]:
            self.start_historian()
        if self._want["optimizer"]:
            self.start_optimizer()
        if self._want["schedules"]:
            self.start_schedules()
        return self

    def start_schedules(self) -> None:
        """The schedule processor (ADR 0056): fires the due slots of every schedule."""

        def new_processor() -> ScheduleProcessor:
            return ScheduleProcessor(self.settings, schema=self.schema, instance_id="dev")

        build = _first_then_fresh(new_processor(), new_processor)

        def schedules() -> Running:
            instance = self.schedule_processor = build()
            return Running(instance.run)

        self._supervise("schedules", schedules)

    def start_historian(self) -> HistorianProjector:
        """The historian (ADR 0034): diagnoses and proposal outcomes, with embeddings, into
        this engine's schema (its first instance loads the embedding model, ~0.1 s)."""

        def new_historian() -> HistorianProjector:
            return HistorianProjector(self.settings, schema=self.schema)

        first = new_historian()
        build = _first_then_fresh(first, new_historian)

        def historian() -> Running:
            instance = self.historian = build()
            return Running(instance.run, instance.close)

        self._supervise("historian", historian)
        return first

    def start_optimizer(self) -> OptimizerProcessor:
        """The optimizer (docs/learning.md): a faust agent on ``diagnoses`` proposing mutations."""
        from processors.optimizer.runtime import OptimizerProcessor

        def new_optimizer() -> OptimizerProcessor:
            from processors.optimizer.strategies import OptimizerConfig

            config = self.optimizer_config or OptimizerConfig()
            return OptimizerProcessor(self.settings, schema=self.schema, config=config)

        first = new_optimizer()
        build = _first_then_fresh(first, new_optimizer)

        def optimizer() -> Running:
            instance = self.optimizer = build()
            return Running(instance.run)

        self._supervise("optimizer", optimizer)
        return first

    def start_scheduler(self, instance_id: str | None = None) -> SchedulerRuntime:
        def new_scheduler() -> SchedulerRuntime:
            return SchedulerRuntime(self.settings, instance_id=instance_id)

        first = new_scheduler()
        index = len(self.schedulers)
        self.schedulers.append(first)
        self.scheduler = self.scheduler or first
        build = _first_then_fresh(first, new_scheduler)

        def scheduler() -> Running:
            instance = build()
            if self.scheduler is self.schedulers[index]:
                self.scheduler = instance
            self.schedulers[index] = instance
            # run() closes the runtime, also when it fails.
            return Running(instance.run)

        self._supervise(f"scheduler-{first.instance_id}", scheduler)
        return first

    def start_critic(self) -> CriticProcessor:
        """The critic (traces -> diagnoses, ADR 0031) in a thread of its own."""

        # Imported here: faust (and its aiokafka) load only for engines that run the critic.
        from processors.critic.runtime import CriticProcessor

        def new_critic() -> CriticProcessor:
            return CriticProcessor(self.settings, schema=self.schema, config=self.critic_config)

        first = new_critic()
        build = _first_then_fresh(first, new_critic)

        def critic() -> Running:
            instance = self.critic = build()
            return Running(instance.run, interrupt=instance.interrupt)

        self._supervise("critic", critic)
        return first

    def start_workers(self) -> WorkerRuntime:
        if self.register_nodes:
            from node_workers.registration import register_nodes

            register_nodes(self.settings, self.nodes)
        first = WorkerRuntime(self.settings, self.nodes, config=self.worker_config)
        self.worker = first
        build = _first_then_fresh(
            first, lambda: WorkerRuntime(self.settings, self.nodes, config=self.worker_config)
        )

        def workers() -> Running:
            worker = self.worker = build()
            stop_event: dict[str, asyncio.Event] = {}
            loop_holder: dict[str, asyncio.AbstractEventLoop] = {}
            ready = threading.Event()

            async def serve() -> None:
                stop_event["event"] = asyncio.Event()
                loop_holder["loop"] = asyncio.get_running_loop()
                ready.set()
                await worker.run_forever(stop_event["event"])

            def run(_stop: threading.Event) -> None:
                asyncio.run(serve())

            def interrupt() -> None:
                if ready.wait(5):
                    loop_holder["loop"].call_soon_threadsafe(stop_event["event"].set)

            return Running(run, interrupt=interrupt)

        self._supervise("workers", workers)
        return first

    def _supervise(self, name: str, launch: Callable[[], Running]) -> Supervisor:
        supervisor = Supervisor(name, launch).start()
        self.components.append(supervisor)
        return supervisor

    def errors(self) -> dict[str, list[BaseException]]:
        """Every death of a component (each one was restarted), by component name."""
        return {c.name: c.errors for c in self.components if c.errors}

    def stop(self, timeout: float = 30.0) -> None:
        for component in reversed(self.components):
            component.stop()
        deadline = time.monotonic() + timeout
        for component in reversed(self.components):
            component.join(max(0.1, deadline - time.monotonic()))
            if component.is_alive():
                log.warning("%s did not stop within %.0fs", component.name, timeout)
        self.components.clear()

    def __enter__(self) -> DevEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
