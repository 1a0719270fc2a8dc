"""Custom nodes served by ``reflux worker --module tests.support.custom_nodes`` in tests:
two majors of ``acme.greet`` (async v1, sync v2) and a node whose output breaks its model."""

from __future__ import annotations

from pydantic import Field

from reflux.sdk_nodes import NodeContext, NodeModel, node


class GreetIn(NodeModel):
    name: str = Field(min_length=1)
    times: int = 1


class GreetOut(NodeModel):
    greeting: str
    version: str


@node("acme.greet", version="1.0.0", idempotent=True, cacheable=True)
async def greet_v1(params: GreetIn) -> GreetOut:
    """Say hello."""
    return GreetOut(greeting=f"hello {params.name}", version="1.0.0")


@node("acme.greet", version="2.0.0", idempotent=True, workload="cpu")
def greet_v2(params: GreetIn, ctx: NodeContext) -> GreetOut:
    """Say hello loudly, as often as asked (sync: runs in a thread)."""
    ctx.record("times", params.times)
    return GreetOut(
        greeting=" ".join([f"HELLO {params.name.upper()}"] * params.times), version="2.0.0"
    )


class Broken(NodeModel):
    count: int


@node("acme.broken", version="1.0.0", side_effects=True)
async def broken(params: GreetIn) -> Broken:
    """Returns an output its model refuses (a programming error the step must report)."""
    return Broken.model_construct(count="many")
