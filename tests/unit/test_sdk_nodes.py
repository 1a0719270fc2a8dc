"""Custom nodes as code: ``@node`` builds a node from a typed function (reflux.sdk_nodes)."""

from __future__ import annotations

import argparse
import asyncio
import types
from typing import Any

import pytest

from node_workers.attempt import run_attempt
from node_workers.cli import add_worker_commands, served_nodes, worker_config
from node_workers.function_nodes import FunctionNode
from node_workers.node import NodeContext, NonRetryableNodeError, Workload, validate_params
from node_workers.registry import NodeRegistry
from reflux.sdk_nodes import NodeDefinitionError, NodeModel, discover_nodes, load_module_nodes, node
from schemas.models import NodeInvocation, StepRef, TraceStatus
from tests.support import custom_nodes
from tests.support.custom_nodes import GreetIn, GreetOut, greet_v1, greet_v2


def ctx() -> NodeContext:
    return NodeContext(invocation_id="i", run_id="r", step_id="s", attempt=1)


def built(func: Any) -> FunctionNode:
    value = func.__reflux_node__
    assert isinstance(value, FunctionNode)
    return value


def test_the_manifest_carries_the_models_schemas_and_the_flags() -> None:
    v1, v2 = built(greet_v1), built(greet_v2)
    assert (v1.key, v1.major, v2.key, v2.major) == ("acme.greet@1.0.0", 1, "acme.greet@2.0.0", 2)
    manifest = v1.manifest()
    assert manifest["input_schema"] == GreetIn.model_json_schema(by_alias=True)
    assert manifest["output_schema"] == GreetOut.model_json_schema(by_alias=True)
    assert manifest["input_schema"]["required"] == ["name"]
    assert {k: manifest[k] for k in ("cacheable", "side_effects", "idempotent")} == {
        "cacheable": True,
        "side_effects": False,
        "idempotent": True,
    }
    assert manifest["description"] == "Say hello."
    assert manifest["source"] == "tests.support.custom_nodes.greet_v1"
    assert v2.workload is Workload.CPU and v1.workload is Workload.IO
    assert built(custom_nodes.broken).manifest()["side_effects"] is True


def test_the_decorated_function_stays_callable() -> None:
    assert asyncio.run(greet_v1(GreetIn(name="a"))) == GreetOut(greeting="hello a", version="1.0.0")


def test_async_and_sync_functions_execute_and_the_context_is_passed() -> None:
    c = ctx()
    out = asyncio.run(built(greet_v2).execute(GreetIn(name="ann", times=2), c))
    assert out == GreetOut(greeting="HELLO ANN HELLO ANN", version="2.0.0")
    assert c.metrics == {"times": 2.0}
    out = asyncio.run(built(greet_v1).execute(GreetIn(name="ann"), ctx()))
    assert out.greeting == "hello ann"


def test_invalid_input_is_non_retryable_and_names_the_field_path() -> None:
    with pytest.raises(NonRetryableNodeError) as caught:
        validate_params(built(greet_v1), {"name": "", "times": "x"})
    message = str(caught.value)
    assert "params.name: String should have at least 1 character" in message
    assert "params.times: Input should be a valid integer" in message
    assert not caught.value.retryable
    with pytest.raises(NonRetryableNodeError, match=r"params\.nmae: Extra inputs"):
        validate_params(built(greet_v1), {"name": "a", "nmae": "b"})


def test_an_invalid_output_is_non_retryable_and_names_the_field_path() -> None:
    with pytest.raises(NonRetryableNodeError) as caught:
        asyncio.run(built(custom_nodes.broken).execute(GreetIn(name="a"), ctx()))
    assert caught.value.error_class == "InvalidOutput"
    assert "output.count: Input should be a valid integer" in str(caught.value)
    node_ = built(greet_v1)
    with pytest.raises(NonRetryableNodeError, match="returned Broken"):
        node_.validate_output(custom_nodes.Broken(count=1))
    with pytest.raises(NonRetryableNodeError, match=r"output\.version: Field required"):
        node_.validate_output({"greeting": "x"})
    assert node_.validate_output({"greeting": "x", "version": "1"}) == GreetOut(
        greeting="x", version="1"
    )


class In(NodeModel):
    x: int


class Out(NodeModel):
    y: int


def _no_input() -> Out:
    return Out(y=1)


def _untyped(params):  # type: ignore[no-untyped-def]
    return Out(y=1)


def _dict_input(params: dict[str, Any]) -> Out:
    return Out(y=1)


def _no_return(params: In):  # type: ignore[no-untyped-def]
    return Out(y=params.x)


def _dict_return(params: In) -> dict[str, int]:
    return {"y": params.x}


def _bad_ctx(params: In, ctx: str) -> Out:
    return Out(y=params.x)


def _three(params: In, ctx: NodeContext, extra: int) -> Out:
    return Out(y=params.x)


def _kwargs(params: In, *, ctx: NodeContext) -> Out:
    return Out(y=params.x)


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (_no_input, r"to take \(params: <InputModel>\)"),
        (_three, r"to take \(params: <InputModel>\)"),
        (_kwargs, r"to take \(params: <InputModel>\)"),
        (_untyped, "'params' of node function .*_untyped to be annotated with a pydantic model"),
        (_dict_input, "'params' .* to be annotated with a pydantic model"),
        (_no_return, "_no_return to declare a pydantic model as its return type"),
        (_dict_return, "_dict_return to declare a pydantic model as its return type"),
        (_bad_ctx, "second parameter 'ctx' .* annotated with NodeContext"),
    ],
)
def test_bad_signatures_are_refused_when_decorated(func: Any, message: str) -> None:
    with pytest.raises(NodeDefinitionError, match=message):
        node("acme.x", version="1.0.0")(func)
    assert not hasattr(func, "__reflux_node__")


def test_bad_names_versions_and_flags_are_refused() -> None:
    def ok(params: In) -> Out:
        return Out(y=params.x)

    with pytest.raises(NodeDefinitionError, match="dotted lowercase segments"):
        node("Acme Greet", version="1.0.0")(ok)
    with pytest.raises(NodeDefinitionError, match=r"semver version like '1.0.0'.*'1.0'"):
        node("acme.x", version="1.0")(ok)
    with pytest.raises(NodeDefinitionError, match="cacheable or to have side effects"):
        node("acme.x", version="1.0.0", cacheable=True, side_effects=True)
    with pytest.raises(NodeDefinitionError, match="'io' or 'cpu'"):
        node("acme.x", version="1.0.0", workload="gpu")
    with pytest.raises(NodeDefinitionError, match="without arguments"):
        node(ok)  # type: ignore[arg-type]
    with pytest.raises(NodeDefinitionError, match="no version was given"):
        node("acme.x")(ok)
    with pytest.raises(NodeDefinitionError, match="on a function"):
        node("acme.x", version="1.0.0")(In)
    twice = node("acme.x", version="1.0.0")(ok)
    with pytest.raises(NodeDefinitionError, match="one @node per function"):
        node("acme.y", version="1.0.0")(twice)


def test_discovery_finds_each_node_once() -> None:
    keys = [n.key for n in discover_nodes(custom_nodes)]
    assert keys == ["acme.greet@1.0.0", "acme.greet@2.0.0", "acme.broken@1.0.0"]
    alias = types.ModuleType("alias")
    alias.a = greet_v1  # type: ignore[attr-defined]
    alias.b = greet_v1  # type: ignore[attr-defined]
    assert [n.key for n in discover_nodes(alias)] == ["acme.greet@1.0.0"]


def test_loading_modules_refuses_missing_empty_and_shadowing_modules() -> None:
    with pytest.raises(NodeDefinitionError, match=r"'tests.support.nope' to be importable"):
        load_module_nodes(["tests.support.nope"])
    with pytest.raises(NodeDefinitionError, match=r"'tests.support.waiting' to define @node"):
        load_module_nodes(["tests.support.waiting"])
    with pytest.raises(NodeDefinitionError, match=r"apart from the built-ins.*acme.greet@1.0.0"):
        load_module_nodes(["tests.support.custom_nodes"], {"acme.greet"})


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_worker_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["worker", *argv])


def test_the_worker_serves_a_modules_nodes_one_group_per_major() -> None:
    args = _args("--module", "tests.support.custom_nodes")
    nodes = served_nodes(args.nodes, args.module, {})
    assert nodes.names() == ["acme.broken@1.0.0", "acme.greet@1.0.0", "acme.greet@2.0.0"]
    assert ("acme.greet", 1) in nodes and ("acme.greet", 2) in nodes
    # Built-ins only when the filter names them; the environment's filter counts too.
    both = served_nodes("transform", args.module, {})
    assert "transform@1.0.0" in both.names() and len(both) == 4
    assert len(served_nodes(None, args.module, {"NODES_FILTER": "condition"})) == 4
    # --node-concurrency may name a custom node.
    args = _args("--module", "tests.support.custom_nodes", "--node-concurrency", "acme.greet@2=3")
    assert worker_config(args, _settings(), nodes).node_concurrency == {"acme.greet@2": 3}


def _invocation(node: str, version: str, params: dict[str, Any]) -> NodeInvocation:
    return NodeInvocation(
        run_id="r",
        seq=1,
        invocation_id="i",
        attempt=1,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="s", node=node, node_version=version),
        params=params,
        idempotency_key="i",
    )


def test_attempts_through_the_worker_path_report_ok_and_field_path_errors() -> None:
    v2 = built(greet_v2)
    ok = asyncio.run(run_attempt(v2, _invocation("acme.greet", "2.0.0", {"name": "x"})))
    assert ok.status is TraceStatus.OK, ok
    assert ok.output == {"greeting": "HELLO X", "version": "2.0.0"}
    bad = asyncio.run(run_attempt(v2, _invocation("acme.greet", "2.0.0", {"times": 1})))
    assert bad.status is TraceStatus.ERROR and bad.error is not None
    assert (bad.error.retryable, bad.error.message) == (False, "params.name: Field required")
    broken = built(custom_nodes.broken)
    out = asyncio.run(run_attempt(broken, _invocation("acme.broken", "1.0.0", {"name": "x"})))
    assert out.error is not None and out.error.error_class == "InvalidOutput"
    assert out.error.retryable is False
    assert NodeRegistry(discover_nodes(custom_nodes)).get("acme.greet", 2) is v2


def _settings() -> Any:
    from foundation.settings import Settings

    return Settings()


def test_reflux_dev_serves_every_builtin_plus_the_modules_nodes() -> None:
    from node_workers.nodes import builtin_nodes
    from reflux.cli import build_parser

    args = build_parser().parse_args(["dev", "--module", "tests.support.custom_nodes"])
    assert args.module == ["tests.support.custom_nodes"]
    nodes = served_nodes("*", args.module, {})
    assert len(nodes) == len(builtin_nodes()) + 3
    assert {"acme.greet@2.0.0", "transform@1.0.0"} <= set(nodes.names())
    assert len(served_nodes("*", [], {})) == len(builtin_nodes())
