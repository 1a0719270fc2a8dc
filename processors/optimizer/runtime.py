"""The optimizer's runtime edge: a faust-streaming agent on ``diagnoses`` (ADR 0032).

For each diagnosis about a workflow: read the definition the workflow's new runs get, its
improvement policy and its open optimizer proposals from the Postgres read models (the
projector's ``workflows``, ``workflow_improvement`` and ``mutation_proposals``), ask the
historian for similar past incidents, let the pure planner pick at most one proposal, and
publish it as a ``MutationRequest`` ``propose`` on ``mutations`` (keyed by workflow id).

State: the faust table ``sent`` (changelog-backed) remembers each proposal key the optimizer
proposed for until the read model shows the proposal, so two diagnoses in a row do not give two
proposals for one ``(workflow, step, strategy)`` while the projector catches up. A diagnosis is
keyed by subject, so one step's diagnoses come in order on one partition, and its keys' table
entries live on that partition.

The blocking work (Postgres, the Kafka producer's flush) runs in a thread of the agent's loop
so faust keeps heartbeating. Delivery is at-least-once: a redelivered diagnosis produces the same
mutation id (derived from the diagnosis id), which the mutation processor refuses as a
duplicate.

faust runs in the calling thread's own event loop (``app.start()`` / ``app.stop()``, no
``Worker``: that one wants the main thread for its signal handlers), so the processor runs in a
``DevEngine`` thread like every other component, and alone as ``reflux optimizer``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import psycopg

from foundation.errors import RefluxError
from foundation.settings import Settings
from processors.optimizer.arms import (
    ArmSample,
    bandits_from_samples,
    drift_since,
    model_step,
    sample_from_row,
)
from processors.optimizer.bandit import ModelBandit
from processors.optimizer.history import Historian, NoHistory
from processors.optimizer.planner import (
    AUTHOR_PREFIX,
    DRIFT_KINDS,
    FINAL_STATUSES,
    Plan,
    mutation_request,
    plan,
    proposal_key,
    rejection_holds,
    reset_on_drift,
    strategy_step,
    superseding_key,
)
from processors.optimizer.strategies import OptimizerConfig, StrategyInput
from projections.postgres.identifiers import table
from projections.postgres.mutation_queries import (
    MutationRow,
    current_route,
    get_policy,
    list_mutations,
)
from projections.postgres.queries import list_workflow_versions
from schemas.errors import SchemaError
from schemas.models import Diagnosis, MutationAction, MutationRequest
from schemas.serde import decode
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.security import faust_credentials
from streams.topics import TopicCatalog, TopicSpec
from workflows.data_dependencies import CatalogSideEffects, SideEffectView
from workflows.model import WorkflowDefinition

__all__ = ["Decision", "OptimizerProcessor", "ReadModel", "default_historian"]

log = logging.getLogger(__name__)

PENDING_TTL_S = 300.0
"""How long a sent proposal counts as open while the read model does not show it yet."""
PENDING_CLOCK_SLACK_S = 5.0
"""The proposal's time in the read model is the mutation processor's clock (same machine or
NTP): a proposal projected within this before the note still answers it."""
PROJECTION_WAIT_S = 10.0
"""How long a diagnosis waits for a proposal just sent to show in the read model."""
ARM_WINDOW = 500
"""Finished runs the model-choice bandits are measured on (the newest)."""
ARM_MIN_PULLS = 10
"""Pulls an arm needs in an input class before the bandits compare it."""


def default_historian(settings: Settings, schema: str) -> Historian:
    """The historian's Postgres implementation when its package is installed, else none.

    Imported by name so the optimizer does not depend on the historian's package (it may be
    absent; the optimizer then proposes from the strategy library alone)."""
    try:
        module = importlib.import_module("processors.historian.postgres")
        historian: Historian = module.PostgresHistorian(settings, schema=schema)
        return historian
    except Exception as exc:  # an absent package or database: run without history
        log.info("optimizer without a historian (%s)", exc)
        return NoHistory()


class _NotProjectedYetError(RefluxError):
    """The only thing in a diagnosis's way is a sent proposal the read model does not show."""

    error_class = "NotProjectedYet"


@dataclass(frozen=True)
class Decision:
    """What the optimizer did with one diagnosis (returned for logs and tests)."""

    diagnosis_id: str
    request: MutationRequest | None
    reason: str
    plan: Plan | None = None


class ReadModel:
    """What the optimizer reads from Postgres, one short connection per diagnosis."""

    def __init__(self, settings: Settings, schema: str) -> None:
        self.settings = settings
        self.schema = schema

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.settings.postgres_dsn, autocommit=True)

    def serving(
        self, conn: psycopg.Connection[Any], workflow_id: str
    ) -> tuple[int, WorkflowDefinition] | None:
        """The version new runs get in full: a kept proposal's, the one before a canary or a
        rollback, else the newest registered by hand (docs/mutations.md, routing)."""
        rows = list_workflow_versions(conn, workflow_id, schema=self.schema)
        if not rows:
            return None
        by_version = {row.version: row for row in rows}
        by_hand = [r.version for r in rows if not (r.registered_by or "").startswith("mutation:")]
        version = max(by_hand) if by_hand else max(by_version)
        route = current_route(conn, workflow_id, schema=self.schema)
        if route is not None:
            routed = (
                route.applied_version
                if route.status == "kept"
                else (route.previous_version or route.base_version)
            )
            # A routed version wins over the newest one by hand only if it is newer (a version
            # registered by hand after the route makes the route stale, as routing says).
            if routed is not None and routed in by_version and (routed >= version or not by_hand):
                version = routed
        definition = WorkflowDefinition.from_json_dict(by_version[version].definition)
        return version, definition

    def policy(self, conn: psycopg.Connection[Any], workflow_id: str) -> str:
        row = get_policy(conn, workflow_id, schema=self.schema)
        return row.policy if row is not None else "propose"

    def own_proposals(self, conn: psycopg.Connection[Any], workflow_id: str) -> OwnProposals:
        """The optimizer's proposals of the workflow (the newest 1,000), read once per diagnosis."""
        rows = list_mutations(conn, workflow_id=workflow_id, limit=1000, schema=self.schema)
        own = [row for row in rows if row.author.startswith(AUTHOR_PREFIX)]
        return OwnProposals(workflow_id, own)

    def arm_samples(
        self,
        conn: psycopg.Connection[Any],
        definition: WorkflowDefinition,
        step_id: str,
        context_field: str | None,
        limit: int = ARM_WINDOW,
    ) -> list[ArmSample]:
        """The workflow's last ``limit`` finished runs as the model step's bandits see them
        (any version: the experiment's two arms included)."""
        checkers = [s.id for s in definition.steps if s.checker]
        rows = conn.execute(
            "SELECT r.run_id, r.finished_at, r.status, "
            "CASE WHEN %(field)s::text IS NULL THEN NULL ELSE r.inputs ->> %(field)s::text END, "
            "s.output, extract(epoch FROM r.finished_at - r.started_at) * 1000, "
            f"(SELECT array_agg(c.output) FROM {table(self.schema, 'steps')} c "
            "WHERE c.run_id = r.run_id AND c.step_id = ANY(%(checkers)s)) "
            f"FROM {table(self.schema, 'runs')} r "
            f"LEFT JOIN {table(self.schema, 'steps')} s "
            "ON s.run_id = r.run_id AND s.step_id = %(step)s "
            "WHERE r.workflow_id = %(workflow)s AND r.finished_at IS NOT NULL "
            "AND r.status IN ('succeeded', 'failed') "
            "ORDER BY r.finished_at DESC, r.run_id DESC LIMIT %(limit)s",
            {
                "field": context_field,
                "checkers": checkers,
                "step": step_id,
                "workflow": definition.id,
                "limit": limit,
            },
        ).fetchall()
        return [sample_from_row(*row) for row in rows]


@dataclass(frozen=True)
class OwnProposals:
    """What the optimizer needs to know of its own proposals for one workflow (pure)."""

    workflow_id: str
    rows: Sequence[MutationRow]

    def _key(self, row: MutationRow) -> str:
        evidence = row.evidence if isinstance(row.evidence, Mapping) else {}
        strategy = str(evidence.get("strategy") or row.author.removeprefix(AUTHOR_PREFIX))
        return proposal_key(
            self.workflow_id, strategy_step(strategy, evidence.get("step_id")), strategy
        )

    def open_keys(self, *, auto: bool) -> set[str]:
        """Keys of the proposals that are not final.

        Under policy auto, a proposal validated while another one was the canary waits (one
        canary at a time): it does not hold its key against a newer diagnosis. The newer
        proposal is the one applied when the slot frees (the lifecycle applies the newest
        waiting one made on the version new runs get then); one made on a version that is no
        longer served is never applied by itself, and the optimizer proposes again."""
        return {
            self._key(row)
            for row in self.rows
            if row.status not in FINAL_STATUSES and not (auto and row.status == "validated")
        }

    def rejections(self) -> list[tuple[str, float]]:
        """``(key, rejected_at)`` of the proposals that validation rejected (a report that did
        not pass; a withdrawn proposal's report passed)."""
        return [
            (self._key(row), row.updated_at.timestamp())
            for row in self.rows
            if row.status == "rejected"
            and isinstance(row.report, Mapping)
            and row.report.get("passed") is False
        ]

    def waiting(self) -> dict[str, list[str]]:
        """The validated proposals (waiting for the canary slot), by key."""
        found: dict[str, list[str]] = {}
        for row in self.rows:
            if row.status == "validated":
                found.setdefault(self._key(row), []).append(row.mutation_id)
        return found

    def applied(self) -> str | None:
        """The proposal that is the workflow's canary now, if any (a person's canary is never
        the optimizer's to end)."""
        return next((row.mutation_id for row in self.rows if row.status == "applied"), None)

    def proposed_at(self) -> dict[str, float]:
        """Per key, when the newest proposal for it was made (epoch seconds)."""
        found: dict[str, float] = {}
        for row in self.rows:
            key = self._key(row)
            found[key] = max(found.get(key, 0.0), row.created_at.timestamp())
        return found


@dataclass
class OptimizerProcessor:
    settings: Settings
    schema: str = "reflux"
    config: OptimizerConfig = field(default_factory=OptimizerConfig)
    historian: Historian | None = None
    side_effects: SideEffectView = field(default_factory=CatalogSideEffects)
    bandits: Callable[[str, str], Sequence[ModelBandit]] | None = None
    """The bandits of ``(workflow, step)`` when something else feeds them (reset here on a
    drift). Without it, the bandits of a step with models in ``config.models`` are measured
    from its recent runs in the read models for each diagnosis (``_measured_arms``)."""
    max_age_s: float = 3600.0
    """Diagnoses older than this (by ``detected_at``) are read but not acted on: a fresh
    consumer group does not answer last month's findings."""
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.catalog = TopicCatalog.from_settings(self.settings)
        self.read_model = ReadModel(self.settings, self.schema)
        self.producer = Producer(self.settings, client_id="reflux-optimizer")
        if self.historian is None:
            self.historian = default_historian(self.settings, self.schema)
        self.app_id = f"{self.settings.topic_prefix}.optimizer"
        self._started = threading.Event()
        self._datadir = tempfile.mkdtemp(prefix="reflux-optimizer-")

    # -- the decision for one diagnosis (blocking; runs in a thread) ----------------------------

    def handle(self, diagnosis: Diagnosis, pending: Mapping[str, float] | None = None) -> Decision:
        """What to do with one diagnosis. A diagnosis blocked only by a proposal this optimizer
        sent that the read model does not show yet is looked at again once it does (up to
        :data:`PROJECTION_WAIT_S`): the read model then says whether that proposal still holds
        the key, or is the canary the diagnosis supersedes (seen: a quality drop answered
        "still open" because the exploring proposal sent a moment before was not projected)."""
        deadline = time.monotonic() + PROJECTION_WAIT_S
        while True:
            try:
                return self._handle(diagnosis, pending, wait=time.monotonic() < deadline)
            except _NotProjectedYetError:
                time.sleep(0.25)

    def _handle(
        self, diagnosis: Diagnosis, pending: Mapping[str, float] | None, *, wait: bool
    ) -> Decision:
        if diagnosis.workflow_id is None:
            return self._note(Decision(diagnosis.diagnosis_id, None, "not about a workflow"))
        age = time.time() - diagnosis.detected_at.replace(tzinfo=UTC).timestamp()
        if age > self.max_age_s:
            return self._note(Decision(diagnosis.diagnosis_id, None, f"too old ({age:.0f} s)"))
        with self.read_model.connect() as conn:
            policy = self.read_model.policy(conn, diagnosis.workflow_id)
            if policy == "off":
                return self._note(Decision(diagnosis.diagnosis_id, None, "policy off"))
            serving = self.read_model.serving(conn, diagnosis.workflow_id)
            if serving is None:
                return self._note(Decision(diagnosis.diagnosis_id, None, "workflow unknown"))
            own = self.read_model.own_proposals(conn, diagnosis.workflow_id)
            open_keys = own.open_keys(auto=policy == "auto")
            projected = own.proposed_at()
            version, definition = serving
            waiting = own.waiting()
            superseded = self._superseded(own, diagnosis, definition)
            held = self._held(own, diagnosis, definition)
            if superseded is not None:
                open_keys.discard(superseded[0])  # its experiment, if open, is the one ended
            if self.bandits is not None and diagnosis.step_id is not None:
                bandits: Sequence[ModelBandit] = self.bandits(
                    diagnosis.workflow_id, diagnosis.step_id
                )
                reset_on_drift(diagnosis, bandits)
            else:
                bandits = self._measured_arms(conn, diagnosis, definition)
        now = time.time()
        # A key sent but not projected yet counts as open; once the read model has a proposal
        # for it made since, the read model says whether it is still open.
        unprojected = {
            k
            for k, at in (pending or {}).items()
            if now - at < PENDING_TTL_S and projected.get(k, 0.0) < at - PENDING_CLOCK_SLACK_S
        }
        open_keys |= unprojected
        assert self.historian is not None
        try:
            incidents = list(self.historian.similar(diagnosis, k=5))
        except Exception as exc:  # the historian is advice: its failure must not stop us
            log.warning("historian lookup failed for %s: %s", diagnosis.diagnosis_id, exc)
            incidents = []
        given = StrategyInput(
            diagnosis=diagnosis,
            definition=definition,
            base_version=version,
            side_effects=self.side_effects,
            config=self.config,
            incidents=incidents,
            bandits=tuple(bandits),
        )
        found = plan(given, policy=policy, open_keys=open_keys, held=held)
        if found.proposal is None:
            blocked = {k for k in unprojected if any(k in why for _, why in found.skipped)}
            if wait and blocked:
                raise _NotProjectedYetError(f"sent, not projected yet: {sorted(blocked)}")
            reasons = "; ".join(f"{name}: {why}" for name, why in found.skipped) or "no strategy"
            return self._note(Decision(diagnosis.diagnosis_id, None, reasons, found))
        request = mutation_request(found, given)
        p = found.proposal
        key = proposal_key(diagnosis.workflow_id, p.step_id, p.strategy)
        actor = f"{AUTHOR_PREFIX}{p.strategy}"
        # All on the workflow's partition, in this order: the proposal (validated, it waits
        # while a canary runs), then the optimizer's older proposals for the key that wait too
        # (withdrawn: superseded by this one), then the canary this answer supersedes, whose
        # end lets the lifecycle apply the newest waiting proposal: this one.
        self.producer.send(self.catalog.mutations, request.workflow_id, request)
        for old in waiting.get(key, []):
            withdraw = MutationRequest(
                workflow_id=diagnosis.workflow_id,
                mutation_id=old,
                action=MutationAction.REJECT,
                actor=actor,
                reason=f"superseded by {request.mutation_id} ({diagnosis.diagnosis_id})",
            )
            self.producer.send(self.catalog.mutations, withdraw.workflow_id, withdraw)
        if superseded is not None and superseded[0] == key:
            rollback = MutationRequest(
                workflow_id=diagnosis.workflow_id,
                mutation_id=superseded[1],
                action=MutationAction.ROLLBACK,
                actor=actor,
                reason=f"superseded by the answer to {diagnosis.diagnosis_id}: "
                f"{diagnosis.explanation}",
            )
            self.producer.send(self.catalog.mutations, rollback.workflow_id, rollback)
        self.producer.flush(10.0)
        log.info(
            "optimizer proposed %s (%s) for %s",
            request.mutation_id,
            found.proposal.strategy,
            diagnosis.diagnosis_id,
        )
        return self._note(Decision(diagnosis.diagnosis_id, request, "proposed", found))

    def _held(
        self, own: OwnProposals, diagnosis: Diagnosis, definition: WorkflowDefinition
    ) -> dict[str, str]:
        """The keys a recent validation rejection holds (``planner.rejection_holds``), but for
        the one a quality drop answers: the drop voids what the rejected replay measured."""
        held = rejection_holds(
            own.rejections(),
            now=time.time(),
            hold_s=self.config.rejection_hold_s,
        )
        voided = superseding_key(diagnosis, definition)
        if voided is not None:
            held.pop(voided, None)
        return held

    def _superseded(
        self, own: OwnProposals, diagnosis: Diagnosis, definition: WorkflowDefinition
    ) -> tuple[str, str] | None:
        """A quality drop of a model step while one of the optimizer's own proposals is the
        workflow's canary: the answer needs the slot (one canary per workflow), and a
        regression of what the workflow answers goes before a tune-up still being measured (a
        model-choice experiment on the step measures arms whose history the drift voided; a
        timeout or retry is proposed again if its finding recurs). (the answer's key, the
        canary's mutation id) to roll back before proposing; None otherwise."""
        key = superseding_key(diagnosis, definition)
        if key is None or diagnosis.workflow_id is None:
            return None
        mutation_id = own.applied()
        return None if mutation_id is None else (key, mutation_id)

    def _measured_arms(
        self, conn: psycopg.Connection[Any], diagnosis: Diagnosis, definition: WorkflowDefinition
    ) -> list[ModelBandit]:
        """The model step's bandits measured from its recent runs (``config.models`` names its
        arms); on a drift, only the runs since the drift began count (the reset)."""
        step_id = model_step(definition, diagnosis.step_id)
        if step_id is None:
            return []
        arms = self.config.models_for(definition.id, step_id)
        if not arms:
            return []
        context_field = self.config.contexts.get(definition.id)
        samples = self.read_model.arm_samples(conn, definition, step_id, context_field)
        since = None
        if diagnosis.kind in DRIFT_KINDS:
            evidence = _json_object(diagnosis.evidence)
            after = evidence.get("after")
            after_n = after.get("n") if isinstance(after, dict) else None
            detected = diagnosis.detected_at.replace(tzinfo=diagnosis.detected_at.tzinfo or UTC)
            since = drift_since(samples, detected, int(after_n or 0))
            if since is None:
                return []  # the drift's window is not in the read model yet: nothing measured
        return bandits_from_samples(
            samples,
            key=f"{definition.id}/{step_id}",
            arms=arms,
            weights=self.config.weights_for(definition.id),
            budget=self.config.exploration_budget,
            min_pulls=ARM_MIN_PULLS,
            since=since,
        )

    def _note(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        del self.decisions[:-1000]
        return decision

    # -- faust ------------------------------------------------------------------------------------

    def _app(self, loop: asyncio.AbstractEventLoop) -> faust.App:
        app = faust.App(
            self.app_id,
            broker=f"kafka://{self.settings.kafka_bootstrap}",
            broker_credentials=faust_credentials(self.settings),
            store="memory://",
            web_enabled=False,
            loop=loop,
            datadir=str(Path(self._datadir)),
            processing_guarantee="at_least_once",
            topic_partitions=self.catalog.diagnoses.partitions,
            consumer_auto_offset_reset="earliest",
            topic_allow_declare=True,
        )
        topic = app.topic(
            self.catalog.diagnoses.topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        sent = app.Table("sent", default=float, partitions=self.catalog.diagnoses.partitions)

        @app.agent(topic)
        async def diagnoses(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                try:
                    diagnosis = decode(value, Diagnosis)
                except SchemaError as exc:
                    log.warning("ignoring an unreadable diagnoses record: %s", exc)
                    continue
                pending = {key: float(sent[key]) for key in list(sent.keys())}
                try:
                    decision = await asyncio.get_running_loop().run_in_executor(
                        None, self.handle, diagnosis, pending
                    )
                except Exception as exc:
                    # An agent that raises stops consuming for good (faust does not restart
                    # it): log, record, and go on with the next diagnosis.
                    log.exception("optimizer failed on %s", diagnosis.diagnosis_id)
                    self._note(Decision(diagnosis.diagnosis_id, None, f"error: {exc}"))
                    continue
                if decision.plan is not None and decision.plan.proposal is not None:
                    p = decision.plan.proposal
                    key = proposal_key(diagnosis.workflow_id or "", p.step_id, p.strategy)
                    try:
                        sent[key] = time.time()
                    except Exception:
                        # The proposal is out; only the "sent, not yet projected" note is
                        # lost (the read model's open proposals still guard duplicates). A
                        # raise here would end the agent for good (e.g. faust's
                        # PartitionsMismatch while its changelog's metadata is missing).
                        log.exception("optimizer: could not note %s as sent", key)

        return app

    def changelog_topic(self) -> TopicSpec:
        """The table ``sent``'s changelog, as faust names it. Created before the app starts:
        declared by faust on a fresh prefix, it can be missing from the client's metadata when
        the first proposal is noted (seen in ``reflux demo improve``: PartitionsMismatch,
        "the changelog topic has 0 partitions", and the agent crashed)."""
        return TopicSpec(
            logical="optimizer-sent-changelog",
            topic=f"{self.app_id}-sent-changelog",
            partitions=self.catalog.diagnoses.partitions,
            replication=self.catalog.replication,
            key="proposal key (workflow|step|strategy)",
            description="the optimizer's proposals sent but not yet projected (faust table)",
            configs={"cleanup.policy": "compact"},
        )

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self.catalog, [self.changelog_topic()], settings=self.settings)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(loop, stop))
        finally:
            loop.close()
            self.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        app = self._app(loop)
        await app.start()
        self._started.set()
        log.info("optimizer running (faust app %s)", self.app_id)
        try:
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            await app.stop()

    def wait_started(self, timeout: float = 30.0) -> bool:
        return self._started.wait(timeout)

    def close(self) -> None:
        self.producer.flush(5.0)
        self.producer.close()
        # faust's data folder (memory store: only its lock and metadata) goes with the instance.
        shutil.rmtree(self._datadir, ignore_errors=True)


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def now_utc() -> datetime:
    return datetime.now(UTC)
