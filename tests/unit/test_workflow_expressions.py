"""Expressions and templates: JMESPath semantics, interpolation rules, runtime errors, refs."""

from __future__ import annotations

import pytest

from foundation.errors import NonRetryableError
from workflows import (
    Reference,
    TemplateError,
    evaluate_when,
    expression_references,
    is_truthy,
    render_params,
)

CTX = {
    "inputs": {"url": "https://x", "count": 3, "flags": {"a": True}, "empty": []},
    "steps": {
        "fetch": {"status": "succeeded", "output": {"status": 200, "items": [{"n": 1}, {"n": 2}]}},
        "skip": {"status": "skipped", "output": None},
    },
    "run": {"id": "run-1", "workflow_id": "wf", "workflow_version": 2},
}


def test_whole_template_keeps_json_type() -> None:
    assert render_params("{{ inputs.count }}", CTX) == 3
    assert render_params("  {{ inputs.flags }}  ", CTX) == {"a": True}
    assert render_params("{{ steps.fetch.output.items[*].n }}", CTX) == [1, 2]
    assert render_params("{{ steps.nope.output }}", CTX) is None


def test_interpolation_stringifies_non_strings_as_json() -> None:
    assert render_params("n={{ inputs.count }}", CTX) == "n=3"
    assert render_params("{{ inputs.url }}/{{ run.id }}", CTX) == "https://x/run-1"
    assert render_params("f={{ inputs.flags }} m={{ steps.skip.output }}", CTX) == (
        'f={"a": true} m=null'
    )


def test_render_params_walks_nested_json_and_leaves_the_rest() -> None:
    params = {"a": ["{{ inputs.count }}", 1, None, True], "b": {"c": "x{{ run.workflow_id }}"}}
    assert render_params(params, CTX) == {"a": [3, 1, None, True], "b": {"c": "xwf"}}
    assert render_params("no template", CTX) == "no template"


def test_when_truthiness_is_jmespath_not_python() -> None:
    assert evaluate_when("steps.fetch.output.status == `200`", CTX) is True
    assert evaluate_when("steps.skip.status == 'succeeded'", CTX) is False
    assert evaluate_when("`0`", CTX) is True  # numbers are always true in JMESPath
    assert evaluate_when("inputs.empty", CTX) is False
    assert evaluate_when("inputs.missing", CTX) is False
    assert is_truthy({}) is False and is_truthy("x") is True and is_truthy(False) is False


def test_runtime_error_is_a_non_retryable_template_error_with_path() -> None:
    with pytest.raises(TemplateError) as info:
        render_params({"a": {"b": "{{ length(inputs.count) }}"}}, CTX, path="steps.x.params")
    assert info.value.path == "steps.x.params.a.b"
    assert info.value.error_class == "TemplateError"
    assert isinstance(info.value, NonRetryableError) and not info.value.retryable
    assert "length" in str(info.value)


def test_when_runtime_error() -> None:
    with pytest.raises(TemplateError) as info:
        evaluate_when("abs(inputs.url)", CTX, path="steps.y.when")
    assert info.value.path == "steps.y.when"


def test_references_found_in_the_ast() -> None:
    refs = expression_references(
        "length(inputs.items[?x > `1`].name) > `0` && steps.fetch.output.a[0].b"
        " || contains(steps.parse.output, run.id) | foo"
    )
    assert refs == [
        Reference("inputs", "items"),
        Reference("steps", "fetch"),
        Reference("steps", "parse"),
        Reference("run", "id"),
    ]


def test_references_of_quoted_and_bare_roots() -> None:
    assert expression_references('steps."fetch".output') == [Reference("steps", "fetch")]
    assert expression_references("inputs") == [Reference("inputs", None)]
    assert expression_references("{a: inputs.x, b: [steps.s.output]}") == [
        Reference("inputs", "x"),
        Reference("steps", "s"),
    ]
    # Fields inside projections, pipes and exprefs are relative, not roots.
    assert expression_references("sort_by(inputs.rows, &age)[*].name | [0].zz") == [
        Reference("inputs", "rows")
    ]
