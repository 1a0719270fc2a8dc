"""Run state: what ``evolve`` builds from a run's events and ``decide`` reads (frozen pydantic).

Immutable by convention and by construction: every change goes through ``replace(...)``
in :mod:`processors.scheduler.evolve`; nothing else ever writes a field. Mappings inside are only
replaced, never mutated in place, so a state handed to ``decide`` can be kept as "before".

The state is also the runtime's table value: :meth:`RunState.to_snapshot` /
:meth:`RunState.from_snapshot` give a JSON form for a changelog-backed table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from foundation.tenancy import DEFAULT_TENANT
from processors.scheduler.cache import params_digest
from processors.scheduler.map_state import MapState
from schemas.models import ErrorInfo, ParentRef, PayloadRef, StepRef, TimerKind
from schemas.statuses import (
    ACTIVE_STEP_STATUSES,
    DONE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    FINISHED_RUN_STATUSES,
    RunStatus,
    StepStatus,
)
from workflows.model import StepDefinition, WorkflowDefinition

# The statuses and their sets are defined in schemas.statuses (the API, the client and the read
# models use them too); the scheduler re-exports them with its state.
__all__ = [
    "ACTIVE_STEP_STATUSES",
    "DONE_STEP_STATUSES",
    "FAILED_STEP_STATUSES",
    "FINISHED_RUN_STATUSES",
    "RunState",
    "RunStatus",
    "StepState",
    "StepStatus",
    "StepWait",
    "Timer",
]

MAX_PROCESSED_IDS = 512
"""How many recent causation ids a run remembers for command dedupe (oldest dropped first)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def replace(self, **changes: Any) -> Self:
        """``model_copy(update=changes)`` for these models (frozen, no extra fields, no private
        attributes), without pydantic's general path. ``evolve`` makes about three copies per
        run event, and ``model_copy``'s four ``copy.copy`` calls were ~15% of the scheduler's
        CPU on inline runs (cProfile, 2026-12-07). Like ``model_copy``: shallow, and
        ``changes`` are not validated."""
        cls = type(self)
        new = cls.__new__(cls)
        fields = self.__dict__.copy()
        fields.update(changes)
        object.__setattr__(new, "__dict__", fields)
        object.__setattr__(new, "__pydantic_extra__", None)
        object.__setattr__(
            new, "__pydantic_fields_set__", self.__pydantic_fields_set__ | changes.keys()
        )
        object.__setattr__(new, "__pydantic_private__", None)
        return new


class Timer(_Frozen):
    """A deadline in run state; the runtime turns due timers into ``FireTimer`` commands."""

    timer_id: str
    kind: TimerKind
    due_at: datetime
    step_id: str | None = None
    attempt: int = 0
    """Backoff: the attempt it will start. Step or queue timeout: the attempt it guards.
    Deadline: 0."""


class StepWait(_Frozen):
    """A ``meta.wait`` / ``meta.signal`` step's wait (StepWaitStarted; ADR 0057): the step is
    ``running`` in the scheduler, no worker holds it."""

    attempt: int
    timer_id: str | None = None
    """The wait timer (TimerKind.wait) in ``RunState.timers``; None: a signal wait, no timeout."""
    due_at: datetime | None = None
    signal: str | None = None
    """meta.signal: the signal name; None for meta.wait."""
    on_timeout: str | None = None
    """meta.signal: ``fail`` or ``continue``."""


class StepState(_Frozen):
    step_id: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    """Current (or last) attempt, 1-based; 0 before the first StepScheduled."""
    node_version: str | None = None
    """Version resolved at scheduling (concrete semver, or the constraint without a catalog)."""
    params: Any = None
    """Params rendered for the current attempt (``None`` when they are in ``params_ref``)."""
    params_ref: PayloadRef | None = None
    """The rendered params in the object store, when too large to inline (claim check)."""
    cache_key: str | None = None
    invocation_id: str | None = None
    invoke_topic: str | None = None
    dispatch_seq: int | None = None
    """seq of the StepDispatched event, copied into NodeInvocation.seq."""
    dispatched_at: datetime | None = None
    queue_timeout_at: datetime | None = None
    """When the step fails with QueueTimeout unless a worker starts the attempt (queue_timeout)."""
    started_at: datetime | None = None
    """When a worker started the current attempt (StepStarted; the worker's clock)."""
    timeout_at: datetime | None = None
    """When the step-timeout timer of the current attempt fires: armed by StepStarted (logs
    written before StepStarted existed armed it at dispatch), moved by StepTimeoutExtended."""
    output: Any = None
    output_ref: PayloadRef | None = None
    cache_hit: bool = False
    error: ErrorInfo | None = None
    skip_reason: str | None = None
    finished_at: datetime | None = None
    child_run_id: str | None = None
    """meta.workflow / meta.loop: the child run of the current attempt (or iteration), from
    ChildRunRequested; ``None`` before one is requested and between loop iterations."""
    iteration: int = 0
    """meta.loop: the iteration of the current attempt requested last (1-based; 0 = none yet)."""
    iteration_output: Any = None
    """meta.loop: the outputs of the last iteration that ended (``loop.previous``)."""
    wait: StepWait | None = None
    """meta.wait / meta.signal: the wait of the current attempt (kept after it ends)."""

    @property
    def params_sha256(self) -> str:
        """sha256 of the canonical params: the claim check's digest is that of the same bytes."""
        if self.params_ref is not None:
            return self.params_ref.sha256
        return params_digest(self.params)


class RunState(_Frozen):
    run_id: str
    status: RunStatus
    last_seq: int = -1
    """seq of the last applied event; the next event gets last_seq + 1."""
    workflow_id: str = ""
    workflow_version: int = 0
    definition: WorkflowDefinition | None = None
    """The run's graph (None only while PENDING); GraphMutated events change it."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    deadline: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    idempotency_key: str | None = None
    source: str = "api"
    tenant: str = DEFAULT_TENANT
    trace_context: dict[str, str] = Field(default_factory=dict)
    """The W3C trace context recorded in ``RunStarted`` (ADR 0062); empty for runs nobody traced
    and for runs started before it existed."""
    """The run's tenant (its workflow's, RunStarted v3): on every invocation, and on the
    StartRun of its children (a run cannot start another tenant's workflow)."""
    steps: dict[str, StepState] = Field(default_factory=dict)
    timers: dict[str, Timer] = Field(default_factory=dict)
    outputs: Any = None
    error: ErrorInfo | None = None
    failed_step: str | None = None
    parent: ParentRef | None = None
    """A child run's parent (RunStarted v2): its terminal event sends ChildRunFinished there."""
    maps: dict[str, MapState] = Field(default_factory=dict)
    """Progress of the run's ``meta.map`` steps (current attempt), by step id."""
    processed_ids: tuple[str, ...] = ()
    """Recent causation ids (command ids, invocation ids, timer ids); bounded, for dedupe."""

    # -- reading helpers ------------------------------------------------------------------------

    @property
    def graph(self) -> WorkflowDefinition:
        if self.definition is None:
            raise ValueError(
                f"Expected run {self.run_id!r} to have a definition, but it is pending"
            )
        return self.definition

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES

    def step(self, step_id: str) -> StepState:
        return self.steps[step_id]

    def step_definition(self, step_id: str) -> StepDefinition:
        return self.graph.step(step_id)

    def step_ref(self, step_id: str) -> StepRef:
        """StepRef for events: the resolved version once scheduled, else the constraint."""
        definition = self.graph.step(step_id)
        state = self.steps.get(step_id)
        version = state.node_version if state and state.node_version else definition.node_constraint
        return StepRef(step_id=step_id, node=definition.node_name, node_version=version)

    def summary(self) -> dict[str, Any]:
        """A stable, compact JSON view (golden fixtures compare it; also handy in logs)."""
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "last_seq": self.last_seq,
            "workflow": f"{self.workflow_id}@{self.workflow_version}",
            "graph": [f"{s.id}={s.node}<-{','.join(s.needs)}" for s in self.graph.steps]
            if self.definition
            else [],
            "steps": {
                sid: {
                    "status": st.status.value,
                    "attempt": st.attempt,
                    "cache_hit": st.cache_hit,
                    "output": st.output,
                    "error_class": st.error.error_class if st.error else None,
                }
                for sid, st in sorted(self.steps.items())
            },
            "timers": sorted(
                f"{t.kind.value}:{t.step_id}:{t.attempt}" for t in self.timers.values()
            ),
            "outputs": self.outputs,
            "error_class": self.error.error_class if self.error else None,
            "failed_step": self.failed_step,
        }

    # -- snapshots --------------------------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json")
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> RunState:
        return cls.model_validate(data)
