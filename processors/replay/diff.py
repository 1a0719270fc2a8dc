"""Diff two runs side by side (``GET /v1/runs/{a}/diff/{b}``, ``reflux runs diff A B``).

Pure: each run is given as its log (the run's events), folded with the scheduler's own ``fold``,
so the diff sees exactly what the engine saw: inputs, the graph (workflow version, the definition
the run ended with, the mutations applied and by whom), and per step its node, params, output,
status, attempts, error and timings. Claim-checked payloads (``params_ref``/``output_ref``) are
compared by digest first and loaded through ``load_payload`` (an I/O hook the edge passes) only
when the digests differ or one side is inline.

The result is a list of fields, each with a dotted ``path``, both values and an ``equal`` flag;
a field whose values are JSON objects or lists also lists the leaf ``changes`` (paths inside it).
Timings (``kind == "timing"``) never make two runs "different": two runs of the same inputs
never take the same milliseconds; they are shown, flagged, and left out of ``equal``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from processors.scheduler.evolve import fold
from processors.scheduler.state import RunState, StepState
from schemas.models import GraphMutated, PayloadRef, StepSucceeded
from schemas.run_log import RunEvent, schedules_step

__all__ = [
    "FieldDiff",
    "RunDiff",
    "diff_runs",
    "json_changes",
]

FieldKind = Literal["value", "timing"]
PayloadLoader = Callable[[PayloadRef], Any]

_MISSING: Any = {"$missing": True}
"""A side that has no such field (a step only one run has)."""


@dataclass(frozen=True, slots=True)
class FieldDiff:
    section: str
    """``run``, ``inputs``, ``graph`` or ``steps.<id>``."""
    path: str
    a: Any
    b: Any
    equal: bool
    kind: FieldKind = "value"
    changes: tuple[dict[str, Any], ...] = ()
    """Leaf differences inside JSON values: ``{"path", "a", "b"}`` (``$missing`` for absent)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "section": self.section,
            "path": self.path,
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "kind": self.kind,
        }
        if self.changes:
            data["changes"] = list(self.changes)
        return data


@dataclass(frozen=True, slots=True)
class RunDiff:
    a: str
    b: str
    fields: tuple[FieldDiff, ...]
    steps: tuple[str, ...] = field(default=())
    """Step ids of both runs, in graph order (A's, then steps only B has)."""

    @property
    def equal(self) -> bool:
        """Both runs match on every value field (timings are not compared)."""
        return all(f.equal for f in self.fields if f.kind == "value")

    @property
    def different(self) -> list[FieldDiff]:
        return [f for f in self.fields if not f.equal and f.kind == "value"]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "different": len(self.different),
            "compared": sum(1 for f in self.fields if f.kind == "value"),
            "steps": list(self.steps),
            "fields": [f.to_json() for f in self.fields],
        }


def diff_runs(
    events_a: Sequence[RunEvent],
    events_b: Sequence[RunEvent],
    *,
    load_payload: PayloadLoader | None = None,
) -> RunDiff:
    """Fold both logs and compare them field by field."""
    a = _folded(events_a, "a")
    b = _folded(events_b, "b")
    payloads = _Payloads(load_payload)
    out: list[FieldDiff] = []

    def add(section: str, path: str, va: Any, vb: Any, kind: FieldKind = "value") -> None:
        out.append(_field(section, path, va, vb, kind))

    add("run", "run.status", a.state.status.value, b.state.status.value)
    add("run", "run.outputs", a.state.outputs, b.state.outputs)
    add("run", "run.error", _error(a.state), _error(b.state))
    add("run", "run.failed_step", a.state.failed_step, b.state.failed_step)
    add(
        "run",
        "run.duration_ms",
        _ms(a.state.started_at, a.state.finished_at),
        _ms(b.state.started_at, b.state.finished_at),
        "timing",
    )
    add("inputs", "inputs", a.state.inputs, b.state.inputs)
    add("graph", "graph.workflow_id", a.state.workflow_id, b.state.workflow_id)
    add("graph", "graph.workflow_version", a.state.workflow_version, b.state.workflow_version)
    add("graph", "graph.definition", _definition(a.state), _definition(b.state))
    add("graph", "graph.mutations", a.mutations, b.mutations)

    ids = list(a.state.steps)
    ids += [sid for sid in b.state.steps if sid not in a.state.steps]
    for sid in ids:
        sa, sb = a.state.steps.get(sid), b.state.steps.get(sid)
        section = f"steps.{sid}"
        for name in ("node_version", "status", "attempt"):
            add(section, f"{section}.{name}", _attr(sa, name), _attr(sb, name))
        pa, pb = payloads.resolve_pair(_attr_ref(sa, "params"), _attr_ref(sb, "params"))
        add(section, f"{section}.params", pa, pb)
        pa, pb = payloads.resolve_pair(_attr_ref(sa, "output"), _attr_ref(sb, "output"))
        add(section, f"{section}.output", pa, pb)
        add(section, f"{section}.cache_hit", _attr(sa, "cache_hit"), _attr(sb, "cache_hit"))
        add(section, f"{section}.error", _step_error(sa), _step_error(sb))
        add(section, f"{section}.skip_reason", _attr(sa, "skip_reason"), _attr(sb, "skip_reason"))
        add(
            section,
            f"{section}.duration_ms",
            a.durations.get(sid, _step_ms(sa)),
            b.durations.get(sid, _step_ms(sb)),
            "timing",
        )
        add(section, f"{section}.queue_ms", _queue_ms(sa), _queue_ms(sb), "timing")
        add(section, f"{section}.total_ms", _total_ms(a, sid, sa), _total_ms(b, sid, sb), "timing")
    return RunDiff(a=a.state.run_id, b=b.state.run_id, fields=tuple(out), steps=tuple(ids))


def json_changes(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """Leaf differences between two JSON values, with dotted paths (``[i]`` for list items)."""
    if isinstance(a, dict) and isinstance(b, dict):
        changes: list[dict[str, Any]] = []
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else str(key)
            changes += json_changes(a.get(key, _MISSING), b.get(key, _MISSING), sub)
        return changes
    if isinstance(a, list) and isinstance(b, list):
        changes = []
        for i in range(max(len(a), len(b))):
            changes += json_changes(
                a[i] if i < len(a) else _MISSING, b[i] if i < len(b) else _MISSING, f"{path}[{i}]"
            )
        return changes
    if a == b and type(a) is type(b):
        return []
    return [{"path": path, "a": a, "b": b}]


# -- folding --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Folded:
    state: RunState
    mutations: list[dict[str, Any]]
    durations: dict[str, float]
    """Worker-reported duration of the succeeding attempt (StepSucceeded.duration_ms)."""
    first_scheduled: dict[str, datetime]


def _folded(events: Sequence[RunEvent], side: str) -> _Folded:
    state = fold(events)
    if state is None or state.definition is None:
        raise ValueError(f"Expected run {side} to have started, but its log holds no RunStarted")
    mutations: list[dict[str, Any]] = []
    durations: dict[str, float] = {}
    first: dict[str, datetime] = {}
    for event in events:
        if isinstance(event, GraphMutated):
            mutations.append(
                {
                    "type": event.mutation.type.value,
                    "step_id": event.mutation.step_id,
                    "data": event.mutation.data,
                    "requested_by": event.requested_by,
                    "reason": event.reason,
                }
            )
        elif isinstance(event, StepSucceeded) and event.duration_ms is not None:
            durations[event.step.step_id] = float(event.duration_ms)
        elif schedules_step(event):  # a StepScheduled, or a dispatch that schedules (ADR 0075)
            first.setdefault(event.step.step_id, event.occurred_at)
    return _Folded(state, mutations, durations, first)


# -- fields ---------------------------------------------------------------------------------------


def _field(section: str, path: str, a: Any, b: Any, kind: FieldKind) -> FieldDiff:
    equal = a == b and type(a) is type(b)
    changes: tuple[dict[str, Any], ...] = ()
    if not equal and isinstance(a, dict | list) and isinstance(b, dict | list):
        changes = tuple(json_changes(a, b))
    return FieldDiff(section, path, a, b, equal, kind, changes)


def _attr(step: StepState | None, name: str) -> Any:
    if step is None:
        return _MISSING
    value = getattr(step, name)
    return getattr(value, "value", value)


def _attr_ref(step: StepState | None, name: str) -> Any:
    if step is None:
        return _MISSING
    ref = getattr(step, f"{name}_ref")
    return ref if ref is not None else getattr(step, name)


def _error(state: RunState) -> Any:
    return state.error.model_dump(mode="json") if state.error else None


def _step_error(step: StepState | None) -> Any:
    if step is None:
        return _MISSING
    return step.error.model_dump(mode="json") if step.error else None


def _definition(state: RunState) -> Any:
    return state.graph.to_json_dict()


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def _step_ms(step: StepState | None) -> float | None:
    return _ms(step.started_at, step.finished_at) if step else None


def _queue_ms(step: StepState | None) -> float | None:
    return _ms(step.dispatched_at, step.started_at) if step else None


def _total_ms(run: _Folded, sid: str, step: StepState | None) -> float | None:
    return _ms(run.first_scheduled.get(sid), step.finished_at if step else None)


class _Payloads:
    """Claim-checked values: compared by digest, loaded only when needed (and once)."""

    def __init__(self, load: PayloadLoader | None) -> None:
        self._load = load
        self._cache: dict[str, Any] = {}

    def resolve_pair(self, a: Any, b: Any) -> tuple[Any, Any]:
        if isinstance(a, PayloadRef) and isinstance(b, PayloadRef) and a.sha256 == b.sha256:
            ref = _ref_view(a)
            return ref, ref
        return self._value(a), self._value(b)

    def _value(self, value: Any) -> Any:
        if not isinstance(value, PayloadRef):
            return value
        if self._load is None:
            return _ref_view(value)
        if value.sha256 not in self._cache:
            self._cache[value.sha256] = self._load(value)
        return self._cache[value.sha256]


def _ref_view(ref: PayloadRef) -> dict[str, Any]:
    return {"$ref": ref.uri, "sha256": ref.sha256, "size_bytes": ref.size_bytes}
