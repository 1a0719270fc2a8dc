"""``transform@1.0.0``: reshape JSON with a JMESPath expression.

JMESPath is a query language, not a programming language: an expression can select, filter,
project and call a fixed set of pure functions, but can never run code, so user-supplied
expressions are safe to evaluate in a shared worker (no ``eval``).

Pure (``pure = True``): the evaluation lives in :mod:`workflows.pure_nodes`, which the scheduler
also calls to run an eligible step inline, without a worker
(docs/decisions/0064-inline-pure-steps.md); this class is the worker path of the same function.

Workload: CPU. An evaluation costs about linear time in the data (measured: ~10 ms for a filter
over 260 KB of JSON, a few microseconds for the usual small documents), so params up to
:data:`INLINE_PARAMS_BYTES` are evaluated right on the event loop -- a thread hop would cost more
than the evaluation -- and larger ones in the node's own thread pool, sized to its concurrency,
so the loop keeps serving (and heartbeating) every other attempt meanwhile
(docs/decisions/0019-worker-concurrency.md).
"""

from __future__ import annotations

from typing import Any, Final

from jmespath.parser import ParsedResult

from node_workers.node import Node, NodeContext, NonRetryableNodeError, Workload
from node_workers.pools import BlockingPool
from workflows import pure_nodes
from workflows.pure_nodes import PureNodeError, TransformInput, TransformOutput

__all__ = [
    "INLINE_PARAMS_BYTES",
    "TransformInput",
    "TransformNode",
    "TransformOutput",
    "compile_expression",
    "evaluate",
    "search",
]

INLINE_PARAMS_BYTES: Final = pure_nodes.SMALL_PARAMS_BYTES
"""Params (canonical JSON) up to this size are evaluated on the event loop: ~2-3 ms at most
for ordinary expressions, the order of what validating and hashing the same params costs there
anyway; above it, in a thread. (The scheduler inlines only steps with params up to this size;
larger ones come here.)"""


def _as_node_error(exc: PureNodeError) -> NonRetryableNodeError:
    # A node reports its failures as NodeErrors; class and message stay those of the pure core.
    return NonRetryableNodeError(str(exc), error_class=exc.error_class)


def compile_expression(expression: str) -> ParsedResult:
    """The parsed expression; an invalid one is a non-retryable ``TransformError``."""
    try:
        return pure_nodes.compile_expression(expression)
    except PureNodeError as exc:
        raise _as_node_error(exc) from exc


def search(expression: str, data: Any) -> Any:
    """Evaluate ``expression`` on ``data``; type errors (``abs('x')``) are ``TransformError``."""
    try:
        return pure_nodes.search(expression, data)
    except PureNodeError as exc:
        raise _as_node_error(exc) from exc


async def evaluate(pool: BlockingPool, ctx: NodeContext, expression: str, data: Any) -> Any:
    """:func:`search`, on the loop for small params, in ``pool`` for large ones (see the module
    docstring). A thread cannot be stopped: an evaluation that outlives its attempt's timeout
    keeps its thread until it returns."""
    if ctx.params_bytes is None or ctx.params_bytes <= INLINE_PARAMS_BYTES:
        return search(expression, data)
    return await pool.run(search, expression, data)


class TransformNode(Node[TransformInput, TransformOutput]):
    name = pure_nodes.TRANSFORM.name
    version = pure_nodes.TRANSFORM.version
    Input = TransformInput
    Output = TransformOutput
    cacheable = True
    side_effects = False
    pure = True
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
