"""The workflow definition model (pydantic v2, frozen).

Structure only: field types, ranges, slugs, durations and node references. Cross-field rules
(needs exist, no cycles, templates reference upstream steps, the catalog has the node) live in
:mod:`workflows.validation`, because they need the whole graph and report many errors
at once with precise paths.

The canonical JSON form (:meth:`WorkflowDefinition.to_json_dict`) has every default applied and
every duration in milliseconds; it is what ``RunStarted.definition`` carries, so replay never
depends on how the definition was first written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from schemas.base import canonical_json
from workflows.durations import parse_duration
from workflows.semver import NodeRef, parse_node_ref

__all__ = [
    "MAX_CONCURRENT_RUNS",
    "CacheSpec",
    "Defaults",
    "DurationMs",
    "InputSpec",
    "InputType",
    "RetrySpec",
    "StepDefinition",
    "WorkflowDefinition",
]

DurationMs = Annotated[int, BeforeValidator(parse_duration)]
"""A duration: ``"10s"``/``"200ms"``/``"1m30s"`` or integer milliseconds; stored as ms."""

InputType = Literal["string", "number", "integer", "boolean", "object", "array"]

_WORKFLOW_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# Step ids appear in expressions as steps.<id>.output, so they must be JMESPath identifiers.
_STEP_ID = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

MAX_CONCURRENT_RUNS = 100_000
"""Upper bound of a workflow's ``max_concurrent_runs`` (the API checks up to that many run ids
against the read model when the limit is reached; ADR 0052)."""


def _check_json(value: Any) -> Any:
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a JSON value: {exc}") from exc
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """One declared run input."""

    type: InputType
    required: bool = False
    default: Any = None
    """Applied when the input is absent; null means "no default"."""
    description: str = ""

    @field_validator("default")
    @classmethod
    def _check_default(cls, value: Any) -> Any:
        return _check_json(value)


class RetrySpec(_Frozen):
    """Exponential backoff with equal jitter by default: the delay before attempt n+1 is
    ``b * (1 - jitter * r)`` with ``b = min(max, initial * multiplier^(n-1))`` and ``r`` in [0, 1)
    (processors/scheduler/backoff.py; ADR 0020)."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    """Total attempts including the first; 1 = no retry."""
    initial_backoff: DurationMs = 200
    max_backoff: DurationMs = 30_000
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)
    """The random share of each delay, taken off the top: 0.5 = equal jitter, 1 = full."""
    non_retryable: tuple[str, ...] = ()
    """Error classes that fail the step at once, whatever the worker said about retrying."""

    @model_validator(mode="after")
    def _bounds(self) -> RetrySpec:
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff} ms) must be >= initial_backoff "
                f"({self.initial_backoff} ms)"
            )
        return self


class CacheSpec(_Frozen):
    enabled: bool = False
    ttl: DurationMs = 3_600_000


def _positive_queue_timeout(value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise ValueError(
            f"queue_timeout must be positive, but got {value} ms (leave it out to wait for a "
            "worker as long as it takes)"
        )
    return value


class Defaults(_Frozen):
    """Applied to every step that does not say otherwise (field by field for retry and cache)."""

    retry: RetrySpec | None = None
    timeout: DurationMs | None = None
    queue_timeout: DurationMs | None = None
    cache: CacheSpec | None = None

    _queue_timeout = field_validator("queue_timeout")(_positive_queue_timeout)


class StepDefinition(_Frozen):
    id: str
    node: str
    """``name@constraint``; stored in canonical form (``condition`` -> ``condition@*``)."""
    description: str = ""
    params: Any = Field(default_factory=dict)
    needs: tuple[str, ...] = ()
    when: str | None = None
    retry: RetrySpec = RetrySpec()
    timeout: DurationMs | None = None
    """Execution bound of one attempt, counted from the moment a worker starts it."""
    queue_timeout: DurationMs | None = None
    """Bound on the wait for a worker to start an attempt (schedule-to-start); None = no bound."""
    cache: CacheSpec = CacheSpec()
    checker: StrictBool = False
    """The step scores the run: its output's numeric ``score`` in [0, 1] becomes the attempt
    trace's ``metrics["quality_score"]`` (schemas/quality.py, ADR 0035)."""
    inline: StrictBool = True
    """``False``: always run the step on a worker, even when the scheduler could evaluate its
    pure node inline (docs/decisions/0064-inline-pure-steps.md). No effect on other nodes."""

    _queue_timeout = field_validator("queue_timeout")(_positive_queue_timeout)

    @field_validator("id")
    @classmethod
    def _step_id(cls, value: str) -> str:
        if not _STEP_ID.fullmatch(value):
            raise ValueError(
                f"invalid step id {value!r}: use lowercase letters, digits and _ (starting with a "
                "letter or _), because expressions refer to it as steps.<id>"
            )
        return value

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        return str(parse_node_ref(value))

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: Any) -> Any:
        return _check_json(value)

    @cached_property
    def ref(self) -> NodeRef:
        return parse_node_ref(self.node)

    @property
    def node_name(self) -> str:
        return self.ref.name

    @property
    def node_constraint(self) -> str:
        return self.ref.constraint.raw


class WorkflowDefinition(_Frozen):
    id: str
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    steps: tuple[StepDefinition, ...]
    outputs: dict[str, Any] = Field(default_factory=dict)
    """Output name -> template (any JSON with ``{{ expr }}`` strings), rendered at the end."""
    deadline: DurationMs | None = None
    """Run-level deadline, relative to the run's start."""
    defaults: Defaults = Defaults()
    max_concurrent_runs: int | None = None
    """Most runs of this workflow in flight at once, admitted by the API's starts
    (``POST /v1/runs``, start webhooks); None = no limit of its own (ADR 0052)."""

    @field_validator("max_concurrent_runs", mode="before")
    @classmethod
    def _concurrency(cls, value: Any) -> Any:
        # Strict: `true` or "2" are mistakes, not 1 or 2.
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"expected an integer in 1..{MAX_CONCURRENT_RUNS} (or leave it "
                f"out for no limit), but got {value!r}"
            )
        if not 1 <= value <= MAX_CONCURRENT_RUNS:
            raise ValueError(
                f"expected 1..{MAX_CONCURRENT_RUNS} (or leave it out for no limit), but got {value}"
            )
        return value

    @field_validator("id")
    @classmethod
    def _workflow_id(cls, value: str) -> str:
        if not _WORKFLOW_ID.fullmatch(value):
            raise ValueError(
                f"invalid workflow id {value!r}: use a slug of lowercase letters, digits, '.', "
                "'_' and '-' (at most 128 characters)"
            )
        return value

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, value: dict[str, InputSpec]) -> dict[str, InputSpec]:
        for name in value:
            if not _INPUT_NAME.fullmatch(name):
                raise ValueError(
                    f"invalid input name {name!r}: use letters, digits and _ so that "
                    "expressions can say inputs.<name>"
                )
        return value

    @field_validator("outputs")
    @classmethod
    def _check_outputs(cls, value: Any) -> Any:
        return _check_json(value)

    # -- graph helpers (derived, cached: the model is frozen) ------------------------------

    @cached_property
    def _by_id(self) -> dict[str, StepDefinition]:
        return {step.id: step for step in self.steps}

    @property
    def step_ids(self) -> list[str]:
        return [step.id for step in self.steps]

    def has_step(self, step_id: str) -> bool:
        return step_id in self._by_id

    def step(self, step_id: str) -> StepDefinition:
        try:
            return self._by_id[step_id]
        except KeyError:
            known = ", ".join(self.step_ids)
            raise KeyError(f"unknown step {step_id!r} (known: {known})") from None

    def index_of(self, step_id: str) -> int:
        return self.step_ids.index(step_id)

    def dependents(self, step_id: str) -> list[str]:
        """Steps that list ``step_id`` in their needs."""
        return [step.id for step in self.steps if step_id in step.needs]

    @cached_property
    def topological_order(self) -> tuple[str, ...]:
        """Step ids, every step after its needs; ties keep definition order (stable events).

        Unknown needs are ignored and steps on a cycle come last, so this is total even for an
        invalid graph (validation reports those errors separately).
        """
        remaining = {s.id: {n for n in s.needs if n in self._by_id} for s in self.steps}
        order: list[str] = []
        while remaining:
            ready = [sid for sid in self.step_ids if sid in remaining and not remaining[sid]]
            if not ready:
                order.extend(sid for sid in self.step_ids if sid in remaining)
                break
            for sid in ready:
                del remaining[sid]
                for needs in remaining.values():
                    needs.discard(sid)
            order.extend(ready)
        return tuple(order)

    def upstream(self, step_id: str) -> frozenset[str]:
        """Every step ``step_id`` transitively needs (not itself, unless on a cycle)."""
        seen: set[str] = set()
        stack = list(self._by_id[step_id].needs) if step_id in self._by_id else []
        while stack:
            current = stack.pop()
            if current in seen or current not in self._by_id:
                continue
            seen.add(current)
            stack.extend(self._by_id[current].needs)
        return frozenset(seen)

    # -- canonical form ----------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        """Canonical JSON: defaults applied, durations in ms; ``from_json_dict`` reads it back."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for step in data["steps"]:
            # Written only when set, so the canonical form (and what is compared or hashed) of
            # every definition without checker steps (or steps kept off the inline path) is what
            # it was before the flag existed.
            if not step["checker"]:
                del step["checker"]
            if step["inline"]:
                del step["inline"]
        # Likewise: without a limit, the canonical form is what it was before the field.
        if data["max_concurrent_runs"] is None:
            del data["max_concurrent_runs"]
        return data

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> WorkflowDefinition:
        """Structural parse of a canonical definition (no catalog, no cross-reference checks).

        Used by replay: a log written by an older validator must still replay.
        """
        return cls.model_validate(dict(data))
