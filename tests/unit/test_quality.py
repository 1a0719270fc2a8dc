"""The quality signal (ADR 0035): checker steps and feedback become quality_score on traces."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from node_workers.attempt import run_attempt
from node_workers.nodes.transform import TransformNode
from node_workers.records import build_trace
from schemas.models import NodeInvocation, StepRef, TraceStatus
from schemas.quality import (
    CHECKER_CONTEXT_KEY,
    QUALITY_SCORE,
    CheckerScoreError,
    checker_score,
    feedback_trace,
    is_checker,
)
from schemas.trace_json import decode_trace, encode_trace
from tests.support.scheduler_simulation import Simulation
from workflows import parse_workflow
from workflows.validation import WorkflowValidationError

CHECKED = """
id: checked
inputs: {answer: {type: string}, expected: {type: string}}
steps:
  - id: judge
    node: transform@^1
    checker: true
    params:
      expression: "{score: (answer == expected) && `1` || `0`}"
      data: {answer: "{{ inputs.answer }}", expected: "{{ inputs.expected }}"}
  - {id: after, node: transform@^1, needs: [judge], params: {expression: "@", data: 1}}
"""


@pytest.mark.parametrize(
    ("output", "score"),
    [({"score": 0.25}, 0.25), ({"result": {"score": 1}}, 1.0), ({"score": 0, "x": "y"}, 0.0)],
)
def test_checker_score_reads_the_top_level_or_the_transform_result(
    output: Any, score: float
) -> None:
    assert checker_score(output) == score


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"result": {"ok": True}}, "contain a numeric 'score'"),
        ({"verdict": 1}, "keys ['verdict']"),
        ([1, 2], "a list"),
        ({"score": True}, "is True"),
        ({"score": "0.5"}, "is '0.5'"),
        ({"score": 1.5}, "between 0 and 1, but it is 1.5"),
        ({"score": -0.1}, "between 0 and 1"),
        ({"score": float("nan")}, "nan"),
    ],
)
def test_checker_score_refuses_missing_non_numeric_and_out_of_range(
    output: Any, message: str
) -> None:
    with pytest.raises(CheckerScoreError, match=re.escape(message)) as info:
        checker_score(output)
    assert info.value.error_class == "CheckerScoreMissing" and not info.value.retryable


def test_feedback_trace_round_trips_on_the_wire_and_is_not_an_attempt() -> None:
    at = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    trace = feedback_trace(
        run_id="r1",
        workflow_id="w",
        workflow_version=3,
        score=0.2,
        at=at,
        feedback_id="f1",
        step_id="answer",
        label="wrong",
        comment="x" * 5000,
    )
    assert decode_trace(encode_trace(trace)) == trace
    assert trace.metrics == {QUALITY_SCORE: 0.2}
    assert trace.status is TraceStatus.SKIPPED and trace.invocation_id is None
    assert trace.node == "feedback" and trace.step_id == "answer" and trace.seq == -1
    assert trace.context["kind"] == "feedback" and trace.context["feedback_id"] == "f1"
    assert trace.context["label"] == "wrong" and len(trace.context["comment"]) == 2000
    whole = feedback_trace(run_id="r1", workflow_id="w", workflow_version=3, score=1, at=at)
    assert whole.step_id == "" and "label" not in whole.context and whole.context["feedback_id"]


def test_the_checker_flag_is_validated_with_its_path() -> None:
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(
            "id: w\nsteps:\n - {id: a, node: transform, params: {expression: x}, checker: 'yes'}"
        )
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("steps[0].checker", "Input should be a valid boolean")
    ]
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(
            "id: w\nsteps:\n"
            " - {id: m, node: meta.switch, params: {value: x, cases: {a: [b]}}, checker: true}\n"
            " - {id: b, node: transform, needs: [m], params: {expression: x}}\n"
        )
    paths = {e.path: e.message for e in info.value.errors}
    assert list(paths) == ["steps[0].checker"]
    assert "run by the scheduler" in paths["steps[0].checker"]


def test_canonical_form_has_checker_only_where_set() -> None:
    definition = parse_workflow(CHECKED)
    steps = definition.to_json_dict()["steps"]
    assert steps[0]["checker"] is True and "checker" not in steps[1]
    assert type(definition).from_json_dict(definition.to_json_dict()) == definition


def test_the_scheduler_marks_a_checker_steps_invocation() -> None:
    sim = Simulation(CHECKED)
    sim.start(inputs={"answer": "4", "expected": "4"})
    judge = sim.invocation("judge")
    # Beside the attempt's traceparent (ADR 0062), which every invocation carries.
    assert judge.trace_context[CHECKER_CONTEXT_KEY] == "true" and is_checker(judge.trace_context)
    sim.succeed("judge", {"result": {"score": 1}})
    assert not is_checker(sim.invocation("after").trace_context)
    assert set(sim.invocation("after").trace_context) == {"traceparent"}


def _invocation(params: Any, checker: bool) -> NodeInvocation:
    return NodeInvocation(
        run_id="run-1",
        seq=3,
        invocation_id="inv-1",
        attempt=1,
        workflow_id="checked",
        workflow_version=1,
        step=StepRef(step_id="judge", node="transform", node_version="1.0.0"),
        params=params,
        idempotency_key="k",
        trace_context={CHECKER_CONTEXT_KEY: "true"} if checker else {},
    )


@pytest.mark.parametrize(("answer", "score"), [("4", 1.0), ("5", 0.0)])
def test_a_checker_attempt_puts_its_score_on_the_trace(answer: str, score: float) -> None:
    params = {
        "expression": "{score: (answer == expected) && `1` || `0`}",
        "data": {"answer": answer, "expected": "4"},
    }
    node = TransformNode()
    invocation = _invocation(params, checker=True)
    attempt = asyncio.run(run_attempt(node, invocation))
    assert attempt.status is TraceStatus.OK and attempt.metrics == {QUALITY_SCORE: score}
    trace = build_trace(node, invocation, attempt)
    assert trace.metrics[QUALITY_SCORE] == score and trace.context[CHECKER_CONTEXT_KEY] == "true"


def test_a_checker_attempt_without_a_score_fails_for_good_and_other_steps_are_untouched() -> None:
    params = {"expression": "{verdict: `1`}", "data": {}}
    failed = asyncio.run(run_attempt(TransformNode(), _invocation(params, checker=True)))
    assert failed.status is TraceStatus.ERROR and failed.error is not None
    assert failed.error.error_class == "CheckerScoreMissing" and not failed.error.retryable
    assert "'judge'" in failed.error.message and "'score'" in failed.error.message
    plain = asyncio.run(run_attempt(TransformNode(), _invocation(params, checker=False)))
    assert plain.status is TraceStatus.OK and plain.metrics == {}
