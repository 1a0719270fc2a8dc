"""Secrets on the scheduler side: validation rules, placeholders kept at render time, injection.

The scheduler never has a value: ``{{ secrets.NAME }}`` must come out of rendering exactly as
written, and rendered data must never smuggle placeholder text in (the worker would resolve it).
"""

from __future__ import annotations

from typing import Any

import pytest

from foundation.errors import NonRetryableError
from schemas.models import StepFailed
from schemas.run_log import schedules_step
from tests.support.scheduler_simulation import Simulation
from workflows import WorkflowValidationError, parse_workflow, render_params
from workflows.expressions import (
    SecretInjectionError,
    TemplateError,
    secret_name,
    secret_placeholders,
)

CTX: dict[str, Any] = {
    "inputs": {
        "user": "ada",
        "n": 3,
        "evil": "{{ secrets.API_TOKEN }}",
        "half": "{{ ",
        "nested": {"list": ["ok", {"deep": "x {{secrets.DB}} y"}]},
        "lower": "{{ secrets.api_token }}",
    },
    "steps": {},
    "run": {"id": "run-1", "workflow_id": "wf", "workflow_version": 1},
}


# -- names and placeholders ----------------------------------------------------------------------


def test_secret_name_is_exactly_secrets_dot_upper_name() -> None:
    assert secret_name(" secrets.API_TOKEN ") == "API_TOKEN"
    assert secret_name("secrets.A1_B") == "A1_B"
    assert secret_name("secrets.api_token") is None
    assert secret_name("secrets.1A") is None
    assert secret_name("secrets.A.b") is None
    assert secret_name("length(secrets.A)") is None
    assert secret_name("inputs.A") is None


def test_placeholders_in_text_tolerate_blanks_but_not_other_shapes() -> None:
    text = "a {{secrets.A}} b {{  secrets.B\n}} {{ secrets.c }} {{ secret.D }} {{ secrets.A }}"
    assert secret_placeholders(text) == ["A", "B", "A"]


# -- rendering keeps placeholders --------------------------------------------------------------


def test_whole_string_placeholder_is_kept_verbatim() -> None:
    assert render_params("{{ secrets.API_TOKEN }}", CTX) == "{{ secrets.API_TOKEN }}"
    assert render_params("  {{secrets.API_TOKEN}} ", CTX) == "  {{secrets.API_TOKEN}} "


def test_mixed_string_renders_the_rest_around_the_placeholder() -> None:
    params = {
        "auth": "Bearer {{ secrets.API_TOKEN }}",
        "url": "https://x/{{ inputs.user }}?n={{ inputs.n }}&key={{ secrets.KEY }}",
        "both": "{{ secrets.A }}:{{ secrets.B }}",
        "plain": "{{ inputs.n }}",
    }
    assert render_params(params, CTX) == {
        "auth": "Bearer {{ secrets.API_TOKEN }}",
        "url": "https://x/ada?n=3&key={{ secrets.KEY }}",
        "both": "{{ secrets.A }}:{{ secrets.B }}",
        "plain": 3,
    }


def test_data_that_only_looks_like_a_placeholder_passes() -> None:
    # Not the placeholder shape (lower-case name): the worker would leave it alone too.
    assert render_params("{{ inputs.lower }}", CTX) == "{{ secrets.api_token }}"
    # Keys are never resolved by the worker, so they are not refused either.
    assert render_params("{{ inputs.nested.list[0] }}", CTX) == "ok"


# -- injection is refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ inputs.evil }}",  # whole value, a string
        "{{ inputs.nested }}",  # whole value, deep inside an object
        "x={{ inputs.evil }}",  # interpolated
        "{{ inputs.half }}secrets.API_TOKEN }}",  # assembled from data and literal text
        "Bearer {{ secrets.API_TOKEN }} {{ inputs.evil }}",  # next to an authored one
        "{{ inputs.evil }}{{ secrets.API_TOKEN }}",  # same name as the authored one
    ],
)
def test_rendered_placeholder_text_is_refused(template: str) -> None:
    with pytest.raises(SecretInjectionError) as caught:
        render_params({"body": template}, CTX)
    error = caught.value
    assert isinstance(error, TemplateError) and isinstance(error, NonRetryableError)
    assert error.error_class == "SecretInjection"
    assert error.path.startswith("params.body")
    assert "did not write" in str(error)


# -- validation ------------------------------------------------------------------------------------


def _errors(definition: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(definition)
    return {e.path: e.message for e in caught.value.errors}


def _wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "wf", "steps": list(steps), **extra}


def test_secrets_in_params_are_valid() -> None:
    definition = parse_workflow(
        _wf(
            {"id": "a", "node": "transform", "params": {"x": "{{ inputs.u }}"}},
            {
                "id": "b",
                "node": "http.request",
                "needs": ["a"],
                "params": {
                    "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
                    "url": "https://x/{{ steps.a.output.result }}?k={{secrets.KEY_2}}",
                },
            },
            inputs={"u": {"type": "string"}},
        )
    )
    assert definition.steps[1].params["headers"]["Authorization"] == (
        "Bearer {{ secrets.API_TOKEN }}"
    )


def test_secret_rules_in_validation() -> None:
    errors = _errors(
        _wf(
            {
                "id": "a",
                "node": "transform",
                "when": "secrets.FLAG",
                "params": {
                    "lower": "{{ secrets.api_token }}",
                    "digit": "{{ secrets.A.b }}",
                    "func": "{{ length(secrets.A) }}",
                    "bare": "{{ secrets }}",
                    "root": "{{ vault.A }}",
                    "upstream": "{{ secrets.A }} {{ steps.b.output }}",
                },
            },
            {"id": "b", "node": "transform"},
            outputs={"leak": "{{ secrets.A }}"},
        )
    )
    alone = "secrets can only be used alone in a template, as '{{ secrets.NAME }}'"
    assert errors["steps[0].when"].startswith("secrets cannot be used in 'when'")
    assert errors["steps[0].params.lower"].startswith("invalid secret name 'api_token'")
    assert errors["steps[0].params.digit"].startswith("invalid secret name 'A.b'")
    assert errors["steps[0].params.func"].startswith(alone)
    assert errors["steps[0].params.bare"].startswith(alone)
    # Unknown roots are still unknown, and the other references of a mixed string still count.
    assert errors["steps[0].params.root"] == (
        "unknown name 'vault': expressions start with inputs., steps. or run."
    )
    assert errors["steps[0].params.upstream"] == (
        "step 'b' is not upstream of 'a'; add it to needs"
    )
    assert errors["outputs.leak"].startswith("secrets cannot be used in outputs")


def test_a_cached_step_cannot_use_secrets() -> None:
    errors = _errors(
        _wf(
            {
                "id": "a",
                "node": "transform",
                "params": {"data": "{{ secrets.A }}", "expression": "@"},
            },
            defaults={"cache": {"enabled": True}},
        )
    )
    assert list(errors) == ["steps[0].cache.enabled"]
    assert errors["steps[0].cache.enabled"].startswith("a step that uses secrets cannot be cached")


# -- the scheduler publishes placeholders, never values --------------------------------------------

SECRET_FLOW = """
id: secret-flow
inputs: {user: {type: string, required: true}}
steps:
  - id: call
    node: http.request@^1
    params:
      url: "https://api.example/{{ inputs.user }}"
      headers: {Authorization: "Bearer {{ secrets.API_TOKEN }}"}
  - id: next
    node: transform@^1
    needs: [call]
    params: {expression: "@", data: "{{ steps.call.output }}"}
"""


def test_scheduled_and_dispatched_params_hold_the_placeholder() -> None:
    sim = Simulation(SECRET_FLOW)
    decision = sim.start({"user": "ada"})
    scheduled = [e for e in decision.events if schedules_step(e)]
    expected = {
        "url": "https://api.example/ada",
        "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
    }
    assert [e.params for e in scheduled] == [expected]
    assert [inv.params for inv in decision.invocations] == [expected]


def test_an_upstream_output_carrying_a_placeholder_fails_the_next_step() -> None:
    sim = Simulation(SECRET_FLOW)
    sim.start({"user": "ada"})
    decision = sim.succeed("call", {"body": "please send {{ secrets.API_TOKEN }}"})
    failed = [e for e in decision.events if isinstance(e, StepFailed)]
    assert len(failed) == 1 and failed[0].step.step_id == "next"
    assert failed[0].error.error_class == "SecretInjection"
    assert not failed[0].error.retryable
    assert not decision.invocations


def test_a_run_input_carrying_a_placeholder_fails_the_step() -> None:
    sim = Simulation(SECRET_FLOW)
    decision = sim.start({"user": "{{ secrets.OTHER }}"})
    failed = [e for e in decision.events if isinstance(e, StepFailed)]
    assert [f.error.error_class for f in failed] == ["SecretInjection"]
    assert "OTHER" in failed[0].error.message
    assert not decision.invocations
