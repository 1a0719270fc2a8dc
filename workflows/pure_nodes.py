"""The built-in pure nodes' evaluation: deterministic functions of their params, no I/O.

``transform`` and ``condition`` compute their output from their params alone (JMESPath: no
clock, no randomness, no network, no ``eval``), so the same function serves both places that
run them: the worker's node classes (``node_workers.nodes.transform`` / ``.condition``) and the
scheduler, which evaluates an eligible step inline, as journaled events in its own transaction
(docs/decisions/0064-inline-pure-steps.md). One implementation means one output and one error
(class and message) for the same params, whichever path ran the step.

A :class:`PureNode` is keyed by ``name@version``: the scheduler inlines exactly the versions
this module implements and sends every other version of the node (a custom worker group's) to
its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Self

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import BaseModel, ValidationError, model_validator

from foundation.errors import NonRetryableError
from workflows.node_io import NodeModel, format_validation_error

__all__ = [
    "PURE_NODES",
    "SMALL_PARAMS_BYTES",
    "ConditionInput",
    "ConditionOutput",
    "PureNode",
    "PureNodeError",
    "TransformInput",
    "TransformOutput",
    "compile_expression",
    "condition",
    "jmespath_truthy",
    "pure_node",
    "search",
    "transform",
]


SMALL_PARAMS_BYTES: Final = 64 * 1024
"""Params (canonical JSON) up to this size evaluate in at most ~2-3 ms for ordinary expressions
(~10 ms for a filter over 260 KB): a worker evaluates them on its event loop rather than in a
thread, and the scheduler inlines only steps whose params are this small, so no evaluation holds
its batch up for long."""


class PureNodeError(NonRetryableError):
    """Params or an expression a pure node refuses: the same params fail the same way on every
    attempt. ``error_class`` is what a worker reports for it (``ValidationError``,
    ``TransformError``)."""

    error_class = "PureNodeError"


# -- transform ---------------------------------------------------------------------------------


class TransformInput(NodeModel):
    expression: str
    """A JMESPath expression, e.g. ``"items[?price > `10`].name"``."""
    data: Any = None
    """The JSON value the expression is evaluated against."""


class TransformOutput(NodeModel):
    result: Any


@lru_cache(maxsize=1024)
def _compile(expression: str) -> ParsedResult:
    return jmespath.compile(expression)


def compile_expression(expression: str) -> ParsedResult:
    """The parsed expression; an invalid one is a non-retryable ``TransformError``."""
    try:
        return _compile(expression)
    except JMESPathError as exc:
        raise PureNodeError(
            f"Expected a valid JMESPath expression, but {expression!r} is not: {exc}",
            error_class="TransformError",
        ) from exc


def search(expression: str, data: Any) -> Any:
    """Evaluate ``expression`` on ``data``; type errors (``abs('x')``) are ``TransformError``."""
    parsed = compile_expression(expression)
    try:
        return parsed.search(data)
    except JMESPathError as exc:
        raise PureNodeError(
            f"Expected JMESPath expression {expression!r} to evaluate, but: {exc}",
            error_class="TransformError",
        ) from exc


def transform(params: TransformInput) -> TransformOutput:
    return TransformOutput(result=search(params.expression, params.data))


# -- condition ---------------------------------------------------------------------------------


def jmespath_truthy(value: Any) -> bool:
    """JMESPath truthiness (spec: "Or Expressions"); numbers, ``0`` included, are true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict | tuple):
        return len(value) > 0
    return True


class ConditionInput(NodeModel):
    expression: str | None = None
    data: Any = None
    value: Any = None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        given = self.model_fields_set
        if ("expression" in given) == ("value" in given):
            raise ValueError(
                "Expected either {expression, data} or {value}, but got "
                + (", ".join(sorted(given)) or "neither")
            )
        if "value" in given and "data" in given:
            raise ValueError("Expected 'data' only together with 'expression', but got value")
        if "expression" in given and self.expression is None:
            raise ValueError("Expected 'expression' to be a JMESPath string, but got null")
        return self


class ConditionOutput(NodeModel):
    result: bool


def condition(params: ConditionInput) -> ConditionOutput:
    if params.expression is not None:
        return ConditionOutput(result=jmespath_truthy(search(params.expression, params.data)))
    return ConditionOutput(result=jmespath_truthy(params.value))


# -- the catalog of pure node versions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PureNode:
    """One pure node version: its models and its function."""

    name: str
    version: str
    Input: type[BaseModel]
    Output: type[BaseModel]
    function: Callable[[Any], BaseModel]

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def validate(self, raw: Any) -> BaseModel:
        """The node's ``Input`` from raw JSON params, refused as a worker refuses them."""
        try:
            return self.Input.model_validate(raw)
        except ValidationError as exc:
            raise PureNodeError(
                format_validation_error(exc), error_class="ValidationError"
            ) from exc

    def run(self, raw: Any) -> Any:
        """The JSON output for raw params (what a worker's ``NodeResult.output`` holds);
        refused params and failing expressions raise :class:`PureNodeError`."""
        return self.function(self.validate(raw)).model_dump(mode="json", by_alias=True)


TRANSFORM: Final = PureNode("transform", "1.0.0", TransformInput, TransformOutput, transform)
CONDITION: Final = PureNode("condition", "1.0.0", ConditionInput, ConditionOutput, condition)

PURE_NODES: Final[Mapping[str, PureNode]] = {node.key: node for node in (TRANSFORM, CONDITION)}
"""Every pure node version by ``name@version``."""


def pure_node(name: str, version: str) -> PureNode | None:
    """The pure implementation of exactly ``name@version``, or ``None``."""
    return PURE_NODES.get(f"{name}@{version}")
