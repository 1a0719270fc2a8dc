"""The critic's runtime on the ``traces`` topic (ADR 0031): two engines around one pure core.

``engine="kafka"`` (the default) is a confluent-kafka loop (:mod:`.kafka_loop`), because faust's
per-event cost is seven times the critic's own (measured in ADR 0031); ``engine="faust"`` is the
faust-streaming app described below, kept selectable (the owner's choice of framework) and
tested like the default.

The faust app:

One agent reads the JSON traces (``schemas/trace_json.py``), decodes the dozen fields the
critic needs (:func:`~processors.critic.view.view_from_json`), feeds the pure
:class:`~processors.critic.critic.Critic` and publishes what it returns on the ``diagnoses``
topic (Avro single-object, keyed by subject), awaiting the broker's acknowledgement before it
takes the next trace, so faust commits a trace's offset only after its diagnoses are written
(at-least-once; a re-delivered trace gives the same ``diagnosis_id`` and ``event_id``).

State:

- The **episode guard** (which (subject, kind, direction) has an open episode) is a faust
  ``Table`` with a changelog topic: a restarted critic does not announce an ongoing episode
  again. It is written only when an episode opens or moves (episodes.py), so the changelog
  stays small.
- The **detectors** (ADWIN windows, HalfSpaceTrees, run assembly) stay in memory. A changelog
  write per trace for them would multiply the critic's Kafka traffic; after a restart they
  re-learn from the traces that follow (ADWIN needs its 30-trace grace period; HalfSpaceTrees
  two reference windows), which the ADR accepts.

One instance per deployment: step and run subjects span the traces topic's partitions (traces
are keyed by node), so every partition must reach the same critic. Scaling out needs a
repartition by workflow id first (ADR 0031).

:class:`CriticProcessor` runs the app on its own event loop in the calling thread
(``run(stop_event)``), for ``reflux critic`` and for ``reflux.dev.DevEngine(critic=True)``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from processors.critic.config import ENGINES, CriticConfig
from processors.critic.critic import Critic
from processors.critic.definitions import PostgresDependencies
from processors.critic.kafka_loop import episodes_topic, run_kafka_loop
from processors.critic.runs import DependencyOracle
from processors.critic.view import TraceViewError, view_from_json
from schemas.serde import encode
from streams.admin import ensure_topics
from streams.security import faust_credentials
from streams.topics import TopicCatalog, TopicSpec

__all__ = ["ENGINES", "CriticEngineError", "CriticProcessor", "RuntimeStats"]

PUBLISH_RETRY_FIRST_S = 0.1
PUBLISH_RETRY_MAX_S = 5.0


class CriticEngineError(NonRetryableError):
    """An unknown critic engine was asked for."""

    error_class = "UnknownCriticEngine"


log = logging.getLogger(__name__)


@dataclass
class RuntimeStats:
    consumed: int = 0
    malformed: int = 0
    published: int = 0
    failed: int = 0
    """Traces whose judgement raised (a bug): logged and skipped."""
    publish_retries: int = 0
    """Diagnosis sends that failed and were tried again (faust engine)."""
    started: bool = False
    """Set once faust's worker has started (partitions are assigned a moment later)."""


class _ThreadWorker(faust.Worker):
    """faust's Worker without what only a process' main thread may do."""

    def install_signal_handlers(self) -> None:
        # Signals belong to the main thread; the owner stops us through ``stop_event``.
        return

    def _setproctitle(self, info: str, *, ident: str = "") -> None:
        return


class CriticProcessor:
    def __init__(
        self,
        settings: Settings,
        *,
        config: CriticConfig | None = None,
        dependencies: DependencyOracle | None = None,
        app_id: str | None = None,
        data_dir: Path | None = None,
        schema: str | None = "reflux",
        engine: str = "kafka",
    ) -> None:
        """``schema``: the Postgres read model whose workflow definitions tell which steps are
        data-independent (the sequential-steps finding); None leaves that finding out.
        ``dependencies`` overrides it."""
        self.settings = settings
        self.catalog = TopicCatalog.from_settings(settings)
        self.config = config or CriticConfig()
        if dependencies is None and schema is not None:
            dependencies = PostgresDependencies(settings, schema)
        self.dependencies = dependencies
        self.app_id = app_id or f"{self.catalog.prefix}.critic"
        # faust wants a folder; with the memory store nothing in it outlives the process, so by
        # default a temporary one, removed when the run ends.
        self.data_dir = data_dir
        if engine not in ENGINES:
            raise CriticEngineError(f"engine: expected one of {sorted(ENGINES)}, got {engine!r}")
        self.engine = engine
        self.stats = RuntimeStats()
        self.critic: Critic | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._kafka_stop: threading.Event | None = None
        self._fatal: BaseException | None = None
        # The topics faust reads and writes exist with the catalog's settings before it
        # starts (faust would otherwise declare them with its own defaults).
        ensure_topics(
            self.catalog, [self.catalog.traces, self.catalog.diagnoses], settings=settings
        )

    # -- the app ---------------------------------------------------------------------------------

    def _build(self, data_dir: Path) -> faust.App:
        traces = self.catalog.traces
        app = faust.App(
            self.app_id,
            broker=f"kafka://{self.settings.kafka_bootstrap}",
            broker_credentials=faust_credentials(self.settings),
            store="memory://",
            processing_guarantee="at_least_once",
            topic_partitions=traces.partitions,
            topic_replication_factor=self.catalog.replication,
            web_enabled=False,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            datadir=str(data_dir),
            # The critic keeps up with ~20k traces/s; larger fetches amortise the Python cost.
            stream_buffer_maxsize=8192,
        )
        source = app.topic(traces.topic, key_type=bytes, value_type=bytes, value_serializer="raw")
        sink = app.topic(
            self.catalog.diagnoses.topic,
            key_type=bytes,
            value_type=bytes,
            value_serializer="raw",
        )
        episodes = app.Table(
            "episodes",
            default=None,
            partitions=traces.partitions,
            key_type=str,
            value_type=dict,
        )
        store: MutableMapping[str, Any] = episodes
        critic = self.critic = Critic(self.config, episodes=store, dependencies=self.dependencies)
        stats = self.stats

        @app.agent(source)
        async def criticise(stream: faust.StreamT[bytes]) -> None:
            try:
                async for value in stream:
                    await judge(value)
            except Exception as exc:
                # faust would restart the agent and go on past the trace that raised, losing
                # what it was publishing; the processor stops instead (``run`` raises) and a
                # restart resumes from the committed offsets (at-least-once).
                log.error("critic: the faust agent failed: %r", exc)
                self._fatal = exc
                self.interrupt()
                raise

        async def judge(value: bytes) -> None:
            stats.consumed += 1
            try:
                view = view_from_json(value)
            except TraceViewError as exc:
                stats.malformed += 1
                log.warning("critic: skipping a malformed trace: %s", exc)
                return
            try:
                diagnoses = critic.observe(view)
            except Exception:
                stats.failed += 1  # one trace's bug does not stop the stream (ADR 0011)
                log.exception("critic: a trace of run %s could not be judged", view.run_id)
                return
            for diagnosis in diagnoses:
                await self._publish(sink, diagnosis.subject.encode(), encode(diagnosis))
                stats.published += 1
                log.info(
                    "critic: %s %s: %s", diagnosis.kind, diagnosis.subject, diagnosis.explanation
                )

        del criticise
        return app

    async def _publish(self, sink: Any, key: bytes, value: bytes) -> None:
        """Send one diagnosis and wait for the broker's acknowledgement, so faust commits the
        trace's offset only after it; a failed send (a leader moving, a broker restarting) is
        retried with backoff rather than dropped."""
        delay = PUBLISH_RETRY_FIRST_S
        while True:
            try:
                sent = await sink.send(key=key, value=value)
                await sent
                return
            except Exception as exc:  # faust wraps the client's errors in its own
                if self._stopping is not None and self._stopping.is_set():
                    raise
                self.stats.publish_retries += 1
                log.warning("critic: publishing a diagnosis failed (%r); retrying", exc)
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, PUBLISH_RETRY_MAX_S)

    # -- running ---------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        """Consume and criticise until ``stop_event`` is set (or :meth:`interrupt`)."""
        if self.engine == "kafka":
            self._run_kafka(stop_event)
            return
        # The table's changelog exists before faust starts: declared by faust on a fresh prefix,
        # it can be missing from the client's metadata when the first episode is written, and
        # every write then raises PartitionsMismatch ("the changelog topic has 0 partitions";
        # seen under load in make test). The optimizer does the same for its table.
        ensure_topics(self.catalog, [self._episodes_changelog()], settings=self.settings)
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            asyncio.run(self._serve(stop_event, self.data_dir))
            return
        with tempfile.TemporaryDirectory(prefix="reflux-critic-") as folder:
            asyncio.run(self._serve(stop_event, Path(folder)))

    def _episodes_changelog(self) -> TopicSpec:
        """The faust table ``episodes``' changelog, as faust names it."""
        return TopicSpec(
            logical="critic-episodes-changelog",
            topic=f"{self.app_id}-episodes-changelog",
            partitions=self.catalog.traces.partitions,
            replication=self.catalog.replication,
            key="episode key (kind|subject|direction or class)",
            description="the critic's open drift episodes (faust table changelog)",
            configs={"cleanup.policy": "compact"},
        )

    async def _serve(self, stop_event: threading.Event, data_dir: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = self._build(data_dir)
        worker = _ThreadWorker(
            app,
            loop=self._loop,
            quiet=True,
            override_logging=False,
            loglevel="WARNING",
            # daemon=True would make start() wait until the worker stops.
            daemon=False,
        )
        await worker.start()
        self.stats.started = True
        try:
            while not stop_event.is_set() and not self._stopping.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=0.2)
                except TimeoutError:
                    continue
                if worker.should_stop or app.should_stop:
                    raise RuntimeError("the critic's faust app stopped by itself")
        finally:
            await worker.stop()
        if self._fatal is not None:
            raise RuntimeError("the critic's faust agent failed") from self._fatal

    def _run_kafka(self, stop_event: threading.Event) -> None:
        spec = episodes_topic(self.catalog)
        ensure_topics(self.catalog, [spec], settings=self.settings)
        self._kafka_stop = stop_event

        def build(store: MutableMapping[str, Any]) -> Critic:
            critic = self.critic = Critic(
                self.config, episodes=store, dependencies=self.dependencies
            )
            return critic

        run_kafka_loop(
            self.settings, self.catalog, build, self.app_id, stats=self.stats, stop_event=stop_event
        )

    def interrupt(self) -> None:
        """Wake :meth:`run` from another thread."""
        if self._kafka_stop is not None:
            self._kafka_stop.set()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
