"""Workflows as code: a typed builder whose output is the same definition a YAML file gives.

``Workflow(...).step(...)...`` collects exactly what a YAML author writes (nothing filled in),
so :meth:`Workflow.to_definition` is the dict ``yaml.safe_load`` of the equivalent file returns,
and the engine cannot tell them apart. Validation is the engine's own
(:func:`workflows.validation.parse_workflow`), run when the definition is built: a mistake
raises :class:`WorkflowValidationError` naming the field path (``steps[2].needs[0]``), before
anything reaches the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from workflows.model import InputType, WorkflowDefinition
from workflows.validation import WorkflowValidationError, load_source, parse_workflow

__all__ = [
    "Cache",
    "Input",
    "Retry",
    "StepRef",
    "Workflow",
    "WorkflowValidationError",
    "input_ref",
]

Duration = str | int
"""``"10s"``, ``"200ms"``, ``"1m30s"`` or milliseconds, as in YAML."""


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that were given: an unset field stays out, as in a hand-written file."""
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Input:
    """A declared run input (``inputs.<name>`` in YAML)."""

    type: InputType
    required: bool = False
    default: Any = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _present(
            type=self.type,
            required=self.required or None,
            default=self.default,
            description=self.description,
        )


@dataclass(frozen=True)
class Retry:
    """A step's (or the defaults') retry policy; unset fields keep the engine's defaults."""

    max_attempts: int | None = None
    initial_backoff: Duration | None = None
    max_backoff: Duration | None = None
    multiplier: float | None = None
    jitter: float | None = None
    non_retryable: Sequence[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _present(
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
            multiplier=self.multiplier,
            jitter=self.jitter,
            non_retryable=list(self.non_retryable) if self.non_retryable is not None else None,
        )


@dataclass(frozen=True)
class Cache:
    enabled: bool = True
    ttl: Duration | None = None

    def to_dict(self) -> dict[str, Any]:
        return _present(enabled=self.enabled, ttl=self.ttl)


def _spec(value: Input | Retry | Cache | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Input | Retry | Cache):
        return value.to_dict()
    return dict(value)


@dataclass(frozen=True)
class StepRef:
    """What :meth:`Workflow.step` returns: pass it in ``needs`` and build references from it."""

    id: str

    def expr(self, path: str = "") -> str:
        """The expression of this step's output (for ``when``): ``steps.<id>.output[.path]``."""
        return f"steps.{self.id}.output" + (f".{path}" if path else "")

    def ref(self, path: str = "") -> str:
        """A template of this step's output (for params, outputs): ``{{ steps.<id>.output }}``."""
        return "{{ " + self.expr(path) + " }}"


def input_ref(name: str) -> str:
    """A template of a run input: ``{{ inputs.<name> }}``."""
    return "{{ inputs." + name + " }}"


Need = str | StepRef


@dataclass
class Workflow:
    """A workflow definition built in Python; ``to_definition()`` is what YAML would hold."""

    id: str
    inputs: Mapping[str, Input | Mapping[str, Any]] = field(default_factory=dict)
    description: str | None = None
    defaults_retry: Retry | Mapping[str, Any] | None = None
    defaults_timeout: Duration | None = None
    defaults_queue_timeout: Duration | None = None
    defaults_cache: Cache | Mapping[str, Any] | None = None
    deadline: Duration | None = None
    max_concurrent_runs: int | None = None
    _steps: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _outputs: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def input(
        self,
        name: str,
        type: InputType,
        *,
        required: bool = False,
        default: Any = None,
        description: str | None = None,
    ) -> Workflow:
        """Declare a run input (chainable)."""
        self.inputs = {**self.inputs, name: Input(type, required, default, description)}
        return self

    def step(
        self,
        id: str,
        node: str,
        *,
        params: Any = None,
        needs: Sequence[Need] | Need = (),
        when: str | None = None,
        retry: Retry | Mapping[str, Any] | None = None,
        timeout: Duration | None = None,
        queue_timeout: Duration | None = None,
        cache: Cache | Mapping[str, Any] | None = None,
        description: str | None = None,
        checker: bool = False,
        inline: bool = True,
    ) -> StepRef:
        """Add a step (``node`` is ``name@constraint``, e.g. ``"http.request@^1"``); returns a
        reference to it for later steps' ``needs`` and templates. ``inline=False`` keeps a
        ``transform`` / ``condition`` step on a worker (docs/workflows.md#inline-steps)."""
        if isinstance(needs, str | StepRef):
            needs = [needs]
        step = _present(
            id=id,
            node=node,
            description=description,
            needs=[n.id if isinstance(n, StepRef) else n for n in needs] or None,
            when=when,
            params=params,
            retry=_spec(retry),
            timeout=timeout,
            queue_timeout=queue_timeout,
            cache=_spec(cache),
            checker=checker or None,
            inline=None if inline else False,
        )
        self._steps.append(step)
        return StepRef(id)

    def output(self, name: str, template: Any) -> Workflow:
        """Declare a run output: a template rendered when the run succeeds (chainable)."""
        self._outputs[name] = template
        return self

    def raw(self) -> dict[str, Any]:
        """The definition as written, not validated (what :meth:`to_definition` checks)."""
        defaults = _present(
            retry=_spec(self.defaults_retry),
            timeout=self.defaults_timeout,
            queue_timeout=self.defaults_queue_timeout,
            cache=_spec(self.defaults_cache),
        )
        return _present(
            id=self.id,
            description=self.description,
            inputs={name: _spec(spec) for name, spec in self.inputs.items()} or None,
            defaults=defaults or None,
            deadline=self.deadline,
            max_concurrent_runs=self.max_concurrent_runs,
            steps=[dict(step) for step in self._steps],
            outputs=dict(self._outputs) or None,
        )

    def build(self) -> WorkflowDefinition:
        """The validated definition model (raises :class:`WorkflowValidationError`)."""
        return parse_workflow(self.raw())

    def to_definition(self) -> dict[str, Any]:
        """The definition as YAML would hold it, after the engine's validation accepted it."""
        raw = self.raw()
        parse_workflow(raw)
        return raw

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_definition(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_definition(cls, source: str | bytes | Mapping[str, Any]) -> Workflow:
        """A builder holding a YAML/JSON text or dict definition (validated), e.g. to extend it."""
        data = load_source(source)
        parse_workflow(data)
        defaults = data.get("defaults") or {}
        workflow = cls(
            id=data["id"],
            inputs=dict(data.get("inputs") or {}),
            description=data.get("description"),
            defaults_retry=defaults.get("retry"),
            defaults_timeout=defaults.get("timeout"),
            defaults_queue_timeout=defaults.get("queue_timeout"),
            defaults_cache=defaults.get("cache"),
            deadline=data.get("deadline"),
            max_concurrent_runs=data.get("max_concurrent_runs"),
        )
        workflow._steps = [dict(step) for step in data["steps"]]
        workflow._outputs = dict(data.get("outputs") or {})
        return workflow
