"""The SDK's workflow builder: the same definition as YAML, validated when built."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from reflux.sdk import Cache, Input, Retry, Workflow, WorkflowValidationError, input_ref
from workflows.validation import parse_workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _order_quote_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("order_quote", EXAMPLES / "order_quote.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_order_quote_in_python_is_the_yaml_file() -> None:
    built = _order_quote_module().order_quote()
    written = yaml.safe_load((EXAMPLES / "order-quote.yaml").read_text())
    # As written (not only once defaults are applied): the same dict the YAML file holds.
    assert built.to_definition() == written
    assert built.build() == parse_workflow(written)


def test_round_trip_code_definition_yaml_definition() -> None:
    built = _order_quote_module().order_quote()
    definition = built.to_definition()
    again = Workflow.from_definition(built.to_yaml())
    assert again.to_definition() == definition
    assert yaml.safe_load(again.to_yaml()) == definition
    assert parse_workflow(built.to_yaml()).to_json_dict() == built.build().to_json_dict()


def test_every_field_reaches_the_definition() -> None:
    wf = Workflow(
        "all-fields",
        description="d",
        inputs={"n": {"type": "integer", "default": 2}},
        defaults_timeout="5s",
        defaults_queue_timeout=1000,
        defaults_cache=Cache(ttl="1m"),
        deadline="1h",
        max_concurrent_runs=3,
    ).input("word", "string", required=True, description="w")
    first = wf.step(
        "first",
        "transform@^1",
        params={"expression": "w", "data": {"w": input_ref("word")}},
        retry=Retry(max_attempts=5, initial_backoff=50, max_backoff="2s", non_retryable=["X"]),
        timeout="3s",
        queue_timeout="4s",
        cache=Cache(enabled=True, ttl=60_000),
        description="first step",
    )
    wf.step(
        "second", "condition@^1", needs=first, when=f"{first.expr('result')} == 'a'", inline=False
    )
    wf.output("w", first.ref("result"))
    model = wf.build()
    assert model.step("first").inline and not model.step("second").inline
    assert "inline" not in wf.raw()["steps"][0]
    assert model.deadline == 3_600_000 and model.max_concurrent_runs == 3
    assert model.defaults.timeout == 5000 and model.defaults.queue_timeout == 1000
    step = model.step("first")
    assert step.retry.max_attempts == 5 and step.retry.max_backoff == 2000
    assert step.retry.non_retryable == ("X",)
    assert (step.timeout, step.queue_timeout, step.cache.ttl) == (3000, 4000, 60_000)
    assert model.step("second").needs == ("first",)
    assert model.step("second").when == "steps.first.output.result == 'a'"
    assert model.inputs["word"].required and model.inputs["n"].default == 2
    assert model.outputs == {"w": "{{ steps.first.output.result }}"}


def _paths(exc: pytest.ExceptionInfo[WorkflowValidationError]) -> list[str]:
    return [error.path for error in exc.value.errors]


def _two_steps(**second: Any) -> Workflow:
    wf = Workflow("bad", inputs={"x": Input("string")})
    wf.step("a", "transform@^1", params={"expression": "x", "data": {"x": input_ref("x")}})
    wf.step("b", "transform@^1", **second)
    return wf


def test_unknown_need_names_its_field_path() -> None:
    with pytest.raises(WorkflowValidationError) as exc:
        _two_steps(needs=["a", "nope"]).to_definition()
    assert "steps[1].needs[1]" in _paths(exc)
    assert "unknown step 'nope'" in str(exc.value)


def test_template_to_a_step_not_upstream_is_refused_at_build_time() -> None:
    with pytest.raises(WorkflowValidationError) as exc:
        _two_steps(params={"expression": "v", "data": {"v": "{{ steps.a.output }}"}}).build()
    assert any(path.startswith("steps[1].params") for path in _paths(exc)), exc.value


def test_structural_errors_name_the_field() -> None:
    wf = Workflow("Bad Id!")
    wf.step("Not-An-Id", "transform@^1", retry=Retry(max_attempts=0), timeout="soon")
    with pytest.raises(WorkflowValidationError) as exc:
        wf.to_yaml()
    paths = _paths(exc)
    assert "id" in paths and "steps[0].id" in paths
    assert "steps[0].retry.max_attempts" in paths and "steps[0].timeout" in paths


def test_from_definition_validates_too() -> None:
    with pytest.raises(WorkflowValidationError) as exc:
        Workflow.from_definition("id: x\nsteps: []\nunknown: 1\n")
    assert "unknown" in _paths(exc)


def test_the_docs_builder_example_builds() -> None:
    """docs/sdk.md's first example is code that runs (and validates)."""
    text = (EXAMPLES.parent / "docs" / "sdk.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/sdk.md", "exec"), namespace)  # our own docs
    definition = namespace["definition"]
    assert [s["id"] for s in definition["steps"]] == ["offers", "cheapest", "approval"]
    parse_workflow(definition)
