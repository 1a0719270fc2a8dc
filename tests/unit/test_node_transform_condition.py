"""transform@1.0.0 and condition@1.0.0: pure JMESPath evaluation, errors, truthiness."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from node_workers.node import NodeContext, NonRetryableNodeError, validate_params
from node_workers.nodes.condition import ConditionNode, jmespath_truthy
from node_workers.nodes.transform import TransformNode

DATA: dict[str, Any] = {
    "items": [
        {"name": "a", "price": 5, "tags": ["x"]},
        {"name": "b", "price": 15, "tags": []},
        {"name": "c", "price": 25, "tags": ["x", "y"]},
    ],
    "owner": {"name": "ada"},
}


def _ctx() -> NodeContext:
    return NodeContext("inv", "run", "step", 1)


def _transform(params: Any) -> Any:
    node = TransformNode()
    return asyncio.run(node.execute(validate_params(node, params), _ctx())).result


def _condition(params: Any) -> bool:
    node = ConditionNode()
    return asyncio.run(node.execute(validate_params(node, params), _ctx())).result


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("owner.name", "ada"),
        ("items[?price > `10`].name", ["b", "c"]),
        ("length(items)", 3),
        ("sum(items[].price)", 45),
        ("items[0]", DATA["items"][0]),
        ("{first: items[0].name, n: length(items)}", {"first": "a", "n": 3}),
        ("missing.path", None),
        ("sort_by(items, &price)[-1].name", "c"),
    ],
)
def test_transform_evaluates_jmespath(expression: str, expected: Any) -> None:
    assert _transform({"expression": expression, "data": DATA}) == expected


def test_transform_without_data_searches_null() -> None:
    assert _transform({"expression": "a.b"}) is None


@pytest.mark.parametrize("expression", ["items[?", "foo..bar", "`unterminated", ""])
def test_invalid_expression_is_a_non_retryable_transform_error(expression: str) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _transform({"expression": expression, "data": DATA})
    assert info.value.error_class == "TransformError"
    assert not info.value.retryable
    assert repr(expression) in str(info.value)


@pytest.mark.parametrize("expression", ["abs(owner)", "unknown_fn(items)", "sum(owner.name)"])
def test_evaluation_errors_are_transform_errors(expression: str) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _transform({"expression": expression, "data": DATA})
    assert info.value.error_class == "TransformError"


def test_transform_never_evaluates_python() -> None:
    # Python syntax is not JMESPath: it is rejected, never run.
    with pytest.raises(NonRetryableNodeError, match=r"JMESPath"):
        _transform({"expression": "__import__('os').getcwd()", "data": {}})


def test_transform_params_need_an_expression() -> None:
    with pytest.raises(NonRetryableNodeError, match=r"params\.expression: Field required"):
        _transform({"data": {}})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (True, True),
        (0, True),  # JMESPath: numbers are always true, unlike Python
        (0.0, True),
        ("0", True),
        ([0], True),
        ({"a": None}, True),
    ],
)
def test_jmespath_truthiness(value: Any, expected: bool) -> None:
    assert jmespath_truthy(value) is expected
    assert _condition({"value": value}) is expected


def test_condition_with_expression() -> None:
    assert _condition({"expression": "items[?price > `20`]", "data": DATA}) is True
    assert _condition({"expression": "items[?price > `100`]", "data": DATA}) is False
    assert _condition({"expression": "owner.name == 'ada'", "data": DATA}) is True
    assert _condition({"expression": "items[1].tags", "data": DATA}) is False
    assert _condition({"expression": "items[0].price", "data": DATA}) is True


@pytest.mark.parametrize(
    "params",
    [{}, {"expression": "a", "value": 1}, {"value": 1, "data": {}}, {"expression": None}],
)
def test_condition_needs_exactly_one_form(params: dict[str, Any]) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _condition(params)
    assert info.value.error_class == "ValidationError"
    assert str(info.value).startswith("params")


def test_condition_invalid_expression() -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _condition({"expression": "[?", "data": DATA})
    assert info.value.error_class == "TransformError"
