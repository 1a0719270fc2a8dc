"""The node model: semver, context, param validation with field paths, the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from foundation.errors import ConfigurationError, NonRetryableError, RetryableError
from node_workers.node import (
    Node,
    NodeContext,
    NodeModel,
    NonRetryableNodeError,
    RetryableNodeError,
    parse_semver,
    validate_params,
)
from node_workers.nodes import ConditionNode, HttpRequestNode, TransformNode, builtin_nodes
from node_workers.registry import NodeRegistry, UnknownNodeError, default_registry, parse_filter


class _In(NodeModel):
    n: int


class _Out(NodeModel):
    n: int


class _Echo(Node[_In, _Out]):
    name = "echo.v"
    version = "2.1.0"
    Input = _In
    Output = _Out

    async def execute(self, params: _In, ctx: NodeContext) -> _Out:
        return _Out(n=params.n)


def test_semver_parsing() -> None:
    assert parse_semver("1.0.0") == (1, 0, 0, "")
    assert parse_semver("12.3.4-draft.1") == (12, 3, 4, "draft.1")
    for bad in ["1.0", "01.0.0", "v1.0.0", "1.0.0+build", ""]:
        with pytest.raises(ValueError, match="semver"):
            parse_semver(bad)


def test_node_errors_are_rooted_in_reflux_errors() -> None:
    retry = RetryableNodeError("slow", error_class="HttpTimeout")
    final = NonRetryableNodeError("bad", error_class="Http4xx")
    assert isinstance(retry, RetryableError) and retry.retryable
    assert isinstance(final, NonRetryableError) and not final.retryable
    assert (retry.error_class, final.error_class) == ("HttpTimeout", "Http4xx")


def test_context_defaults_idempotency_key_to_invocation_id_and_tracks_deadline() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    ctx = NodeContext("inv-1", "run-1", "s", 1, deadline=now + timedelta(seconds=5))
    assert ctx.idempotency_key == "inv-1"
    assert ctx.remaining_s(now) == pytest.approx(5.0)
    assert NodeContext("inv-1", "r", "s", 1, idempotency_key="k").idempotency_key == "k"
    assert NodeContext("inv-1", "r", "s", 1).remaining_s() is None


def test_context_metrics_refuse_non_numbers() -> None:
    ctx = NodeContext("i", "r", "s", 1)
    ctx.record("a", 3)
    assert ctx.metrics == {"a": 3.0}
    for bad in [True, float("nan"), float("inf"), "3"]:
        with pytest.raises(TypeError, match="finite number"):
            ctx.record("b", bad)  # type: ignore[arg-type]


def test_validate_params_names_the_field_path() -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        validate_params(HttpRequestNode(), {"url": "not a url"})
    assert info.value.error_class == "ValidationError"
    assert str(info.value).startswith("params.url: Input should be a valid URL")

    with pytest.raises(NonRetryableNodeError, match=r"params\.expect_status\[1\]: "):
        validate_params(HttpRequestNode(), {"url": "http://x", "expect_status": [200, "x"]})
    with pytest.raises(NonRetryableNodeError, match=r"params\.urll: Extra inputs"):
        validate_params(HttpRequestNode(), {"url": "http://x", "urll": "typo"})
    with pytest.raises(NonRetryableNodeError, match=r"^params: Input should be a valid dict"):
        validate_params(TransformNode(), ["not", "an", "object"])


def test_node_properties_and_manifest() -> None:
    node = _Echo()
    node.check()
    assert (node.major, node.key) == (2, "echo.v@2.1.0")
    manifest = node.manifest()
    assert manifest["input_schema"]["properties"]["n"]["type"] == "integer"
    assert manifest["cacheable"] is False
    assert validate_params(node, {"n": "4"}) == _In(n=4)


def test_builtin_nodes_have_the_documented_flags() -> None:
    flags = {n.key: (n.cacheable, n.side_effects) for n in builtin_nodes()}
    assert flags == {
        "http.request@1.0.0": (False, True),
        "transform@1.0.0": (True, False),
        "condition@1.0.0": (True, False),
        "database.query@1.0.0": (False, True),
        "email.send@1.0.0": (False, True),
        "openai.chat@1.0.0": (True, False),
        "code.run@1.0.0": (False, True),
        "webhook.trigger@1.0.0": (False, True),
        "ai.meta@1.0.0": (False, False),
    }
    http = HttpRequestNode()
    get = validate_params(http, {"url": "http://x"})
    post = validate_params(http, {"url": "http://x", "method": "post"})
    assert (http.cacheable_for(get), http.cacheable_for(post)) == (True, False)
    assert http.manifest()["input_schema"]["properties"]["json"] is not None


def test_registry_lookup_and_selection() -> None:
    registry = default_registry()
    assert registry.names() == [
        "ai.meta@1.0.0",
        "code.run@1.0.0",
        "condition@1.0.0",
        "database.query@1.0.0",
        "email.send@1.0.0",
        "http.request@1.0.0",
        "openai.chat@1.0.0",
        "transform@1.0.0",
        "webhook.trigger@1.0.0",
    ]
    assert isinstance(registry.get("transform", 1), TransformNode)
    with pytest.raises(UnknownNodeError, match="'transform' v2"):
        registry.get("transform", 2)

    assert registry.select("http,transform").names() == ["http.request@1.0.0", "transform@1.0.0"]
    assert registry.select(["condition"]).names() == ["condition@1.0.0"]
    assert registry.select("http.request@1").names() == ["http.request@1.0.0"]
    assert len(registry.select(None)) == len(registry.select("*")) == len(builtin_nodes())
    with pytest.raises(UnknownNodeError, match=r"\['htp'\] match nothing"):
        registry.select("htp,transform")
    with pytest.raises(UnknownNodeError):
        registry.select("http.request@2")
    # A prefix matches whole dotted segments only.
    with pytest.raises(UnknownNodeError):
        registry.select("htt")


def test_parse_filter() -> None:
    assert parse_filter(None) is None
    assert parse_filter(" ") is None
    assert parse_filter("all") is None
    assert parse_filter("http, transform,") == ["http", "transform"]
    assert parse_filter(["http,webhook", "transform"]) == ["http", "webhook", "transform"]


def test_registry_refuses_two_versions_of_one_major_and_bad_names() -> None:
    class Other(_Echo):
        version = "2.2.0"

    with pytest.raises(ConfigurationError, match="one version per node major"):
        NodeRegistry([_Echo(), Other()])

    class Bad(_Echo):
        name = "Bad Name"

    with pytest.raises(ValueError, match="dotted lowercase"):
        NodeRegistry([Bad()])
    assert len(NodeRegistry([ConditionNode(), _Echo()])) == 2
