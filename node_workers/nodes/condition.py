"""``condition@1.0.0``: decide a branch from JSON, with JMESPath truthiness.

Either ``{expression, data}`` (evaluate, then test the result) or ``{value}`` (test a value the
scheduler already resolved). Truthiness follows the JMESPath spec, not Python: ``0`` is *true*;
only ``null``, ``false``, ``""``, ``[]`` and ``{}`` are false. Workflows written against other
JMESPath implementations therefore branch the same way here.

Workload: CPU, evaluated like ``transform`` (:func:`node_workers.nodes.transform.evaluate`: small
params on the event loop, large ones in the node's own thread pool).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import model_validator

from node_workers.node import Node, NodeContext, NodeModel, Workload
from node_workers.nodes.transform import evaluate
from node_workers.pools import BlockingPool

__all__ = ["ConditionInput", "ConditionNode", "ConditionOutput", "jmespath_truthy"]


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


class ConditionNode(Node[ConditionInput, ConditionOutput]):
    name = "condition"
    version = "1.0.0"
    Input = ConditionInput
    Output = ConditionOutput
    cacheable = True
    side_effects = False
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
