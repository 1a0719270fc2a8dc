"""The pure side of "no input stops a partition" (docs/decisions/0011-no-wedge.md).

``decide`` with the runtime's I/O hooks failing or claim-checking, ``fail_input`` (what the
runtime writes instead of a decision it cannot write), and the runtime's failure classification.
The runtime itself is exercised on real services in tests/integration/test_no_wedge.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from foundation.errors import RetryableError, ServiceUnavailableError
from foundation.objectstore import BlobNotFoundError
from processors.scheduler import DecisionContext, RunStatus, StepStatus, fold
from processors.scheduler.cache import params_digest
from processors.scheduler.decide import fail_input, invocation_for, kept_events
from processors.scheduler.runtime.failures import (
    Backoff,
    Isolation,
    NodeUnavailableError,
    PayloadTooLargeError,
    classify_failure,
    is_fatal,
)
from schemas.models import (
    CommandRejected,
    ErrorInfo,
    NodeResult,
    PauseRun,
    PayloadRef,
    RunFailed,
    StartRun,
    StepFailed,
    TraceStatus,
)
from schemas.run_log import schedules_step
from streams.producer import DeliveryError, DeliveryFailure
from tests.support.scheduler_simulation import Simulation

TWO = """
id: two
steps:
  - {id: first, node: transform@^1, params: {n: 1}}
  - {id: second, node: transform@^1, needs: [first], params: {n: "{{ steps.first.output }}"}}
outputs: {n: "{{ steps.second.output }}"}
"""


class HookedSimulation(Simulation):
    """A simulation whose context carries the runtime's I/O hooks."""

    def __init__(self, definition: str, **hooks: Any) -> None:
        super().__init__(definition)
        self.hooks = hooks

    def context(self) -> DecisionContext:
        return dataclasses.replace(super().context(), **self.hooks)


def ref_for(params: Any) -> PayloadRef:
    digest = params_digest(params)
    return PayloadRef(
        uri=f"s3://b/params/{digest}", size_bytes=10, sha256=digest, content_type="application/json"
    )


def test_large_params_are_claim_checked_in_the_run_log_and_the_invocation() -> None:
    stored: list[Any] = []

    def store(params: Any) -> PayloadRef | None:
        if params.get("n") != "big":
            return None
        stored.append(params)
        return ref_for(params)

    sim = HookedSimulation(TWO, store_payload=store)
    sim.start()
    sim.succeed("first", "big")
    scheduled = [e for e in sim.log if schedules_step(e)]
    assert [s.params_ref is None for s in scheduled] == [True, False]
    second = scheduled[1]
    assert second.params is None and second.params_ref == ref_for({"n": "big"})
    assert stored == [{"n": "big"}]
    invocation = sim.invocation("second")
    assert invocation.params is None and invocation.params_ref == second.params_ref
    # The idempotency key is the same as for inline params: the digest of the same bytes.
    assert invocation.idempotency_key.endswith(params_digest({"n": "big"})[:16])
    assert invocation_for(sim.run, "second").params_ref == second.params_ref
    assert fold(sim.log) == sim.state  # and the simulation checked replay at every step


def test_a_node_without_a_possible_invoke_topic_fails_its_step_with_node_unavailable() -> None:
    def invoke_topic(node: str, major: int) -> str:
        if node == "transform":
            raise NodeUnavailableError(f"no topic for {node} v{major}")
        return f"t.{node}.v{major}"

    sim = HookedSimulation(TWO, invoke_topic=invoke_topic)
    decision = sim.start()
    assert [type(e).__name__ for e in decision.events] == [
        "RunStarted",
        "StepScheduled",
        "StepFailed",
        "RunFailed",
    ]
    failed = decision.events[2]
    assert isinstance(failed, StepFailed)
    assert failed.error.error_class == "NodeUnavailable" and not failed.error.retryable
    assert decision.invocations == ()
    assert sim.run.status is RunStatus.FAILED and sim.run.failed_step == "first"


def test_a_missing_claim_checked_output_fails_the_step_and_an_outage_propagates() -> None:
    outage = False

    def load(ref: PayloadRef) -> Any:
        if outage:
            raise ServiceUnavailableError("S3 is down")
        raise BlobNotFoundError(f"No blob at {ref.uri}")

    sim = HookedSimulation(TWO, load_payload=load)
    sim.start()
    first = sim.invocation("first")
    result = NodeResult(
        run_id=sim.run_id,
        seq=first.seq,
        invocation_id=first.invocation_id,
        attempt=1,
        step=first.step,
        status=TraceStatus.OK,
        output_ref=PayloadRef(
            uri="s3://b/results/gone",
            size_bytes=3,
            sha256="0" * 64,
            content_type="application/json",
        ),
        started_at=sim.now,
        finished_at=sim.now,
    )
    before = sim.state
    outage = True
    with pytest.raises(RetryableError):  # the runtime retries the whole batch later
        sim.send(result)
    sim.state = before
    outage = False
    decision = sim.send(result)
    failed = [e for e in decision.events if isinstance(e, StepFailed)]
    assert [f.error.error_class for f in failed] == ["BlobNotFound"]
    assert failed[0].step.step_id == "second"
    assert sim.run.status is RunStatus.FAILED


def error(error_class: str = "KeyError") -> ErrorInfo:
    return ErrorInfo(error_class=error_class, message="boom", retryable=False)


def ok_result(sim: Simulation, step_id: str, output: Any) -> NodeResult:
    invocation = sim.invocation(step_id)
    return NodeResult(
        run_id=sim.run_id,
        seq=invocation.seq,
        invocation_id=invocation.invocation_id,
        attempt=invocation.attempt,
        step=invocation.step,
        status=TraceStatus.OK,
        output=output,
        started_at=sim.now,
        finished_at=sim.now,
    )


def test_fail_input_rejects_a_command_and_the_run_carries_on() -> None:
    sim = Simulation(TWO)
    sim.start()
    pause = PauseRun(run_id=sim.run_id, command_id="cmd-1", requested_by="test")
    decision = fail_input(sim.state, pause, error(), sim.context())
    assert [type(e) for e in decision.events] == [CommandRejected]
    assert decision.rejection == "[KeyError] boom"
    assert decision.state is not None and decision.state.status is RunStatus.RUNNING
    # A StartRun of a run with no log yet is rejected in a new log (like any refused start).
    start = StartRun(run_id="run-2", workflow_id="two", inputs={})
    started = fail_input(None, start, error(), sim.context())
    assert [(type(e), e.seq) for e in started.events] == [(CommandRejected, 0)]
    assert started.state is not None and started.state.status is RunStatus.PENDING
    # Another command for a run without a log: nowhere to write it (the runtime dead-letters).
    orphan = pause.model_copy(update={"run_id": "run-3"})
    nowhere = fail_input(None, orphan, error(), sim.context())
    assert nowhere.events == () and nowhere.rejection == "[KeyError] boom"


def test_fail_input_fails_the_step_a_result_reports_on_and_the_run() -> None:
    sim = Simulation(TWO)
    sim.start()
    result = ok_result(sim, "first", 1)
    decision = fail_input(sim.state, result, error(), sim.context())
    assert [type(e) for e in decision.events] == [StepFailed, RunFailed]
    failed, run_failed = decision.events
    assert isinstance(failed, StepFailed) and isinstance(run_failed, RunFailed)
    assert (failed.step.step_id, failed.attempt, failed.invocation_id) == (
        "first",
        1,
        result.invocation_id,
    )
    assert failed.error == error() and run_failed.error == error()
    assert run_failed.failed_step is not None and run_failed.failed_step.step_id == "first"
    assert fold([*sim.log, *decision.events]) == decision.state
    # The same input once the run has failed: nothing left to write (dead-lettered instead).
    assert fail_input(decision.state, result, error(), sim.context()).events == ()


def test_fail_input_keeps_the_writable_prefix_and_fails_the_refused_step() -> None:
    sim = Simulation(TWO)
    sim.start()
    before = sim.state
    result = ok_result(sim, "first", 2)
    decided = sim.send(result)
    kinds = [type(e).__name__ for e in decided.events]
    assert kinds == ["StepSucceeded", "StepDispatched"]  # scheduling "second" too (ADR 0075)
    # Say the invocation of "second" was refused: keep StepSucceeded and the scheduling of
    # "second" (the StepScheduled its dispatch stands for).
    prefix = kept_events(decided.events, 1)
    assert [type(e).__name__ for e in prefix] == ["StepSucceeded", "StepScheduled"]
    assert prefix[1].seq == decided.events[1].seq
    redo = fail_input(
        before,
        result,
        error("PayloadTooLarge"),
        sim.context(),
        prefix=prefix,
        step_id="second",
        attempt=1,
    )
    assert [type(e).__name__ for e in redo.events] == [
        "StepSucceeded",
        "StepScheduled",
        "StepFailed",
        "RunFailed",
    ]
    assert redo.invocations == ()
    assert redo.state is not None
    assert redo.state.steps["first"].status is StepStatus.SUCCEEDED
    assert redo.state.steps["second"].status is StepStatus.FAILED
    assert redo.state.error is not None and redo.state.error.error_class == "PayloadTooLarge"
    assert fold([*sim.log[: -len(decided.events)], *redo.events]) == redo.state


def failure(code: str, retriable: bool = False) -> DeliveryFailure:
    return DeliveryFailure("topic", b"key", code, "reason", retriable)


@pytest.mark.parametrize(
    ("exc", "error_class", "retryable"),
    [
        (DeliveryError([failure("MSG_SIZE_TOO_LARGE")]), "PayloadTooLarge", False),
        (DeliveryError([failure("UNKNOWN_TOPIC_OR_PART")]), "NodeUnavailable", False),
        (DeliveryError([failure("_MSG_TIMED_OUT")]), "Delivery", True),
        (DeliveryError([failure("_MSG_TIMED_OUT"), failure("INVALID_RECORD")]), "Delivery", False),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), "KafkaException", True),
        (KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), "PayloadTooLarge", False),
        (ServiceUnavailableError("down"), "ServiceUnavailable", True),
        (ConnectionRefusedError(), "ConnectionRefusedError", True),
        (KeyError("bug"), "KeyError", False),
        (PayloadTooLargeError("big"), "PayloadTooLarge", False),
    ],
)
def test_the_runtime_classifies_failures(
    exc: BaseException, error_class: str, retryable: bool
) -> None:
    found = classify_failure(exc)
    assert (found.error_class, found.retryable) == (error_class, retryable)


def test_fatal_producer_errors_end_the_loop() -> None:
    assert is_fatal(KafkaException(KafkaError(KafkaError._FENCED, fatal=True)))
    assert not is_fatal(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not is_fatal(KeyError("x"))
    # A produce refused by a producer that already had a fatal error carries no fatal flag.
    assert is_fatal(KafkaException(KafkaError(KafkaError._FATAL)))
    refused = DeliveryFailure("t", b"k", "_FATAL", "Unable to produce message", False)
    assert is_fatal(DeliveryError([refused]))
    timed_out = DeliveryFailure("t", b"k", "_MSG_TIMED_OUT", "timed out", True)
    assert not is_fatal(DeliveryError([timed_out]))


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial=0.1, cap=1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 1.0 for d in delays) and delays[-1] >= 0.5
    backoff.reset()
    assert backoff.next_delay() <= 0.1


class FakeMessage:
    """Just the coordinates of a consumed message (what Isolation reads)."""

    def __init__(self, partition: int, offset: int, topic: str = "t.results") -> None:
        self._coords = (topic, partition, offset)

    def topic(self) -> str:
        return self._coords[0]

    def partition(self) -> int:
        return self._coords[1]

    def offset(self) -> int:
        return self._coords[2]


def test_isolation_blames_an_input_only_after_it_failed_alone_within_a_refused_batch() -> None:
    isolation = Isolation()
    batch: list[Any] = [FakeMessage(0, 10), FakeMessage(0, 11), FakeMessage(1, 5)]
    refused = classify_failure(DeliveryError([failure("MSG_SIZE_TOO_LARGE")]))
    assert not isolation.active and not isolation.covers(batch[0])
    isolation.isolate(batch)
    assert isolation.active and isolation.marks == {("t.results", 0): 11, ("t.results", 1): 5}
    assert isolation.covers(batch[1]) and not isolation.covers(FakeMessage(0, 12))
    exc = DeliveryError([DeliveryFailure("t.invoke.x.v1", b"k", "MSG_SIZE_TOO_LARGE", "r", False)])
    strike = isolation.strike(batch[1], refused, exc)
    assert (strike.error_class, strike.topics, strike.level) == (
        "PayloadTooLarge",
        frozenset({"t.invoke.x.v1"}),
        1,
    )
    assert "MSG_SIZE_TOO_LARGE" in strike.message
    assert isolation.strike(batch[1], refused, exc).level == 2
    # Committing inputs lifts their strikes and the marks they reach.
    isolation.committed(batch[:2])
    assert isolation.strikes == {} and isolation.marks == {("t.results", 1): 5}
    isolation.forget([("t.results", 1)])  # revoked
    assert not isolation.active
