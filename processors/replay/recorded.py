"""Side effects never repeat: side-effecting node invocations answered from the original runs.

A shadow engine's worker serves every node. Pure invocations (transform, condition, an http GET,
a read-only query: ``side_effects`` false, or ``cacheable_for`` the params) re-execute on the real
node. Side-effecting ones go to a :class:`RecordedNode` standing in for the real node (same name,
version and topic): it looks the attempt up in :class:`RecordedResults`, a table of what the
original run's same step did with the same params (step id + sha256 of the canonical params,
``Trace.inputs_hash`` style), and answers with that output or error. The candidate calling with
params the original never used falls to the :class:`~processors.replay.shadow.EffectPolicy`:
``stub`` (declared output), ``skip`` (empty output), ``live`` (the real node, only if the user
allowed it for that node) or, by default, a failed step of error class ``ReplayNoRecord`` -- the
real node is never called. docs/decisions/0029-shadow-replay.md.

The shadow run keeps the original's run id (its topics are its own), so ``ctx.run_id`` names the
record to serve from.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from node_workers.errors import NonRetryableNodeError, RetryableNodeError
from node_workers.node import AnyNode, Node, NodeContext, validate_params
from node_workers.registry import NodeRegistry
from node_workers.secrets import secret_names
from schemas.base import canonical_json

__all__ = [
    "REPLAY_NO_RECORD",
    "RecordedAttempt",
    "RecordedNode",
    "RecordedResults",
    "ServedLog",
    "has_side_effects",
    "params_hash",
    "recorded_attempts",
    "shadow_registry",
]

REPLAY_NO_RECORD = "ReplayNoRecord"
"""Error class of a side-effecting step with no matching record and no policy to answer it."""
REPLAY_RECORD_UNAVAILABLE = "ReplayRecordUnavailable"

ServedHow = Literal["executed", "record", "stub", "skip", "live"]


def params_hash(params: Any) -> str:
    """sha256 of the canonical JSON params: what a record is matched by (with the step id)."""
    import hashlib

    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


def has_side_effects(node: AnyNode, params: BaseModel) -> bool:
    """Whether this invocation changes the outside world: the node declares side effects and
    does not narrow them away for these params (an http GET, a read-only query are cacheable,
    hence safe to run again)."""
    return bool(node.side_effects) and not node.cacheable_for(params)


@dataclass(frozen=True)
class RecordedAttempt:
    """What one attempt of the original returned: an output, or an error."""

    output: Any = None
    error_class: str | None = None
    message: str = ""
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.error_class is None


def recorded_attempts(events: Iterable[Any]) -> dict[tuple[str, str], list[RecordedAttempt]]:
    """(step id, params hash) -> the original's attempts in order, from its event log (the
    event models). An attempt ends in StepSucceeded, StepFailed, StepRetryScheduled (a
    retryable failure) or StepTimedOut; one without an end (still running) is not recorded."""
    from schemas import models
    from schemas.run_log import schedules_step

    pending: dict[str, str] = {}  # step id -> params hash of the attempt in flight
    out: dict[tuple[str, str], list[RecordedAttempt]] = {}

    def end(step_id: str, attempt: RecordedAttempt) -> None:
        digest = pending.pop(step_id, None)
        if digest is not None:
            out.setdefault((step_id, digest), []).append(attempt)

    for event in events:
        if schedules_step(event):  # a StepScheduled, or a dispatch that schedules (ADR 0075)
            digest = (
                event.params_ref.sha256
                if event.params_ref is not None
                else params_hash(event.params)
            )
            pending[event.step.step_id] = digest
        elif isinstance(event, models.StepSucceeded):
            if event.output_ref is not None:
                # A claim-checked output is not loaded here: served as unavailable, never called.
                end(
                    event.step.step_id,
                    RecordedAttempt(
                        error_class=REPLAY_RECORD_UNAVAILABLE,
                        message=f"the recorded output is in {event.output_ref.uri}",
                    ),
                )
            else:
                end(event.step.step_id, RecordedAttempt(output=event.output))
        elif isinstance(event, models.StepFailed):
            err = event.error
            end(
                event.step.step_id,
                RecordedAttempt(
                    error_class=err.error_class, message=err.message, retryable=err.retryable
                ),
            )
        elif isinstance(event, models.StepRetryScheduled):
            end(
                event.step.step_id,
                RecordedAttempt(error_class="RecordedRetry", message=event.reason, retryable=True),
            )
        elif isinstance(event, models.StepTimedOut):
            end(
                event.step.step_id,
                RecordedAttempt(
                    error_class="NodeTimeout",
                    message=f"recorded timeout after {event.timeout_ms} ms",
                    retryable=True,
                ),
            )
    return out


@dataclass
class ServedLog:
    """How each shadow step's attempts were served (the worker threads write, the replay reads):
    (run id, step id) -> the last attempt's way and how many calls reached a real node."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    served: dict[tuple[str, str], ServedHow] = field(default_factory=dict)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)

    def spent(self, run_id: str, step_id: str, tokens: int | None) -> None:
        """LLM tokens an executed attempt reported (``ctx.cost_tokens``)."""
        if tokens is None:
            return
        with self._lock:
            self.tokens[(run_id, step_id)] = self.tokens.get((run_id, step_id), 0) + tokens

    def tokens_of(self, run_id: str, step_id: str) -> int | None:
        with self._lock:
            return self.tokens.get((run_id, step_id))

    def note(self, run_id: str, step_id: str, how: ServedHow) -> None:
        with self._lock:
            self.served[(run_id, step_id)] = how
            if how in ("executed", "live"):
                self.calls[(run_id, step_id)] = self.calls.get((run_id, step_id), 0) + 1

    def get(self, run_id: str, step_id: str) -> tuple[ServedHow, int]:
        with self._lock:
            return (
                self.served.get((run_id, step_id), "executed"),
                self.calls.get((run_id, step_id), 0),
            )


class RecordedResults:
    """The originals' side-effect records, by run id: filled before the candidate runs start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, dict[tuple[str, str], list[RecordedAttempt]]] = {}

    def add_run(self, run_id: str, events: Iterable[Any]) -> None:
        table = recorded_attempts(events)
        with self._lock:
            self._runs[run_id] = table

    def lookup(
        self, run_id: str, step_id: str, digest: str, attempt: int
    ) -> RecordedAttempt | None:
        """The original's attempt ``attempt`` of this step with these params (its last one
        when the candidate needs more attempts than it did), or None."""
        with self._lock:
            attempts = self._runs.get(run_id, {}).get((step_id, digest))
        if not attempts:
            return None
        return attempts[min(max(attempt, 1), len(attempts)) - 1]


class _AnyParams(BaseModel):
    """The raw params as they came (validated against the real node separately)."""

    model_config = ConfigDict(extra="allow")


class _AnyOutput(BaseModel):
    model_config = ConfigDict(extra="allow")


class RecordedNode(Node[_AnyParams, _AnyOutput]):
    """Stands in for a side-effecting node in the shadow engine (same name, version, topic).

    ``modes``: the policy per node name ("record" by default); ``stubs``: declared outputs."""

    Input = _AnyParams
    Output = _AnyOutput

    def __init__(
        self,
        real: AnyNode,
        records: RecordedResults,
        served: ServedLog,
        *,
        mode: str = "record",
        stub: Any = None,
    ) -> None:
        self.real = real
        self.name = real.name
        self.version = real.version
        self.cacheable = False
        self.side_effects = True
        self.workload = real.workload
        self.own_pool = real.own_pool
        self.description = f"replay stand-in for {real.key}"
        self.records = records
        self.served = served
        self.mode = mode
        self.stub = stub

    def bind(self, settings: Any) -> None:
        self.real.bind(settings)

    def set_concurrency(self, limit: int) -> None:
        self.real.set_concurrency(limit)

    async def aclose(self) -> None:
        await self.real.aclose()

    async def execute(self, params: _AnyParams, ctx: NodeContext) -> _AnyOutput:
        raw = params.model_dump()
        # Invalid params fail as the real node would fail them (never served from a record).
        typed = validate_params(self.real, raw)
        if self.mode == "live":
            return await self._live(typed, ctx)
        if not has_side_effects(self.real, typed):
            # A safe invocation of a side-effecting node (an http GET): re-executed.
            self.served.note(ctx.run_id, ctx.step_id, "executed")
            return await self._call(typed, ctx)
        answer = self._serve(raw, ctx.run_id, ctx.step_id, ctx.attempt)
        if answer.ok:
            return _AnyOutput.model_validate(answer.output)
        error = RetryableNodeError if answer.retryable else NonRetryableNodeError
        raise error(answer.message, error_class=answer.error_class or "NodeError")

    def answer(self, raw: Any, run_id: str, step_id: str, attempt: int) -> RecordedAttempt | None:
        """The stand-in's answer to an invocation without running an attempt -- a recorded side
        effect served like a cache hit (the replay's fold mode) -- or None when the invocation
        needs the attempt path: ``live`` mode, a safe invocation (re-executed), params that do
        not validate or carry secret placeholders (the attempt reports / resolves them), a
        recorded output that is not an object. The same answers :meth:`execute` gives."""
        if self.mode == "live" or not isinstance(raw, Mapping) or secret_names(raw):
            return None
        try:
            typed = validate_params(self.real, raw)
        except Exception:
            return None
        if not has_side_effects(self.real, typed):
            return None
        found = self.records.lookup(run_id, step_id, params_hash(raw), attempt)
        if found is not None and found.ok and not isinstance(found.output, Mapping | None):
            return None
        return self._serve(raw, run_id, step_id, attempt, found=found)

    def _serve(
        self,
        raw: Any,
        run_id: str,
        step_id: str,
        attempt: int,
        *,
        found: RecordedAttempt | Literal[False] | None = False,
    ) -> RecordedAttempt:
        """A side-effecting invocation's answer: the record, else the policy (noted in the
        served log). The answer's output is always an object."""
        if found is False:
            found = self.records.lookup(run_id, step_id, params_hash(raw), attempt)
        if found is not None:
            self.served.note(run_id, step_id, "record")
            if found.ok:
                output = found.output if found.output is not None else {}
                return RecordedAttempt(
                    output=_AnyOutput.model_validate(output).model_dump(mode="json")
                )
            return found
        if self.mode == "stub":
            self.served.note(run_id, step_id, "stub")
            stub = self.stub if isinstance(self.stub, Mapping) else {}
            return RecordedAttempt(output=_AnyOutput.model_validate(stub).model_dump(mode="json"))
        if self.mode == "skip":
            self.served.note(run_id, step_id, "skip")
            return RecordedAttempt(output={})
        self.served.note(run_id, step_id, "record")
        return RecordedAttempt(
            error_class=REPLAY_NO_RECORD,
            message=(
                f"Step {step_id!r} calls {self.real.key}, which has side effects, with params "
                f"(sha256 {params_hash(raw)[:12]}) the original run {run_id} never used, and "
                f"the replay's effect policy for {self.real.name} is {self.mode!r}: not called "
                "(allow 'stub', 'skip' or 'live' for this node to answer it)"
            ),
            retryable=False,
        )

    async def _live(self, typed: BaseModel, ctx: NodeContext) -> _AnyOutput:
        self.served.note(ctx.run_id, ctx.step_id, "live")
        return await self._call(typed, ctx)

    async def _call(self, typed: BaseModel, ctx: NodeContext) -> _AnyOutput:
        output = await self.real.execute(typed, ctx)
        self.served.spent(ctx.run_id, ctx.step_id, ctx.cost_tokens)
        return _AnyOutput.model_validate(output.model_dump(mode="json", by_alias=True))


class _ExecutedNode(Node[Any, Any]):
    """A pure node, counted in the served log (``calls``) and otherwise itself."""

    def __init__(self, real: AnyNode, served: ServedLog) -> None:
        self.real = real
        self.name = real.name
        self.version = real.version
        self.Input = real.Input
        self.Output = real.Output
        self.cacheable = real.cacheable
        self.side_effects = real.side_effects
        self.workload = real.workload
        self.own_pool = real.own_pool
        self.description = real.description
        self.served = served

    def cacheable_for(self, params: Any) -> bool:
        return self.real.cacheable_for(params)

    def bind(self, settings: Any) -> None:
        self.real.bind(settings)

    def set_concurrency(self, limit: int) -> None:
        self.real.set_concurrency(limit)

    async def aclose(self) -> None:
        await self.real.aclose()

    async def execute(self, params: Any, ctx: NodeContext) -> Any:
        self.served.note(ctx.run_id, ctx.step_id, "executed")
        output = await self.real.execute(params, ctx)
        self.served.spent(ctx.run_id, ctx.step_id, ctx.cost_tokens)
        return output


def shadow_registry(
    nodes: NodeRegistry,
    records: RecordedResults,
    served: ServedLog,
    *,
    modes: Mapping[str, str] | None = None,
    stubs: Mapping[str, Any] | None = None,
) -> NodeRegistry:
    """The shadow engine's nodes: every side-effecting node behind a :class:`RecordedNode`,
    every other one itself (counted). A node given an explicit mode is also wrapped (so
    ``live`` on a pure node is just executing it)."""
    modes = modes or {}
    stubs = stubs or {}
    out: list[AnyNode] = []
    for node in nodes:
        if node.side_effects:
            out.append(
                RecordedNode(
                    node,
                    records,
                    served,
                    mode=modes.get(node.name, "record"),
                    stub=stubs.get(node.name),
                )
            )
        else:
            out.append(_ExecutedNode(node, served))
    return NodeRegistry(out)
