"""``condition@1.0.0``: decide a branch from JSON, with JMESPath truthiness.

Either ``{expression, data}`` (evaluate, then test the result) or ``{value}`` (test a value the
scheduler already resolved). Truthiness follows the JMESPath spec, not Python: ``0`` is *true*;
only ``null``, ``false``, ``""``, ``[]`` and ``{}`` are false. Workflows written against other
JMESPath implementations therefore branch the same way here.

Pure, like ``transform``: models and truthiness live in :mod:`workflows.pure_nodes`, shared with
the scheduler's inline path (docs/decisions/0064-inline-pure-steps.md).

Workload: CPU, evaluated like ``transform`` (:func:`node_workers.nodes.transform.evaluate`: small
params on the event loop, large ones in the node's own thread pool).
"""

from __future__ import annotations

from node_workers.node import Node, NodeContext, Workload
from node_workers.nodes.transform import evaluate
from node_workers.pools import BlockingPool
from workflows import pure_nodes
from workflows.pure_nodes import ConditionInput, ConditionOutput, jmespath_truthy

__all__ = ["ConditionInput", "ConditionNode", "ConditionOutput", "jmespath_truthy"]


class ConditionNode(Node[ConditionInput, ConditionOutput]):
    name = pure_nodes.CONDITION.name
    version = pure_nodes.CONDITION.version
    Input = ConditionInput
    Output = ConditionOutput
    cacheable = True
    side_effects = False
    pure = True
    workload = Workload.CPU
    description = "True or false from a value or a JMESPath expression (JMESPath truthiness)."

    def __init__(self) -> None:
        self.pool = BlockingPool("condition")

    def set_concurrency(self, limit: int) -> None:
        self.pool.resize(limit)

    async def execute(self, params: ConditionInput, ctx: NodeContext) -> ConditionOutput:
        if params.expression is not None:
            found = await evaluate(self.pool, ctx, params.expression, params.data)
            return ConditionOutput(result=jmespath_truthy(found))
        return ConditionOutput(result=jmespath_truthy(params.value))

    async def aclose(self) -> None:
        self.pool.close()
