"""``reflux dev`` supervises its components: one that dies is logged with the reason and started
again, and the runs it was driving finish exactly once.

The death is a real one: another process initialises the scheduler's transactional id again and
again (two schedulers started with the same instance id). The scheduler replaces its fenced
producer three times, then gives up with ``SchedulerFencedError`` -- and the engine's
supervisor starts a fresh scheduler, which takes the runs to the end.
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Producer as KafkaProducer

from processors.scheduler.runtime.loop import MAX_FENCINGS, SchedulerFencedError
from tests.integration.engine_fixtures import HarnessFactory
from tests.integration.test_scheduler_restarts import RunLog
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WORKFLOW = {
    "id": "supervised",
    "steps": [
        {"id": "t", "node": "transform@^1", "params": {"expression": "a", "data": {"a": 1}}},
    ],
}


def _fence(bootstrap: str, transactional_id: str) -> None:
    """What a second process with the same instance id does when it starts."""
    rogue = KafkaProducer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    rogue.init_transactions(30)
    rogue.flush(1)


def test_a_scheduler_that_dies_in_reflux_dev_is_restarted_and_its_runs_finish(
    engine_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    harness = engine_harness(trigger_router=False, client_id="supervision-test")
    engine = harness.engine
    first = engine.scheduler
    assert first is not None
    name = f"scheduler-{first.instance_id}"
    harness.register(WORKFLOW)
    runs = [harness.start("supervised")]
    eventually(lambda: (harness.run(runs[0]) or _NONE).status == "succeeded", 30, "a first run")

    with caplog.at_level(logging.INFO):
        for fencing in range(1, MAX_FENCINGS + 2):
            _fence(harness.settings.kafka_bootstrap, first.transactional_id)
            # The fenced producer notices at its next transaction: give it one.
            runs.append(harness.start("supervised"))
            if fencing <= MAX_FENCINGS:
                eventually(
                    lambda n=fencing: first.stats.producer_replaced >= n,  # type: ignore[misc]
                    30,
                    f"the scheduler to replace its producer after fencing {fencing}",
                )
        eventually(
            lambda: engine.scheduler is not first and bool(engine.errors().get(name)),
            60,
            "the supervisor to start a new scheduler",
        )
        for run_id in runs:
            eventually(
                lambda r=run_id: (harness.run(r) or _NONE).status,  # type: ignore[misc]
                60,
                f"run {run_id} to succeed",
                until=lambda status: status == "succeeded",
            )

    (error,) = engine.errors()[name]
    assert isinstance(error, SchedulerFencedError), error
    died = [r for r in caplog.records if r.name == "reflux.supervision" and "died" in r.message]
    assert len(died) == 1, [r.message for r in died]
    assert died[0].message.startswith(f"{name} died after")
    assert "SchedulerFencedError" in died[0].message and "another process" in died[0].message
    assert "restarting it in 0.5s (restart 1)" in died[0].message
    assert engine.components[0].restarts == 1

    run_log = RunLog(harness.settings, engine.catalog.runs.topic)
    try:
        eventually(lambda: run_log.finished(runs) == len(runs), 30, "the run log read")
        counts = run_log.counts(runs)
    finally:
        run_log.close()
    assert counts == {"lost": 0, "failed": 0, "duplicated": 0, "missing": 0}, counts


class _NoRun:
    status = "missing"


_NONE = _NoRun()
