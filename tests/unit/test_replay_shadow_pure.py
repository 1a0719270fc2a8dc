"""Pure parts of the A/B replay engine: record matching, stand-in nodes, outcomes, divergence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from node_workers.errors import NodeError
from node_workers.node import Node, NodeContext, NodeModel
from processors.replay.determinism import first_divergence
from processors.replay.recorded import (
    REPLAY_NO_RECORD,
    RecordedNode,
    RecordedResults,
    ServedLog,
    params_hash,
    recorded_attempts,
)
from processors.replay.shadow import pin_nodes, run_outcome
from schemas.models import (
    ErrorInfo,
    RunFailed,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepFailed,
    StepRef,
    StepRetryScheduled,
    StepScheduled,
    StepStarted,
    StepSucceeded,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RUN = "r1"


def ref(step: str, node: str = "http.request") -> StepRef:
    return StepRef(step_id=step, node=node, node_version="^1")


def scheduled(seq: int, step: str, params: Any, attempt: int = 1) -> StepScheduled:
    return StepScheduled(
        run_id=RUN, seq=seq, step=ref(step), attempt=attempt, params=params, occurred_at=T0
    )


def succeeded(seq: int, step: str, output: Any, attempt: int = 1, **kw: Any) -> StepSucceeded:
    kw.setdefault("cache_hit", False)
    kw.setdefault("duration_ms", 5)
    return StepSucceeded(
        run_id=RUN,
        seq=seq,
        step=ref(step),
        attempt=attempt,
        invocation_id=f"i{seq}",
        output=output,
        occurred_at=T0 + timedelta(milliseconds=seq),
        **kw,
    )


def started(seq: int = 0) -> RunStarted:
    return RunStarted(
        run_id=RUN,
        seq=seq,
        workflow_id="w",
        workflow_version=1,
        inputs={"a": 1},
        definition={"id": "w"},
        source="api",
        occurred_at=T0,
    )


POST = {"url": "http://x/echo", "method": "POST", "json": {"n": 1}}


def test_records_match_by_step_and_params_hash_and_keep_attempts_in_order() -> None:
    events = [
        started(),
        scheduled(1, "post", POST),
        StepRetryScheduled(
            run_id=RUN,
            seq=2,
            step=ref("post"),
            attempt=1,
            next_attempt_at=T0,
            backoff_ms=10,
            timer_id="t",
            reason="Http5xx: 503",
        ),
        scheduled(3, "post", POST, attempt=2),
        succeeded(4, "post", {"status": 200}, attempt=2),
    ]
    table = recorded_attempts(events)
    attempts = table[("post", params_hash(POST))]
    assert [(a.ok, a.error_class, a.retryable) for a in attempts] == [
        (False, "RecordedRetry", True),
        (True, None, False),
    ]
    records = RecordedResults()
    records.add_run(RUN, events)
    assert records.lookup(RUN, "post", params_hash(POST), 2) == attempts[1]
    assert records.lookup(RUN, "post", params_hash(POST), 7) == attempts[1]  # its last one
    assert records.lookup(RUN, "post", params_hash({**POST, "json": {"n": 2}}), 1) is None
    assert records.lookup("other", "post", params_hash(POST), 1) is None
    assert params_hash({"b": 1, "a": 2}) == params_hash({"a": 2, "b": 1})  # canonical


class SpyInput(NodeModel):
    method: str = "POST"
    n: int = 0


class SpyOutput(NodeModel):
    called: int


class SpyNode(Node[SpyInput, SpyOutput]):
    """A side-effecting node that counts the calls reaching it; GET is safe (cacheable)."""

    name = "spy.effect"
    version = "1.0.0"
    Input = SpyInput
    Output = SpyOutput
    side_effects = True

    def __init__(self) -> None:
        self.calls = 0

    def cacheable_for(self, params: SpyInput) -> bool:
        return params.method == "GET"

    async def execute(self, params: SpyInput, ctx: NodeContext) -> SpyOutput:
        self.calls += 1
        ctx.cost_tokens = 7
        return SpyOutput(called=self.calls)


def serve(node: RecordedNode, params: dict[str, Any], step: str = "s") -> Any:
    ctx = NodeContext(invocation_id="i", run_id=RUN, step_id=step, attempt=1)
    return asyncio.run(node.execute(node.Input.model_validate(params), ctx)).model_dump()


def spy_events(params: dict[str, Any], output: Any) -> list[Any]:
    return [
        started(),
        StepScheduled(
            run_id=RUN, seq=1, step=ref("s", "spy.effect"), attempt=1, params=params, occurred_at=T0
        ),
        StepSucceeded(
            run_id=RUN,
            seq=2,
            step=ref("s", "spy.effect"),
            attempt=1,
            invocation_id="i",
            output=output,
            cache_hit=False,
            duration_ms=1,
            occurred_at=T0,
        ),
    ]


@pytest.mark.parametrize("mode", ["record", "stub", "skip", "live"])
def test_a_recorded_side_effect_is_served_from_the_record_never_called(mode: str) -> None:
    real, records, served = SpyNode(), RecordedResults(), ServedLog()
    records.add_run(RUN, spy_events({"n": 1}, {"called": 41}))
    node = RecordedNode(real, records, served, mode=mode, stub={"called": -1})
    if mode == "live":
        assert serve(node, {"n": 1}) == {"called": 1}  # allowed for this node: it is called
        assert (real.calls, served.get(RUN, "s")) == (1, ("live", 1))
        assert served.tokens_of(RUN, "s") == 7  # what the node reported
        return
    assert serve(node, {"n": 1}) == {"called": 41}
    assert (real.calls, served.get(RUN, "s")) == (0, ("record", 0))
    assert served.tokens_of(RUN, "s") is None


def test_different_params_follow_the_policy_and_default_to_replay_no_record() -> None:
    real, records, served = SpyNode(), RecordedResults(), ServedLog()
    records.add_run(RUN, spy_events({"n": 1}, {"called": 41}))
    stub = RecordedNode(real, records, served, mode="stub", stub={"called": -1})
    assert serve(stub, {"n": 2}) == {"called": -1}
    assert served.get(RUN, "s") == ("stub", 0)
    skip = RecordedNode(real, records, served, mode="skip")
    assert serve(skip, {"n": 2}) == {}
    strict = RecordedNode(real, records, served)
    with pytest.raises(NodeError) as failed:
        serve(strict, {"n": 2})
    assert failed.value.error_class == REPLAY_NO_RECORD
    assert "spy.effect" in str(failed.value)
    assert real.calls == 0
    # A safe invocation (GET) of a side-effecting node re-executes.
    assert serve(strict, {"n": 2, "method": "GET"}) == {"called": 1}


def test_a_recorded_failure_is_served_as_that_failure() -> None:
    real, records, served = SpyNode(), RecordedResults(), ServedLog()
    records.add_run(
        RUN,
        [
            started(),
            StepScheduled(
                run_id=RUN, seq=1, step=ref("s", "spy.effect"), attempt=1, params={"n": 1}
            ),
            StepFailed(
                run_id=RUN,
                seq=2,
                step=ref("s", "spy.effect"),
                attempt=1,
                invocation_id="i",
                error=ErrorInfo(error_class="Http4xx", message="400", retryable=False),
            ),
        ],
    )
    with pytest.raises(NodeError) as failed:
        serve(RecordedNode(real, records, served), {"n": 1})
    assert (failed.value.error_class, real.calls) == ("Http4xx", 0)


def test_run_outcome_reads_status_outputs_and_steps() -> None:
    events = [
        started(),
        scheduled(1, "post", POST),
        StepDispatched(
            run_id=RUN,
            seq=2,
            step=ref("post"),
            attempt=1,
            invocation_id="i2",
            invoke_topic="p.invoke.http.request.v1",
            node_version="1.0.0",
            occurred_at=T0,
        ),
        succeeded(3, "post", {"status": 200}, duration_ms=80),
        RunSucceeded(run_id=RUN, seq=4, outputs={"ok": True}, duration_ms=120, occurred_at=T0),
    ]
    outcome = run_outcome(RUN, events)
    assert (outcome.status, outcome.outputs, outcome.duration_ms) == (
        "succeeded",
        {"ok": True},
        120,
    )
    step = outcome.steps["post"]
    assert (step.status, step.attempts, step.duration_ms, step.output) == (
        "succeeded",
        1,
        80.0,
        {"status": 200},
    )
    assert (step.served, step.calls) == ("executed", 1)
    shadow = run_outcome(RUN, events, served=lambda s: ("record", 0), tokens=lambda s: 12)
    assert (shadow.steps["post"].served, shadow.steps["post"].calls) == ("record", 0)
    assert (step.tokens, shadow.steps["post"].tokens) == (None, 12)
    failed = run_outcome(
        RUN,
        [
            started(),
            RunFailed(
                run_id=RUN,
                seq=1,
                error=ErrorInfo(error_class="TransformError", message="m", retryable=False),
                failed_step=ref("shape", "transform"),
                occurred_at=T0 + timedelta(milliseconds=30),
            ),
        ],
    )
    assert (failed.status, failed.error_class, failed.duration_ms) == (
        "failed",
        "TransformError",
        30.0,
    )


def test_divergence_ignores_ids_times_interleaving_and_start_signals() -> None:
    a = [started(), scheduled(1, "x", {"v": 1}), scheduled(2, "y", {"v": 2})]
    a += [succeeded(3, "x", {"r": 1}), succeeded(4, "y", {"r": 2})]
    b = [started(), scheduled(1, "y", {"v": 2}), scheduled(2, "x", {"v": 1})]
    b += [
        StepStarted(
            run_id=RUN,
            seq=3,
            step=ref("y"),
            attempt=1,
            invocation_id="z",
            started_at=T0,
            worker="w",
        ),
        succeeded(4, "y", {"r": 2}, cache_hit=True),
        succeeded(5, "x", {"r": 1}),
    ]
    assert first_divergence(a, b) is None
    c = [*b[:-1], succeeded(5, "x", {"r": 99})]
    found = first_divergence(a, c)
    assert found is not None
    assert (found["seq"], found["candidate_seq"], found["step_id"]) == (3, 5, "x")
    assert (found["expected"]["output"], found["actual"]["output"]) == ({"r": 1}, {"r": 99})
    missing = first_divergence(a, b[:-1])
    assert missing is not None and (missing["seq"], missing["actual"]) == (3, None)


def _dispatched(seq: int, step: str, params: Any, *, scheduled: bool) -> StepDispatched:
    return StepDispatched(
        run_id=RUN,
        seq=seq,
        step=ref(step),
        attempt=1,
        invocation_id=f"inv-{seq}",
        invoke_topic="reflux.invoke.http.request.v1",
        node_version="1.0.0",
        occurred_at=T0,
        scheduled=scheduled,
        params=params if scheduled else None,
    )


def test_a_dispatch_that_schedules_compares_as_the_scheduling_it_replaces() -> None:
    """ADR 0075: a log with StepScheduled + StepDispatched (older) and one with a single
    scheduling StepDispatched are the same run; a different param in the latter is found."""
    pairs = [started(), scheduled(1, "x", {"v": 1}), _dispatched(2, "x", None, scheduled=False)]
    pairs.append(succeeded(3, "x", {"r": 1}))
    merged = [started(), _dispatched(1, "x", {"v": 1}, scheduled=True)]
    merged.append(succeeded(2, "x", {"r": 1}))
    assert first_divergence(pairs, merged) is None
    assert first_divergence(merged, pairs) is None
    changed = [started(), _dispatched(1, "x", {"v": 2}, scheduled=True), merged[2]]
    found = first_divergence(pairs, changed)
    assert found is not None
    assert (found["seq"], found["candidate_seq"], found["step_id"]) == (1, 1, "x")
    assert (found["expected"]["params"], found["actual"]["params"]) == ({"v": 1}, {"v": 2})


def test_pins_replace_node_refs_everywhere() -> None:
    definition: dict[str, Any] = {
        "id": "w",
        "steps": [
            {"id": "a", "node": "http.request@^1"},
            {"id": "b", "node": "meta.map@^1", "params": {"step": {"node": "http.request"}}},
            {"id": "c", "node": "transform@^1"},
        ],
    }
    pinned = pin_nodes(definition, {"http.request": "1.0.0"})
    assert pinned["steps"][0]["node"] == "http.request@1.0.0"
    assert pinned["steps"][1]["params"]["step"]["node"] == "http.request@1.0.0"
    assert pinned["steps"][2]["node"] == "transform@^1"
    assert definition["steps"][0]["node"] == "http.request@^1"  # not changed in place


def _executed(node: RecordedNode, params: dict[str, Any]) -> tuple[Any, str | None, str, bool]:
    """What the stand-in's execute ends in: (output, error class, message, retryable)."""
    try:
        return serve(node, params), None, "", False
    except NodeError as exc:
        return None, exc.error_class, str(exc), exc.retryable


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("record", {"n": 1}),  # the record
        ("record", {"n": 2}),  # no record: ReplayNoRecord
        ("stub", {"n": 2}),
        ("skip", {"n": 2}),
        ("record", {"n": 3}),  # a recorded failure
    ],
)
def test_the_fold_answer_without_an_attempt_equals_what_execute_does(
    mode: str, params: dict[str, Any]
) -> None:
    """Fold mode serves recorded side effects with ``RecordedNode.answer`` (no attempt, like a
    cache hit); it must end exactly as ``execute`` ends, served log included."""
    events = [
        *spy_events({"n": 1}, {"called": 41}),
        StepScheduled(run_id=RUN, seq=3, step=ref("s", "spy.effect"), attempt=1, params={"n": 3}),
        StepFailed(
            run_id=RUN,
            seq=4,
            step=ref("s", "spy.effect"),
            attempt=1,
            invocation_id="i3",
            error=ErrorInfo(error_class="Http5xx", message="503", retryable=True),
        ),
    ]
    results = []
    for way in ("execute", "answer"):
        real, records, served = SpyNode(), RecordedResults(), ServedLog()
        records.add_run(RUN, events)
        node = RecordedNode(real, records, served, mode=mode, stub={"called": -1})
        if way == "execute":
            ended = _executed(node, params)
        else:
            answer = node.answer(params, RUN, "s", 1)
            assert answer is not None
            ended = (answer.output, answer.error_class, answer.message, answer.retryable)
        results.append((ended, served.get(RUN, "s"), real.calls))
    assert results[0] == results[1]
    assert results[0][2] == 0  # never called


def test_the_fold_answer_leaves_live_safe_and_invalid_invocations_to_an_attempt() -> None:
    real, records, served = SpyNode(), RecordedResults(), ServedLog()
    records.add_run(RUN, spy_events({"n": 1}, {"called": 41}))
    assert RecordedNode(real, records, served, mode="live").answer({"n": 1}, RUN, "s", 1) is None
    strict = RecordedNode(real, records, served)
    assert strict.answer({"n": 1, "method": "GET"}, RUN, "s", 1) is None  # safe: re-executed
    assert strict.answer({"n": "not a number"}, RUN, "s", 1) is None  # the attempt says why
    assert strict.answer({"n": "{{ secrets.TOKEN }}"}, RUN, "s", 1) is None  # resolved first
    assert (real.calls, served.served) == (0, {})
