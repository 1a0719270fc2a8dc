"""``transform@1.0.0``: reshape JSON with a JMESPath expression.

JMESPath is a query language, not a programming language: an expression can select, filter,
project and call a fixed set of pure functions, but can never run code, so user-supplied
expressions are safe to evaluate in a shared worker (no ``eval``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from node_workers.node import Node, NodeContext, NodeModel, NonRetryableNodeError

__all__ = ["TransformInput", "TransformNode", "TransformOutput", "compile_expression", "search"]


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
        raise NonRetryableNodeError(
            f"Expected a valid JMESPath expression, but {expression!r} is not: {exc}",
            error_class="TransformError",
        ) from exc


def search(expression: str, data: Any) -> Any:
    """Evaluate ``expression`` on ``data``; type errors (``abs('x')``) are ``TransformError``."""
    parsed = compile_expression(expression)
    try:
        return parsed.search(data)
    except JMESPathError as exc:
        raise NonRetryableNodeError(
            f"Expected JMESPath expression {expression!r} to evaluate, but: {exc}",
            error_class="TransformError",
        ) from exc


class TransformNode(Node[TransformInput, TransformOutput]):
    name = "transform"
    version = "1.0.0"
    Input = TransformInput
    Output = TransformOutput
    cacheable = True
    side_effects = False
    description = "Reshape JSON with a JMESPath expression."

    async def execute(self, params: TransformInput, ctx: NodeContext) -> TransformOutput:
        return TransformOutput(result=search(params.expression, params.data))
