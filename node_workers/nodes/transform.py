"""``transform@1.0.0``: reshape JSON with a JMESPath expression.

JMESPath is a query language, not a programming language: an expression can select, filter,
project and call a fixed set of pure functions, but can never run code, so user-supplied
expressions are safe to evaluate in a shared worker (no ``eval``).

Workload: CPU. An evaluation costs about linear time in the data (measured: ~10 ms for a filter
over 260 KB of JSON, a few microseconds for the usual small documents), so params up to
:data:`INLINE_PARAMS_BYTES` are evaluated right on the event loop -- a thread hop would cost more
than the evaluation -- and larger ones in the node's own thread pool, sized to its concurrency,
so the loop keeps serving (and heartbeating) every other attempt meanwhile
(docs/decisions/0019-worker-concurrency.md).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from node_workers.node import Node, NodeContext, NodeModel, NonRetryableNodeError, Workload
from node_workers.pools import BlockingPool

__all__ = [
    "INLINE_PARAMS_BYTES",
    "TransformInput",
    "TransformNode",
    "TransformOutput",
    "compile_expression",
    "evaluate",
    "search",
]

INLINE_PARAMS_BYTES: Final = 64 * 1024
"""Params (canonical JSON) up to this size are evaluated on the event loop: ~2-3 ms at most
for ordinary expressions, the order of what validating and hashing the same params costs there
anyway; above it, in a thread."""


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


async def evaluate(pool: BlockingPool, ctx: NodeContext, expression: str, data: Any) -> Any:
    """:func:`search`, on the loop for small params, in ``pool`` for large ones (see the module
    docstring). A thread cannot be stopped: an evaluation that outlives its attempt's timeout
    keeps its thread until it returns."""
    if ctx.params_bytes is None or ctx.params_bytes <= INLINE_PARAMS_BYTES:
        return search(expression, data)
    return await pool.run(search, expression, data)


class TransformNode(Node[TransformInput, TransformOutput]):
    name = "transform"
    version = "1.0.0"
    Input = TransformInput
    Output = TransformOutput
    cacheable = True
    side_effects = False
    workload = Workload.CPU
    description = "Reshape JSON with a JMESPath expression."

    def __init__(self) -> None:
        self.pool = BlockingPool("transform")

    def set_concurrency(self, limit: int) -> None:
        self.pool.resize(limit)

    async def execute(self, params: TransformInput, ctx: NodeContext) -> TransformOutput:
        result = await evaluate(self.pool, ctx, params.expression, params.data)
        return TransformOutput(result=result)

    async def aclose(self) -> None:
        self.pool.close()
