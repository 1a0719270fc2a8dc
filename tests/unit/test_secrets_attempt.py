"""run_attempt with secrets: resolved in the worker before validation, redacted on the way out."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from node_workers.attempt import inputs_hash, run_attempt
from node_workers.node import Node, NodeContext, NodeModel, NonRetryableNodeError
from node_workers.nodes.transform import TransformNode
from node_workers.records import build_result, build_trace
from node_workers.secrets import EnvSecretProvider, SecretGrants, SecretResolver
from schemas import encode
from schemas.models import NodeInvocation, StepRef, TraceStatus

VALUE = "attempt-s3cr3t-4d1e"


class _In(NodeModel):
    token: str
    mode: str = "echo"


class _Out(NodeModel):
    said: str


class _Leaky(Node[_In, _Out]):
    """A node that leaks its token every way it can."""

    name = "leaky"
    version = "1.0.0"
    Input = _In
    Output = _Out

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def execute(self, params: _In, ctx: NodeContext) -> _Out:
        self.seen.append(params.token)
        ctx.logger.info("calling with %s", params.token)
        ctx.record(f"latency_{params.token}", 1.0)
        if params.mode == "fail":
            raise NonRetryableNodeError(f"rejected token {params.token}", error_class="Denied")
        if params.mode == "crash":
            raise RuntimeError(f"bug holding {params.token}")
        return _Out(said=f"token was {params.token}")


def _invocation(params: Any, workflow_id: str = "wf") -> NodeInvocation:
    return NodeInvocation(
        run_id="run-1",
        seq=3,
        invocation_id="inv-1",
        attempt=1,
        workflow_id=workflow_id,
        workflow_version=1,
        step=StepRef(step_id="s", node="leaky", node_version="1.0.0"),
        params=params,
        idempotency_key="idem",
        trace_context={},
    )


def _resolver() -> SecretResolver:
    return SecretResolver(
        EnvSecretProvider({"REFLUX_SECRET_TOKEN": VALUE}),
        SecretGrants.from_mapping({"TOKEN": ["wf"]}, source="test"),
    )


def _run(node: Node[Any, Any], invocation: NodeInvocation, **kwargs: Any) -> Any:
    return asyncio.run(run_attempt(node, invocation, **kwargs))


def _published(node: Node[Any, Any], invocation: NodeInvocation, attempt: Any) -> bytes:
    """Every byte this attempt would put on Kafka (result and trace)."""
    return encode(build_result(node, invocation, attempt)) + encode(
        build_trace(node, invocation, attempt)
    )


@pytest.mark.parametrize("mode", ["echo", "fail", "crash"])
def test_node_gets_the_value_and_nothing_carries_it_out(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = _Leaky()
    params = {"token": "Bearer {{ secrets.TOKEN }}", "mode": mode}
    invocation = _invocation(params)
    attempt = _run(node, invocation, secrets=_resolver())
    assert node.seen == [f"Bearer {VALUE}"]
    assert attempt.inputs_hash == inputs_hash(params)  # the placeholders, not the value
    assert attempt.metrics == {"latency_Bearer ***": 1.0}
    if mode == "echo":
        assert attempt.status is TraceStatus.OK
        assert attempt.output == {"said": "token was Bearer ***"}
    else:
        assert attempt.status is TraceStatus.ERROR and attempt.error is not None
        assert "Bearer ***" in attempt.error.message
    assert VALUE.encode() not in _published(node, invocation, attempt)
    assert "calling with Bearer ***" in caplog.text
    assert VALUE not in caplog.text


def test_ungranted_secret_fails_before_the_node_runs() -> None:
    node = _Leaky()
    attempt = _run(
        node, _invocation({"token": "{{ secrets.TOKEN }}"}, "other-wf"), secrets=_resolver()
    )
    assert node.seen == []
    assert attempt.status is TraceStatus.ERROR and attempt.error is not None
    assert attempt.error.error_class == "SecretUnavailable" and not attempt.error.retryable
    assert "'TOKEN'" in attempt.error.message and "other-wf" in attempt.error.message


def test_without_a_resolver_placeholders_never_reach_the_node() -> None:
    node = _Leaky()
    attempt = _run(node, _invocation({"token": "{{ secrets.TOKEN }}"}))
    assert node.seen == []
    assert attempt.error is not None and attempt.error.error_class == "SecretUnavailable"


def test_params_without_placeholders_are_untouched() -> None:
    attempt = _run(
        TransformNode(),
        NodeInvocation(
            **{
                **_invocation(None).model_dump(),
                "step": StepRef(step_id="s", node="transform", node_version="1.0.0"),
                "params": {"expression": "a", "data": {"a": "{{ inputs.x }}"}},
            }
        ),
    )
    assert attempt.status is TraceStatus.OK and attempt.output == {"result": "{{ inputs.x }}"}


def test_a_transform_of_a_secret_outputs_the_mask() -> None:
    invocation = NodeInvocation(
        **{
            **_invocation(None).model_dump(),
            "step": StepRef(step_id="s", node="transform", node_version="1.0.0"),
            "params": {"expression": "[t, length(t)]", "data": {"t": "{{ secrets.TOKEN }}"}},
        }
    )
    attempt = _run(TransformNode(), invocation, secrets=_resolver())
    assert attempt.output == {"result": ["***", len(VALUE)]}
